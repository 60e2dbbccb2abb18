"""Token bucket pacing under trio's MockClock: exact wake-ups, rate held, burst honoured."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from bulksend.delivery.throttle import TokenBucket


async def test_paced_at_exactly_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(50.0)
    times: list[float] = []

    async def sender() -> None:
        for _ in range(100):
            await bucket.acquire()
            times.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(sender)
    assert len(times) == 500
    # 500 messages at 50/s: the first goes at once, the last 499 intervals later.
    assert times[-1] - start == pytest.approx(499 / 50)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(1 / 50)


async def test_burst_then_pacing(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(10.0, burst=5)
    start = trio.current_time()
    delays = [bucket.reserve() for _ in range(8)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:] == pytest.approx([0.1, 0.2, 0.3])
    await trio.sleep(10)  # idle: the burst allowance comes back
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    assert trio.current_time() - start == pytest.approx(10)


async def test_rate_change_and_unlimited(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(None)
    assert bucket.rate is None
    assert [bucket.reserve() for _ in range(1000)] == [0.0] * 1000
    bucket.set_rate(2.0)
    assert bucket.rate == 2.0
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        bucket.set_rate(0)
