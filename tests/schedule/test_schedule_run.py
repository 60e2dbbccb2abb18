"""Whole runs under ``[schedule]``, on a fast MockClock (trio time 10x real time): nothing is
sent before ``start_at`` or outside a window, waiting is no attempt, and ``stop_at`` ends the
run with what is left expired (category ``schedule``)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import trio
import trio.testing

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.delivery.scheduler import Scheduler
from bulksend.journal import Category, Journal, RecipientState, Status
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from tests.helpers.worlds import run_options

SITE = SiteSpec("s", ("s.test",), "127.0.0.2")


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%H:%M:%S")


def _iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat()


async def _run(
    tmp_path: Path, count: int, schedule: str, *, rate: str, stop_after: float | None = None
) -> tuple[RunSummary, World, float, list[RecipientState]]:
    """Send ``count`` recipients at ``rate`` under ``schedule``; stop at trio time
    ``stop_after`` if given. Returns the summary, the world, the run's epoch and the rows."""
    policy = f'[policy.defaults]\nrate = "{rate}"\nmax_connections = 1\n'
    toml = campaign_toml(policy=policy, extra=f"[schedule]\n{schedule}")
    path = write_campaign(tmp_path, addresses(["s.test"], count), toml=toml)
    started: list[Scheduler] = []

    async def stop_later(scheduler: Scheduler) -> None:
        assert stop_after is not None
        await trio.sleep_until(stop_after)
        scheduler.stop()

    with trio.fail_after(600):  # trio time: 60 s of real time
        async with running([SITE]) as world, trio.open_nursery() as nursery:

            def on_start(scheduler: Scheduler) -> None:
                started.append(scheduler)
                if stop_after is not None:
                    nursery.start_soon(stop_later, scheduler)

            summary = await run_campaign(
                Campaign.load(path, {}), run_options(tmp_path, world, grace=2), on_start=on_start
            )
            nursery.cancel_scope.cancel()
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        rows = list(journal.iter_states())
    return summary, world, started[0].context.epoch, rows


async def test_start_at_in_the_future_waits_and_waiting_is_no_attempt(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    start_at = time.time() + 40
    summary, world, epoch, rows = await _run(
        tmp_path, 10, f'start_at = "{_iso(start_at)}"', rate="100/s"
    )
    assert summary.complete
    assert summary.counts[Status.DELIVERED] == 10
    sent = [epoch + t for t in world.servers["s"].stats.message_times]
    assert min(sent) >= start_at
    assert all(r.attempts == 1 and r.first_attempt_at >= start_at for r in rows)  # type: ignore[operator]


async def test_a_window_excludes_sending_outside_it(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    now = time.time()
    opens, closes = now + 30, now + 60
    summary, world, epoch, rows = await _run(
        tmp_path,
        100,
        f'windows = ["{_utc(opens)}-{_utc(closes)}"]\ntimezone = "UTC"',
        rate="1/s",
        stop_after=90,  # trio time: well after the window closed
    )
    assert not summary.complete  # the rest waits for tomorrow's window
    sent = [epoch + t for t in world.servers["s"].stats.message_times]
    assert len(sent) >= 20  # about 30 in the 30 s window at 1/s
    # Whole seconds in the window's text; one message may finish after the close.
    assert int(opens) <= min(sent) and max(sent) <= int(closes) + 1.5
    waiting = [r for r in rows if r.status is Status.PENDING]
    assert len(waiting) + len(sent) == 100
    # Held back by the window: not an attempt, and their max_age has not started.
    assert all(r.attempts == 0 and r.first_attempt_at is None for r in waiting)


async def test_stop_at_expires_what_is_left_and_ends_the_run(
    tmp_path: Path, fast_clock: trio.testing.MockClock
) -> None:
    stop_at = time.time() + 20
    summary, world, epoch, rows = await _run(
        tmp_path, 60, f'stop_at = "{_iso(stop_at)}"', rate="1/s"
    )
    assert summary.complete  # nobody waits: it ends, no retry to sit out
    sent = [epoch + t for t in world.servers["s"].stats.message_times]
    expired = [r for r in rows if r.status is Status.EXPIRED]
    assert len(sent) >= 10 and max(sent) <= stop_at + 1.5
    assert len(expired) + len(sent) == 60
    assert {(r.category, r.attempts) for r in expired} == {(Category.SCHEDULE, 0)}
    assert all("stop_at" in r.text for r in expired)
