"""Connection bookkeeping, with no I/O: the global cap on open connections, each site's
host health and TLS memory, and when a connection must be replaced.

How this works (after httpcore's connection pool, where the pool's state is plain code and
the I/O happens around it): every open connection, to any site, holds one of ``capacity``
slots. A sender that wants a connection :meth:`ConnectionPool.acquire`\\ s a slot (in order of
arrival when none is free) and gets the connection's :class:`ConnectionKey`; closing the
connection :meth:`ConnectionPool.release`\\ s it, and the slot goes to the first waiter.

An idle connection (kept open in case its site gets more work, up to the site's
``idle_timeout``) must not keep another site waiting: while it rests it is registered
with :meth:`ConnectionPool.rest`; when a sender of any site waits for a slot, the
longest-idle connection is asked to retire (its owner closes it, with QUIT, and releases the
slot), one per waiter. A connection that would start resting while someone already waits is
told to close at once.

After :meth:`ConnectionPool.stop` (a graceful stop: no new transaction starts) no slot is
handed out any more, and every waiter is answered at once.

Per site, :class:`HostHealth` says which MX hosts to try now: a host that fails backs off
(30 s, doubling per failure, at most 10 minutes; RFC 5321 §4.5.4.1 asks a client to try the
next MX host, and not to hammer one that fails), and it remembers the hosts whose STARTTLS
failed, reached in plaintext for the rest of the run under opportunistic TLS (RFC 7435:
better unencrypted than undelivered). :func:`must_retire` is the rule for a connection
before each transaction. The destination's async open-connection applies all three.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from bulksend.config import TlsMode

__all__ = ["ConnectionKey", "ConnectionPool", "HostHealth", "must_retire"]

#: Seconds a host that failed is left alone: the first time, then doubled, at most.
HOST_BACKOFF_FIRST = 30.0
HOST_BACKOFF_MAX = 600.0


@dataclass(frozen=True, slots=True)
class ConnectionKey:
    """One connection's identity (the slot it holds)."""

    site: str
    serial: int


@dataclass(slots=True)
class _Waiter:
    site: str
    granted: ConnectionKey | None = None
    done: trio.Event = field(default_factory=trio.Event)


class ConnectionPool:
    """``capacity`` connection slots shared by every site of a run."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._held: set[ConnectionKey] = set()
        self._waiters: deque[_Waiter] = deque()
        # Resting connections in the order they began to rest: the first is the longest idle.
        self._idle: dict[ConnectionKey, Callable[[], None]] = {}
        self._retiring: set[ConnectionKey] = set()
        self._serials = itertools.count(1)
        self._stopped = False

    @property
    def open(self) -> int:
        """Slots held (connections opening or open)."""
        return len(self._held)

    @property
    def waiting(self) -> int:
        """Senders waiting for a slot."""
        return len(self._waiters)

    @property
    def idle(self) -> int:
        """Connections resting (idle, not yet asked to retire)."""
        return len(self._idle)

    async def acquire(self, site: str) -> ConnectionKey | None:
        """A slot for a new connection to ``site``; waits while all are held.

        Returns None, at once, when the pool is stopped (no new connection may start).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._stopped:
            return None
        if len(self._held) < self.capacity and not self._waiters:
            return self._grant(site)
        waiter = _Waiter(site)
        self._waiters.append(waiter)
        self._retire_for_waiters()
        try:
            await waiter.done.wait()
        except BaseException:  # cancelled: a granted or stopped waiter is woken, never cancelled
            self._waiters.remove(waiter)
            raise
        return waiter.granted

    def release(self, key: ConnectionKey) -> None:
        """``key``'s connection is closed (or never opened): its slot goes to the next waiter."""
        self._held.discard(key)
        self._idle.pop(key, None)
        self._retiring.discard(key)
        while self._waiters and len(self._held) < self.capacity:
            waiter = self._waiters.popleft()
            waiter.granted = self._grant(waiter.site)
            waiter.done.set()

    def rest(self, key: ConnectionKey, retire: Callable[[], None]) -> bool:
        """``key``'s connection is idle from now on; ``retire()`` will ask its owner to close it.

        Returns False when it should close at once instead: a sender waits for a slot.
        """
        if self._waiters and len(self._waiters) > len(self._retiring):
            self._retiring.add(key)
            return False
        self._idle[key] = retire
        return True

    def busy(self, key: ConnectionKey) -> None:
        """``key``'s connection is busy again (its site has work): it no longer rests."""
        self._idle.pop(key, None)

    def retiring(self, key: ConnectionKey) -> bool:
        """Whether ``key``'s connection was asked to close to free its slot."""
        return key in self._retiring

    def stop(self) -> None:
        """No slot is handed out any more; every waiter gets None now."""
        self._stopped = True
        while self._waiters:
            self._waiters.popleft().done.set()

    def _grant(self, site: str) -> ConnectionKey:
        key = ConnectionKey(site, next(self._serials))
        self._held.add(key)
        return key

    def _retire_for_waiters(self) -> None:
        """Ask the longest-idle connections to close, one for each waiter not yet covered."""
        while self._idle and len(self._waiters) > len(self._retiring):
            key = next(iter(self._idle))
            retire = self._idle.pop(key)
            self._retiring.add(key)
            retire()


@dataclass(slots=True)
class _Health:
    failures: int = 0
    retry_at: float = -math.inf


class HostHealth:
    """One site's MX hosts: which to try now, and which are reached without TLS.

    Times are wall-clock seconds as the caller counts them (the run's clock).
    """

    def __init__(self) -> None:
        self._hosts: dict[str, _Health] = {}
        self._plaintext: set[str] = set()

    def ready(self, host: str, now: float) -> bool:
        """Whether ``host`` may be tried at ``now`` (it is not backing off)."""
        health = self._hosts.get(host)
        return health is None or health.retry_at <= now

    def failed(self, host: str, now: float) -> None:
        """Every address of ``host`` failed, as tried from ``now``: it backs off.

        Senders that fail on a host at once count as one failure: one that started trying
        before another's failure set the host backing off (its ``now`` is earlier than the
        host's retry time) adds nothing.
        """
        health = self._hosts.setdefault(host, _Health())
        if health.retry_at <= now:
            health.failures += 1
            backoff = HOST_BACKOFF_FIRST * 2 ** (health.failures - 1)
            health.retry_at = now + min(backoff, HOST_BACKOFF_MAX)

    def succeeded(self, host: str) -> None:
        """A connection to ``host`` opened: its next failure backs off from the start."""
        health = self._hosts.get(host)
        if health is not None:
            health.failures = 0

    def tls_mode(self, host: str, mode: TlsMode) -> TlsMode:
        """The TLS mode to open ``host`` with: plaintext where opportunistic STARTTLS failed."""
        if mode is TlsMode.OPPORTUNISTIC and host in self._plaintext:
            return TlsMode.NONE
        return mode

    def starttls_failed(self, host: str, mode: TlsMode, *, authenticating: bool) -> bool:
        """STARTTLS to ``host`` failed under ``mode``: whether to go on without TLS.

        Only opportunistic TLS falls back, and never with credentials to send; the host is
        then remembered, and reached in plaintext from now on.
        """
        if mode is not TlsMode.OPPORTUNISTIC or authenticating:
            return False
        self._plaintext.add(host)
        return True


def must_retire(*, messages_sent: int, limit: int, usable: bool, suspended: bool) -> bool:
    """Whether a connection must close before its next transaction.

    It has carried its site's ``messages_per_connection`` (``limit``), it is no longer
    usable (an error dropped it), or its site is suspended (which holds no connection).
    """
    return not usable or suspended or messages_sent >= limit
