"""Smarthost mode: every message through one relay, AUTH only over verified TLS; a relay's
required TLS is required (smarthost or route override)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.journal import Journal, RecipientState, Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.helpers.tls import client_context, server_context
from tests.helpers.worlds import run_options

PASSWORD = "relay-s3cret-pw"


def relay_script(ca: trustme.CA, *, tls: bool = True, auth: bool = True) -> ServerScript:
    return ServerScript(
        tls_context=server_context(ca, "127.0.0.2") if tls else None,
        auth_credentials={"bulk": PASSWORD} if auth else None,
        require_auth=auth,
        record_wire=True,
    )


@dataclass
class RelayRun:
    counts: dict[Status, int]
    wire: bytes  # everything the relay received
    users: list[str | None]  # each transaction's AUTH identity
    tls: list[bool]  # each transaction: inside TLS?
    states: dict[str, RecipientState]


SMARTHOST = """
[routing.smarthost]
host = "127.0.0.2"
port = {port}
username = "bulk"
password_env = "RELAY_PASSWORD"
"""


async def relay_campaign(
    tmp_path: Path,
    script: ServerScript,
    trust: ssl.SSLContext,
    *,
    routing: str = SMARTHOST,
    policy: str = "",
) -> RelayRun:
    # A smarthost needs no DNS at all (the relay is an address): no nameserver is configured
    # for it. Route overrides (which leave other domains to MX lookup) get the test server's.
    sites = [SiteSpec("relay", (), "127.0.0.2", script)]
    with trio.fail_after(30):
        async with running(sites) as world:
            toml = write_campaign(
                tmp_path,
                addresses(["far.example", "other.example"], 6),
                toml=campaign_toml(extra=routing.format(port=world.smtp_port), policy=policy),
            )
            campaign = Campaign.load(toml, {"RELAY_PASSWORD": PASSWORD})
            options = run_options(
                tmp_path,
                world,
                ssl_verified=trust,
                nameservers=() if "smarthost" in routing else ("127.0.0.1",),
            )
            with trio.move_on_after(5):
                await run_campaign(campaign, options)
            server = world.servers["relay"]
            wire = b"".join(bytes(c.received) for c in server.connections)
            users = [t.authenticated_as for t in server.transactions]
            tls = [t.tls for t in server.transactions]
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        counts = journal.counts()
        states = {s.address: s for s in journal.iter_states()}
    return RelayRun(counts, wire, users, tls, states)


async def test_relay_with_verified_tls_and_auth(tmp_path: Path, ca: trustme.CA) -> None:
    run = await relay_campaign(tmp_path, relay_script(ca), client_context(ca))
    counts, wire, users = run.counts, run.wire, run.users
    assert counts[Status.DELIVERED] == 6
    assert users == ["bulk"] * 6
    # AUTH went inside TLS: the plaintext part of the wire never carries it.
    assert b"AUTH" not in wire.split(b"STARTTLS")[0]


async def test_no_auth_when_the_certificate_does_not_verify(tmp_path: Path, ca: trustme.CA) -> None:
    run = await relay_campaign(tmp_path, relay_script(ca), ssl.create_default_context())
    counts, wire, users = run.counts, run.wire, run.users
    assert counts[Status.DELIVERED] == 0
    assert counts[Status.PENDING] == 6  # deferred, not lost
    assert users == []
    assert b"AUTH" not in wire


async def test_no_auth_when_the_relay_offers_no_tls(tmp_path: Path, ca: trustme.CA) -> None:
    run = await relay_campaign(tmp_path, relay_script(ca, tls=False), client_context(ca))
    counts, wire, users = run.counts, run.wire, run.users
    assert users == []
    assert counts[Status.DELIVERED] == 0
    assert counts[Status.PENDING] == 6
    assert b"AUTH" not in wire
    assert PASSWORD.encode() not in wire


# ---- a relay's required TLS, without AUTH (AUTH alone already insists on TLS) ----------------

NO_AUTH_SMARTHOST = """
[routing.smarthost]
host = "127.0.0.2"
port = {{port}}
{tls}
"""


def assert_nothing_sent_in_plaintext(run: RelayRun, addresses_: list[str]) -> None:
    """The relay received no transaction; each recipient is deferred for want of TLS."""
    assert b"MAIL FROM" not in run.wire
    assert b"DATA" not in run.wire
    assert run.tls == []
    for address in addresses_:
        state = run.states[address]
        assert state.status is Status.PENDING
        assert state.attempts >= 1
        assert state.text is not None
        assert "TLS is required" in state.text


@pytest.mark.parametrize("tls", ['tls = "required"', ""], ids=["required", "default"])
async def test_smarthost_tls_required_without_starttls_sends_nothing(
    tmp_path: Path, ca: trustme.CA, tls: str
) -> None:
    run = await relay_campaign(
        tmp_path,
        relay_script(ca, tls=False, auth=False),
        client_context(ca),
        routing=NO_AUTH_SMARTHOST.format(tls=tls),
    )
    assert run.counts[Status.DELIVERED] == 0
    assert_nothing_sent_in_plaintext(run, list(run.states))


async def test_smarthost_tls_required_goes_over_tls(tmp_path: Path, ca: trustme.CA) -> None:
    run = await relay_campaign(
        tmp_path,
        relay_script(ca, auth=False),
        client_context(ca),
        routing=NO_AUTH_SMARTHOST.format(tls=""),
    )
    assert run.counts[Status.DELIVERED] == 6
    assert run.tls == [True] * 6


async def test_smarthost_tls_opportunistic_may_go_in_plaintext(
    tmp_path: Path, ca: trustme.CA
) -> None:
    run = await relay_campaign(
        tmp_path,
        relay_script(ca, tls=False, auth=False),
        client_context(ca),
        routing=NO_AUTH_SMARTHOST.format(tls='tls = "opportunistic"'),
    )
    assert run.counts[Status.DELIVERED] == 6
    assert run.tls == [False] * 6


OVERRIDES = """
[routing.overrides]
"far.example" = "127.0.0.2:{port}"
"other.example" = "127.0.0.2:{port}"
"""


async def test_override_domain_tls_required_without_starttls(
    tmp_path: Path, ca: trustme.CA
) -> None:
    # One relay (a route override) for two domains; one of them requires TLS.
    policy = '[policy.domains."far.example"]\ntls = "required"\n'
    run = await relay_campaign(
        tmp_path,
        relay_script(ca, tls=False, auth=False),
        client_context(ca),
        routing=OVERRIDES,
        policy=policy,
    )
    far = [a for a in run.states if a.endswith("@far.example")]
    assert_nothing_sent_in_plaintext(RelayRun(run.counts, b"", [], [], run.states), far)
    assert b"@far.example" not in run.wire
    # The other domain is not held back by its neighbour's requirement.
    assert run.counts[Status.DELIVERED] == 3
    assert run.tls == [False] * 3


async def test_override_tls_required_by_default_policy(tmp_path: Path, ca: trustme.CA) -> None:
    policy = '[policy.defaults]\ntls = "required"\n'
    run = await relay_campaign(
        tmp_path,
        relay_script(ca, tls=False, auth=False),
        client_context(ca),
        routing=OVERRIDES,
        policy=policy,
    )
    assert run.counts[Status.DELIVERED] == 0
    assert_nothing_sent_in_plaintext(run, list(run.states))
