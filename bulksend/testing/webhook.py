"""A webhook receiver for tests: HTTPS on loopback (h11 over Trio), keeps what it is sent.

It answers each POST ``200``, or ``503`` while :attr:`WebhookReceiver.down` is set (a
receiver that is down), and keeps every request's headers and body
(:attr:`WebhookReceiver.requests`), the ones it accepted apart (:attr:`accepted`). Any
request path is taken; keep-alive connections are served request after request.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class WebhookReceiver:
    """The receiver; :meth:`serve` (with ``nursery.start``) returns its port."""

    ssl_context: ssl.SSLContext
    host: str = "127.0.0.1"
    down: bool = False
    requests: list[Request] = field(default_factory=list)

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]

    def events(self) -> list[dict[str, Any]]:
        """Every event of every accepted batch, in the order received."""
        return [e for r in self.accepted for e in json.loads(r.body)["events"]]

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        tls = [trio.SSLListener(listener, self.ssl_context) for listener in listeners]
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, tls)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError):
            async with stream:
                with trio.fail_after(30):
                    while await self._one(stream, conn):
                        conn.start_next_cycle()

    async def _one(self, stream: trio.abc.Stream, conn: h11.Connection) -> bool:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return False
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                return False
        assert request is not None
        status = 503 if self.down else 200
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.requests.append(Request(headers, body, status))
        reply = conn.send(h11.Response(status_code=status, headers=[("content-length", "0")]))
        await stream.send_all((reply or b"") + (conn.send(h11.EndOfMessage()) or b""))
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE
