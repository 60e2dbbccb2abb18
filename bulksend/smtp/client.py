"""The trio SMTP client: a thin I/O layer over :mod:`bulksend.smtp.protocol`.

How this works: :class:`SMTPClient` owns one stream, the deadlines and TLS. Every network
step runs under a deadline taken from :class:`~bulksend.config.Timeouts` (RFC 5321
§4.5.3.2 defaults) that covers the *whole* reply, so a server dripping a byte a second does
not escape it. trio's exceptions are translated into ours in exactly one place,
:meth:`SMTPClient._io`; any error or cancellation there marks the connection unusable.

A transaction (:class:`Transaction`) is an envelope plus message bytes. With PIPELINING
(RFC 2920) MAIL, every RCPT and DATA go out in one write, behind the previous message's
held data, and that write and every reply it is owed run under one cancel scope, re-armed
with the stage's deadline each time a reply has to be waited for (replies already buffered
are read without any). :meth:`SMTPClient.submit` returns as soon as the message data is
written (or held): the final-dot reply is read while the *next* transaction's commands are
already on their way, so the connection never idles.
:meth:`SMTPClient.drain` collects the replies still owed. Per-recipient results never raise:
each recipient ends with ``error=None`` (the server's 2xx to the final dot) or an
:class:`~bulksend.smtp.errors.SMTPError` saying why not, and a lost final reply is an
:class:`~bulksend.smtp.errors.InDoubtError` because the message may have been delivered.
"""

from __future__ import annotations

import contextlib
import ssl
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

import trio

from bulksend.config import Timeouts, TlsMode
from bulksend.smtp.encoding import Envelope
from bulksend.smtp.errors import (
    InDoubtError,
    LocalProtocolError,
    RemoteProtocolError,
    SMTPConnectionError,
    SMTPError,
    SMTPTimeoutError,
    StartTLSUnavailable,
    TLSError,
    reply_error,
)
from bulksend.smtp.protocol import ClientProtocol, Extensions, Reply, State, Verb

_RECEIVE_SIZE = 64 * 1024
# Above this many bytes of pipelined commands, write and read concurrently so that a server
# which stops reading until we read its replies cannot deadlock us (RFC 2920 §3.5).
_CONCURRENT_WRITE = 16 * 1024
# Message data is written in blocks, each under the "data block" deadline (§4.5.3.2.5).
_DATA_BLOCK = 256 * 1024

__all__ = ["Envelope", "RecipientResult", "SMTPClient", "Transaction"]


@dataclass(slots=True)
class RecipientResult:
    """How one recipient of a transaction ended.

    ``error`` is None when the server accepted the message for this recipient; ``reply`` is
    the reply that decided it, when there was one.
    """

    address: str
    error: SMTPError | None = None
    reply: Reply | None = None

    @property
    def delivered(self) -> bool:
        return self.error is None and self.reply is not None


@dataclass(slots=True)
class Transaction:
    """One message to one or more recipients over one connection."""

    envelope: Envelope
    data: bytes
    results: list[RecipientResult] = field(default_factory=list)
    data_sent: bool = False  # the message, terminator included, was handed to the kernel
    done: bool = False
    _accepted: list[RecipientResult] = field(default_factory=list)
    _unresolved: list[RecipientResult] = field(default_factory=list)

    def _begin(self) -> None:
        self.results = [RecipientResult(r) for r in self.envelope.recipients]
        self._unresolved = list(self.results)
        self._accepted = []

    def _fail(self, error: SMTPError) -> None:
        """Every recipient not yet decided ends with ``error``."""
        for result in self._unresolved:
            result.error = error
        self._unresolved = []
        self.done = True


class _Deadline:
    """Network steps under one deadline, re-armed for each step (:meth:`rearm`): the one
    place trio's errors become ours.

    Used as ``with client._io(stage, seconds) as deadline:``. Any error or cancellation
    inside marks the connection broken. A class rather than a generator-based context
    manager: a pipelined batch (its write and every reply it is owed) enters one per message.
    """

    __slots__ = ("_client", "scope", "seconds", "stage")

    def __init__(self, client: SMTPClient, stage: Verb | str, seconds: float) -> None:
        self._client = client
        self.stage = stage
        self.seconds = seconds
        self.scope = trio.CancelScope(deadline=trio.current_time() + seconds)

    def rearm(self, stage: Verb | str, seconds: float) -> None:
        """The next step (``stage``) must be done within ``seconds`` from now."""
        self.stage = stage
        self.seconds = seconds
        self.scope.deadline = trio.current_time() + seconds

    def __enter__(self) -> _Deadline:
        self.scope.__enter__()
        return self

    def __exit__(
        self,
        etype: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.scope.__exit__(etype, exc, tb)
        except BaseException:
            self._client._broken()
            raise
        if self.scope.cancelled_caught:
            self._client._broken()
            raise SMTPTimeoutError(f"{self.stage}: not complete within {self.seconds:g}s") from None
        if exc is None:
            return
        self._client._broken()
        stage = self.stage
        if isinstance(exc, ssl.SSLError):
            raise TLSError(f"{stage}: TLS failure: {exc}") from exc
        if isinstance(exc, trio.BrokenResourceError):
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError):
                raise TLSError(f"{stage}: TLS failure: {cause}") from exc
            raise SMTPConnectionError(f"{stage}: connection broken: {cause or exc}") from exc
        if isinstance(exc, trio.ClosedResourceError | OSError) and not isinstance(exc, SMTPError):
            raise SMTPConnectionError(f"{stage}: {exc}") from exc


class SMTPClient:
    """One SMTP session over a trio stream.

    Build it with :meth:`connect` (or wrap an existing stream), then :meth:`handshake`,
    optionally :meth:`authenticate`, then :meth:`submit` transactions.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        hostname: str,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._stream = stream
        self._proto = ClientProtocol(hostname)
        self.timeouts = timeouts or Timeouts()
        self._usable = True
        self.messages_sent = 0
        self.greeting: Reply | None = None
        self._in_flight: deque[Transaction] = deque()
        # A transaction ended after MAIL was accepted but before the data: the server may
        # still hold it (Postfix answers the next MAIL with "503 nested MAIL"), so the next
        # transaction starts with RSET, pipelined in front of its MAIL.
        self._needs_rset = False
        # Message data encoded but not yet written (``submit(hold=True)``): it goes out in
        # front of the next write, so a message's data and the next transaction's commands
        # share one send.
        self._held: list[Transaction] = []
        self._held_data: list[bytes] = []
        self._deadlines: tuple[Timeouts, dict[Verb, float]] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int = 25,
        *,
        hostname: str,
        timeouts: Timeouts | None = None,
        local_address: str | None = None,
    ) -> SMTPClient:
        """Open a TCP connection to ``host`` (an address or a name) within ``timeouts.connect``,
        from ``local_address`` when given (an egress source), else the system's choice."""
        timeouts = timeouts or Timeouts()
        try:
            with trio.fail_after(timeouts.connect):
                stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        except trio.TooSlowError:
            raise SMTPTimeoutError(
                f"connect to {host}:{port}: no answer within {timeouts.connect:g}s"
            ) from None
        except OSError as exc:
            raise SMTPConnectionError(f"connect to {host}:{port}: {exc}") from exc
        return cls(stream, hostname=hostname, timeouts=timeouts)

    # ------------------------------------------------------------------ properties

    @property
    def usable(self) -> bool:
        """False once the connection failed, the server closed it or fell out of step."""
        return self._usable and self._proto.state is not State.CLOSED

    @property
    def extensions(self) -> Extensions:
        return self._proto.extensions

    @property
    def tls_active(self) -> bool:
        return self._proto.tls_active

    def peer_chain(self) -> list[bytes]:
        """The certificates the server sent in the TLS handshake (DER, its own first);
        empty without TLS. Read whether or not they were verified (DANE checks them itself).
        """
        stream = self._stream
        if not isinstance(stream, trio.SSLStream):
            return []
        ssl_object = stream._ssl_object  # trio forwards neither chain accessor
        if hasattr(ssl_object, "get_unverified_chain"):  # Python 3.13
            return list(ssl_object.get_unverified_chain())
        # Python 3.11-3.12 have the accessor on the private _ssl object only.
        chain = ssl_object._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
        return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in chain]  # type: ignore[attr-defined]

    @property
    def in_flight(self) -> int:
        """Transactions whose data is sent but whose final reply has not been read."""
        return len(self._in_flight)

    # ------------------------------------------------------------------------- I/O

    def _deadline(self, verb: Verb) -> float:
        t = self.timeouts
        if self._deadlines is not None and self._deadlines[0] is t:
            return self._deadlines[1][verb]
        table = {
            Verb.GREETING: t.greeting,
            Verb.EHLO: t.ehlo,
            Verb.HELO: t.ehlo,
            Verb.STARTTLS: t.starttls,
            Verb.AUTH: t.auth,
            Verb.AUTH_RESPONSE: t.auth,
            Verb.MAIL: t.mail,
            Verb.RCPT: t.rcpt,
            Verb.DATA: t.data_init,
            Verb.BODY: t.final_dot,
            Verb.RSET: t.rset,
            Verb.NOOP: t.rset,
            Verb.QUIT: t.quit,
        }
        self._deadlines = (t, table)  # ``timeouts`` is frozen; rebuilt if replaced
        return table[verb]

    def _io(self, stage: Verb | str, seconds: float) -> _Deadline:
        """Run network steps under one deadline (:class:`_Deadline`)."""
        return _Deadline(self, stage, seconds)

    def _broken(self) -> None:
        self._usable = False
        self._proto.connection_lost()

    def _with_held(self, data: bytes) -> bytes:
        """Held message data first, then ``data``, for one send.

        The held messages count as sent from here on: if this write fails part-way, they
        may have reached the server (in doubt), never "not sent".
        """
        for txn in self._held:
            txn.data_sent = True
        data = b"".join([*self._held_data, data])
        self._held, self._held_data = [], []
        return data

    async def _send(self, stage: Verb | str, seconds: float, data: bytes) -> None:
        if self._held:
            data = self._with_held(data)
            seconds = max(seconds, self.timeouts.data_block)
        with self._io(stage, seconds):
            await self._stream.send_all(data)

    async def flush(self) -> list[Transaction]:
        """Write any held message data now (before waiting on anything else).

        Like :meth:`drain`, never raises for a connection failure: the transactions that
        failure ends are returned.
        """
        done: list[Transaction] = []
        if self._held:
            try:
                await self._send(Verb.BODY, self.timeouts.data_block, b"")
            except SMTPError as exc:
                self._abandon(exc, done)
        return done

    async def _reply(self, deadline: _Deadline | None = None) -> tuple[Verb, Reply]:
        """Read the next reply, under the deadline of the command it answers.

        A reply already buffered (a pipelining server answers a batch in one segment) needs
        no deadline. Otherwise ``deadline`` (the batch's) is re-armed for it, or a deadline
        of its own is set; either covers the whole reply, however slowly it drips in.
        """
        proto = self._proto
        verb = proto.next_expected
        if verb is None:
            self._usable = False
            raise SMTPConnectionError("the server closed the session")
        if deadline is None:
            try:
                item = proto.next_reply()
            except BaseException:
                self._broken()
                raise
            if item is None:
                with self._io(f"reading reply to {verb}", self._deadline(verb)):
                    item = await self._receive(verb)
        else:
            item = proto.next_reply()
            if item is None:
                deadline.rearm(f"reading reply to {verb}", self._deadline(verb))
                item = await self._receive(verb)
        if item[1].code == 421:
            self._usable = False
        return item

    async def _receive(self, verb: Verb) -> tuple[Verb, Reply]:
        """Receive until the reply to ``verb`` is complete (inside :meth:`_io`)."""
        proto = self._proto
        while True:
            data = await self._stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise SMTPConnectionError(
                    f"server closed the connection while we awaited its reply to {verb}"
                )
            proto.receive_data(data)
            item = proto.next_reply()
            if item is not None:
                return item

    # ---------------------------------------------------------------- session setup

    async def handshake(
        self,
        *,
        tls: TlsMode = TlsMode.OPPORTUNISTIC,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Greeting, EHLO (HELO if refused), then STARTTLS as the policy says.

        Raises:
            ReplyError: the greeting or HELO was refused.
            TLSError: TLS is required and unavailable, or the handshake failed (the
                connection is then unusable; an opportunistic caller reconnects without TLS).
        """
        _verb, greeting = await self._reply()
        self.greeting = greeting
        if not greeting.is_success:
            self._usable = False
            raise reply_error(greeting, Verb.GREETING)
        await self._hello()
        if tls is TlsMode.NONE:
            return
        if not self.extensions.starttls:
            if tls is TlsMode.REQUIRED:
                self._usable = False
                raise StartTLSUnavailable("TLS is required but the server does not offer STARTTLS")
            return
        await self._starttls(ssl_context or ssl.create_default_context(), server_hostname, tls)

    async def _hello(self) -> None:
        await self._send(Verb.EHLO, self.timeouts.ehlo, self._proto.send_ehlo())
        _verb, reply = await self._reply()
        if reply.is_success:
            self._require_in_step(Verb.EHLO)
            return
        if reply.code == 421 or self._proto.state is not State.NEED_HELLO:
            raise reply_error(reply, Verb.EHLO)
        await self._send(Verb.HELO, self.timeouts.ehlo, self._proto.send_helo())
        _verb, reply = await self._reply()
        if not reply.is_success:
            self._usable = False
            raise reply_error(reply, Verb.HELO)
        self._require_in_step(Verb.HELO)

    async def _starttls(
        self, context: ssl.SSLContext, server_hostname: str | None, tls: TlsMode
    ) -> None:
        await self._send(Verb.STARTTLS, self.timeouts.starttls, self._proto.send_starttls())
        _verb, reply = await self._reply()
        if not reply.is_success:
            if tls is TlsMode.REQUIRED or reply.code == 421:
                self._usable = False
                raise StartTLSUnavailable(f"TLS is required but STARTTLS was refused: {reply}")
            return
        stream = trio.SSLStream(self._stream, context, server_hostname=server_hostname)
        with self._io("TLS handshake", self.timeouts.starttls):
            await stream.do_handshake()
        self._stream = stream
        self._proto.tls_started()
        await self._hello()

    async def authenticate(self, username: str, password: str) -> None:
        """AUTH PLAIN, or LOGIN when PLAIN is not offered; only over TLS.

        Neither the password nor its encoding ever appears in an error message.

        Raises:
            LocalProtocolError: no TLS, or no mechanism we support is offered.
            ReplyError: the server refused the credentials (535 is permanent).
        """
        if not self.tls_active:
            raise LocalProtocolError("refusing AUTH over a connection without TLS")
        mechanisms = self.extensions.auth
        if "PLAIN" in mechanisms:
            await self._send(
                Verb.AUTH, self.timeouts.auth, self._proto.send_auth_plain(username, password)
            )
            _verb, reply = await self._reply()
        elif "LOGIN" in mechanisms:
            await self._send(Verb.AUTH, self.timeouts.auth, self._proto.send_auth_login(username))
            _verb, reply = await self._reply()
            if reply.code == 334:
                await self._send(
                    Verb.AUTH_RESPONSE, self.timeouts.auth, self._proto.send_auth_response(password)
                )
                _verb, reply = await self._reply()
        else:
            raise LocalProtocolError(
                f"server offers no AUTH mechanism we support (offered: {sorted(mechanisms)})"
            )
        if not reply.is_success:
            if self._proto.state is State.AUTH_CONTINUE:
                self._usable = False  # a challenge we cannot answer: the session is stuck
            raise reply_error(reply, Verb.AUTH)
        self._require_in_step(Verb.AUTH)

    # ----------------------------------------------------------------- transactions

    async def submit(self, txn: Transaction, *, hold: bool = False) -> list[Transaction]:
        """Send one transaction; return every transaction that completed meanwhile.

        ``hold=True`` (with PIPELINING, for a message that fits one data block) keeps the
        message data back until the next write: the caller promises another :meth:`submit`,
        a :meth:`flush` or a :meth:`drain` soon, and calls :meth:`flush` before waiting on
        anything else.

        With PIPELINING the returned list holds earlier transactions whose final reply
        arrived, and ``txn`` itself only if it ended before its data was sent; otherwise
        ``txn`` stays in flight until a later :meth:`submit` or :meth:`drain`. Without
        PIPELINING ``txn`` is always complete on return. Never raises for a failure of the
        transaction or of the connection: those end up in the recipients' results (check
        :attr:`usable` afterwards). Cancellation propagates; transactions with
        ``data_sent`` and not ``done`` are then in doubt.
        """
        txn._begin()
        if not self.usable:
            txn._fail(SMTPConnectionError("connection is no longer usable"))
            return [txn]
        done: list[Transaction] = []
        try:
            await self._transact(txn, done, hold=hold)
        except SMTPError as exc:
            self._abandon(exc, done)
            if not txn.done and txn not in self._in_flight:
                txn._fail(exc)
                done.append(txn)
        if not self._proto.pipelining:
            done.extend(await self.drain())
        self._in_step()
        return done

    async def _transact(self, txn: Transaction, done: list[Transaction], *, hold: bool) -> None:
        env = txn.envelope
        proto = self._proto
        # Addresses were checked once, when the envelope was made: a refused one fails alone.
        valid: list[RecipientResult] = []
        indexes: list[int] = []
        for index, (result, refusal) in enumerate(zip(txn.results, env.refusals, strict=True)):
            if refusal is None:
                valid.append(result)
                indexes.append(index)
            else:
                result.error = refusal
        txn._unresolved = list(valid)
        if not valid:
            self._finish(txn, done)
            return
        reset = b""
        if self._needs_rset:
            self._needs_rset = False
            if proto.pipelining:
                reset = proto.send_rset()  # goes out in front of MAIL, in the same write
            else:
                await self._write_and_read(proto.send_rset(), 1, txn, iter(()), done)
        try:
            mail = proto.send_envelope_mail(env, size=len(txn.data))
        except LocalProtocolError as exc:
            txn._fail(exc)
            done.append(txn)
            if reset:
                await self._write_and_read(reset, len(self._in_flight) + 1, txn, iter(()), done)
            return
        self._needs_rset = True  # until the message data has been sent
        rcpts = iter(valid)
        if proto.pipelining:
            batch = b"".join(
                [
                    reset,
                    mail,
                    *[proto.send_envelope_rcpt(env, i) for i in indexes],
                    proto.send_data(),
                ]
            )
            owed = len(self._in_flight) + len(valid) + 2 + (1 if reset else 0)
            await self._write_and_read(batch, owed, txn, rcpts, done)
        else:
            await self._write_and_read(mail, 1, txn, rcpts, done)
            if txn.done:
                return
            for i in indexes:
                await self._write_and_read(proto.send_envelope_rcpt(env, i), 1, txn, rcpts, done)
            if not txn._accepted:
                self._finish(txn, done)
                return
            await self._write_and_read(proto.send_data(), 1, txn, rcpts, done)
        if not txn.done:
            await self._send_body(txn, hold=hold and proto.pipelining)

    async def _write_and_read(
        self,
        commands: bytes,
        owed: int,
        txn: Transaction,
        rcpts: Iterator[RecipientResult],
        done: list[Transaction],
    ) -> None:
        """Write commands (behind any held data), then read ``owed`` replies, all under one
        deadline re-armed per step.

        A big batch is written by a child task while the replies are read (RFC 2920 §3.5: a
        server may stop reading until we read its replies).
        """
        if len(commands) <= _CONCURRENT_WRITE:
            seconds = self.timeouts.mail
            if self._held:
                commands = self._with_held(commands)
                seconds = max(seconds, self.timeouts.data_block)
            with self._io("commands", seconds) as deadline:
                await self._stream.send_all(commands)
                await self._envelope_replies(deadline, owed, txn, rcpts, done)
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send, "commands", self.timeouts.mail, commands)
                await self._envelope_replies(None, owed, txn, rcpts, done)
        except BaseExceptionGroup as group:
            # The writer or the reader failed: one SMTP error, as from the plain path.
            failures, rest = group.split(SMTPError)
            if failures is None or rest is not None:
                raise
            first: BaseException = failures
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    async def _envelope_replies(
        self,
        deadline: _Deadline | None,
        count: int,
        txn: Transaction,
        rcpts: Iterator[RecipientResult],
        done: list[Transaction],
    ) -> None:
        """Read ``count`` replies: earlier final-dot replies, then MAIL, RCPTs and DATA.

        Replies that belong to ``txn`` after it is already over (a refused MAIL followed by
        pipelined RCPTs and DATA) are read and ignored, keeping the session in step.

        Raises:
            SMTPError: the server sent 421 or the connection failed.
        """
        for _ in range(count):
            verb, reply = await self._reply(deadline)
            code = reply.code
            if verb is Verb.BODY:
                self._complete(self._in_flight.popleft(), reply, done)
            elif code == 421:
                pass  # handled below, after any final reply it answered
            elif verb is Verb.RCPT:
                result = next(rcpts)
                if not txn.done:
                    result.reply = reply
                    if 200 <= code < 300:
                        txn._accepted.append(result)
                    else:
                        result.error = reply_error(reply, Verb.RCPT)
                        txn._unresolved.remove(result)
            elif verb is Verb.MAIL:
                if not 200 <= code < 300:
                    txn._fail(reply_error(reply, Verb.MAIL))
                    done.append(txn)
            elif verb is Verb.DATA:
                if code == 354 and (txn.done or not txn._accepted):
                    # RFC 2920 §3.1: DATA got 354 although no recipient was accepted: end
                    # it with a lone "." and ignore that reply.
                    await self._lone_dot(deadline)
                    self._needs_rset = False
                    if not txn.done:
                        self._finish(txn, done)
                elif code != 354 and not txn.done:
                    txn._fail(reply_error(reply, Verb.DATA))
                    done.append(txn)
            if code == 421:
                raise reply_error(reply, verb)

    async def _lone_dot(self, deadline: _Deadline | None) -> None:
        lone_dot = self._proto.send_body(b"")
        if deadline is None:
            await self._send(Verb.BODY, self.timeouts.data_block, lone_dot)
        else:
            deadline.rearm(Verb.BODY, self.timeouts.data_block)
            await self._stream.send_all(lone_dot)
        await self._reply(deadline)

    def _finish(self, txn: Transaction, done: list[Transaction]) -> None:
        txn.done = True
        txn._unresolved = []
        done.append(txn)

    async def _send_body(self, txn: Transaction, *, hold: bool) -> None:
        payload = self._proto.send_body(txn.data)
        self._needs_rset = False
        self.messages_sent += 1
        self._in_flight.append(txn)
        if hold and len(payload) <= _DATA_BLOCK:
            self._held.append(txn)
            self._held_data.append(payload)
            return
        for start in range(0, len(payload), _DATA_BLOCK):
            await self._send(
                Verb.BODY, self.timeouts.data_block, payload[start : start + _DATA_BLOCK]
            )
        txn.data_sent = True

    def _complete(self, txn: Transaction, reply: Reply, done: list[Transaction]) -> None:
        error = None if reply.is_success else reply_error(reply, Verb.BODY)
        for result in txn._accepted:
            result.reply = reply
            result.error = error
        txn._unresolved = []
        txn.done = True
        done.append(txn)

    def _abandon(self, error: SMTPError, done: list[Transaction]) -> None:
        """The connection failed: every transaction whose data went out is in doubt."""
        self._held, self._held_data = [], []
        while self._in_flight:
            txn = self._in_flight.popleft()
            if txn.data_sent:
                txn._fail(InDoubtError(f"final reply lost: {error}"))
            else:
                txn._fail(SMTPConnectionError(f"message data not sent: {error}"))
            done.append(txn)

    async def drain(self) -> list[Transaction]:
        """Read the final replies of every transaction still in flight."""
        done = await self.flush()
        try:
            while self._in_flight:
                _verb, reply = await self._reply()
                self._complete(self._in_flight.popleft(), reply, done)
                if reply.code == 421:
                    raise reply_error(reply, Verb.BODY)
        except SMTPError as exc:
            self._abandon(exc, done)
        self._in_step()
        return done

    def _in_step(self) -> bool:
        """False, and the connection broken, when bytes arrived beyond every owed reply.

        An extra reply line in the same read means the server is out of step with us. The
        replies already read stand, but the connection is never used again: whatever it
        said next could be taken as the answer to the wrong command (RFC 5321 §4.1.1.4:
        only a 2xx to the final dot is a delivery).
        """
        if self._proto.out_of_step:
            self._broken()
            return False
        return True

    def _require_in_step(self, stage: Verb) -> None:
        if not self._in_step():
            raise RemoteProtocolError(f"unsolicited data after the reply to {stage}")

    async def send(self, envelope: Envelope, data: bytes) -> list[RecipientResult]:
        """Send one message and wait for its result (no pipelining across messages)."""
        txn = Transaction(envelope, data)
        await self.submit(txn)
        await self.drain()
        return txn.results

    # ------------------------------------------------------------ session commands

    async def rset(self) -> Reply:
        await self._send(Verb.RSET, self.timeouts.rset, self._proto.send_rset())
        return (await self._reply())[1]

    async def noop(self) -> Reply:
        await self._send(Verb.NOOP, self.timeouts.rset, self._proto.send_noop())
        return (await self._reply())[1]

    async def quit(self) -> None:
        """Politely end the session (best effort), then close."""
        try:
            if self.usable:
                await self.drain()
            if self.usable:
                await self._send(Verb.QUIT, self.timeouts.quit, self._proto.send_quit())
                await self._reply()
        except SMTPError:
            pass
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close now; a healthy, idle session still says QUIT first (RFC 5321 §4.1.1.10).

        Idle means no reply is owed and no data held, so QUIT cannot land inside a
        transaction. This may run after a cancellation (a stop, a deadline): QUIT is written
        within its deadline, shielded, and its reply is not waited for. A broken session is
        closed without a word.
        """
        if self.usable and not self._held and self._proto.pending == 0:
            with trio.CancelScope(shield=True), contextlib.suppress(SMTPError):
                await self._send(Verb.QUIT, self.timeouts.quit, self._proto.send_quit())
        self._usable = False
        self._proto.connection_lost()
        with trio.move_on_after(self.timeouts.quit) as scope:
            scope.shield = True
            await trio.aclose_forcefully(self._stream)
