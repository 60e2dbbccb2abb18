"""A journal that cannot be written (disk full) stops the run; nothing counts unrecorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.delivery.scheduler import Scheduler
from bulksend.errors import JournalError
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.helpers.worlds import limits_policy, run_options

POLICY = limits_policy(100)


async def test_disk_full_stops_sending_and_resume_finishes(tmp_path: Path) -> None:
    recipients = addresses(["full.test"], 200)
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=POLICY))
    sites = [SiteSpec("full", ("full.test",), "127.0.0.2")]
    seen: list[Scheduler] = []
    with trio.fail_after(60):
        async with running(sites) as world:
            server = world.servers["full"]
            options = run_options(tmp_path, world)

            async def fill_the_disk() -> None:
                await server.wait_until(lambda: server.stats.messages >= 30)
                journal = seen[0].context.writer.journal
                # SQLite's own "database or disk is full" (SQLITE_FULL) from now on.
                pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
                journal._db.execute(f"PRAGMA max_page_count = {pages}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fill_the_disk)
                with pytest.raises(JournalError, match="full"):
                    await run_campaign(Campaign.load(toml, {}), options, on_start=seen.append)
            sent_before = server.stats.messages
            await trio.sleep(0.5)
            assert server.stats.messages == sent_before  # nothing more went out
            with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
                delivered = {s.address for s in journal.iter_states([Status.DELIVERED])}
            received = server.received()
            # Only what the server really took is recorded delivered.
            assert delivered <= set(received)
            assert sent_before < 200
            resumed = await run_campaign(Campaign.load(toml, {}), options)
            received = server.received()
    assert resumed.complete
    assert resumed.counts[Status.DELIVERED] == 200
    assert set(received) == set(recipients)
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        doubt = {s.address: s.in_doubt for s in journal.iter_states()}
    assert all(n <= 1 + doubt[a] for a, n in received.items())
