"""Sans-IO SMTP client protocol (RFC 5321, RFC 2920 PIPELINING, RFC 3207 STARTTLS).

How this works, in the manner of h11: :class:`ClientProtocol` never touches a socket. The
I/O layer hands it a command and gets the bytes to write back (``send_*`` methods), feeds it
whatever bytes arrive (``receive_data``) and asks for the next complete reply
(``next_reply``), which comes paired with the command it answers.

* Replies (RFC 5321 §4.2) are parsed incrementally from arbitrary chunks, every complete
  line at once (:class:`ReplyParser`). Each line is at most ``MAX_LINE`` octets and a whole
  reply at most ``MAX_REPLY``; every line of a multi-line reply must carry the same code
  (§4.2.1). Only that framing and the code are checked as the bytes arrive; the text and the
  RFC 3463 enhanced status code (:attr:`Reply.enhanced_code`) are parsed when first read,
  which for a 250 to RCPT or a 354 is never. Anything malformed is a
  :class:`RemoteProtocolError`, which is a *temporary* failure: a broken server is never
  turned into a made-up 5xx.
* Commands are encoded only after every argument is checked, and message data is
  normalised and dot-stuffed so that no SMTP smuggling can reach the server: both are in
  :mod:`bulksend.smtp.encoding`.
* One table, :data:`_MOVES`, says which command may be sent in which state, what state
  sending it leads to, and what its success or failure reply changes. Commands that RFC 2920
  §3.1 says must end a pipelined group (EHLO, HELO, STARTTLS, AUTH, DATA, NOOP, QUIT) block
  further commands until their reply arrives; MAIL, RCPT, RSET and the end of message data
  may be followed at once when the server offers PIPELINING.
* A reply must be able to answer the command it is paired with (RFC 5321 §4.3.2): DATA's
  only go-ahead is 354 (a 2xx to DATA is never "delivered": only a 2xx to the final dot is,
  §4.1.1.4), AUTH may get 334, no other command a 3xx. Codes are judged by their first
  digit (§4.2): 299 is a success, 471 transient. Bytes that arrive when no reply is owed
  (an extra line queued behind a reply) are found before the next command is encoded.
  Either ends the session with a :class:`RemoteProtocolError`: read on, every later
  reply would answer the wrong command.
* After the 220 to STARTTLS every byte already buffered is discarded and the extension list
  forgotten (RFC 3207 §4.2): a server (or a man in the middle) that sends a forged reply in
  the same packet as its 220 has no effect.
"""

from __future__ import annotations

import base64
import enum
from collections import deque
from dataclasses import dataclass, field

from bulksend.smtp.encoding import Envelope, auth_plain, check_text, encode_data
from bulksend.smtp.errors import LocalProtocolError, RemoteProtocolError, reply_error
from bulksend.smtp.reply import Reply, Verb

# Reply and Verb live in bulksend.smtp.reply; they are imported from here too. What a
# command's arguments may hold and how message data is encoded: bulksend.smtp.encoding.
__all__ = [
    "MAX_LINE",
    "MAX_REPLY",
    "ClientProtocol",
    "Extensions",
    "Reply",
    "ReplyParser",
    "State",
    "Verb",
]

MAX_LINE = 8 * 1024
MAX_REPLY = 64 * 1024


# ----------------------------------------------------------------------------- replies


# Every reply code there is (2yz to 5yz, RFC 5321 §4.2), keyed by its three bytes on the wire:
# one lookup both checks a line's code and converts it.
_CODES = {b"%d" % code: code for code in range(200, 600)}
_SEPARATORS = (b" ", b"-", b"")


class ReplyParser:
    """Incremental parser: feed bytes in any chunks, take complete replies out.

    Replies are scanned in bulk: when the next one is asked for and none is ready, every
    complete line buffered is split off at once and framed (code, separator, length); the
    text of a reply is parsed only if someone reads it (:meth:`Reply.from_wire`). A malformed
    line is reported once the replies before it have been taken.
    """

    __slots__ = ("_buffer", "_error", "_lines", "_ready", "_size")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the multi-line reply being read
        self._size = 0  # its size so far
        self._ready: deque[Reply] = deque()
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def discard(self) -> None:
        """Forget everything buffered (RFC 3207 §4.2), replies already framed included."""
        self._buffer.clear()
        self._lines = []
        self._size = 0
        self._ready.clear()
        self._error = None

    @property
    def buffered(self) -> bool:
        """Whether bytes arrived that no reply taken out so far accounts for."""
        return bool(self._buffer or self._size or self._ready or self._error)

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: the next reply is malformed or too long.
        """
        if not self._ready:
            if self._error is None:
                self._scan()
            if not self._ready:
                if self._error is not None:
                    raise self._error
                return None
        return self._ready.popleft()

    def _scan(self) -> None:
        buffer = self._buffer
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > MAX_LINE:
                self._error = RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")
            return
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + 1]
        ready, multi, size = self._ready, self._lines, self._size
        for raw in lines:
            if len(raw) >= MAX_LINE:
                self._error = RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")
                return
            size += len(raw) + 1
            if size > MAX_REPLY:
                self._error = RemoteProtocolError(f"reply longer than {MAX_REPLY} octets")
                return
            line = raw[:-1] if raw.endswith(b"\r") else raw
            code = _CODES.get(line[:3])
            sep = line[3:4]
            if code is None or sep not in _SEPARATORS:
                self._error = RemoteProtocolError(f"malformed reply line {line[:80]!r}")
                return
            if multi and line[:3] != multi[0][:3]:
                self._error = RemoteProtocolError(
                    f"multi-line reply changed code from {multi[0][:3].decode()} "
                    f"to {line[:3].decode()}"
                )
                return
            if sep == b"-":
                multi.append(line)
                continue
            if multi:
                multi.append(line)
                ready.append(Reply.from_wire(code, tuple(multi)))
                multi = self._lines = []
            else:
                ready.append(Reply.from_wire(code, (line,)))
            size = 0
        self._size = size
        if len(buffer) > MAX_LINE:
            self._error = RemoteProtocolError(f"reply line longer than {MAX_LINE} octets")


# -------------------------------------------------------------------------- extensions


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the server advertised in its EHLO reply (RFC 5321 §4.1.1.1)."""

    pipelining: bool = False
    size: int | None = None  # RFC 1870; 0 means "no fixed limit"
    eightbitmime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    auth: frozenset[str] = field(default_factory=frozenset)
    enhancedstatuscodes: bool = False
    chunking: bool = False

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        """Parse the keyword lines of an EHLO reply (the first line is the server's name)."""
        found: dict[str, list[str]] = {}
        for line in reply.lines[1:]:
            words = line.split()
            if words:
                found[words[0].upper()] = words[1:]
        size: int | None = None
        if "SIZE" in found:
            args = found["SIZE"]
            size = int(args[0]) if args and args[0].isdigit() else 0
        mechanisms = [m.upper() for m in found.get("AUTH", [])]
        return cls(
            pipelining="PIPELINING" in found,
            size=size,
            eightbitmime="8BITMIME" in found,
            smtputf8="SMTPUTF8" in found,
            starttls="STARTTLS" in found,
            auth=frozenset(mechanisms),
            enhancedstatuscodes="ENHANCEDSTATUSCODES" in found,
            chunking="CHUNKING" in found,
        )


# ------------------------------------------------------------------------ state machine


class State(enum.Enum):
    """Where the client stands, as far as what it may send next."""

    GREETING = "awaiting greeting"
    REJECTED = "greeting refused"  # only QUIT is sensible
    NEED_HELLO = "needs EHLO/HELO"
    READY = "ready"
    MAIL = "in transaction, MAIL sent"
    RCPT = "in transaction, RCPT sent"
    DATA = "sending message data"
    TLS = "STARTTLS accepted, handshake pending"
    AUTH_CONTINUE = "AUTH continuation expected"
    WAITING = "awaiting reply to a group-ending command"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Move:
    """One row of the table: where sending leads, and what the reply then changes.

    ``on_success``/``on_failure`` apply only if nothing was sent after the command (with
    pipelining, a later command's reply decides instead). ``None`` means "no change".
    ``ends_group`` marks the commands RFC 2920 §3.1 says must end a pipelined group.
    """

    after_send: State
    on_success: State | None
    on_failure: State | None
    ends_group: bool


_S = State
_IDLE = (_S.READY, _S.MAIL, _S.RCPT)

_MOVES: dict[tuple[State, Verb], _Move] = {
    **{
        (s, Verb.EHLO): _Move(_S.WAITING, _S.READY, _S.NEED_HELLO, True)
        for s in (_S.NEED_HELLO, _S.READY)
    },
    **{
        (s, Verb.HELO): _Move(_S.WAITING, _S.READY, _S.NEED_HELLO, True)
        for s in (_S.NEED_HELLO, _S.READY)
    },
    (_S.READY, Verb.STARTTLS): _Move(_S.WAITING, _S.TLS, _S.READY, True),
    (_S.READY, Verb.AUTH): _Move(_S.WAITING, _S.READY, _S.READY, True),
    (_S.AUTH_CONTINUE, Verb.AUTH_RESPONSE): _Move(_S.WAITING, _S.READY, _S.READY, True),
    (_S.READY, Verb.MAIL): _Move(_S.MAIL, None, _S.READY, False),
    (_S.MAIL, Verb.RCPT): _Move(_S.RCPT, None, None, False),
    (_S.RCPT, Verb.RCPT): _Move(_S.RCPT, None, None, False),
    (_S.RCPT, Verb.DATA): _Move(_S.WAITING, _S.DATA, _S.READY, True),
    (_S.DATA, Verb.BODY): _Move(_S.READY, None, None, False),
    **{(s, Verb.RSET): _Move(_S.READY, None, None, False) for s in _IDLE},
    **{(s, Verb.NOOP): _Move(_S.WAITING, s, s, True) for s in _IDLE},
    **{
        (s, Verb.QUIT): _Move(_S.CLOSED, None, None, True)
        for s in (*_IDLE, _S.NEED_HELLO, _S.REJECTED, _S.AUTH_CONTINUE)
    },
}

_GREETING = _Move(_S.WAITING, _S.NEED_HELLO, _S.REJECTED, True)


# The intermediate (3yz) replies a command can get (RFC 5321 §4.3.2, RFC 4954 §4); a 2yz to
# DATA is no answer at all: only a 2yz to the final dot means "delivered" (§4.1.1.4).
_INTERMEDIATE: dict[Verb, int] = {Verb.DATA: 354, Verb.AUTH: 334, Verb.AUTH_RESPONSE: 334}


def _can_answer(verb: Verb, code: int) -> bool:
    """Whether a reply with ``code`` can be the answer to ``verb``.

    Every command may be refused (4yz, 5yz). DATA must get 354 (never a 2yz), AUTH a 2yz or
    334; every other command a 2yz. Anything else means the replies are out of step with
    the commands, or the server is broken: it must not be read as success.
    """
    digit = code // 100
    if digit in (4, 5):
        return True
    intermediate = _INTERMEDIATE.get(verb)
    if digit == 3:
        return code == intermediate
    return verb is not Verb.DATA


@dataclass(slots=True)
class _Pending:
    verb: Verb
    move: _Move
    seq: int  # position in the send order; the state is "ours" only if nothing followed


class ClientProtocol:
    """The client side of one SMTP session, with no I/O.

    Args:
        hostname: our name for EHLO/HELO (ASCII, checked for control characters).
    """

    def __init__(self, hostname: str) -> None:
        check_text("EHLO name", hostname)
        if not hostname or " " in hostname or not hostname.isascii():
            raise LocalProtocolError(
                f"EHLO name {hostname!r} is empty, has a space or is not ASCII"
            )
        self.hostname = hostname
        self.state = State.WAITING
        self.extensions = Extensions()
        self.tls_active = False
        self._parser = ReplyParser()
        self._pending: deque[_Pending] = deque([_Pending(Verb.GREETING, _GREETING, 0)])
        self._seq = 0

    # -- queries

    @property
    def pending(self) -> int:
        """How many replies are still owed to us."""
        return len(self._pending)

    @property
    def next_expected(self) -> Verb | None:
        """The command the next reply will answer, or None when nothing is owed."""
        return self._pending[0].verb if self._pending else None

    @property
    def out_of_step(self) -> bool:
        """Bytes arrived that no command asked for (nothing is owed): the session is over."""
        return not self._pending and self._parser.buffered

    @property
    def pipelining(self) -> bool:
        return self.extensions.pipelining

    # -- sending

    def _send(self, verb: Verb, line: bytes) -> bytes:
        move = _MOVES.get((self.state, verb))
        if move is None:
            raise LocalProtocolError(f"cannot send {verb.value} in state '{self.state.value}'")
        if self._pending and (not self.extensions.pipelining or self._pending[-1].move.ends_group):
            raise LocalProtocolError(
                f"cannot send {verb.value} while the reply to {self._pending[-1].verb.value} "
                "is outstanding"
            )
        if self.out_of_step:
            self._unsolicited(verb)
        self._seq += 1
        self._pending.append(_Pending(verb, move, self._seq))
        self.state = move.after_send
        return line

    def _unsolicited(self, verb: Verb) -> None:
        """Bytes arrived although no reply was owed: the session is out of step.

        Taking them as the answer to ``verb`` would shift every later reply onto the wrong
        command (a queued "250" read as DATA's answer, a recipient "delivered" that the
        server never got), so the session ends here. A lone 421 is the server closing
        (RFC 5321 §3.8) and is reported as such.

        Raises:
            ReplyError: the unsolicited reply is a 421.
            RemoteProtocolError: anything else.
        """
        self.state = State.CLOSED
        reply = self._parser.next_reply()
        if reply is not None and reply.code == 421 and not self._parser.buffered:
            raise reply_error(reply, verb)
        shown = "data" if reply is None else f"reply {reply}"
        raise RemoteProtocolError(f"unsolicited {shown} received before {verb.value}")

    def send_ehlo(self) -> bytes:
        return self._send(Verb.EHLO, b"EHLO " + self.hostname.encode("ascii", "strict") + b"\r\n")

    def send_helo(self) -> bytes:
        return self._send(Verb.HELO, b"HELO " + self.hostname.encode("ascii", "strict") + b"\r\n")

    def send_starttls(self) -> bytes:
        if self.tls_active:
            raise LocalProtocolError("TLS is already active")
        return self._send(Verb.STARTTLS, b"STARTTLS\r\n")

    def send_auth_plain(self, username: str, password: str) -> bytes:
        token = auth_plain(username, password)
        return self._send(Verb.AUTH, b"AUTH PLAIN " + token.encode("ascii") + b"\r\n")

    def send_auth_login(self, username: str) -> bytes:
        check_text("AUTH username", username)
        token = base64.b64encode(username.encode()).decode("ascii")
        return self._send(Verb.AUTH, b"AUTH LOGIN " + token.encode("ascii") + b"\r\n")

    def send_auth_response(self, secret: str) -> bytes:
        """Answer a 334 challenge with ``secret``, base64-encoded."""
        check_text("AUTH response", secret)
        token = base64.b64encode(secret.encode()).decode("ascii")
        return self._send(Verb.AUTH_RESPONSE, token.encode("ascii") + b"\r\n")

    def send_mail(
        self,
        sender: str,
        *,
        size: int | None = None,
        eightbitmime: bool = False,
        smtputf8: bool = False,
    ) -> bytes:
        """MAIL FROM with SIZE= (RFC 1870), BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531).

        Parameters are only added when the server advertised the extension; asking for
        8BITMIME or SMTPUTF8 from a server without it is refused here, before any byte.
        """
        envelope = Envelope(sender, (), eightbitmime=eightbitmime, smtputf8=smtputf8)
        return self.send_envelope_mail(envelope, size=size)

    def send_envelope_mail(self, envelope: Envelope, *, size: int | None = None) -> bytes:
        """MAIL FROM for ``envelope`` (its sender was checked when it was made), as
        :meth:`send_mail`."""
        ext = self.extensions
        if envelope.smtputf8 and not ext.smtputf8:
            raise LocalProtocolError(
                "message needs SMTPUTF8 but the server does not offer it", enhanced_code="5.6.7"
            )
        if envelope.eightbitmime and not ext.eightbitmime:
            raise LocalProtocolError(
                "message needs 8BITMIME but the server does not offer it", enhanced_code="5.6.3"
            )
        if envelope.sender_refusal is not None:
            raise envelope.sender_refusal
        if size is not None and ext.size and size > ext.size:
            raise LocalProtocolError(
                f"message of {size} octets exceeds server SIZE {ext.size}", enhanced_code="5.3.4"
            )
        line = f"MAIL FROM:<{envelope.sender}>"
        if size is not None and ext.size is not None:
            line += f" SIZE={size}"
        if envelope.eightbitmime:
            line += " BODY=8BITMIME"
        if envelope.smtputf8:
            line += " SMTPUTF8"
        return self._send(Verb.MAIL, line.encode("utf-8") + b"\r\n")

    def send_rcpt(self, recipient: str, *, smtputf8: bool = False) -> bytes:
        return self.send_envelope_rcpt(Envelope("", (recipient,), smtputf8=smtputf8), 0)

    def send_envelope_rcpt(self, envelope: Envelope, index: int) -> bytes:
        """RCPT TO for ``envelope``'s recipient number ``index`` (checked when it was made).

        Raises:
            LocalProtocolError: that recipient's address was refused.
        """
        refusal = envelope.refusals[index]
        if refusal is not None:
            raise refusal
        return self._send(Verb.RCPT, f"RCPT TO:<{envelope.recipients[index]}>\r\n".encode())

    def send_data(self) -> bytes:
        return self._send(Verb.DATA, b"DATA\r\n")

    def send_body(self, body: bytes) -> bytes:
        """The message, encoded by :func:`encode_data` (an empty body sends the lone ".")."""
        return self._send(Verb.BODY, encode_data(body))

    def send_rset(self) -> bytes:
        return self._send(Verb.RSET, b"RSET\r\n")

    def send_noop(self) -> bytes:
        return self._send(Verb.NOOP, b"NOOP\r\n")

    def send_quit(self) -> bytes:
        return self._send(Verb.QUIT, b"QUIT\r\n")

    # -- receiving

    def receive_data(self, data: bytes | bytearray) -> None:
        self._parser.feed(data)

    def next_reply(self) -> tuple[Verb, Reply] | None:
        """The next reply and the command it answers, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: a malformed reply, or a reply nobody asked for (other than
                a 421, which a server may send at any time, RFC 5321 §3.8).
        """
        reply = self._parser.next_reply()
        if reply is None:
            return None
        code = reply.code
        if not self._pending:
            self.state = State.CLOSED
            if code == 421:
                return Verb.QUIT, reply
            raise RemoteProtocolError(f"unsolicited reply {reply}")
        pending = self._pending.popleft()
        verb = pending.verb
        if code == 421 and verb is not Verb.QUIT:
            # The server is closing: nothing more will be answered.
            self.state = State.CLOSED
            self._pending.clear()
            return verb, reply
        if not _can_answer(verb, code):
            self.state = State.CLOSED
            self._pending.clear()
            raise RemoteProtocolError(f"reply {reply} cannot answer {verb.value}")
        # RFC 5321 §4.2: judged by the first digit; DATA's only positive reply is 354.
        success = code == 354 if verb is Verb.DATA else 200 <= code < 300
        if verb is Verb.AUTH or verb is Verb.AUTH_RESPONSE:
            if code == 334:
                self.state = State.AUTH_CONTINUE
                return verb, reply
        elif verb is Verb.EHLO and success:
            self.extensions = Extensions.from_ehlo(reply)
        elif verb is Verb.STARTTLS and success:
            # RFC 3207 §4.2: anything that came with the 220 is not to be trusted.
            self._parser.discard()
        if pending.seq == self._seq:
            target = pending.move.on_success if success else pending.move.on_failure
            if target is not None:
                self.state = target
        return verb, reply

    def tls_started(self) -> None:
        """The I/O layer finished the TLS handshake: forget the past, EHLO again (RFC 3207)."""
        if self.state is not State.TLS:
            raise LocalProtocolError(f"no STARTTLS was accepted (state '{self.state.value}')")
        self._parser.discard()
        self.extensions = Extensions()
        self.tls_active = True
        self.state = State.NEED_HELLO

    def connection_lost(self) -> None:
        """The transport is gone; every owed reply is lost."""
        self._pending.clear()
        self.state = State.CLOSED
