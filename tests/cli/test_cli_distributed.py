"""``bulksend import`` and ``bulksend worker``: one campaign, several worker processes, a
PostgreSQL journal and a Redis/Valkey throttle store (real servers, real processes)."""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from pathlib import Path

import pytest
import trio

from bulksend.errors import JournalError
from bulksend.journal import Status
from bulksend.journal.backend import open_journal
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.cli.cli_helpers import Proc, bulksend, run_bulksend, world_args
from tests.helpers.redis import RedisServer

SITES = [SiteSpec("paced", ("p.test", "q.test"), "127.0.0.2")]
RATE = 40
CAP = 2
POLICY = f"""
[policy.defaults]
max_connections = {CAP}
rate = "{RATE}/s"
"""
_campaigns = itertools.count(1)


def statuses(journal: Path | str) -> Counter[Status]:
    with open_journal(journal, None) as j:
        return Counter(s.status for s in j.iter_states())


async def test_import_fills_the_journal_and_sends_nothing(tmp_path: Path) -> None:
    recipients = addresses(["p.test", "q.test"], 20)
    campaign = write_campaign(tmp_path / "c", recipients)
    journal = tmp_path / "j.sqlite3"
    first = await run_bulksend(
        tmp_path, "import", str(campaign), "--journal", str(journal), name="import"
    )
    assert first.process.returncode == 0, first.stderr()
    assert f"imported 20 recipients into {journal}" in first.stderr()
    assert "pending 20" in first.stdout()
    assert statuses(journal) == {Status.PENDING: 20}
    again = await run_bulksend(
        tmp_path, "import", str(campaign), "--journal", str(journal), name="again"
    )
    assert again.process.returncode == 0, again.stderr()
    assert "the import was already complete" in again.stderr()
    assert statuses(journal) == {Status.PENDING: 20}


async def test_a_worker_without_a_journal_is_told_where_to_name_it(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", addresses(["p.test"], 2))
    proc = await run_bulksend(tmp_path, "worker", "--campaign", str(campaign), name="w")
    assert proc.process.returncode == 2
    assert "give --journal postgresql://... or [journal] url in the campaign" in proc.stderr()


async def test_a_worker_needs_a_postgresql_journal(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", addresses(["p.test"], 2))
    journal = tmp_path / "j.sqlite3"
    journal.touch()
    proc = await run_bulksend(
        tmp_path, "worker", "--campaign", str(campaign), "--journal", str(journal), name="w"
    )
    assert proc.process.returncode == 2
    assert "a worker needs a PostgreSQL journal" in proc.stderr()
    with pytest.raises(JournalError, match="a lease is for PostgreSQL journals"):
        open_journal(journal, None, lease=5)
    short = await run_bulksend(
        tmp_path,
        "worker",
        "--campaign",
        str(campaign),
        "--journal",
        str(journal),
        "--lease",
        "0.5",
        name="short",
    )
    assert short.process.returncode == 2
    assert "'--lease'" in short.stderr()


async def test_import_then_three_workers_send_everyone_once_within_the_site_limits(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    name = f"dist{next(_campaigns)}"
    url = f"{postgres_url}?campaign={name}"
    recipients = addresses(["p.test", "q.test"], 80)
    # The journal named by the campaign ([journal] url): no --journal anywhere below.
    toml = campaign_toml(campaign_id=name, policy=POLICY, extra=f'[journal]\nurl = "{url}"\n')
    campaign = write_campaign(tmp_path / "c", recipients, toml=toml)
    password = tmp_path / "throttle-password"
    password.write_text("unused\n")  # the test server has none: the file must still be read
    throttle = f"{redis_server.url}?password_file={password}"
    imported = await run_bulksend(tmp_path, "import", str(campaign), name="i")
    assert imported.process.returncode == 0, imported.stderr()
    assert statuses(url) == {Status.PENDING: 80}
    codes: list[int] = []
    with trio.fail_after(120):
        async with running(SITES) as world:
            args = [
                "worker",
                "--campaign",
                str(campaign),
                "--throttle",
                throttle,
                *world_args(world),
            ]

            async def worker(index: int) -> None:
                async with bulksend(tmp_path, *args, name=f"worker{index}") as proc:
                    codes.append(await proc.wait(110))

            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(worker, index)
            server = world.servers["paced"]
            received = server.received()
    assert codes == [0, 0, 0], [(tmp_path / f"worker{i}.err").read_text() for i in range(3)]
    assert sorted(received) == sorted(recipients)  # everyone exactly once, over three workers
    assert statuses(url) == {Status.DELIVERED: 80}
    assert server.stats.connections_peak <= CAP  # the cap holds in total
    times = sorted(server.stats.message_times)
    assert (len(times) - 1) / (times[-1] - times[0]) <= RATE * 1.05  # so does the rate


async def test_a_worker_killed_mid_run_leaves_its_recipients_to_the_others(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    name = f"dist{next(_campaigns)}"
    url = f"{postgres_url}?campaign={name}"
    recipients = addresses(["p.test", "q.test"], 120)  # about three seconds at the rate
    toml = campaign_toml(campaign_id=name, policy=POLICY)
    campaign = write_campaign(tmp_path / "c", recipients, toml=toml)
    imported = await run_bulksend(tmp_path, "import", str(campaign), "--journal", url, name="i")
    assert imported.process.returncode == 0, imported.stderr()
    codes: dict[int, int] = {}
    with trio.fail_after(120):
        async with running(SITES) as world:
            server = world.servers["paced"]
            args = ["worker", "--campaign", str(campaign), "--journal", url, "--lease", "2"]
            args += ["--throttle", redis_server.url, *world_args(world)]
            async with trio.open_nursery() as nursery:
                procs: list[Proc] = []
                for index in range(3):
                    procs.append(await nursery.start(_worker, tmp_path, args, index, codes))
                await procs[0].wait_for(lambda: len(server.received()) >= 20, 60, "a few sends")
                procs[0].signal(signal.SIGKILL)
            received = server.received()
    assert codes[0] == -signal.SIGKILL
    errs = [(tmp_path / f"worker{i}.err").read_text() for i in (1, 2)]
    assert codes[1] in (0, 4) and codes[2] in (0, 4), errs
    times = Counter(received)
    assert set(times) == set(recipients)  # everyone at least once
    with open_journal(url, None) as journal:
        states = {s.address: s for s in journal.iter_states()}
        in_doubt_total = journal.in_doubt_total()
    assert {s.status for s in states.values()} == {Status.DELIVERED}
    assert in_doubt_total >= 1  # the dead worker's claims, taken over when their lease expired
    twice = {address for address, n in times.items() if n > 1}
    # A recipient sent twice is one the journal reports in doubt (the dead worker's send).
    assert all(states[address].in_doubt >= 1 for address in twice), twice
    assert len(twice) <= in_doubt_total


async def _worker(
    tmp_path: Path,
    args: list[str],
    index: int,
    codes: dict[int, int],
    *,
    task_status: trio.TaskStatus[Proc] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with bulksend(tmp_path, *args, name=f"worker{index}") as proc:
        task_status.started(proc)
        codes[index] = await proc.wait(110)


async def test_send_with_workers_shares_one_postgresql_journal(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    name = f"dist{next(_campaigns)}"
    url = f"{postgres_url}?campaign={name}"
    recipients = addresses(["p.test", "q.test"], 60)
    toml = campaign_toml(campaign_id=name, policy=POLICY)
    campaign = write_campaign(tmp_path / "c", recipients, toml=toml)
    with trio.fail_after(120):
        async with running(SITES) as world:
            send = await run_bulksend(
                tmp_path,
                "send",
                str(campaign),
                "--journal",
                url,
                "--workers",
                "2",
                "--throttle",
                redis_server.url,
                *world_args(world),
                name="send",
                seconds=110,
            )
            server = world.servers["paced"]
            received = server.received()
    assert send.process.returncode == 0, send.stderr()
    assert "complete after" in send.stdout()
    assert "with 2 workers" in send.stdout()
    assert sorted(received) == sorted(recipients)  # the import ran once, each address once
    assert statuses(url) == {Status.DELIVERED: 60}
    assert server.stats.connections_peak <= CAP
