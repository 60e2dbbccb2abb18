"""The delivery engine end to end: campaign file -> journal -> DNS -> SMTP servers."""

from __future__ import annotations

from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, addresses, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.helpers.worlds import run_options


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
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=5)
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
