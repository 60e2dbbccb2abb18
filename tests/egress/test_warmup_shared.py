"""Warm-up with a shared (PostgreSQL) journal: the day's allowance holds in total over every
`bulksend worker` (real processes, a real PostgreSQL server, real sockets)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import trio

from bulksend.journal import Status
from bulksend.journal.backend import open_journal
from bulksend.testing.scenario import addresses, campaign_toml, running, write_campaign
from tests.cli.cli_helpers import bulksend, run_bulksend, world_args
from tests.egress.test_warmup import SITES, sources

ALLOWANCE = 10


async def test_two_workers_send_at_most_the_days_allowance_from_a_warming_source(
    tmp_path: Path, postgres_url: str
) -> None:
    # Each worker's ip2 lane alone could send the whole allowance; over the shared journal
    # both together send it once, and ip3 (no warm-up) carries the rest.
    url = f"{postgres_url}?campaign=warm"
    policy = (
        sources(f"[{ALLOWANCE}]").replace(
            "max_connections = 2", 'max_connections = 1\nrate = "10/s"'
        )
        + '\n[egress.pool.main]\nsources = ["ip2", "ip3"]\n'
    )
    recipients = addresses(["w.test"], 100)  # a few seconds at 10/s per lane and worker
    toml = campaign_toml(campaign_id="warm", policy=policy)
    campaign = write_campaign(tmp_path / "c", recipients, toml=toml)
    imported = await run_bulksend(tmp_path, "import", str(campaign), "--journal", url, name="i")
    assert imported.process.returncode == 0, imported.stderr()
    codes: list[int] = []
    with trio.fail_after(120):
        async with running(SITES) as world:

            async def worker(index: int) -> None:
                args = ["worker", "--campaign", str(campaign), "--journal", url]
                async with bulksend(
                    tmp_path, *args, *world_args(world), name=f"worker{index}"
                ) as proc:
                    codes.append(await proc.wait(110))

            async with trio.open_nursery() as nursery:
                for index in range(2):
                    nursery.start_soon(worker, index)
            server = world.servers["warm"]
    errors = [(tmp_path / f"worker{i}.err").read_text() for i in range(2)]
    assert codes == [0, 0], errors
    peers = Counter(t.peer for t in server.transactions)
    assert peers["127.0.0.2"] == ALLOWANCE, peers  # not twice: once over both workers
    assert peers["127.0.0.3"] == 100 - ALLOWANCE
    with open_journal(url, None) as journal:
        states = list(journal.iter_states())
    assert Counter(s.status for s in states) == {Status.DELIVERED: 100}
    assert {s.attempts for s in states} == {1}  # the source's waiting was a throttle deferral
