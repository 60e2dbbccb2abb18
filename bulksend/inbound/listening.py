"""What the receiver and the unsubscribe endpoint share: a TCP listener for the open internet.

At most ``max_connections`` sessions run at once, and at most ``max_per_peer`` from one IP
address (so one host cannot take every slot, e.g. with slow sessions); one more gets ``busy``
(a protocol's "try later") and is closed. Whatever a session raises ends that session only,
logged: no input can stop the listener.
"""

from __future__ import annotations

import abc
import collections
import logging

import trio

__all__ = ["Listener"]

log = logging.getLogger("bulksend.inbound")


class Listener(abc.ABC):
    """Base of a server: subclasses implement :meth:`session`; :meth:`serve` runs it."""

    def __init__(self, max_connections: int, busy: bytes, max_per_peer: int | None = None) -> None:
        """``max_per_peer``: None where every peer is one (a reverse proxy in front)."""
        self._slots = trio.CapacityLimiter(max_connections)
        self._busy = busy
        self._max_per_peer = max_per_peer
        self._peers: collections.Counter[str] = collections.Counter()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (port 0: any free one) until cancelled."""
        await trio.serve_tcp(self.handle, port, host=host, task_status=task_status)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection, if a slot is free."""
        peer = _peer(stream)
        try:
            try:
                if self._max_per_peer is not None and self._peers[peer] >= self._max_per_peer:
                    raise trio.WouldBlock
                self._slots.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                with trio.move_on_after(5):
                    await stream.send_all(self._busy)
                return
            self._peers[peer] += 1
            try:
                await self.session(stream)
            finally:
                self._slots.release_on_behalf_of(stream)
                self._peers[peer] -= 1
                if not self._peers[peer]:
                    del self._peers[peer]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away
        except Exception:
            log.exception("%s: a session failed; the listener goes on", type(self).__name__)
        finally:
            await trio.aclose_forcefully(stream)

    @abc.abstractmethod
    async def session(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (the subclass's protocol)."""


def _peer(stream: trio.abc.Stream) -> str:
    """The peer's IP address ('' when unknown)."""
    try:
        return str(stream.socket.getpeername()[0]) if isinstance(stream, trio.SocketStream) else ""
    except OSError:  # gone already
        return ""
