"""``bulksend inbound --listen``: a small SMTP receiver for the return-path domain.

How this works. One Trio task per connection, at most ``max_connections`` at a time and
``max_per_peer`` from one IP address (one more is told ``421`` and closed). It speaks just
enough SMTP (RFC 5321) to take bounces and complaint reports: EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT, and STARTTLS (RFC 3207) when given a certificate; no relaying, no AUTH.
Commands are read one line at a time, CRLF-terminated, at most 512 octets (§4.5.3.1.4). It
is built for the open internet:

- a recipient must be at one of the configured domains (``550 5.7.1`` otherwise: no relay);
- a message over ``max_size`` is refused with ``552 5.3.4`` (announced by ``SIZE=`` in MAIL,
  or found while reading: the rest is read and thrown away, never kept);
- each command and each block of data must arrive within ``command_timeout``, and a whole
  session within ``session_timeout``; a peer that sends more than ``max_errors`` bad commands
  is told ``421`` and dropped;
- memory per connection is bounded by ``max_size`` plus one read;
- STARTTLS (only before a transaction, once) answers ``220``, then the TLS handshake must
  end within ``command_timeout``; whatever the peer sent after the STARTTLS line in the
  clear is thrown away, never read as commands (the injection of CVE-2011-0411), and the
  session starts over: the peer must say EHLO again (RFC 3207 §4.2).

Each accepted message goes to ``deliver(data, recipients)`` (in a worker thread, one message
at a time: it parses and writes to the store); nothing is stored but what it decides to keep.
If it fails (the store is unusable) the peer gets ``451`` and retries later. Data ends at
``<CRLF>.<CRLF>`` and is dot-unstuffed (§4.5.2). No input can stop the listener
(:class:`~bulksend.inbound.listening.Listener`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from bulksend.errors import BulksendError
from bulksend.inbound.listening import Listener

__all__ = ["Receiver", "ReceiverLimits"]

log = logging.getLogger("bulksend.inbound")

_COMMAND_LIMIT: Final = 512
_READ: Final = 65536
_PATH: Final = re.compile(r"^\s*<([^<>\s]*)>(.*)$")
_SIZE_PARAM: Final = re.compile(r"(?:^|\s)SIZE=(\d{1,20})(?:\s|$)", re.I)


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """What one peer may cost the receiver."""

    max_size: int = 10 * 1024 * 1024
    max_connections: int = 100
    max_per_peer: int = 10
    max_recipients: int = 50
    max_errors: int = 10
    command_timeout: float = 60.0
    session_timeout: float = 600.0


class _Drop(Exception):
    """End the session (after the reply already sent)."""


class Receiver(Listener):
    """The SMTP receiver; :meth:`serve` runs it on a listener."""

    def __init__(
        self,
        hostname: str,
        domains: Sequence[str],
        deliver: Callable[[bytes, list[str]], None],
        limits: ReceiverLimits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a server context with our certificate, to offer STARTTLS."""
        self.hostname = hostname
        self.tls = tls
        self.domains = frozenset(d.lower().strip(".") for d in domains)
        self.deliver = deliver
        self.limits = limits or ReceiverLimits()
        self._delivering = trio.CapacityLimiter(1)
        super().__init__(
            self.limits.max_connections,
            b"421 4.3.2 Too many connections, try later\r\n",
            self.limits.max_per_peer,
        )

    async def session(self, stream: trio.abc.Stream) -> None:
        """One SMTP session, within the session time limit."""
        current = _Session(self, stream)
        with trio.move_on_after(self.limits.session_timeout) as scope, contextlib.suppress(_Drop):
            await current.run()
        if scope.cancelled_caught:
            await _say(current.stream, b"421 4.4.2 Session too long, closing\r\n")


async def _say(stream: trio.abc.Stream, reply: bytes) -> None:
    with (
        trio.move_on_after(5),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.send_all(reply)


class _Session:
    def __init__(self, receiver: Receiver, stream: trio.abc.Stream) -> None:
        self.receiver = receiver
        self.limits = receiver.limits
        self.stream = stream
        self.secure = False
        self.buffer = bytearray()
        self.errors = 0
        self.greeted = False
        self.sender: str | None = None
        self.recipients: list[str] = []

    async def run(self) -> None:
        await self.stream.send_all(f"220 {self.receiver.hostname} ESMTP bulksend\r\n".encode())
        while True:
            line = await self._line()
            reply = await self._command(line)
            if reply:  # none after STARTTLS: the peer speaks first, EHLO
                await self.stream.send_all(reply)
            if reply.startswith((b"221", b"421")):
                return

    async def _receive(self) -> bytes:
        with trio.move_on_after(self.limits.command_timeout) as scope:
            data = await self.stream.receive_some(_READ)
        if scope.cancelled_caught:
            await _say(self.stream, b"421 4.4.2 Timeout, closing\r\n")
            raise _Drop
        if not data:
            raise _Drop  # the peer closed
        return bytes(data)

    async def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n", 0, _COMMAND_LIMIT)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) >= _COMMAND_LIMIT:
                await _say(self.stream, b"500 5.5.2 Line too long, closing\r\n")
                raise _Drop
            self.buffer += await self._receive()

    async def _command(self, line: bytes) -> bytes:
        text = line.decode("ascii", "replace")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb in ("EHLO", "HELO"):
            self.greeted = True
            self._reset()
            if verb == "HELO":
                return f"250 {self.receiver.hostname}\r\n".encode()
            starttls = "250-STARTTLS\r\n" if self.receiver.tls and not self.secure else ""
            return (
                f"250-{self.receiver.hostname}\r\n250-SIZE {self.limits.max_size}\r\n"
                f"250-8BITMIME\r\n{starttls}250 ENHANCEDSTATUSCODES\r\n"
            ).encode()
        if verb == "STARTTLS":
            return await self._starttls(arg)
        if verb == "MAIL":
            return self._mail(arg)
        if verb == "RCPT":
            return self._rcpt(arg)
        if verb == "DATA":
            if not self.recipients:
                return self._error(b"503 5.5.1 RCPT first\r\n")
            await self.stream.send_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            return await self._data()
        if verb == "RSET":
            self._reset()
            return b"250 2.0.0 OK\r\n"
        if verb == "NOOP":
            return b"250 2.0.0 OK\r\n"
        if verb == "QUIT":
            return b"221 2.0.0 Bye\r\n"
        return self._error(b"502 5.5.1 Command not implemented\r\n")

    async def _starttls(self, arg: str) -> bytes:
        tls = self.receiver.tls
        if tls is None or self.secure:
            return self._error(b"502 5.5.1 Command not implemented\r\n")
        if arg.strip():
            return self._error(b"501 5.5.4 Syntax: STARTTLS\r\n")
        if not self.greeted or self.sender is not None:
            return self._error(b"503 5.5.1 EHLO first, and no STARTTLS in a transaction\r\n")
        await self.stream.send_all(b"220 2.0.0 Ready to start TLS\r\n")
        self.buffer.clear()  # sent in the clear after STARTTLS: never a command (RFC 3207 §4.2)
        secure = trio.SSLStream(self.stream, tls, server_side=True)
        with trio.move_on_after(self.limits.command_timeout) as scope:
            try:
                await secure.do_handshake()
            except trio.BrokenResourceError as exc:
                log.info("inbound: a TLS handshake failed: %s", exc.__cause__ or exc)
                raise _Drop from None
        if scope.cancelled_caught:
            raise _Drop
        self.stream, self.secure, self.greeted = secure, True, False
        self._reset()
        return b""

    def _error(self, reply: bytes) -> bytes:
        self.errors += 1
        if self.errors > self.limits.max_errors:
            return b"421 4.7.0 Too many errors, closing\r\n"
        return reply

    def _reset(self) -> None:
        self.sender = None
        self.recipients = []

    def _mail(self, arg: str) -> bytes:
        if not self.greeted:
            return self._error(b"503 5.5.1 EHLO first\r\n")
        if self.sender is not None:
            return self._error(b"503 5.5.1 Nested MAIL\r\n")
        m = _PATH.match(arg[5:]) if arg[:5].upper() == "FROM:" else None
        if m is None:
            return self._error(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
        size = _SIZE_PARAM.search(m[2])
        if size is not None and int(size[1]) > self.limits.max_size:
            return b"552 5.3.4 Message too big\r\n"
        self.sender = m[1]
        return b"250 2.1.0 OK\r\n"

    def _rcpt(self, arg: str) -> bytes:
        if self.sender is None:
            return self._error(b"503 5.5.1 MAIL first\r\n")
        m = _PATH.match(arg[3:]) if arg[:3].upper() == "TO:" else None
        if m is None:
            return self._error(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
        domain = m[1].rpartition("@")[2].lower()
        if domain not in self.receiver.domains:
            return self._error(b"550 5.7.1 Relaying denied\r\n")
        if len(self.recipients) >= self.limits.max_recipients:
            return b"452 4.5.3 Too many recipients\r\n"
        self.recipients.append(m[1])
        return b"250 2.1.5 OK\r\n"

    async def _data(self) -> bytes:
        # The data starts after a virtual CRLF, so an empty message ("." at once) and a
        # first line starting with a dot are found like any other.
        data = bytearray(b"\r\n") + self.buffer
        self.buffer.clear()
        too_big = False
        scanned = 0
        while True:
            end = data.find(b"\r\n.\r\n", scanned)
            if end >= 0:
                break
            if len(data) > self.limits.max_size + 2:
                too_big = True
                del data[:-4]  # keep only what may begin the end marker
            scanned = max(0, len(data) - 4)
            data += await self._receive()
        self.buffer += data[end + 5 :]
        recipients, self.recipients, self.sender = self.recipients, [], None
        if too_big or end - 2 > self.limits.max_size:
            return b"552 5.3.4 Message too big\r\n"
        message = bytes(data[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
        try:
            await trio.to_thread.run_sync(
                self.receiver.deliver, message, recipients, limiter=self.receiver._delivering
            )
        except BulksendError as exc:
            log.warning("inbound message not processed: %s", exc)
            return b"451 4.3.0 Cannot process it now, try later\r\n"
        return b"250 2.0.0 OK: processed\r\n"
