"""`bulksend ctl` against a real `send --workers 2` (SQLite shards): one socket for the run."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from bulksend.delivery.shard import Shard
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import running
from tests.cli.cli_helpers import bulksend, paced_campaign, run_bulksend, world_args
from tests.cli.test_cli_ctl import received_during
from tests.helpers.worlds import sharded_sites

SITES = sharded_sites(big_domains=3, small_sites=3)
DOMAINS = [d for s in SITES for d in s.domains]


def _sites(status_text: str) -> set[str]:
    return {s["site"].split(":")[0] for s in json.loads(status_text)["sites"]}


async def test_ctl_reaches_every_worker_pause_stops_a_site_and_status_sums_them(
    tmp_path: Path,
) -> None:
    # No site ends early; the workers' plan places the big site (1500) on one worker and the
    # three small ones (500 each) on the other.
    path, _ = paced_campaign(tmp_path, DOMAINS, 3000, rate=20)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(150):
        async with (
            running(SITES) as world,
            bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--workers",
                "2",
                "--grace",
                "2",
                *world_args(world),
                name="send",
            ) as proc,
        ):
            servers = world.servers
            await proc.wait_for(
                lambda: all(servers[s.name].stats.messages >= 5 for s in SITES),
                60,
                "every site sending",
            )
            # Each worker answers on its shard journal's socket; the run on JOURNAL.ctl.
            shards = [
                await run_bulksend(
                    tmp_path, "ctl", str(Shard(i, 2).journal(journal)), "status", name=f"s{i}"
                )
                for i in range(2)
            ]
            assert all(shard.process.returncode == 0 for shard in shards), (shards, proc)
            per_shard = [_sites(shard.stdout()) for shard in shards]
            assert all(per_shard), shards  # both workers send to some site
            merged = await run_bulksend(tmp_path, "ctl", str(journal), "status", name="status")
            assert merged.process.returncode == 0, merged
            status = json.loads(merged.stdout())
            assert status["workers"] == 2
            assert _sites(merged.stdout()) == per_shard[0] | per_shard[1]
            assert sum(s["queued"] for s in status["sites"]) > 0

            paused = await run_bulksend(
                tmp_path, "ctl", str(journal), "pause", "--site", "s1.test", name="pause"
            )
            assert paused.process.returncode == 0, paused
            assert paused.stdout() == "site s1.test paused until resumed\n"
            await trio.sleep(1.0)  # within a second it stops
            assert await received_during(servers["s1"], 2.0) == 0
            assert await received_during(servers["s2"], 1.0) >= 5  # the others go on
            # Every shard keeps the pause (it outlives the run: `resume --workers 2`).
            for i in range(2):
                kept = Path(f"{Shard(i, 2).journal(journal)}.control.json")
                assert json.loads(kept.read_text())["pauses"] == [
                    {"scope": "site", "target": "s1.test", "until": None}
                ]

            resumed = await run_bulksend(
                tmp_path, "ctl", str(journal), "resume", "--site", "s1.test", name="resume"
            )
            assert resumed.stdout() == "site s1.test resumed\n", resumed
            await trio.sleep(1.0)
            assert await received_during(servers["s1"], 1.0) >= 5

            # A cancel reaches the shard that holds the domain; the count is the run's.
            cancelled = await run_bulksend(
                tmp_path, "ctl", str(journal), "cancel", "--domain", "big2.test", name="cancel"
            )
            assert cancelled.process.returncode == 0, cancelled
            bounced = await run_bulksend(
                tmp_path, "ctl", str(journal), "bounce-now", "--domain", "big3.test", name="b"
            )
            assert bounced.process.returncode == 0, bounced
            proc.signal()
            await proc.wait(30)
        assert not Path(f"{journal}.ctl").exists()  # gone with the run
    ended = 0
    for i in range(2):
        with Journal.open_readonly(Shard(i, 2).journal(journal)) as j:
            ended += j.counts()[Status.CANCELLED]
    assert ended > 0
    assert cancelled.stdout() == (
        f"domain big2.test cancelled: its waiting recipients end cancelled ({ended} recipients)\n"
    )
    operator_bounced = []
    for i in range(2):
        with Journal.open_readonly(Shard(i, 2).journal(journal)) as j:
            operator_bounced += [s for s in j.iter_states() if s.text == "bounced by bulksend ctl"]
    assert operator_bounced
    assert {(s.domain, s.status, s.attempts) for s in operator_bounced} == {
        ("big3.test", Status.BOUNCED, 0)
    }
    assert bounced.stdout() == (
        "domain big3.test bounced: its waiting recipients end bounced "
        f"({len(operator_bounced)} recipients)\n"
    )
