"""A small HTTPS server on loopback that serves MTA-STS policy files, for tests and the demo.

How this works: one TLS listener on 127.0.0.1, port 0, with the certificate context it is
given (a trustme CA's in tests, a throwaway CA's in the demo). Each connection is one HTTP/1.1
exchange parsed with h11: the response comes from :attr:`PolicyServer.responses`, keyed by
the request's ``Host`` (without a port) — ``mta-sts.<domain>`` — or ``404``. A response is
a :class:`Response`: any status, headers and body, so a redirect or an oversized policy is
one entry away (with ``Transfer-Encoding: chunked`` among the headers, the body goes in
chunks, with no length given in advance). A ``POST`` (a TLS report, RFC 8460 §5.3) is kept,
body and all, in :attr:`PolicyServer.posts` and answered ``200``. Every request is counted
per host in :attr:`PolicyServer.requests`.
"""

from __future__ import annotations

import collections
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import trio

__all__ = ["PolicyServer", "Post", "Response", "open_policy_server", "policy_response"]

_IDLE = 10.0  # seconds a client may take to send its request
_CHUNK = 16 * 1024  # bytes per chunk of a chunked body


@dataclass(frozen=True, slots=True)
class Response:
    """What the server answers: status, headers, body."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain"),)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Post:
    """A ``POST`` the server received: ``Host`` (without a port), target, headers, body."""

    host: str
    target: str
    headers: dict[str, str]
    body: bytes


def policy_response(mode: str, mx: list[str], max_age: int = 86400) -> Response:
    """A ``200 text/plain`` MTA-STS policy file (RFC 8461 §3.2, CRLF line ends)."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return Response(body="".join(f"{line}\r\n" for line in lines).encode())


@dataclass
class PolicyServer:
    """An HTTPS server answering ``GET /.well-known/mta-sts.txt`` per ``Host``."""

    ssl_context: ssl.SSLContext
    responses: dict[str, Response] = field(default_factory=dict)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    posts: list[Post] = field(default_factory=list)
    port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        tls = [trio.SSLListener(listener, self.ssl_context) for listener in listeners]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._exchange, tls)
            task_status.started(self.port)

    async def _exchange(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            with trio.move_on_after(_IDLE):
                event: object = h11.NEED_DATA
                while event is h11.NEED_DATA:
                    connection.receive_data(bytes(await stream.receive_some(65536)))
                    event = connection.next_event()
                if not isinstance(event, h11.Request):
                    return
                headers = {k.decode(): v.decode() for k, v in event.headers}
                host = headers.get("host", "").rsplit(":", 1)[0]
                self.requests[host] += 1
                if event.method == b"POST":
                    body = await _body(stream, connection)
                    self.posts.append(Post(host, event.target.decode(), headers, body))
                    answer: Response | None = Response(body=b"thanks\r\n")
                else:
                    known = event.target == b"/.well-known/mta-sts.txt"
                    answer = self.responses.get(host) if known else None
                answer = answer or Response(404, body=b"not found\r\n")
                out = list(answer.headers)
                chunked = ("Transfer-Encoding", "chunked") in out
                if not chunked:
                    out.append(("Content-Length", str(len(answer.body))))
                data = connection.send(h11.Response(status_code=answer.status, headers=out))
                await stream.send_all(data or b"")
                size = _CHUNK if chunked else max(len(answer.body), 1)
                for start in range(0, len(answer.body), size):
                    chunk = answer.body[start : start + size]
                    await stream.send_all(connection.send(h11.Data(data=chunk)) or b"")
                await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return  # a client that gave up (a size cap, a failed handshake) is no error
        finally:
            await trio.aclose_forcefully(stream)


async def _body(stream: trio.SSLStream[trio.SocketStream], connection: h11.Connection) -> bytes:
    """The request's body, up to its end."""
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            return bytes(body)  # EndOfMessage


@asynccontextmanager
async def open_policy_server(ssl_context: ssl.SSLContext) -> AsyncIterator[PolicyServer]:
    """Run a :class:`PolicyServer` for the duration of the ``async with`` block."""
    server = PolicyServer(ssl_context)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
