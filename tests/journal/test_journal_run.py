"""The journal in whole runs against the test DNS and SMTP servers: what it exports, what it
refuses, what it re-reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.errors import JournalError
from bulksend.journal import Journal, Status
from bulksend.metrics import Metrics
from bulksend.testing.scenario import (
    SiteSpec,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript
from tests.helpers.metrics import Samples, parse_samples
from tests.helpers.worlds import run_options

QUICK_EXPIRY = """
[policy.retry]
initial = "1s"
factor = 1.0
maximum = "1s"
jitter = 0.0
max_age = "1s"
"""


def exposition(metrics: Metrics) -> Samples:
    """Every sample, parsed from the text the metrics endpoint serves."""
    return parse_samples(generate_latest(metrics.registry).decode())


async def test_an_expiry_is_exported(tmp_path: Path, fast_clock: trio.testing.MockClock) -> None:
    # Expiry is decided by the journal writer (max_age), not by an attempt: the bounce-rate
    # alert and the dashboard divide by outcome="expired", so it must be there.
    greylisted = ServerScript(greylist=True, greylist_seconds=3600.0)
    sites = [
        SiteSpec("grey", ("grey.test",), "127.0.0.2", greylisted),
        SiteSpec("ok", ("ok.test",), "127.0.0.3"),
    ]
    toml = write_campaign(
        tmp_path, addresses(["grey.test", "ok.test"], 2), toml=campaign_toml(policy=QUICK_EXPIRY)
    )
    metrics = Metrics()
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world), metrics=metrics
            )
    samples = exposition(metrics)
    assert summary.counts[Status.EXPIRED] == 1
    assert samples[("bulksend_recipients_total", (("outcome", "expired"),))] == 1
    assert samples[("bulksend_recipients_total", (("outcome", "delivered"),))] == 1


def with_recipients_keys(toml: str, keys: str) -> str:
    """A test campaign's TOML with more keys in its [recipients] table."""
    anchor = 'rejects = "rejects.csv"\n'
    assert anchor in toml
    return toml.replace(anchor, anchor + keys)


async def test_resume_refuses_a_changed_attachment(tmp_path: Path) -> None:
    # An attachment is content, like a template: resuming with other bytes would send some
    # recipients the old file and the rest the new one.
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    toml = campaign_toml().replace(
        'html = "body.html"\n', 'html = "body.html"\nattachments = ["terms.txt"]\n'
    )
    campaign = write_campaign(tmp_path, addresses(["ok.test"], 5), toml=toml)
    attachment = tmp_path / "terms.txt"
    attachment.write_text("Terms, version 1\n")
    with trio.fail_after(30):
        async with running(sites) as world:
            options = run_options(tmp_path, world, limit=2)
            first = await run_campaign(Campaign.load(campaign, {}), options)
            assert not first.complete
            attachment.write_text("Terms, version 2\n")
            with pytest.raises(JournalError, match=r"attachment \S*terms\.txt changed"):
                await run_campaign(Campaign.load(campaign, {}), options)
            received = world.servers["ok"].received()
    assert sum(received.values()) == 2


def suppression_campaign(tmp_path: Path, recipients: list[str], policy: str = "") -> Path:
    toml = with_recipients_keys(campaign_toml(policy=policy), 'suppression = "suppressed.txt"\n')
    (tmp_path / "suppressed.txt").write_text("# unsubscribed\nsomeone@else.test\n")
    return write_campaign(tmp_path, recipients, toml=toml)


def add_suppressed(tmp_path: Path, *addresses: str) -> None:
    with (tmp_path / "suppressed.txt").open("a") as f:
        f.writelines(f"{a}\n" for a in addresses)


def journal_statuses(tmp_path: Path) -> dict[str, Status]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.address: s.status for s in journal.iter_states()}


async def test_resume_applies_suppressions_added_since_the_import(tmp_path: Path) -> None:
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    campaign = suppression_campaign(tmp_path, addresses(["ok.test"], 10))
    with trio.fail_after(30):
        async with running(sites) as world:
            options = run_options(tmp_path, world, limit=3)
            first = await run_campaign(Campaign.load(campaign, {}), options)
            assert not first.complete
            # An unsubscribe arrives between the runs (compared without case, as at import).
            add_suppressed(tmp_path, "User7@OK.test")
            options = run_options(tmp_path, world)
            resumed = await run_campaign(Campaign.load(campaign, {}), options)
            received = world.servers["ok"].received()
    assert resumed.complete
    assert "user7@ok.test" not in received
    assert len(received) == 9
    assert journal_statuses(tmp_path)["user7@ok.test"] is Status.SUPPRESSED


async def test_suppressions_added_during_a_run_are_never_sent(tmp_path: Path) -> None:
    # One connection, slow final replies: 40 recipients take a few seconds. The first 16
    # are claimed at once (a sender's buffer), the rest wait in the journal.
    slow = ServerScript(reply_delays={"DOT": 0.1})
    sites = [SiteSpec("slow", ("slow.test",), "127.0.0.2", slow)]
    policy = "[policy.defaults]\nmax_connections = 1\n"
    campaign = suppression_campaign(tmp_path, addresses(["slow.test"], 40), policy)
    claimed, waiting = "user14@slow.test", "user38@slow.test"
    with trio.fail_after(60):
        async with running(sites) as world:
            server = world.servers["slow"]
            options = run_options(tmp_path, world, suppression_check=0.05)

            async def unsubscribe() -> None:
                await server.wait_until(lambda: server.stats.messages >= 2)
                add_suppressed(tmp_path, claimed, waiting)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(unsubscribe)
                summary = await run_campaign(Campaign.load(campaign, {}), options)
            received = server.received()
    assert summary.complete
    assert claimed not in received
    assert waiting not in received
    assert len(received) == 38
    statuses = journal_statuses(tmp_path)
    assert statuses[claimed] is statuses[waiting] is Status.SUPPRESSED
