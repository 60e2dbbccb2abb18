"""The global connection cap's bookkeeping, without sockets, under trio's MockClock."""

from __future__ import annotations

import trio
import trio.testing

from bulksend.delivery.pool import ConnectionKey, ConnectionPool


async def _acquired(pool: ConnectionPool, site: str, into: list[ConnectionKey | None]) -> None:
    into.append(await pool.acquire(site))


async def test_slots_up_to_capacity_then_waiters_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ConnectionPool(2)
    first = await pool.acquire("a")
    second = await pool.acquire("b")
    assert first is not None and second is not None and first != second
    got: list[ConnectionKey | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquired, pool, "c", got)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_acquired, pool, "d", got)
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.open, pool.waiting, got) == (2, 2, [])
        pool.release(first)
        await trio.testing.wait_all_tasks_blocked()
        assert [k.site for k in got if k] == ["c"]  # first come, first served
        pool.release(second)
    assert [k.site for k in got if k] == ["c", "d"]
    assert pool.open == 2


async def test_a_waiter_retires_the_longest_idle_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ConnectionPool(3)
    keys = [await pool.acquire(site) for site in ("a", "b", "c")]
    retired: list[str] = []
    for key in keys:
        assert key is not None
        assert pool.rest(key, lambda key=key: retired.append(key.site))
        await trio.sleep(5)  # a rests longest, then b, then c
    b = keys[1]
    assert b is not None
    pool.busy(b)  # b got work again: no longer idle
    got: list[ConnectionKey | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquired, pool, "new", got)
        await trio.testing.wait_all_tasks_blocked()
        # At once, not after any idle timeout: the longest-idle connection, and only one.
        assert retired == ["a"]
        assert trio.current_time() == 15
        assert pool.retiring(keys[0]) and not pool.retiring(keys[2])  # type: ignore[arg-type]
        assert got == []  # the slot is free only once a's owner has closed it
        pool.release(keys[0])  # type: ignore[arg-type]
    assert [k.site for k in got if k] == ["new"]
    assert (pool.open, pool.idle) == (3, 1)


async def test_a_connection_that_would_rest_while_someone_waits_closes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ConnectionPool(1)
    key = await pool.acquire("a")
    assert key is not None
    got: list[ConnectionKey | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_acquired, pool, "b", got)
        await trio.testing.wait_all_tasks_blocked()
        assert not pool.rest(key, lambda: None)
        assert pool.retiring(key)
        pool.release(key)
    assert [k.site for k in got if k] == ["b"]


async def test_stop_answers_every_waiter_and_refuses_new_slots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = ConnectionPool(1)
    held = await pool.acquire("a")
    got: list[ConnectionKey | None] = []
    async with trio.open_nursery() as nursery:
        for site in ("b", "c", "d"):
            nursery.start_soon(_acquired, pool, site, got)
        await trio.testing.wait_all_tasks_blocked()
        pool.stop()
    assert got == [None, None, None]
    assert trio.current_time() == 0  # answered at once
    assert pool.waiting == 0
    assert await pool.acquire("e") is None
    assert held is not None
    pool.release(held)
    assert pool.open == 0


async def test_a_cancelled_waiter_leaves_no_trace(autojump_clock: trio.testing.MockClock) -> None:
    pool = ConnectionPool(1)
    held = await pool.acquire("a")
    assert held is not None
    with trio.move_on_after(10):
        await pool.acquire("b")
    assert pool.waiting == 0
    assert pool.rest(held, lambda: None)  # nobody waits any more: it may rest
    pool.release(held)
    assert pool.open == 0
