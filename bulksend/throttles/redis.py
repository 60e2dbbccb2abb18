"""The shared backend: every worker's limits for a site kept in Redis/Valkey, in total.

How this works. Each operation is one Lua script, so it is atomic, and each reads the
server's clock (``TIME``), so the workers' clocks do not matter. Keys, with the campaign id
as a cluster hash tag (every key of a campaign on one shard), all with a TTL::

    bulksend:{campaign}:alive              when the state may be trusted (see below)
    bulksend:{campaign}:pause              set: no new transaction anywhere (:meth:`pause`)
    bulksend:{campaign}:<site>:rate        GCRA theoretical arrival time, µs (messages)
    bulksend:{campaign}:<site>:open_rate   the same, for opening connections
    bulksend:{campaign}:<site>:leases      ZSET connection id -> lease expiry, µs
    bulksend:{campaign}:<site>:waiting     ZSET worker id -> until when it waits, µs
    bulksend:{campaign}:<site>:backoff     HASH the shared backoff (limits, until when, why)

* Rate: the GCRA of :mod:`bulksend.delivery.throttle`, on the server. A worker reserves
  ``batch`` slots in one call and hands them out locally at their exact times, so the round
  trip is paid once per batch. A slot reserved and not used is lost (never lent twice).
* Connections: a worker holds a lease per open connection, renewed every third of its TTL;
  acquiring removes the expired ones and succeeds only below the cap, so a dead worker's
  connections free themselves within the TTL. A lease found expired on renewal (the store
  was unreachable, or restarted) is *lost*: its connection closes before its next message.
  A worker refused a lease is noted as waiting; at its next renewal a worker holding more
  than its share (the cap divided among the workers holding or waiting, at least one each)
  hands the extra leases over the same way, so a site spans workers even when connections
  live for the whole run.
* Backoff: a worker whose site pushes back merges its reduced limits into the site's
  backoff hash (the strictest of each wins; the hash expires when the backoff ends). Every
  script returns that hash, so every worker adopts it at its next reservation batch or
  connection lease: the latency is one batch (``batch`` slots at the site's rate) or one
  lease poll. The rate and connection cap in the scripts apply it at once.
* Fail closed: when the store cannot be reached nothing is reserved, so nothing is sent;
  the caller waits and retries (0.1 s doubling to 5 s) after a one-line warning. A store
  that lost its state (restarted without persistence: ``alive`` missing) grants nothing for
  one lease TTL, until the leases of connections still open elsewhere are renewed or lost.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import coredis
import coredis.exceptions
import trio

from bulksend.config import SiteLimits
from bulksend.delivery.backoff import Backoff, Limits
from bulksend.throttles.protocol import Lease

log = logging.getLogger("bulksend.throttles")

# The server's time in µs, as ``now``.
_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
"""

# Shared by the reserve and lease scripts. KEYS[1] alive, KEYS[2] pause, KEYS[3] backoff;
# ARGV[1] key TTL (ms), ARGV[2] grace after lost state (µs). Sets ``wait`` (µs: -1 paused,
# >0 not before then, 0 go) and ``shared`` (the backoff hash, times as µs remaining).
_GATE: Final = (
    _NOW
    + """
local key_ttl = tonumber(ARGV[1])
local ready = tonumber(redis.call('GET', KEYS[1]) or '0')
if ready == 0 then ready = now + tonumber(ARGV[2]) end
redis.call('SET', KEYS[1], fmt(ready), 'PX', key_ttl)
local b = redis.call('HMGET', KEYS[3], 'seq', 'connections', 'rate', 'suspended', 'restore',
                     'reason')
local suspended = tonumber(b[4] or '0')
local shared = {b[1] or '', b[2] or '', b[3] or '', fmt(math.max(suspended - now, 0)),
                fmt(math.max(tonumber(b[5] or '0') - now, 0)), b[6] or ''}
local wait = 0
if redis.call('EXISTS', KEYS[2]) == 1 then wait = -1
elseif ready > now then wait = ready - now
elseif suspended > now then wait = suspended - now end
local out = {fmt(wait), shared[1], shared[2], shared[3], shared[4], shared[5], shared[6]}
"""
)

#: Reserve ARGV[5] slots. KEYS[4] the GCRA time; ARGV[3] interval (µs, 0: unlimited),
#: ARGV[4] burst. Returns the gate's 7 fields, then each slot's offset from now (µs).
RESERVE: Final = (
    _GATE
    + """
if wait ~= 0 then return out end
local interval = tonumber(ARGV[3])
local rate = tonumber(b[3] or '')
if rate then interval = math.max(interval, 1000000 / rate) end
local burst = tonumber(ARGV[4])
local tat = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), now)
for _ = 1, tonumber(ARGV[5]) do
  out[#out + 1] = fmt(math.max(0, tat - (burst - 1) * interval - now))
  tat = tat + interval
end
if interval > 0 then
  redis.call('SET', KEYS[4], fmt(tat), 'PX', key_ttl + math.ceil((tat - now) / 1000))
end
return out
"""
)

#: Take a connection lease. KEYS[4] the leases, KEYS[5] the waiting workers; ARGV[3] lease
#: id, ARGV[4] cap, ARGV[5] lease TTL (µs), ARGV[6] this worker. Returns the gate's 7 fields;
#: the first is >0 (µs to wait at most) when full, and the worker is then noted as waiting
#: (for a lease TTL) so that holders above their share hand connections over (RENEW).
LEASE: Final = (
    _GATE
    + """
if wait ~= 0 then return out end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local cap = tonumber(ARGV[4])
local reduced = tonumber(b[2] or '')
if reduced then cap = math.min(cap, reduced) end
if redis.call('ZCARD', KEYS[4]) >= cap then
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  out[1] = fmt(math.max(tonumber(first[2]) - now, 1))
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), ARGV[6])
  redis.call('PEXPIRE', KEYS[5], key_ttl)
  return out
end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[3])
redis.call('PEXPIRE', KEYS[4], key_ttl)
redis.call('ZREM', KEYS[5], ARGV[6])
return out
"""
)

#: Renew the live leases ARGV[3..] of KEYS[1] by ARGV[1] µs (key TTL ARGV[2] ms). Returns
#: how many workers share the site (holding leases or waiting in KEYS[2]) while some wait,
#: else 0, then the ids that were no longer live (lost).
RENEW: Final = (
    _NOW
    + """
local lost = {0}
for i = 3, #ARGV do
  local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
  if expiry > now then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    lost[#lost + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local waiting = redis.call('ZRANGE', KEYS[2], 0, -1)
if #waiting > 0 then
  local workers, n = {}, 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
    local worker = string.match(id, '^(.*:)')
    if worker and not workers[worker] then workers[worker] = true; n = n + 1 end
  end
  for _, worker in ipairs(waiting) do
    if not workers[worker] then workers[worker] = true; n = n + 1 end
  end
  lost[1] = n
end
return lost
"""
)

#: Merge a backoff into KEYS[1]: ARGV[1] connections, ARGV[2] rate ('' unlimited),
#: ARGV[3] suspended for, ARGV[4] restored in (µs), ARGV[5] the reason.
PUBLISH: Final = (
    _NOW
    + """
local b = redis.call('HMGET', KEYS[1], 'connections', 'rate', 'suspended', 'restore')
local connections = tonumber(ARGV[1])
if b[1] then connections = math.min(connections, tonumber(b[1])) end
local rate = tonumber(ARGV[2])
if b[2] then rate = math.min(rate or math.huge, tonumber(b[2])) end
local suspended = math.max(now + tonumber(ARGV[3]), tonumber(b[3] or '0'))
local restore = math.max(now + tonumber(ARGV[4]), tonumber(b[4] or '0'))
redis.call('HSET', KEYS[1], 'connections', connections, 'suspended', fmt(suspended),
           'restore', fmt(restore), 'reason', ARGV[5])
if rate then redis.call('HSET', KEYS[1], 'rate', tostring(rate)) end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PEXPIRE', KEYS[1], math.max(math.ceil((restore - now) / 1000), 1))
"""
)

_US = 1_000_000
_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0
_GATE_FIELDS = 7


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSite:
    """One site's throttle, shared through the store."""

    def __init__(
        self,
        store: RedisThrottles,
        name: str,
        limits: SiteLimits,
        backoff: Backoff,
        *,
        changed: Callable[[str], None],
        now: Callable[[], float],
    ) -> None:
        self._store = store
        prefix = store.prefix + name
        self._rate_key = prefix + ":rate"
        self._open_rate_key = prefix + ":open_rate"
        self.leases_key = prefix + ":leases"
        self.waiting_key = prefix + ":waiting"
        self._backoff_key = prefix + ":backoff"
        self._limits = limits
        self._backoff = backoff
        self._changed = changed
        self._now = now
        self._slots: list[float] = []  # reserved message slots (trio time), latest first
        self._filling = trio.Lock()
        self._seq = ""  # the shared backoff last adopted
        self.held: set[Lease] = set()
        self._lost: set[Lease] = set()  # expired, or handed over to a waiting worker
        self._released = trio.Event()

    # ------------------------------------------------------------------ protocol

    async def reserve(self) -> float:
        async with self._filling:
            if not self._slots:
                await self._fill(self._rate_key, self._limits.rate, self._store.batch)
            slot = self._slots.pop()
        return max(slot - trio.current_time(), 0.0)

    async def pace_connection(self) -> float:
        started = trio.current_time()
        slots: list[float] = []
        await self._gated(self._open_rate_key, self._limits.connection_rate, 1, slots)
        await trio.sleep_until(slots[0])
        return trio.current_time() - started

    async def lease(self) -> Lease:
        lease = self._store.lease_id()
        store = self._store
        while True:
            released = self._released
            reply: list[Any] = await store.call(
                lambda: store.lease_script(
                    keys=[*self._keys(self.leases_key), self.waiting_key],
                    args=[
                        *store.gate_args,
                        lease,
                        self._limits.max_connections,
                        round(store.lease_ttl * _US),
                        store.worker,
                    ],
                )
            )
            wait = self._gate(reply)
            if wait == 0:
                self.held.add(lease)
                return lease
            # Full, paused, suspended or not ready: look again soon, or when we free a slot.
            with trio.move_on_after(store.poll if wait < 0 else min(wait, store.poll)):
                await released.wait()

    def release(self, lease: Lease) -> None:
        self.held.discard(lease)
        self._lost.discard(lease)
        self._store.released.append((self.leases_key, lease))
        self._store.wake()
        self._released.set()
        self._released = trio.Event()

    def lost(self, lease: Lease) -> bool:
        return lease in self._lost

    def publish(self) -> None:
        b = self._backoff
        now = self._now()
        limits = b.limits
        self._store.published.append(
            (
                self._backoff_key,
                [
                    limits.max_connections,
                    "" if limits.rate is None else repr(limits.rate),
                    round(max(limits.suspended_until - now, 0.0) * _US),
                    round(max(b.restore_at - now, 0.0) * _US),
                    b.reason,
                ],
            )
        )
        self._store.wake()

    # ------------------------------------------------------------------ internals

    def renewed(self, workers: int, lost: list[Any]) -> None:
        """A renewal found ``lost`` leases expired: their connections must close. With
        ``workers`` sharing the site while some wait for a connection, connections above
        this worker's share (the cap divided among them, at least one) are handed over:
        each closes before its next message, and its lease goes to a waiting worker."""
        for lease in map(_text, lost):
            if lease in self.held:
                log.warning("a connection lease of %s expired; closing its connection", lease)
                self._lost.add(lease)
        if workers:
            cap = min(self._limits.max_connections, self._backoff.limits.max_connections)
            share = max(cap // workers, 1)
            keep = sorted(self.held - self._lost)
            for lease in keep[share:]:
                self._lost.add(lease)

    def _keys(self, key: str) -> list[str]:
        store = self._store
        return [store.alive_key, store.pause_key, self._backoff_key, key]

    async def _fill(self, key: str, rate: float | None, count: int) -> None:
        slots: list[float] = []
        await self._gated(key, rate, count, slots)
        slots.reverse()
        self._slots = slots

    async def _gated(self, key: str, rate: float | None, count: int, slots: list[float]) -> None:
        """Reserve ``count`` slots into ``slots`` (trio times), waiting while the gate is shut."""
        store = self._store
        interval = 0 if rate is None else round(_US / rate)
        while True:
            reply: list[Any] = await store.call(
                lambda: store.reserve_script(
                    keys=self._keys(key),
                    args=[*store.gate_args, interval, 1, count],
                )
            )
            received = trio.current_time()
            wait = self._gate(reply)
            if wait == 0:
                slots.extend(received + int(x) / _US for x in reply[_GATE_FIELDS:])
                return
            await trio.sleep(store.poll if wait < 0 else min(wait, store.poll * 20))

    def _gate(self, reply: list[Any]) -> float:
        """Adopt the shared backoff the reply carries; the seconds to wait (-1: paused)."""
        seq, connections, rate, suspended, restore, reason = map(_text, reply[1:_GATE_FIELDS])
        if seq and seq != self._seq:
            self._seq = seq
            now = self._now()
            b = self._backoff
            limits = Limits(
                int(connections) if connections else b.base_connections,
                float(rate) if rate else b.base_rate,
                now + int(suspended) / _US if int(suspended) else -math.inf,
            )
            if b.adopt(limits, now + int(restore) / _US, reason):
                self._changed("shared")
        wait = int(reply[0])
        return -1.0 if wait < 0 else wait / _US


class RedisThrottles:
    """The shared backend for one campaign (use :meth:`open`).

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS); no password in it.
        campaign: the campaign id: keys are namespaced by it.
        password: the store's password (from the environment or a file, never the URL).
        batch: message slots reserved per round trip.
        lease_ttl: seconds a connection lease lives unless renewed.
        key_ttl: seconds every key outlives its last use.
    """

    def __init__(
        self,
        url: str,
        campaign: str,
        *,
        password: str | None = None,
        batch: int = 8,
        lease_ttl: float = 10.0,
        key_ttl: float = 86400.0,
        poll: float = 0.05,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.url = url
        self.password = password
        self.batch = batch
        self.lease_ttl = lease_ttl
        self.poll = poll
        self.prefix = f"bulksend:{{{campaign}}}:"
        self.alive_key = self.prefix + "alive"
        self.pause_key = self.prefix + "pause"
        self._key_ttl_ms = round(key_ttl * 1000)
        self.gate_args: tuple[int, int] = (self._key_ttl_ms, round(lease_ttl * _US))
        #: This worker's id in the store: every lease id starts with it.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}:"
        self._ids = itertools.count(1)
        self._sites: list[RedisSite] = []
        self.released: list[tuple[str, Lease]] = []
        self.published: list[tuple[str, list[Any]]] = []
        self._work = trio.Event()
        self._flushing = trio.Lock()
        self._down = False
        self._client: coredis.Redis[bytes] | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[RedisThrottles]:
        """Connect, and renew leases, release them and publish backoffs in the background."""
        async with coredis.Redis.from_url(
            self.url, password=self.password, connect_timeout=2.0, stream_timeout=5.0
        ) as client:
            self._client = client
            self.reserve_script = client.register_script(RESERVE)
            self.lease_script = client.register_script(LEASE)
            self._renew_script = client.register_script(RENEW)
            self._publish_script = client.register_script(PUBLISH)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew)
                nursery.start_soon(self._send)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.move_on_after(2.0) as cleanup:
                        cleanup.shield = True
                        await self._flush()
            self._client = None

    def site(
        self,
        name: str,
        limits: SiteLimits,
        backoff: Backoff,
        *,
        changed: Callable[[str], None],
        now: Callable[[], float],
    ) -> RedisSite:
        site = RedisSite(self, name, limits, backoff, changed=changed, now=now)
        self._sites.append(site)
        return site

    def lease_id(self) -> Lease:
        return self.worker + str(next(self._ids))

    def wake(self) -> None:
        self._work.set()

    @property
    def client(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise RuntimeError("RedisThrottles used outside open()")
        return self._client

    async def pause(self) -> None:
        """Stop new transactions in every worker of the campaign (until :meth:`resume`)."""
        await self.call(lambda: self.client.set(self.pause_key, "1", px=self._key_ttl_ms))

    async def resume(self) -> None:
        await self.call(lambda: self.client.delete([self.pause_key]))

    async def call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run a command; while the store is unreachable, warn once, wait and retry."""
        delay = _RETRY_FIRST
        while True:
            try:
                result = await command()
            except (coredis.exceptions.RedisError, OSError) as exc:
                if not self._down:
                    self._down = True
                    log.warning(
                        "throttle store %s unreachable (%s): nothing is sent to its sites "
                        "until it answers",
                        self.url,
                        str(exc),  # not the exception: a record would keep its frames
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if self._down:
                self._down = False
                log.warning("throttle store %s answers again", self.url)
            return result

    async def _renew(self) -> None:
        while True:
            await trio.sleep(self.lease_ttl / 3)
            for site in self._sites:
                held = sorted(site.held)
                if held:
                    reply: list[Any] = await self.call(
                        partial(
                            self._renew_script,
                            keys=[site.leases_key, site.waiting_key],
                            args=[round(self.lease_ttl * _US), self._key_ttl_ms, *held],
                        )
                    )
                    site.renewed(int(reply[0]), reply[1:])

    async def _send(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            await self._flush()

    async def _flush(self) -> None:
        """Release the leases given back and publish the backoffs, in order; one flush at a
        time (the closing one may start while the background one finishes its command)."""
        async with self._flushing:
            while self.released:
                key, lease = self.released[0]
                await self.call(partial(self.client.zrem, key, [lease]))
                self.released.pop(0)
            while self.published:
                key, args = self.published[0]
                await self.call(partial(self._publish_script, keys=[key], args=args))
                self.published.pop(0)
