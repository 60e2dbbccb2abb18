"""What the receiver and the unsubscribe endpoint share: a TCP listener for the open internet.

At most ``max_connections`` sessions run at once; one more gets ``busy`` (a protocol's "try
later") and is closed. Whatever a session raises ends that session only, logged: no input
can stop the listener.
"""

from __future__ import annotations

import abc
import logging

import trio

__all__ = ["Listener"]

log = logging.getLogger("bulksend.inbound")


class Listener(abc.ABC):
    """Base of a server: subclasses implement :meth:`session`; :meth:`serve` runs it."""

    def __init__(self, max_connections: int, busy: bytes) -> None:
        self._slots = trio.CapacityLimiter(max_connections)
        self._busy = busy

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
        try:
            try:
                self._slots.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                with trio.move_on_after(5):
                    await stream.send_all(self._busy)
                return
            try:
                await self.session(stream)
            finally:
                self._slots.release_on_behalf_of(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away
        except Exception:
            log.exception("%s: a session failed; the listener goes on", type(self).__name__)
        finally:
            await trio.aclose_forcefully(stream)

    @abc.abstractmethod
    async def session(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (the subclass's protocol)."""
