"""What the journal records when a site breaks the protocol or refuses for a known reason:
a reply out of step is never a delivery, and every refusal is filed under its category."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trustme

from bulksend.campaign import Campaign
from bulksend.delivery.outcome import classify_error
from bulksend.delivery.run import run_campaign
from bulksend.journal import Category, Journal, Kind, RecipientState, Status
from bulksend.smtp.errors import reply_error
from bulksend.smtp.protocol import Reply
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript
from tests.helpers.tls import server_context
from tests.helpers.worlds import run_options

# One try only: what the first attempt recorded stays in the journal.
ONE_TRY = """
[policy.retry]
initial = "1h"
max_age = "2h"
"""


async def run(
    tmp_path: Path,
    sites: Sequence[SiteSpec],
    recipients: list[str],
    policy: str = "",
    *,
    first_outcomes: bool = True,
) -> tuple[dict[str, RecipientState], World]:
    """Run the campaign; with ``first_outcomes`` until every recipient has one outcome."""
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=ONE_TRY + policy))
    with trio.fail_after(20):
        async with running(sites) as world:
            options = run_options(
                tmp_path, world, grace=2, limit=len(recipients) if first_outcomes else None
            )
            await run_campaign(Campaign.load(toml, {}), options)
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.address: s for s in journal.iter_states()}, world


async def test_a_2xx_to_data_leaves_every_recipient_pending(tmp_path: Path) -> None:
    sites = [
        SiteSpec("liar", ("liar.test",), "127.0.0.2", ServerScript(replies={"DATA": "250 ok"})),
        SiteSpec(
            "shifty",
            ("shifty.test",),
            "127.0.0.3",
            ServerScript(replies={"MAIL": "250 2.1.0 ok\n250 2.1.0 extra"}),
        ),
    ]
    rows, world = await run(tmp_path, sites, addresses(["liar.test", "shifty.test"], 6))
    assert world.delivered == 0 and world.received() == {}
    for row in rows.values():
        assert row.status is Status.PENDING, row
        assert row.attempts == 1 and row.in_doubt == 0
        assert row.text is not None and "cannot answer DATA" in row.text


async def test_refusals_are_filed_under_their_category(tmp_path: Path) -> None:
    sites = [
        # Over the advertised SIZE: refused before MAIL, as the server would with 552 5.3.4.
        SiteSpec("small", ("small.test",), "127.0.0.2", ServerScript(size=100)),
        SiteSpec(
            "big",
            ("big.test",),
            "127.0.0.3",
            ServerScript(replies={"DOT": "552 5.3.4 Message size exceeds fixed limit"}),
        ),
        SiteSpec("ascii", ("ascii.test",), "127.0.0.4", ServerScript(smtputf8=False)),
    ]
    recipients = ["a@small.test", "b@big.test", "jörg@ascii.test"]
    rows, _world = await run(tmp_path, sites, recipients)
    small, big, utf8 = (rows[r] for r in recipients)
    assert (small.status, small.enhanced_code, small.category) == (
        Status.BOUNCED,
        "5.3.4",
        Category.MESSAGE_TOO_BIG,
    )
    assert (big.status, big.code, big.category) == (
        Status.BOUNCED,
        552,
        Category.MESSAGE_TOO_BIG,
    )
    # RFC 6531 §3.5 / RFC 5248: X.6.7, non-ASCII address not permitted.
    assert (utf8.status, utf8.enhanced_code) == (Status.BOUNCED, "5.6.7")


async def test_tls_required_deferrals_are_filed_under_tls(tmp_path: Path) -> None:
    sites = [SiteSpec("plain", ("plain.test",), "127.0.0.2")]  # no STARTTLS
    policy = """
[policy.defaults]
tls = "required"
max_connections = 2
"""
    rows, world = await run(tmp_path, sites, addresses(["plain.test"], 6), policy)
    assert world.delivered == 0
    for row in rows.values():
        assert (row.status, row.category) == (Status.PENDING, Category.TLS), row.text


@pytest.mark.parametrize("code", [220, 250, 299, 334, 354])
def test_an_error_carrying_a_2xx_or_3xx_is_never_a_delivery(code: int) -> None:
    error = reply_error(Reply(code, None, ("odd",)), "DATA")
    outcome = classify_error(error)
    assert outcome.kind is Kind.DEFERRED
    assert outcome.text == f"protocol error: unexpected reply to DATA: {code} odd"


async def test_every_healthy_connection_ends_with_quit(tmp_path: Path, ca: trustme.CA) -> None:
    # RFC 5321 §4.1.1.10: TLS and plaintext sites, connections replaced after a few messages
    # and closed at the end of the run; each one must have said QUIT before closing. (The
    # last sender used to leave before its QUIT, and the end of the run cut that short.)
    sites = []
    for i in range(4):
        context = server_context(ca, f"mx1.s{i}.test")
        script = ServerScript(tls_context=context if i % 2 == 0 else None)
        sites.append(SiteSpec(f"s{i}", (f"s{i}.test",), f"127.0.0.{i + 2}", script))
    policy = """
[policy.defaults]
max_connections = 4
messages_per_connection = 5
"""
    recipients = addresses([f"s{i}.test" for i in range(4)], 200)
    rows, world = await run(tmp_path, sites, recipients, policy, first_outcomes=False)
    assert all(row.status is Status.DELIVERED for row in rows.values())
    connections = [(s, c) for s, server in world.servers.items() for c in server.connections]
    assert {c.tls for _s, c in connections} == {True, False}
    assert len(connections) >= 40
    assert [(s, c.id, c.tls) for s, c in connections if not c.quit] == []


async def test_a_quoted_local_part_is_refused_with_its_reason(tmp_path: Path) -> None:
    # Valid RFC 5321 syntax, refused by design (docs/campaign.md, "[recipients]").
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    # "a\"b"@ok.test, written as a CSV field (quotes doubled, the field quoted).
    recipients = ['"""a\\""b""@ok.test"', "plain@ok.test"]
    rows, world = await run(tmp_path, sites, recipients)
    assert world.received() == {"plain@ok.test": 1}
    rejects = (tmp_path / "rejects.csv").read_text()
    assert "Quoting the part before the @-sign is not allowed" in rejects
    assert rows['"a\\"b"@ok.test'].status is Status.INVALID
