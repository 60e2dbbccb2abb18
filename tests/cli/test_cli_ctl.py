"""`bulksend ctl` against a real running `send`: pause, resume, rate, cancel, no run."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bulksend.journal import Journal, Status
from bulksend.suppression.backend import open_suppression_store
from bulksend.testing.scenario import SiteSpec, World, running
from bulksend.testing.smtp import SMTPServer
from tests.cli.cli_helpers import Proc, bulksend, paced_campaign, run_bulksend, world_args

SITES = [
    SiteSpec("alpha", ("a1.test",), "127.0.0.2"),
    SiteSpec("beta", ("b1.test", "c1.test"), "127.0.0.3"),
]


@asynccontextmanager
async def sending(
    tmp_path: Path, count: int, rate: int, policy: str = ""
) -> AsyncIterator[tuple[World, Proc, Path]]:
    """A `send` of ``count`` recipients over a1/b1/c1.test at ``rate``/s per site, under way
    (``policy`` added to the campaign)."""
    path, _ = paced_campaign(tmp_path, ["a1.test", "b1.test", "c1.test"], count, rate, policy)
    journal = tmp_path / "j.sqlite3"
    async with (
        running(SITES) as world,
        bulksend(
            tmp_path,
            "send",
            str(path),
            "--journal",
            str(journal),
            "--grace",
            "2",
            *world_args(world),
            name="send",
        ) as proc,
    ):
        alpha = world.servers["alpha"]
        await proc.wait_for(lambda: alpha.stats.messages >= 5, 30, "alpha sending")
        yield world, proc, journal


async def ctl(tmp_path: Path, journal: Path, *args: str, name: str = "ctl") -> Proc:
    return await run_bulksend(tmp_path, "ctl", str(journal), *args, name=name)


async def received_during(server: SMTPServer, seconds: float) -> int:
    before = server.stats.messages
    await trio.sleep(seconds)
    return server.stats.messages - before


async def test_pause_a_site_stops_it_within_a_second_while_another_goes_on(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 900, rate=20) as (world, proc, journal):
            alpha, beta = world.servers["alpha"], world.servers["beta"]
            socket = journal.with_name("j.sqlite3.ctl")
            assert stat.S_IMODE(socket.lstat().st_mode) == 0o600
            paused = await ctl(tmp_path, journal, "pause", "--site", "alpha.test")
            assert paused.process.returncode == 0, paused
            assert paused.stdout() == "site alpha.test paused until resumed\n"
            await trio.sleep(1.0)  # within a second it stops
            assert await received_during(alpha, 2.0) == 0
            assert await received_during(beta, 1.0) >= 5  # the other site goes on
            status = await ctl(tmp_path, journal, "status", name="status")
            # Sites by their MX hosts (and the test world's port).
            sites = {s["site"].split(":")[0]: s for s in json.loads(status.stdout())["sites"]}
            assert sites["mx1.alpha.test"]["paused_for"] > 1e9  # until resumed
            assert sites["mx1.beta.test"]["paused_for"] == 0
            # The pause is kept beside the journal (it outlives the process).
            saved = json.loads(journal.with_name("j.sqlite3.control.json").read_text())
            assert saved["pauses"] == [{"scope": "site", "target": "alpha.test", "until": None}]

            resumed = await ctl(tmp_path, journal, "resume", "--site", "alpha.test")
            assert resumed.stdout() == "site alpha.test resumed\n", resumed
            await trio.sleep(1.0)
            assert await received_during(alpha, 1.0) >= 5
            assert "ctl: site alpha.test paused until resumed" in proc.stderr()
            proc.signal()
            await proc.wait(30)
        assert not socket.exists()  # gone with the run


async def test_a_rate_change_takes_effect_within_a_second_and_reverts_after_its_duration(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 900, rate=8) as (world, proc, journal):
            alpha = world.servers["alpha"]
            assert await received_during(alpha, 2.0) <= 2 * 8 + 2
            changed = await ctl(tmp_path, journal, "rate", "mx1.alpha.test", "40/s", "--for", "4s")
            assert changed.stdout() == "site mx1.alpha.test: rate 40/s for 4s\n", changed
            await trio.sleep(1.0)
            faster = await received_during(alpha, 2.0)
            assert faster >= 2 * 25, faster  # 40/s (8/s would be 16)
            await proc.wait_for(
                lambda: "rate back to its configured value" in proc.stderr(), 10, "the revert"
            )
            await trio.sleep(1.0)
            assert await received_during(alpha, 2.0) <= 2 * 8 + 2
            proc.signal()
            await proc.wait(30)


async def test_a_rate_set_until_the_run_ends_goes_back_with_default(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 900, rate=8) as (world, proc, journal):
            alpha = world.servers["alpha"]
            changed = await ctl(tmp_path, journal, "rate", "mx1.alpha.test", "40/s")
            assert changed.stdout() == "site mx1.alpha.test: rate 40/s until the run ends\n"
            await trio.sleep(1.0)
            assert await received_during(alpha, 2.0) >= 2 * 25
            back = await ctl(tmp_path, journal, "rate", "mx1.alpha.test", "default", name="b")
            assert back.stdout() == "site mx1.alpha.test: rate back to its configured value\n"
            await trio.sleep(1.0)
            assert await received_during(alpha, 2.0) <= 2 * 8 + 2
            # Set under two names, put back under one: the answer names the other.
            await ctl(tmp_path, journal, "rate", "alpha.test", "30/s", name="r1")
            await ctl(tmp_path, journal, "rate", "mx1.alpha.test", "20/s", name="r2")
            half = await ctl(tmp_path, journal, "rate", "mx1.alpha.test", "default", name="h")
            assert half.stdout() == (
                "site mx1.alpha.test: rate back to its configured value (still set as "
                "alpha.test: put those back too)\n"
            ), half
            again = await ctl(tmp_path, journal, "connections", "alpha.test", "default", name="c")
            assert again.process.returncode == 1
            assert again.stderr() == (
                "bulksend: error: the run refused: site alpha.test: no connections set by ctl\n"
            )
            proc.signal()
            await proc.wait(30)


async def test_cancel_a_domain_ends_its_waiting_recipients_cancelled_never_sent(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 300, rate=20) as (world, proc, journal):
            cancelled = await ctl(tmp_path, journal, "cancel", "--domain", "c1.test")
            assert cancelled.process.returncode == 0, cancelled
            assert "domain c1.test cancelled" in cancelled.stdout()
            assert await proc.wait(90) == 0  # the rest is delivered: complete
        received = set(world.received())
    with Journal.open_readonly(journal) as j:
        states = [s for s in j.iter_states() if s.address.endswith("@c1.test")]
    cancelled_ones = {s.address for s in states if s.status is Status.CANCELLED}
    delivered = {s.address for s in states if s.status is Status.DELIVERED}
    assert len(cancelled_ones) >= 50  # most of c1's 100 were still waiting
    assert len(cancelled_ones) + len(delivered) == 100  # each one or the other
    assert not cancelled_ones & received  # a cancelled recipient was never sent
    assert {a for a in received if a.endswith("@c1.test")} == delivered
    report = await run_bulksend(tmp_path, "report", str(journal), name="report")
    assert f"cancelled {len(cancelled_ones)}" in " ".join(report.stdout().split()), report


async def test_bounce_now_ends_a_domains_waiting_recipients_bounced_with_no_attempt(
    tmp_path: Path,
) -> None:
    # A store that suppresses at the first soft bounce: an operator bounce must not count.
    store = '\n[suppression]\nstore = "s.sqlite3"\nsoft_bounce_limit = 1\n'
    with trio.fail_after(120):
        async with sending(tmp_path, 300, rate=20, policy=store) as (world, proc, journal):
            bounced = await ctl(tmp_path, journal, "bounce-now", "--domain", "c1.test")
            assert bounced.process.returncode == 0, bounced
            assert "domain c1.test bounced: its waiting recipients end bounced" in bounced.stdout()
            assert await proc.wait(90) == 4  # complete, with recipients bounced
        received = {a for a in world.received() if a.endswith("@c1.test")}
    with Journal.open_readonly(journal) as j:
        states = [s for s in j.iter_states() if s.address.endswith("@c1.test")]
    ended = [s for s in states if s.status is Status.BOUNCED]
    delivered = {s.address for s in states if s.status is Status.DELIVERED}
    assert len(ended) >= 50  # most of c1's 100 were still waiting
    assert len(ended) + len(delivered) == 100  # each one or the other
    # Bounced by the operator: never sent, no attempt counted, no receiver's reply.
    assert {(s.attempts, s.code, s.text, s.category) for s in ended} == {
        (0, None, "bounced by bulksend ctl", None)
    }
    assert received == delivered  # nothing of c1 went out but what was delivered
    assert not {s.address for s in ended} & received
    report = await run_bulksend(tmp_path, "report", str(journal), name="report")
    assert f"bounced {len(ended)}" in " ".join(report.stdout().split()), report
    with open_suppression_store(tmp_path / "c" / "s.sqlite3") as suppressions:
        assert list(suppressions.entries()) == []  # not a hard (nor a soft) bounce


async def test_ctl_with_no_run_says_so_in_one_line(tmp_path: Path) -> None:
    journal = tmp_path / "nothing.sqlite3"
    proc = await ctl(tmp_path, journal, "pause", "--site", "x.test")
    assert proc.process.returncode == 1
    err = proc.stderr()
    assert err.count("\n") == 1
    assert err.startswith(f"bulksend: error: no bulksend run is sending {journal}"), err


async def test_a_paused_site_stays_paused_after_resume_until_resumed(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with sending(tmp_path, 900, rate=20) as (world, proc, journal):
            alpha, beta = world.servers["alpha"], world.servers["beta"]
            paused = await ctl(tmp_path, journal, "pause", "--site", "alpha.test")
            assert paused.process.returncode == 0, paused
            proc.signal()
            assert await proc.wait(30) == 3  # stopped before completion
            async with bulksend(
                tmp_path, "resume", str(journal), *world_args(world), name="resume"
            ) as again:
                await again.wait_for(lambda: journal.with_name("j.sqlite3.ctl").exists(), 30, "ctl")
                await again.wait_for(lambda: beta.stats.messages >= 5, 30, "beta sending")
                await trio.sleep(1.0)
                assert await received_during(alpha, 2.0) == 0  # still paused
                assert await received_during(beta, 1.0) >= 5
                resumed = await ctl(tmp_path, journal, "resume", "--site", "alpha.test")
                assert resumed.stdout() == "site alpha.test resumed\n", resumed
                await trio.sleep(1.0)
                assert await received_during(alpha, 1.0) >= 5
                again.signal()
                await again.wait(30)


async def test_a_pause_that_cannot_be_saved_holds_for_the_run_which_goes_on(
    tmp_path: Path,
) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 600, rate=40) as (world, proc, journal):
            alpha, beta = world.servers["alpha"], world.servers["beta"]
            kept = journal.with_name("j.sqlite3.control.json")
            kept.mkdir()  # where the state goes cannot be written
            paused = await ctl(tmp_path, journal, "pause", "--site", "alpha.test")
            assert paused.process.returncode == 0, paused
            assert paused.stdout() == (
                "site alpha.test paused until resumed (for this run only: cannot save it in "
                f"{kept}: Is a directory)\n"
            )
            assert not list(tmp_path.glob(f".{kept.name}.*"))  # no temporary file left behind
            await trio.sleep(1.0)
            assert await received_during(alpha, 1.0) == 0
            assert await received_during(beta, 1.0) >= 5  # the run goes on
            resumed = await ctl(tmp_path, journal, "resume", "--site", "alpha.test", name="r")
            assert resumed.process.returncode == 0, resumed
            assert await proc.wait(60) == 0  # and ends complete
    # A state file that cannot be read: the run says which, in one line, and sends nothing.
    proc = await run_bulksend(tmp_path, "resume", str(journal), name="again")
    assert proc.process.returncode == 1, proc
    assert proc.stderr().startswith(f"bulksend: error: {kept}: [Errno 21] Is a directory"), proc
    assert proc.stderr().endswith("; remove it to forget every pause\n"), proc
    assert proc.stderr().count("\n") == 1


def _to(world: World, domain: str) -> int:
    return sum(n for a, n in world.received().items() if a.endswith("@" + domain))


async def test_pause_a_domain_and_the_whole_campaign(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 900, rate=20) as (world, proc, journal):
            await proc.wait_for(lambda: _to(world, "c1.test") >= 3, 30, "c1 sending")
            paused = await ctl(tmp_path, journal, "pause", "--domain", "c1.test")
            assert paused.stdout() == "domain c1.test paused until resumed\n", paused
            await trio.sleep(1.0)
            c1, b1 = _to(world, "c1.test"), _to(world, "b1.test")
            await trio.sleep(2.0)
            assert _to(world, "c1.test") == c1  # the domain stopped
            assert _to(world, "b1.test") >= b1 + 10  # its site goes on with the other domain
            await ctl(tmp_path, journal, "resume", "--domain", "c1.test")
            await proc.wait_for(lambda: _to(world, "c1.test") > c1, 5, "c1 again")

            paused = await ctl(tmp_path, journal, "pause", "--for", "3s")
            assert paused.stdout() == "the campaign paused for 3s\n", paused
            await trio.sleep(1.0)
            total = world.delivered
            await trio.sleep(1.5)
            assert world.delivered == total  # nothing anywhere
            await proc.wait_for(lambda: world.delivered > total, 5, "the pause's end")
            proc.signal()
            await proc.wait(30)


async def test_a_connection_cap_change_and_a_refused_command(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with sending(tmp_path, 900, rate=40) as (world, proc, journal):
            alpha = world.servers["alpha"]
            await proc.wait_for(lambda: alpha.stats.connections_current == 2, 20, "2 conns")
            changed = await ctl(tmp_path, journal, "connections", "alpha.test", "1", "--for", "3s")
            assert changed.stdout() == "site alpha.test: connections 1 for 3s\n", changed
            await trio.sleep(1.0)
            peak = 0
            with trio.move_on_after(1.5):
                while True:  # the receiving server's count of open connections
                    peak = max(peak, alpha.stats.connections_current)
                    await trio.sleep(0.01)
            assert peak == 1
            await proc.wait_for(lambda: alpha.stats.connections_current == 2, 10, "2 again")
            refused = await ctl(tmp_path, journal, "resume", "--site", "alpha.test", name="r")
            assert refused.process.returncode == 1
            assert refused.stderr() == (
                "bulksend: error: the run refused: site alpha.test is not paused\n"
            )
            proc.signal()
            await proc.wait(30)
