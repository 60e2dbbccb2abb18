"""Smarthost mode: every message through one relay, AUTH only over verified TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trustme

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunOptions, run_campaign
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript

PASSWORD = "relay-s3cret-pw"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def relay_script(ca: trustme.CA, *, tls: bool = True) -> ServerScript:
    context = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.2").configure_cert(context)
    return ServerScript(
        tls_context=context,
        auth_credentials={"bulk": PASSWORD},
        require_auth=True,
        record_wire=True,
    )


async def relay_campaign(
    tmp_path: Path, script: ServerScript, trust: ssl.SSLContext
) -> tuple[dict[Status, int], bytes, list[str | None]]:
    # No DNS at all: the relay is an address, and no nameserver is configured.
    sites = [SiteSpec("relay", (), "127.0.0.2", script)]
    with trio.fail_after(30):
        async with running(sites) as world:
            extra = f"""
[routing.smarthost]
host = "127.0.0.2"
port = {world.smtp_port}
username = "bulk"
password_env = "RELAY_PASSWORD"
"""
            toml = write_campaign(
                tmp_path,
                addresses(["far.example", "other.example"], 6),
                toml=campaign_toml(extra=extra),
            )
            campaign = Campaign.load(toml, {"RELAY_PASSWORD": PASSWORD})
            options = RunOptions(
                journal=tmp_path / "journal.sqlite3",
                ehlo_hostname="sender.test",
                ssl_verified=trust,
                grace=1,
            )
            with trio.move_on_after(5):
                await run_campaign(campaign, options)
            server = world.servers["relay"]
            wire = b"".join(bytes(c.received) for c in server.connections)
            users = [t.authenticated_as for t in server.transactions]
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        counts = journal.counts()
    return counts, wire, users


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_relay_with_verified_tls_and_auth(tmp_path: Path, ca: trustme.CA) -> None:
    counts, wire, users = await relay_campaign(tmp_path, relay_script(ca), trusting(ca))
    assert counts[Status.DELIVERED] == 6
    assert users == ["bulk"] * 6
    # AUTH went inside TLS: the plaintext part of the wire never carries it.
    assert b"AUTH" not in wire.split(b"STARTTLS")[0]


async def test_no_auth_when_the_certificate_does_not_verify(tmp_path: Path, ca: trustme.CA) -> None:
    counts, wire, users = await relay_campaign(
        tmp_path, relay_script(ca), ssl.create_default_context()
    )
    assert counts[Status.DELIVERED] == 0
    assert counts[Status.PENDING] == 6  # deferred, not lost
    assert users == []
    assert b"AUTH" not in wire


async def test_no_auth_when_the_relay_offers_no_tls(tmp_path: Path, ca: trustme.CA) -> None:
    counts, wire, users = await relay_campaign(tmp_path, relay_script(ca, tls=False), trusting(ca))
    assert users == []
    assert counts[Status.DELIVERED] == 0
    assert counts[Status.PENDING] == 6
    assert b"AUTH" not in wire
    assert PASSWORD.encode() not in wire
