"""Fixtures for the test SMTP server's tests: a raw-socket client (the CA: tests/conftest.py)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from bulksend.testing.smtp import SMTPServer


class Wire:
    """A bare client: writes bytes, reads replies, no SMTP knowledge beyond reply framing."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some()
        if not chunk:
            raise EOFError(f"connection closed; unread: {bytes(self.buffer)!r}")
        self.buffer += chunk

    async def line(self) -> bytes:
        """One line, with its CRLF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line

    async def reply(self) -> bytes:
        """One complete (possibly multi-line) reply, as raw bytes."""
        lines = []
        while True:
            line = await self.line()
            lines.append(line)
            if len(line) < 6 or line[3:4] != b"-":
                return b"".join(lines)

    async def replies(self, count: int) -> list[bytes]:
        return [await self.reply() for _ in range(count)]

    async def command(self, line: bytes) -> bytes:
        await self.send(line + b"\r\n")
        return await self.reply()

    async def until_closed(self) -> bytes:
        """Everything left until the server closes."""
        while True:
            try:
                await self._fill()
            except EOFError:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data

    async def start_tls(self, context: ssl.SSLContext, hostname: str = "mx.test") -> None:
        assert not self.buffer, f"unread bytes before the handshake: {bytes(self.buffer)!r}"
        tls = trio.SSLStream(self.stream, context, server_hostname=hostname)
        await tls.do_handshake()
        self.stream = tls

    async def aclose(self) -> None:
        await self.stream.aclose()


Connect = Callable[[SMTPServer], Awaitable[Wire]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``wire = await connect(server)``: a raw connection, closed after the test."""
    wires: list[Wire] = []

    async def _connect(server: SMTPServer) -> Wire:
        host, port = server.address
        wire = Wire(await trio.open_tcp_stream(host, port))
        wires.append(wire)
        return wire

    yield _connect
    for wire in wires:
        await trio.aclose_forcefully(wire.stream)
