"""The delivery engine end to end: campaign file -> journal -> DNS -> SMTP servers."""

from __future__ import annotations

from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunOptions, run_campaign
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, addresses, running, write_campaign
from bulksend.testing.smtp import ServerScript


def options(tmp_path: Path, world_dns: int, smtp_port: int, **kw: object) -> RunOptions:
    return RunOptions(
        journal=tmp_path / "journal.sqlite3",
        nameservers=("127.0.0.1",),
        dns_port=world_dns,
        smtp_port=smtp_port,
        ehlo_hostname="sender.test",
        grace=5,
        **kw,  # type: ignore[arg-type]
    )


async def test_small_campaign_delivers_everyone_once(tmp_path: Path) -> None:
    sites = [
        SiteSpec("alpha", ("a1.test", "a2.test"), "127.0.0.2", mx_hosts=2),
        SiteSpec(
            "beta",
            ("b.test",),
            "127.0.0.3",
            ServerScript(unknown_mailboxes=frozenset({"user2@b.test"})),
        ),
    ]
    domains = ["a1.test", "a2.test", "b.test"]
    toml = write_campaign(tmp_path, addresses(domains, 30))
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), options(tmp_path, world.dns_port, world.smtp_port)
            )
            received = [
                r for s in world.servers.values() for t in s.transactions for r in t.rcpt_to
            ]
    assert summary.complete
    assert summary.counts[Status.DELIVERED] == 29
    assert summary.counts[Status.BOUNCED] == 1
    assert sorted(received) == sorted(a for a in addresses(domains, 30) if a != "user2@b.test")
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        bounced = list(journal.iter_states([Status.BOUNCED]))
    assert [(b.address, b.code, b.enhanced_code) for b in bounced] == [
        ("user2@b.test", 550, "5.1.1")
    ]
