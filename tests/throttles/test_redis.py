"""The shared throttle backend against a real Redis/Valkey server: limits hold in total."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from bulksend.config import BackoffRule, SiteLimits
from bulksend.delivery.backoff import Backoff
from bulksend.throttles.redis import RedisSite, RedisThrottles
from tests.helpers.redis import RedisServer

# Also the grace a fresh (or restarted) store waits before granting; renewals come every third
# of it, so a loaded machine that stalls the test for a third of a second must not lose them.
LEASE_TTL = 1.0


@asynccontextmanager
async def backends(
    server: RedisServer, campaign: str, count: int, *, batch: int = 1
) -> AsyncIterator[list[RedisThrottles]]:
    """``count`` backends (as many workers), each with its own connection to the store."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(count):
            store = RedisThrottles(server.url, campaign, batch=batch, lease_ttl=LEASE_TTL)
            out.append(await stack.enter_async_context(store.open()))
        yield out


def site_of(
    store: RedisThrottles,
    limits: SiteLimits,
    rules: tuple[BackoffRule, ...] = (),
    changed: Callable[[str], None] | None = None,
) -> tuple[RedisSite, Backoff]:
    backoff = Backoff("mx.example", rules, max_connections=limits.max_connections, rate=limits.rate)
    site = store.site(
        "mx.example",
        limits,
        backoff,
        changed=changed or (lambda _action: None),
        now=time.time,
    )
    return site, backoff


@pytest.mark.parametrize("batch", [1, 4])
async def test_reservations_of_three_workers_are_spaced_at_the_rate(
    redis_server: RedisServer, campaign_id: str, batch: int
) -> None:
    rate, each = 100.0, 20
    times: list[float] = []

    async def worker(store: RedisThrottles) -> None:
        site, _ = site_of(store, SiteLimits(rate=rate))
        for _ in range(each):
            delay = await site.reserve()
            times.append(trio.current_time() + delay)

    with trio.fail_after(20):
        async with (
            backends(redis_server, campaign_id, 3, batch=batch) as stores,
            trio.open_nursery() as nursery,
        ):
            for store in stores:
                nursery.start_soon(worker, store)
    times.sort()
    assert len(times) == 3 * each
    # Slots are 10 ms apart on the server's clock; here they carry each reply's latency, which
    # a loaded machine stretches: any ten slots in a row span nine intervals, less that.
    assert all(b - a > 9 / rate - 0.008 for a, b in zip(times, times[9:], strict=False))
    assert times[-1] - times[0] == pytest.approx((3 * each - 1) / rate, abs=0.01)


async def test_three_workers_never_hold_more_connections_than_the_cap(
    redis_server: RedisServer, campaign_id: str
) -> None:
    cap = 2
    holding = 0
    most = 0
    held = 0

    async def connection(store: RedisThrottles) -> None:
        nonlocal holding, most, held
        site, _ = site_of(store, SiteLimits(max_connections=cap))
        for _ in range(5):
            lease = await site.lease()
            holding += 1
            most = max(most, holding)
            held += 1
            await trio.sleep(0.02)
            holding -= 1
            site.release(lease)

    with trio.fail_after(30):
        async with backends(redis_server, campaign_id, 3) as stores, trio.open_nursery() as n:
            for store in stores:
                for _ in range(2):
                    n.start_soon(connection, store)
    assert held == 30
    assert most == cap


async def test_a_worker_holding_the_whole_cap_hands_connections_to_a_waiting_one(
    redis_server: RedisServer, campaign_id: str
) -> None:
    limits = SiteLimits(max_connections=4)
    with trio.fail_after(20):
        async with backends(redis_server, campaign_id, 2) as (first, second):
            site_a, _ = site_of(first, limits)
            site_b, _ = site_of(second, limits)
            held = [await site_a.lease() for _ in range(4)]
            assert not any(site_a.lost(lease) for lease in held)  # nobody waits: all kept
            await trio.sleep(LEASE_TTL)  # renewals with nobody waiting change nothing
            assert not any(site_a.lost(lease) for lease in held)
            async with trio.open_nursery() as nursery:
                granted: list[str] = []

                async def wait_for_one() -> None:
                    granted.append(await site_b.lease())

                nursery.start_soon(wait_for_one)
                # At its next renewal the first worker marks the connections above its share
                # (4 // 2 workers = 2); each closes before its next message and is released.
                while not any(site_a.lost(lease) for lease in held):
                    await trio.sleep(0.02)
                handed = [lease for lease in held if site_a.lost(lease)]
                for lease in handed:
                    site_a.release(lease)
            assert len(handed) == 2
            assert len(granted) == 1  # the waiting worker got one of them
            assert sorted(site_a.held) == sorted(set(held) - set(handed))


async def test_a_lease_not_renewed_expires_and_frees_its_slot(
    redis_server: RedisServer, campaign_id: str
) -> None:
    limits = SiteLimits(max_connections=1)
    with trio.fail_after(10):
        async with backends(redis_server, campaign_id, 1) as (survivor,):
            site, _ = site_of(survivor, limits)
            async with backends(redis_server, campaign_id, 1) as (dying,):
                dead_site, _ = site_of(dying, limits)
                await dead_site.lease()  # never released: the worker dies with it
            started = trio.current_time()
            await site.lease()
            waited = trio.current_time() - started
    assert LEASE_TTL * 0.5 < waited < LEASE_TTL + 0.5


async def test_a_backoff_applied_by_one_worker_is_followed_by_another(
    redis_server: RedisServer, campaign_id: str
) -> None:
    rule = BackoffRule(code="421", reduce_connections=1, rate_factor=0.5, duration=60.0)
    limits = SiteLimits(max_connections=4, rate=100.0)
    changes: list[str] = []
    with trio.fail_after(10):
        async with backends(redis_server, campaign_id, 2) as (a, b):
            site_a, backoff_a = site_of(a, limits, (rule,))
            site_b, backoff_b = site_of(b, limits, (rule,), changes.append)
            await site_b.reserve()
            assert backoff_b.limits.rate == 100.0
            assert backoff_a.apply(rule, time.time(), "421 4.7.0 slow down")
            site_a.publish()
            while not changes:  # B sees it at its next reservation batch
                await site_b.reserve()
                await trio.sleep(0.01)
    assert changes == ["shared"]
    assert backoff_b.limits.max_connections == 1
    assert backoff_b.limits.rate == 50.0
    assert backoff_b.reason == "421 4.7.0 slow down"
    assert 55 < backoff_b.restore_at - time.time() <= 60


async def test_the_pause_flag_stops_reservations_until_cleared(
    redis_server: RedisServer, campaign_id: str
) -> None:
    with trio.fail_after(10):
        async with backends(redis_server, campaign_id, 2) as (a, b):
            site_b, _ = site_of(b, SiteLimits(rate=100.0))
            await site_b.reserve()
            await a.pause()
            with trio.move_on_after(0.5) as waited:
                await site_b.reserve()
            assert waited.cancelled_caught
            await a.resume()
            await site_b.reserve()


# coredis leaves the memory streams of the connections that failed to be collected (a
# ResourceWarning each); the run itself is what this test checks.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_store_restarted_mid_run_holds_sending_then_resumes(
    redis_server: RedisServer, campaign_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    rate = 50.0
    sent: list[float] = []
    restarted = trio.Event()

    async def sender(site: RedisSite) -> None:
        while len(sent) < 60:
            delay = await site.reserve()
            await trio.sleep(delay)
            sent.append(trio.current_time())
            if len(sent) == 20:
                await trio.to_thread.run_sync(redis_server.stop)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(redis_server.start)
                restarted.set()

    caplog.set_level(logging.WARNING, "bulksend.throttles")
    with trio.fail_after(30):
        async with backends(redis_server, campaign_id, 1, batch=1) as (store,):
            site, _ = site_of(store, SiteLimits(rate=rate))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, site)
                nursery.start_soon(sender, site)
    gc.collect()  # the streams coredis left behind are collected here, under the filters
    assert restarted.is_set()
    assert len(sent) >= 60
    warnings = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in w and "nothing is sent" in w for w in warnings)
    assert any("answers again" in w for w in warnings)
    # Never faster than the rate, before, across and after the restart: any ten sends in a
    # row span nine intervals (less a wake-up's lateness, which a loaded machine stretches).
    times = sorted(sent)
    for a, b in zip(times, times[9:], strict=False):
        assert b - a > 9 / rate - 0.015


async def test_two_flushes_at_once_send_each_release_once(
    redis_server: RedisServer, campaign_id: str
) -> None:
    # The closing flush of open() may start while the background one still waits for its
    # command's reply (seen as "IndexError: pop from empty list" when a run ended).
    with trio.fail_after(10):
        async with backends(redis_server, campaign_id, 1) as (store,):
            site, _ = site_of(store, SiteLimits(max_connections=2))
            leases = [await site.lease(), await site.lease()]
            store.released.extend((site.leases_key, lease) for lease in leases)
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(store._flush)
            assert store.released == []
            assert await store.client.zcard(site.leases_key) == 0
