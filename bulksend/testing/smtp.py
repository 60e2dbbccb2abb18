"""A scriptable SMTP server on loopback, with fault injection, for tests, demos and benchmarks.

How this works
--------------
:class:`SMTPServer` listens on a loopback address (127.0.0.1 by default; other 127.0.0.x
addresses give several "sites" on one machine) and runs one :class:`Session` per connection.
A session reads whatever the client sent into a buffer and handles every complete command in
it before it writes: the replies of one received chunk leave in one ``send_all``, so a
pipelining client (RFC 2920) is answered in order and in batches, and the server stays fast
enough to serve as a benchmark sink. Command lines end in CRLF only (RFC 5321 §2.3.8): a bare
CR or LF inside a command gets ``500``. Message data ends at ``<CRLF>.<CRLF>`` only (§4.1.1.4)
and is dot-unstuffed (§4.5.2): a bare ``<LF>.<LF>`` is data, as a strict server must treat it,
so SMTP-smuggling tests are meaningful. STARTTLS (RFC 3207) discards whatever plaintext
followed the command, as §4.2 asks of a server. AUTH PLAIN and LOGIN (RFC 4954) check a
credentials mapping.

Every behaviour comes from a :class:`ServerScript` (a frozen dataclass; make variants with
:func:`dataclasses.replace`). A new script given to ``server.script`` applies to connections
opened afterwards. The fault modes:

* greeting: any text and code (``554`` refuses everything but QUIT with ``503``, ``421`` closes);
* extensions on or off: PIPELINING, SIZE (enforced), 8BITMIME, SMTPUTF8, STARTTLS, AUTH,
  ENHANCEDSTATUSCODES, CHUNKING (advertised only; BDAT gets ``502``); ``esmtp=False`` makes a
  HELO-only server that answers EHLO with ``502``;
* per-recipient policy: greylisting (``451 4.7.1`` on the first try of a sender/recipient
  pair), unknown mailboxes (``550 5.1.1``), too many recipients (``452 4.5.3`` after N);
* per-connection and per-server limits: ``421`` after N messages on a connection, a rate
  limit (more than N transactions started in a sliding window), a failure every k-th message;
* timing: a delay before any reply (the greeting included) and slow drips (one byte per
  interval);
* disconnects at a named point (:data:`DisconnectPoint`), including after the final dot with
  no reply at all (the in-doubt case);
* arbitrary replies per command, static (``replies``) or computed by a ``hook``; a reply
  given as bytes is sent verbatim, so broken replies (:data:`GARBAGE_REPLY`,
  :data:`OVERLONG_REPLY`, :data:`MISMATCHED_REPLY`, :data:`BARE_LF_REPLY`) are one line away;
* ``starttls_inject``: bytes sent in the same write as the ``220`` to STARTTLS (the
  STARTTLS response-injection attack);
* whole-server modes: ``"blackhole"`` (accept, never answer) and ``"reset"`` (accept, then
  reset the connection).

A reply's effect follows its code, whoever chose it: a ``2xx`` to RCPT adds the recipient, a
``354`` to DATA starts the data phase, a ``2xx`` to the final dot records the transaction, and
any ``421`` is followed by closing the connection (RFC 5321 §3.8).

The server records each accepted :class:`Transaction` (envelope and exact, unstuffed data),
connection counts and peak concurrency in :class:`ServerStats`, and one
:class:`ConnectionRecord` per connection, with the raw bytes received and each write sent
when ``record_wire`` is on. ``record=False`` keeps only the counters, for benchmarks.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

import trio

__all__ = [
    "BARE_LF_REPLY",
    "DISCONNECT",
    "GARBAGE_REPLY",
    "HANG",
    "MISMATCHED_REPLY",
    "OVERLONG_REPLY",
    "RESET",
    "Action",
    "ConnectionRecord",
    "DisconnectPoint",
    "Hook",
    "Respond",
    "SMTPServer",
    "ServerScript",
    "ServerStats",
    "Session",
    "Transaction",
    "serving",
]

#: The longest command line accepted. RFC 5321 §4.5.3.1.4 says 512; we are lenient.
MAX_COMMAND_LINE: Final = 4096
_RECEIVE_SIZE: Final = 256 * 1024
#: How long a closing connection waits for the client to close its side.
_LINGER_SECONDS: Final = 1.0

GARBAGE_REPLY: Final = b"this is not an SMTP reply\r\n"
OVERLONG_REPLY: Final = b"250 " + b"x" * 9000 + b"\r\n"
MISMATCHED_REPLY: Final = b"250-first line\r\n251 second line, another code\r\n"
BARE_LF_REPLY: Final = b"250 2.0.0 OK\n"

DisconnectPoint: TypeAlias = Literal[
    "connect", "greeting", "ehlo", "mail", "rcpt", "data", "dot", "dot_reply"
]
"""Where ``ServerScript.disconnect_after`` closes the connection (the first time only).

``connect``: before the greeting. ``greeting``: after it. ``ehlo``, ``mail``, ``rcpt``,
``data``: after the reply to that command (``data``: after the 354). ``dot``: after the
final dot is received, *without replying* (the in-doubt case). ``dot_reply``: after the
reply to the final dot.
"""


@dataclass(frozen=True, slots=True)
class Respond:
    """A reply and how to deliver it; what hooks and ``ServerScript.replies`` may return.

    Attributes:
        reply: a ``str`` (lines separated by ``\\n``; CRLF is added), ``bytes`` sent
            verbatim, or ``None`` for the server's own reply.
        delay: seconds to wait before sending the reply.
        drip: send the reply one byte at a time, this many seconds apart.
        close: close the connection (FIN) after sending the reply.
        reset: reset the connection (RST) after sending the reply.
        hang: after sending the reply, never answer again (read and discard until EOF).
    """

    reply: str | bytes | None = None
    delay: float = 0.0
    drip: float | None = None
    close: bool = False
    reset: bool = False
    hang: bool = False


#: Close the connection without replying.
DISCONNECT: Final = Respond(reply=b"", close=True)
#: Reset the connection without replying.
RESET: Final = Respond(reply=b"", reset=True)
#: Never reply to this command or any later one.
HANG: Final = Respond(reply=b"", hang=True)

Action: TypeAlias = "str | bytes | Respond"


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message the server accepted (a 2xx to the final dot)."""

    mail_from: str
    mail_params: tuple[str, ...]
    rcpt_to: tuple[str, ...]
    #: The message as received, unstuffed, CRLF as sent, without the terminating ".\r\n".
    data: bytes
    connection: int
    tls: bool
    authenticated_as: str | None
    #: ``trio.current_time()`` when the final dot was accepted.
    time: float
    #: The client's address (the connection's peer host): which egress source it came from.
    peer: str = ""


@dataclass(slots=True)
class ConnectionRecord:
    """What happened on one connection. ``received`` and ``writes`` need ``record_wire``."""

    id: int
    peer: tuple[str, int]
    opened_at: float
    closed_at: float | None = None
    received: bytearray = field(default_factory=bytearray)
    writes: list[bytes] = field(default_factory=list)
    tls: bool = False
    #: Offset in ``received`` where the TLS-protected bytes begin.
    tls_offset: int | None = None
    #: Plaintext that followed STARTTLS in the same read and was thrown away.
    discarded_after_starttls: bytes = b""
    #: The client said QUIT (RFC 5321 §4.1.1.10) before closing.
    quit: bool = False

    @property
    def sent(self) -> bytes:
        """Every byte sent on this connection, in order."""
        return b"".join(self.writes)


@dataclass(slots=True)
class ServerStats:
    """Counters a test or a benchmark reads."""

    connections_opened: int = 0
    connections_current: int = 0
    connections_peak: int = 0
    #: Messages accepted (2xx to the final dot) and their recipients.
    messages: int = 0
    recipients: int = 0
    #: Final dots received, accepted or not.
    final_dots: int = 0
    commands: int = 0
    bytes_received: int = 0
    #: ``trio.current_time()`` of each accepted message (only when ``record`` is on).
    message_times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ServerScript:
    """How the server behaves. Every field has the behaviour of a well-mannered server.

    Replies that a field configures are full reply lines (code included).
    """

    hostname: str = "mx.test"
    #: ``None`` gives ``220 <hostname> ESMTP bulksend test server``.
    greeting: str | bytes | None = None
    mode: Literal["normal", "blackhole", "reset"] = "normal"

    # Extensions.
    esmtp: bool = True
    pipelining: bool = True
    #: Advertise SIZE with this limit and enforce it (``552 5.3.4``); 0 advertises no limit.
    size: int | None = None
    eightbitmime: bool = True
    smtputf8: bool = False
    enhancedstatuscodes: bool = True
    chunking: bool = False
    #: Advertise STARTTLS and use this server-side context.
    tls_context: ssl.SSLContext | None = None
    #: Sent in the same write as the ``220`` to STARTTLS.
    starttls_inject: bytes = b""
    #: ``530 5.7.0`` to MAIL before STARTTLS.
    require_tls: bool = False
    #: user -> password; advertises AUTH with ``auth_mechanisms``.
    auth_credentials: Mapping[str, str] | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    #: ``530 5.7.0`` to MAIL before AUTH.
    require_auth: bool = False
    #: Advertise AUTH only after STARTTLS.
    auth_requires_tls: bool = False
    extra_extensions: tuple[str, ...] = ()

    # Recipient and message policy.
    greylist: bool = False
    #: A greylisted pair passes only once this many seconds have passed since its first try.
    greylist_seconds: float = 0.0
    greylist_reply: str = "451 4.7.1 Greylisted, try again later"
    unknown_mailboxes: frozenset[str] = frozenset()
    max_recipients: int | None = None
    #: ``421 4.7.0`` to the MAIL after this many accepted messages on one connection.
    max_messages_per_connection: int | None = None
    #: Refuse MAIL with ``rate_limit_reply`` when this many transactions already started,
    #: server-wide, within the last ``rate_window`` seconds.
    rate_limit: int | None = None
    rate_window: float = 1.0
    rate_limit_reply: str = "421 4.7.0 Rate limited, try again later"
    #: Answer every k-th final dot (server-wide count) with ``fail_every_reply``.
    fail_every: int | None = None
    fail_every_reply: str = "421 4.7.0 Try again later"

    # Timing and disconnects.
    #: verb -> seconds before its reply; verbs as for ``hook``, plus ``"GREETING"``.
    reply_delays: Mapping[str, float] = field(default_factory=dict)
    #: Send replies one byte per this many seconds...
    drip: float | None = None
    #: ...only the replies to these verbs (``None``: every reply).
    drip_verbs: frozenset[str] | None = None
    disconnect_after: DisconnectPoint | None = None

    # Arbitrary replies.
    #: verb -> reply, used instead of the server's own.
    replies: Mapping[str, Action] = field(default_factory=dict)
    #: Called first for every command; returns a reply or ``None`` for the default.
    hook: Hook | None = None

    # Recording.
    record: bool = True
    record_wire: bool = False


Hook: TypeAlias = "Callable[[Session, str, str], Action | None]"
"""``hook(session, verb, argument)``: the verb is upper-case as received (``MAIL``,
``RCPT``, ...), ``DOT`` for the end of data (``session.data`` holds the message),
``GREETING`` before the greeting (a reply replaces it), and the argument is the rest of the
line. Return ``None`` for the server's own reply."""


@dataclass(frozen=True, slots=True)
class _Emit:
    """A reply that needs more than appending to the output batch."""

    reply: bytes
    delay: float = 0.0
    drip: float | None = None
    close: bool = False
    reset: bool = False
    hang: bool = False
    starttls: bool = False


def _reply_bytes(reply: str | bytes) -> bytes:
    if isinstance(reply, bytes):
        return reply
    if not reply:
        return b""
    lines = reply.rstrip("\n").split("\n")
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _as_respond(action: Action) -> Respond:
    if isinstance(action, Respond):
        return action
    return Respond(reply=action)


def _mailbox_key(address: str) -> str:
    """The local part is case-sensitive, the domain is not (RFC 5321 §2.4)."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _parse_path(arg: str, keyword: str) -> tuple[str, tuple[str, ...]] | None:
    """Split ``FROM:<addr> PARAM...`` into the address and the parameters."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip(" ")
    if not rest.startswith("<"):
        return None
    end = rest.find(">")
    if end < 0:
        return None
    tail = rest[end + 1 :]
    if tail and not tail.startswith(" "):
        return None
    return rest[1:end], tuple(tail.split())


_COMMAND: Final = 0
_DATA: Final = 1
_AUTH_PLAIN: Final = 2
_AUTH_LOGIN_USER: Final = 3
_AUTH_LOGIN_PASSWORD: Final = 4

_DISCONNECT_VERBS: Final[Mapping[str, frozenset[str]]] = {
    "greeting": frozenset({"GREETING"}),
    "ehlo": frozenset({"EHLO", "HELO"}),
    "mail": frozenset({"MAIL"}),
    "rcpt": frozenset({"RCPT"}),
    "data": frozenset({"DATA"}),
    "dot_reply": frozenset({"DOT"}),
}


class Session:
    """One client connection: SMTP state that hooks may read, and the machinery behind it.

    Public attributes, for hooks: ``server``, ``id``, ``record``, ``helo``, ``esmtp``,
    ``tls``, ``authenticated_as``, ``mail_from``, ``mail_params``, ``rcpt_to``, ``data``
    (the last message, set before the ``DOT`` hook) and ``messages`` (accepted on this
    connection).
    """

    def __init__(
        self, server: SMTPServer, stream: trio.abc.Stream, record: ConnectionRecord
    ) -> None:
        script = server.script
        self.server = server
        self.script = script
        self.stream = stream
        self.record = record
        self.id = record.id
        self.helo: str | None = None
        self.esmtp = False
        self.tls = False
        self.authenticated_as: str | None = None
        self.mail_from: str | None = None
        self.mail_params: tuple[str, ...] = ()
        self.rcpt_to: list[str] = []
        self.data = b""
        self.messages = 0

        self._buf = bytearray()
        self._pos = 0
        self._out = bytearray()
        self._state = _COMMAND
        self._data_start = 0
        self._scan = 0
        self._discarding = False
        self._login_user = ""
        self._quit = False
        self._starttls_pending = False
        self._rejecting = False

        self._wire = script.record_wire
        self._enhanced = script.enhancedstatuscodes and script.esmtp
        self._has_override = script.hook is not None or bool(script.replies)
        self._disconnect_verbs = _DISCONNECT_VERBS.get(script.disconnect_after or "", frozenset())
        self._disconnect_at_dot = script.disconnect_after == "dot"
        self._plain = not (script.reply_delays or script.drip or self._disconnect_verbs)
        self._unknown = frozenset(_mailbox_key(a) for a in script.unknown_mailboxes)
        self._handlers: dict[str, Callable[[str, bytes | None], bytes]] = {
            "EHLO": self._ehlo,
            "HELO": self._helo,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit_command,
            "VRFY": self._vrfy,
            "STARTTLS": self._starttls,
            "AUTH": self._auth,
            "HELP": self._help,
            "BDAT": self._bdat,
        }
        self._ok_mail = self._r(250, "2.1.0", "OK")
        self._ok_rcpt = self._r(250, "2.1.5", "OK")
        self._go_ahead = b"354 End data with <CR><LF>.<CR><LF>\r\n"
        self._ok_rset = self._r(250, "2.0.0", "OK")

    # -- replies -------------------------------------------------------------------------

    def _r(self, code: int, enhanced: str, text: str) -> bytes:
        if self._enhanced:
            return f"{code} {enhanced} {text}\r\n".encode()
        return f"{code} {text}\r\n".encode()

    def _override(self, verb: str, arg: str) -> Respond | None:
        script = self.script
        if script.hook is not None:
            action = script.hook(self, verb, arg)
            if action is not None:
                return _as_respond(action)
        static = script.replies.get(verb)
        return None if static is None else _as_respond(static)

    def _emit(self, verb: str, reply: bytes, override: Respond | None) -> _Emit | None:
        """Queue a reply in the output batch, or return what must be done about it."""
        if (
            override is None
            and self._plain
            and not self._quit
            and not self._starttls_pending
            and not reply.startswith(b"421")
        ):
            self._out += reply
            return None
        script = self.script
        close = self._quit or reply.startswith(b"421")
        if verb in self._disconnect_verbs:
            self._disconnect_verbs = frozenset()
            close = True
        delay = script.reply_delays.get(verb, 0.0)
        drip = script.drip
        if drip is not None and script.drip_verbs is not None and verb not in script.drip_verbs:
            drip = None
        reset = hang = False
        if override is not None:
            delay = override.delay or delay
            drip = override.drip if override.drip is not None else drip
            close = close or override.close
            reset = override.reset
            hang = override.hang
        starttls = self._starttls_pending
        self._starttls_pending = False
        if not (close or reset or hang or starttls or delay or drip):
            self._out += reply
            return None
        return _Emit(reply, delay, drip, close, reset, hang, starttls)

    # -- the input loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side ends it."""
        script = self.script
        if script.mode == "blackhole":
            await self._hang()
            return
        if script.mode == "reset" or script.disconnect_after == "connect":
            await self._perform(_Emit(b"", reset=script.mode == "reset", close=True))
            return
        if script.greeting is None:
            greeting = f"220 {script.hostname} ESMTP bulksend test server\r\n".encode()
        else:
            greeting = _reply_bytes(script.greeting)
        override = self._override("GREETING", "") if self._has_override else None
        if override is not None and override.reply is not None:
            greeting = _reply_bytes(override.reply)  # a hook's greeting (by peer address, say)
        self._rejecting = not greeting.startswith(b"220")
        emit = self._emit("GREETING", greeting, override)
        if emit is not None and not await self._perform(emit):
            return
        stats = self.server.stats
        while True:
            emit = self._process()
            if emit is None:
                await self._flush()
                chunk = await self.stream.receive_some(_RECEIVE_SIZE)
                if not chunk:
                    return
                stats.bytes_received += len(chunk)
                if self._wire:
                    self.record.received += chunk
                self._buf += chunk
            elif not await self._perform(emit):
                return

    def _compact(self, keep_from: int) -> None:
        if keep_from > 0:
            del self._buf[:keep_from]
            self._pos -= keep_from
            self._data_start -= keep_from
            self._scan -= keep_from

    def _process(self) -> _Emit | None:
        """Handle everything complete in the buffer; ``None`` means "need more input"."""
        buf = self._buf
        while True:
            if self._state == _DATA:
                start = self._data_start
                # The CRLF that ended the DATA line is still at buf[start - 2:start], so an
                # empty message (".\r\n" right after the command) is found by the same search.
                end = buf.find(b"\r\n.\r\n", self._scan)
                if end < 0:
                    self._scan = max(start - 2, len(buf) - 4)
                    self._compact(start - 2)
                    return None
                raw = bytes(buf[start : end + 2]) if end >= start else b""
                self._pos = end + 5
                self._state = _COMMAND
                emit = self._end_of_data(raw)
                if emit is not None:
                    return emit
                continue
            pos = self._pos
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if self._discarding:
                    # Still inside a line already refused as too long: drop it quietly,
                    # but keep a trailing CR in case the CRLF is split across reads.
                    self._pos = pos = max(pos, len(buf) - 1)
                elif len(buf) - pos > MAX_COMMAND_LINE:
                    self._pos = len(buf) - 1
                    emit = self._line_too_long()
                    if emit is not None:
                        return emit
                    pos = self._pos
                self._compact(pos)
                return None
            line = bytes(buf[pos:eol])
            self._pos = eol + 2
            if self._discarding:
                self._discarding = False
                continue
            if eol - pos > MAX_COMMAND_LINE:
                emit = self._emit("", self._r(500, "5.5.6", "Line too long"), None)
            elif self._state == _COMMAND:
                emit = self._command(line)
            else:
                emit = self._auth_line(line)
            if emit is not None:
                return emit

    def _line_too_long(self) -> _Emit | None:
        self._discarding = True
        self._state = _COMMAND
        return self._emit("", self._r(500, "5.5.6", "Line too long"), None)

    def _command(self, line: bytes) -> _Emit | None:
        self.server.stats.commands += 1
        if b"\r" in line or b"\n" in line:
            return self._emit("", self._r(500, "5.5.2", "Bare CR or LF in command line"), None)
        verb, _, arg = line.decode("utf-8", "surrogateescape").partition(" ")
        verb = verb.upper()
        override = self._override(verb, arg) if self._has_override else None
        forced = None
        if override is not None and override.reply is not None:
            forced = _reply_bytes(override.reply)
        if self._rejecting and forced is None and verb != "QUIT":
            reply = self._r(503, "5.5.1", "No service, only QUIT")
        else:
            reply = self._handlers.get(verb, self._unrecognised)(arg, forced)
        return self._emit(verb, reply, override)

    async def _perform(self, emit: _Emit) -> bool:
        """Deliver a reply that needs care; ``False`` when the connection is over."""
        if emit.delay or emit.drip:
            await self._flush()
        if emit.delay:
            await trio.sleep(emit.delay)
        if emit.drip and emit.reply:
            for byte in emit.reply:
                await self._send(bytes((byte,)))
                await trio.sleep(emit.drip)
        else:
            self._out += emit.reply
        if emit.starttls:
            self._out += self.script.starttls_inject
        await self._flush()
        if emit.reset:
            self._reset_connection()
            return False
        if emit.hang:
            await self._hang()
            return False
        if emit.close:
            await self._close()
            return False
        if emit.starttls:
            await self._start_tls()
        return True

    # -- output and closing --------------------------------------------------------------

    async def _flush(self) -> None:
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            await self._send(data)

    async def _send(self, data: bytes) -> None:
        if self._wire:
            self.record.writes.append(data)
        await self.stream.send_all(data)

    def _socket_stream(self) -> trio.SocketStream | None:
        stream = self.stream
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        return stream if isinstance(stream, trio.SocketStream) else None

    def _reset_connection(self) -> None:
        sock = self._socket_stream()
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The caller closes the stream; with SO_LINGER 0 that sends RST.

    async def _close(self) -> None:
        """Close after the last reply: FIN, then read until the client closes too.

        Reading what the client still sends (instead of closing with unread input, which
        makes the kernel send RST) lets the client read our last reply.
        """
        stream = self.stream
        if isinstance(stream, trio.SocketStream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_eof()
            with trio.move_on_after(_LINGER_SECONDS):
                await self._drain()
        with (
            trio.move_on_after(_LINGER_SECONDS),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.aclose()

    async def _hang(self) -> None:
        """Never answer: read and discard (and record) until the client gives up."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._drain()

    async def _drain(self) -> None:
        while True:
            chunk = await self.stream.receive_some(_RECEIVE_SIZE)
            if not chunk:
                return
            self.server.stats.bytes_received += len(chunk)
            if self._wire:
                self.record.received += chunk

    async def _start_tls(self) -> None:
        context = self.script.tls_context
        assert context is not None
        # RFC 3207 §4.2: nothing the client sent before the handshake may be acted on.
        self.record.discarded_after_starttls += bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        tls_stream = trio.SSLStream(self.stream, context, server_side=True)
        self.stream = tls_stream
        self.record.tls_offset = len(self.record.received)
        await tls_stream.do_handshake()
        self.tls = self.record.tls = True
        self.helo = None
        self.esmtp = False
        self.authenticated_as = None
        self._reset_transaction()

    # -- commands ------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.mail_from = None
        self.mail_params = ()
        self.rcpt_to = []

    def _unrecognised(self, arg: str, forced: bytes | None) -> bytes:
        return forced or self._r(500, "5.5.2", "Command not recognized")

    def _extensions(self) -> list[str]:
        script = self.script
        lines: list[str] = []
        if script.pipelining:
            lines.append("PIPELINING")
        if script.size is not None:
            lines.append(f"SIZE {script.size}")
        if script.eightbitmime:
            lines.append("8BITMIME")
        if script.smtputf8:
            lines.append("SMTPUTF8")
        if script.tls_context is not None and not self.tls:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH " + " ".join(script.auth_mechanisms))
        if script.enhancedstatuscodes:
            lines.append("ENHANCEDSTATUSCODES")
        if script.chunking:
            lines.append("CHUNKING")
        lines.extend(script.extra_extensions)
        return lines

    def _auth_offered(self) -> bool:
        script = self.script
        return (
            script.esmtp
            and script.auth_credentials is not None
            and (self.tls or not script.auth_requires_tls)
        )

    def _ehlo(self, arg: str, forced: bytes | None) -> bytes:
        script = self.script
        if forced is not None:
            reply = forced
        elif not script.esmtp:
            reply = b"502 Command not implemented\r\n"
        elif not arg.strip():
            reply = self._r(501, "5.5.4", "EHLO needs a domain or address literal")
        else:
            lines = [f"{script.hostname} greets {arg.strip()}", *self._extensions()]
            last = len(lines) - 1
            reply = "".join(
                f"250{' ' if i == last else '-'}{text}\r\n" for i, text in enumerate(lines)
            ).encode()
        if reply.startswith(b"2"):
            self.helo = arg.strip()
            self.esmtp = True
            self._reset_transaction()
        return reply

    def _helo(self, arg: str, forced: bytes | None) -> bytes:
        if forced is not None:
            reply = forced
        elif not arg.strip():
            reply = self._r(501, "5.5.4", "HELO needs a domain")
        else:
            reply = f"250 {self.script.hostname}\r\n".encode()
        if reply.startswith(b"2"):
            self.helo = arg.strip()
            self.esmtp = False
            self._reset_transaction()
        return reply

    def _check_params(self, params: tuple[str, ...], for_mail: bool) -> bytes | None:
        script = self.script
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            if for_mail and self.esmtp:
                if key == "SIZE" and script.size is not None:
                    if not value.isdigit():
                        return self._r(501, "5.5.4", "Bad SIZE parameter")
                    if script.size and int(value) > script.size:
                        return self._r(552, "5.3.4", "Message size exceeds fixed limit")
                    continue
                if key == "BODY" and script.eightbitmime and value.upper() in {"7BIT", "8BITMIME"}:
                    continue
                if key == "SMTPUTF8" and script.smtputf8 and not value:
                    continue
                if key == "AUTH" and self._auth_offered():
                    continue
            return self._r(555, "5.5.4", f"Unsupported parameter {key}")
        return None

    def _mail(self, arg: str, forced: bytes | None) -> bytes:
        script = self.script
        path = _parse_path(arg, "FROM:")
        if forced is not None:
            reply = forced
        elif self.helo is None:
            reply = self._r(503, "5.5.1", "Send EHLO or HELO first")
        elif self.mail_from is not None:
            reply = self._r(503, "5.5.1", "Nested MAIL command")
        elif script.require_tls and not self.tls:
            reply = self._r(530, "5.7.0", "Must issue a STARTTLS command first")
        elif script.require_auth and self.authenticated_as is None:
            reply = self._r(530, "5.7.0", "Authentication required")
        elif path is None:
            reply = self._r(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        elif (bad := self._check_params(path[1], for_mail=True)) is not None:
            reply = bad
        elif not path[0].isascii() and "SMTPUTF8" not in {p.upper() for p in path[1]}:
            reply = self._r(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
        elif (
            script.max_messages_per_connection is not None
            and self.messages >= script.max_messages_per_connection
        ):
            reply = self._r(421, "4.7.0", "Too many messages on this connection")
        elif script.rate_limit is not None and self.server.over_rate(script):
            reply = _reply_bytes(script.rate_limit_reply)
        else:
            reply = self._ok_mail
        if reply.startswith(b"2"):
            self.mail_from, self.mail_params = path if path is not None else (arg, ())
            self.rcpt_to = []
        return reply

    def _rcpt(self, arg: str, forced: bytes | None) -> bytes:
        script = self.script
        path = _parse_path(arg, "TO:")
        if forced is not None:
            reply = forced
        elif self.mail_from is None:
            reply = self._r(503, "5.5.1", "Need MAIL before RCPT")
        elif path is None:
            reply = self._r(501, "5.5.4", "Syntax: RCPT TO:<address>")
        elif path[1]:
            reply = self._check_params(path[1], for_mail=False) or self._ok_rcpt
        elif not path[0].isascii() and "SMTPUTF8" not in {p.upper() for p in self.mail_params}:
            reply = self._r(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
        elif script.max_recipients is not None and len(self.rcpt_to) >= script.max_recipients:
            reply = self._r(452, "4.5.3", "Too many recipients")
        elif self._unknown and _mailbox_key(path[0]) in self._unknown:
            reply = self._r(550, "5.1.1", "No such user here")
        elif script.greylist and self.server.greylisted(self.mail_from, path[0], script):
            reply = _reply_bytes(script.greylist_reply)
        else:
            reply = self._ok_rcpt
        if reply.startswith(b"2") and self.mail_from is not None:
            self.rcpt_to.append(path[0] if path is not None else arg)
        return reply

    def _data(self, arg: str, forced: bytes | None) -> bytes:
        if forced is not None:
            reply = forced
        elif arg:
            reply = self._r(501, "5.5.4", "No parameters allowed on DATA")
        elif self.mail_from is None:
            reply = self._r(503, "5.5.1", "Need MAIL before DATA")
        elif not self.rcpt_to:
            reply = self._r(554, "5.5.1", "No valid recipients")
        else:
            reply = self._go_ahead
        if reply.startswith(b"354"):
            self._state = _DATA
            self._data_start = self._pos
            self._scan = self._pos - 2
        return reply

    def _end_of_data(self, raw: bytes) -> _Emit | None:
        data = raw[1:] if raw.startswith(b".") else raw
        self.data = data.replace(b"\r\n.", b"\r\n")
        server = self.server
        script = self.script
        server.stats.final_dots += 1
        if self._disconnect_at_dot:
            self._disconnect_at_dot = False
            self._reset_transaction()
            return _Emit(b"", close=True)
        override = self._override("DOT", "") if self._has_override else None
        if override is not None and override.reply is not None:
            reply = _reply_bytes(override.reply)
        elif not self.rcpt_to:
            reply = self._r(554, "5.5.1", "No valid recipients")
        elif script.size and len(self.data) > script.size:
            reply = self._r(552, "5.3.4", "Message size exceeds fixed limit")
        elif script.fail_every and server.stats.final_dots % script.fail_every == 0:
            reply = _reply_bytes(script.fail_every_reply)
        else:
            reply = self._r(250, "2.0.0", f"OK queued as {server.stats.final_dots}")
        if reply.startswith(b"2"):
            self.messages += 1
            server.accept(self)
        self._reset_transaction()
        return self._emit("DOT", reply, override)

    def _rset(self, arg: str, forced: bytes | None) -> bytes:
        reply = forced if forced is not None else self._ok_rset
        if reply.startswith(b"2"):
            self._reset_transaction()
        return reply

    def _noop(self, arg: str, forced: bytes | None) -> bytes:
        return forced if forced is not None else self._ok_rset

    def _vrfy(self, arg: str, forced: bytes | None) -> bytes:
        if forced is not None:
            return forced
        return self._r(252, "2.5.2", "Cannot VRFY user, but will accept message")

    def _bdat(self, arg: str, forced: bytes | None) -> bytes:
        # CHUNKING is advertised only; the chunk that follows is then read as commands.
        return forced if forced is not None else self._r(502, "5.5.1", "BDAT not implemented")

    def _help(self, arg: str, forced: bytes | None) -> bytes:
        return forced if forced is not None else self._r(214, "2.0.0", "See RFC 5321")

    def _quit_command(self, arg: str, forced: bytes | None) -> bytes:
        self.record.quit = True
        reply = forced if forced is not None else self._r(221, "2.0.0", "Bye")
        if reply.startswith(b"221"):
            self._quit = True
        return reply

    def _starttls(self, arg: str, forced: bytes | None) -> bytes:
        script = self.script
        if forced is not None:
            reply = forced
        elif script.tls_context is None or not self.esmtp:
            reply = self._r(502, "5.5.1", "STARTTLS not available")
        elif self.tls:
            reply = self._r(503, "5.5.1", "TLS already active")
        elif arg:
            reply = self._r(501, "5.5.4", "No parameters allowed on STARTTLS")
        else:
            reply = self._r(220, "2.0.0", "Ready to start TLS")
        if reply.startswith(b"220") and script.tls_context is not None and not self.tls:
            self._starttls_pending = True
        return reply

    # -- AUTH (RFC 4954) -----------------------------------------------------------------

    def _auth(self, arg: str, forced: bytes | None) -> bytes:
        script = self.script
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if forced is not None:
            return forced
        if not self._auth_offered():
            return self._r(502, "5.5.1", "AUTH not available")
        if self.authenticated_as is not None:
            return self._r(503, "5.5.1", "Already authenticated")
        if self.mail_from is not None:
            return self._r(503, "5.5.1", "AUTH not allowed during a mail transaction")
        if mechanism not in script.auth_mechanisms:
            return self._r(504, "5.5.4", "Unrecognized authentication type")
        if mechanism == "PLAIN":
            if initial:
                return self._auth_plain(initial)
            self._state = _AUTH_PLAIN
            return b"334 \r\n"
        if initial:
            return self._auth_login_user(initial)
        self._state = _AUTH_LOGIN_USER
        return b"334 VXNlcm5hbWU6\r\n"  # "Username:"

    def _auth_line(self, line: bytes) -> _Emit | None:
        state = self._state
        self._state = _COMMAND
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            reply = self._r(501, "5.7.0", "Authentication cancelled")
        elif state == _AUTH_PLAIN:
            reply = self._auth_plain(text)
        elif state == _AUTH_LOGIN_USER:
            reply = self._auth_login_user(text)
        else:
            reply = self._auth_login_password(text)
        return self._emit("AUTH", reply, None)

    def _auth_plain(self, encoded: str) -> bytes:
        decoded = _b64decode(encoded)
        if decoded is None or decoded.count("\0") != 2:
            return self._r(501, "5.5.2", "Cannot decode response")
        _authzid, user, password = decoded.split("\0")
        return self._auth_check(user, password)

    def _auth_login_user(self, encoded: str) -> bytes:
        user = _b64decode(encoded)
        if user is None:
            return self._r(501, "5.5.2", "Cannot decode response")
        self._login_user = user
        self._state = _AUTH_LOGIN_PASSWORD
        return b"334 UGFzc3dvcmQ6\r\n"  # "Password:"

    def _auth_login_password(self, encoded: str) -> bytes:
        password = _b64decode(encoded)
        if password is None:
            return self._r(501, "5.5.2", "Cannot decode response")
        return self._auth_check(self._login_user, password)

    def _auth_check(self, user: str, password: str) -> bytes:
        credentials = self.script.auth_credentials or {}
        if user in credentials and credentials[user] == password:
            self.authenticated_as = user
            return self._r(235, "2.7.0", "Authentication successful")
        return self._r(535, "5.7.8", "Authentication credentials invalid")


def _b64decode(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class SMTPServer:
    """The test SMTP server. Start it with ``await nursery.start(server.serve)`` or use
    :func:`serving`.

    Args:
        script: the behaviour; ``ServerScript()`` by default.
        host: an IP address literal to bind, 127.0.0.1 by default.
        port: 0 picks a free port; read it from ``server.address`` once started.
    """

    def __init__(
        self, script: ServerScript | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.script = script if script is not None else ServerScript()
        self.host = host
        self.port = port
        self.transactions: list[Transaction] = []
        self.connections: list[ConnectionRecord] = []
        self.stats = ServerStats()
        self._address: tuple[str, int] | None = None
        self._greylist: dict[tuple[str, str], float] = {}
        self._recent_mail: deque[float] = deque()
        self._progress = trio.lowlevel.ParkingLot()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._address is None:
            raise RuntimeError("the server is not listening yet")
        return self._address

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; report the bound ``(host, port)`` when ready."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if len(listeners) != 1:
            for listener in listeners:
                await listener.aclose()
            raise ValueError(f"host must be one IP address, got {self.host!r}")
        name = listeners[0].socket.getsockname()
        self._address = (str(name[0]), int(name[1]))
        task_status.started(self._address)
        await trio.serve_listeners(self._handle, listeners)

    def received(self) -> collections.Counter[str]:
        """Every recipient of an accepted message, with how many times it was received."""
        return collections.Counter(r for t in self.transactions for r in t.rcpt_to)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is checked after each message and close."""
        while not predicate():
            await self._progress.park()

    async def _handle(self, stream: trio.SocketStream) -> None:
        stats = self.stats
        stats.connections_opened += 1
        stats.connections_current += 1
        stats.connections_peak = max(stats.connections_peak, stats.connections_current)
        peer = stream.socket.getpeername()
        record = ConnectionRecord(
            id=stats.connections_opened,
            peer=(str(peer[0]), int(peer[1])),
            opened_at=trio.current_time(),
        )
        self.connections.append(record)
        session = Session(self, stream, record)
        try:
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away or failed the TLS handshake
        finally:
            stats.connections_current -= 1
            record.closed_at = trio.current_time()
            await trio.aclose_forcefully(session.stream)
            self._progress.unpark_all()

    # -- state shared by all sessions ----------------------------------------------------

    def accept(self, session: Session) -> None:
        """Count (and record) the message the session just finished."""
        stats = self.stats
        stats.messages += 1
        stats.recipients += len(session.rcpt_to)
        if self.script.record:
            now = trio.current_time()
            stats.message_times.append(now)
            self.transactions.append(
                Transaction(
                    mail_from=session.mail_from or "",
                    mail_params=session.mail_params,
                    rcpt_to=tuple(session.rcpt_to),
                    data=session.data,
                    connection=session.id,
                    tls=session.tls,
                    authenticated_as=session.authenticated_as,
                    time=now,
                    peer=session.record.peer[0],
                )
            )
        if self._progress:
            self._progress.unpark_all()

    def over_rate(self, script: ServerScript) -> bool:
        """Whether one more transaction would exceed the rate limit; counts it if not."""
        assert script.rate_limit is not None
        now = trio.current_time()
        recent = self._recent_mail
        while recent and recent[0] <= now - script.rate_window:
            recent.popleft()
        if len(recent) >= script.rate_limit:
            return True
        recent.append(now)
        return False

    def greylisted(self, sender: str, recipient: str, script: ServerScript) -> bool:
        """Whether this try of the (sender, recipient) pair is refused by greylisting."""
        key = (sender, _mailbox_key(recipient))
        now = trio.current_time()
        first = self._greylist.get(key)
        if first is None:
            self._greylist[key] = now
            return True
        return now - first < script.greylist_seconds


@contextlib.asynccontextmanager
async def serving(
    script: ServerScript | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SMTPServer]:
    """Run an :class:`SMTPServer` for the duration of an ``async with`` block."""
    server = SMTPServer(script, host=host, port=port)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Give the caller the body's own exception, not a group around it.
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        raise leaves[0] from leaves[0].__cause__


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
