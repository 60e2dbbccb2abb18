"""`bulksend ctl URL` with a PostgreSQL journal: the commands go through the journal, and
every `bulksend worker` obeys (real processes, a real PostgreSQL server)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import trio

from bulksend.journal import Status
from bulksend.journal.backend import open_journal
from bulksend.testing.scenario import addresses, campaign_toml, running, write_campaign
from tests.cli.cli_helpers import Proc, bulksend, run_bulksend, world_args
from tests.cli.test_cli_ctl import SITES, received_during
from tests.helpers.worlds import limits_policy

_campaigns = itertools.count(1)


async def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    with trio.move_on_after(seconds):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def imported(tmp_path: Path, postgres_url: str, count: int) -> tuple[str, Path]:
    """A campaign of ``count`` recipients over a1/b1/c1.test at 10/s per site, imported into
    a new PostgreSQL journal; its URL and campaign file."""
    name = f"ctl{next(_campaigns)}"
    url = f"{postgres_url}?campaign={name}"
    toml = campaign_toml(campaign_id=name, policy=limits_policy(10))
    recipients = addresses(["a1.test", "b1.test", "c1.test"], count)
    campaign = write_campaign(tmp_path / "c", recipients, toml=toml)
    done = await run_bulksend(tmp_path, "import", str(campaign), "--journal", url, name="i")
    assert done.process.returncode == 0, done.stderr()
    return url, campaign


async def test_every_worker_obeys_pause_resume_and_cancel(
    tmp_path: Path, postgres_url: str
) -> None:
    url, campaign = await imported(tmp_path, postgres_url, 600)

    async def ctl(*args: str) -> Proc:
        return await run_bulksend(tmp_path, "ctl", url, *args, name="ctl")

    codes: list[int] = []
    with trio.fail_after(150):
        async with running(SITES) as world, trio.open_nursery() as nursery:
            alpha, beta = world.servers["alpha"], world.servers["beta"]

            async def worker(index: int) -> None:
                args = ["worker", "--campaign", str(campaign), "--journal", url, "--grace", "2"]
                async with bulksend(
                    tmp_path, *args, *world_args(world), name=f"worker{index}"
                ) as proc:
                    codes.append(await proc.wait(140))

            for index in range(2):
                nursery.start_soon(worker, index)
            await wait_until(lambda: alpha.stats.messages >= 10, 60, "alpha sending")

            paused = await ctl("pause", "--site", "alpha.test")
            assert paused.stdout() == "site alpha.test paused until resumed\n", paused
            await trio.sleep(2.0)  # each worker reads the state every second
            assert await received_during(alpha, 2.0) == 0  # on every worker
            assert await received_during(beta, 1.0) >= 5
            resumed = await ctl("resume", "--site", "alpha.test")
            assert resumed.process.returncode == 0, resumed
            await trio.sleep(2.0)
            assert await received_during(alpha, 1.0) >= 5

            cancelled = await ctl("cancel", "--domain", "c1.test")
            assert "domain c1.test cancelled" in cancelled.stdout(), cancelled
    assert codes == [0, 0] or sorted(codes) == [0, 0], codes  # both end: nothing waits
    received = set(world.received())
    with open_journal(url, None) as journal:
        states = [s for s in journal.iter_states() if s.address.endswith("@c1.test")]
    cancelled_ones = {s.address for s in states if s.status is Status.CANCELLED}
    delivered = {s.address for s in states if s.status is Status.DELIVERED}
    assert len(cancelled_ones) >= 50
    assert len(cancelled_ones) + len(delivered) == 200
    assert not cancelled_ones & received
    assert {a for a in received if a.endswith("@c1.test")} == delivered


async def test_bounce_now_through_the_journal_ends_the_domain_bounced_on_every_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    url, campaign = await imported(tmp_path, postgres_url, 300)
    codes: list[int] = []
    with trio.fail_after(150):
        async with running(SITES) as world, trio.open_nursery() as nursery:
            beta = world.servers["beta"]

            async def worker(index: int) -> None:
                args = ["worker", "--campaign", str(campaign), "--journal", url, "--grace", "2"]
                async with bulksend(
                    tmp_path, *args, *world_args(world), name=f"worker{index}"
                ) as proc:
                    codes.append(await proc.wait(140))

            for index in range(2):
                nursery.start_soon(worker, index)
            await wait_until(lambda: beta.stats.messages >= 10, 60, "beta sending")
            bounced = await run_bulksend(
                tmp_path, "ctl", url, "bounce-now", "--domain", "c1.test", name="ctl"
            )
            assert "domain c1.test bounced" in bounced.stdout(), bounced
    assert sorted(codes) == [4, 4], codes  # both end, the campaign complete with bounces
    received = {a for a in world.received() if a.endswith("@c1.test")}
    with open_journal(url, None) as journal:
        states = [s for s in journal.iter_states() if s.address.endswith("@c1.test")]
    ended = [s for s in states if s.status is Status.BOUNCED]
    delivered = {s.address for s in states if s.status is Status.DELIVERED}
    assert len(ended) >= 50
    assert len(ended) + len(delivered) == 100
    assert {(s.attempts, s.code, s.text, s.category) for s in ended} == {
        (0, None, "bounced by bulksend ctl", None)
    }
    assert received == delivered


async def test_a_single_send_creates_its_postgresql_journal_with_live_control(
    tmp_path: Path, postgres_url: str
) -> None:
    name = f"ctl{next(_campaigns)}"
    url = f"{postgres_url}?campaign={name}"
    toml = campaign_toml(campaign_id=name, policy=limits_policy(50))
    campaign = write_campaign(tmp_path / "c", addresses(["a1.test"], 20), toml=toml)
    with trio.fail_after(60):
        async with running(SITES) as world:
            # No journal yet: the control state is read as empty, not as an error.
            sent = await run_bulksend(
                tmp_path, "send", str(campaign), "--journal", url, *world_args(world), name="s"
            )
    assert sent.process.returncode == 0, sent.stderr()
    with open_journal(url, None) as journal:
        assert journal.counts()[Status.DELIVERED] == 20


async def test_rate_connections_and_status_reach_every_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    url, campaign = await imported(tmp_path, postgres_url, 1500)

    async def ctl(*args: str) -> Proc:
        return await run_bulksend(tmp_path, "ctl", url, *args, name="ctl")

    with trio.fail_after(150):
        async with running(SITES) as world, trio.open_nursery() as nursery:
            alpha = world.servers["alpha"]
            workers: list[Proc] = []

            async def worker(index: int) -> None:
                args = ["worker", "--campaign", str(campaign), "--journal", url, "--grace", "2"]
                async with bulksend(
                    tmp_path, *args, *world_args(world), name=f"worker{index}"
                ) as proc:
                    workers.append(proc)
                    await proc.wait(140)

            for index in range(2):
                nursery.start_soon(worker, index)
            await wait_until(lambda: alpha.stats.messages >= 10, 60, "alpha sending")
            # 10/s a worker (no --throttle: each holds the configured rate): about 20/s.
            assert await received_during(alpha, 2.0) >= 2 * 14

            # Every worker publishes its sites; ctl status merges them.
            shown = await ctl("status")
            assert shown.process.returncode == 0, shown
            status = json.loads(shown.stdout())
            assert status["workers"] == 2
            sites = {s["site"].split(":")[0]: s for s in status["sites"]}
            assert set(sites) == {"mx1.alpha.test", "mx1.beta.test"}
            assert sites["mx1.alpha.test"]["connections"] >= 2  # summed over both workers
            assert sum(s["queued"] for s in status["sites"]) > 0

            slower = await ctl("rate", "alpha.test", "2/s", "--for", "10s")
            reverts_at = trio.current_time() + 10
            assert slower.stdout() == "site alpha.test: rate 2/s for 10s\n", slower
            capped = await ctl("connections", "alpha.test", "1")
            assert capped.stdout() == "site alpha.test: connections 1 until the run ends\n"
            await trio.sleep(2.0)  # each worker reads the state every second
            assert await received_during(alpha, 2.0) <= 2 * 2 * 2 + 2  # 2/s on each worker
            status = json.loads((await ctl("status")).stdout())
            alpha_row = next(s for s in status["sites"] if s["site"].startswith("mx1.alpha"))
            assert alpha_row["rate"] == 2.0
            assert alpha_row["max_connections"] == 1
            assert status["control"]["rates"]["alpha.test"]["value"] == 2.0
            await trio.sleep_until(reverts_at + 1.5)  # its 10s ran out: 10/s a worker again
            assert await received_during(alpha, 2.0) >= 2 * 7  # one connection each now
            back = await ctl("connections", "alpha.test", "default")
            assert back.stdout() == "site alpha.test: connections back to its configured value\n"
            await trio.sleep(2.0)
            status = json.loads((await ctl("status")).stdout())
            alpha_row = next(s for s in status["sites"] if s["site"].startswith("mx1.alpha"))
            assert alpha_row["max_connections"] == 2  # the configured cap, on every worker
            assert status["control"]["connections"] == {}

            top = await run_bulksend(tmp_path, "top", url, "--once", name="top")
            assert top.process.returncode == 0, top
            assert "mx1.alpha.test" in top.stdout()
            for proc in workers:
                proc.signal()
