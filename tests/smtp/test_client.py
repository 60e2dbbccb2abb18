"""The trio client against bulksend's fault-injecting test server, over real loopback sockets."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.config import Timeouts, TlsMode
from bulksend.delivery.outcome import classify_error
from bulksend.journal import Kind
from bulksend.smtp.client import Envelope, RecipientResult, SMTPClient, Transaction
from bulksend.smtp.errors import (
    InDoubtError,
    LocalProtocolError,
    PermanentReplyError,
    RemoteProtocolError,
    SMTPConnectionError,
    SMTPTimeoutError,
    TLSError,
    TransientReplyError,
)
from bulksend.testing.smtp import (
    GARBAGE_REPLY,
    HANG,
    MISMATCHED_REPLY,
    OVERLONG_REPLY,
    Hook,
    Respond,
    ServerScript,
    Session,
    SMTPServer,
    serving,
)
from tests.helpers.tls import client_context, server_context

FAST = Timeouts(
    connect=5,
    greeting=5,
    ehlo=5,
    starttls=5,
    auth=5,
    mail=5,
    rcpt=5,
    data_init=5,
    data_block=5,
    final_dot=5,
    rset=5,
    quit=1,
)


class RecordingStream(trio.abc.Stream):
    """Wraps a stream and remembers each write, to assert on what went out in one send."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def open_client(
    server: SMTPServer, *, timeouts: Timeouts = FAST
) -> tuple[SMTPClient, RecordingStream]:
    host, port = server.address
    stream = RecordingStream(await trio.open_tcp_stream(host, port))
    return SMTPClient(stream, hostname="client.test", timeouts=timeouts), stream


@pytest.fixture
async def server() -> AsyncIterator[SMTPServer]:
    async with serving(ServerScript(unknown_mailboxes=frozenset({"nobody@x.test"}))) as s:
        yield s


def env(*rcpts: str, sender: str = "bounce@s.test") -> Envelope:
    return Envelope(sender, rcpts)


async def test_pipelined_envelope_goes_out_in_one_write(server: SMTPServer) -> None:
    with trio.fail_after(10):
        client, stream = await open_client(server)
        await client.handshake(tls=TlsMode.NONE)
        assert client.extensions.pipelining
        results = await client.send(env("a@x.test", "nobody@x.test", "b@x.test"), b"Hi\n")
        await client.quit()
    assert stream.writes[1] == (
        b"MAIL FROM:<bounce@s.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<nobody@x.test>\r\n"
        b"RCPT TO:<b@x.test>\r\nDATA\r\n"
    )
    assert [(r.address, r.delivered) for r in results] == [
        ("a@x.test", True),
        ("nobody@x.test", False),
        ("b@x.test", True),
    ]
    bad = results[1].error
    assert isinstance(bad, PermanentReplyError)
    assert (bad.code, bad.enhanced_code, bad.stage) == (550, "5.1.1", "RCPT")
    assert [(t.rcpt_to, t.data) for t in server.transactions] == [
        (("a@x.test", "b@x.test"), b"Hi\r\n")
    ]


async def test_next_transaction_rides_behind_the_final_dot(server: SMTPServer) -> None:
    with trio.fail_after(10):
        client, stream = await open_client(server)
        await client.handshake(tls=TlsMode.NONE)
        first = Transaction(env("a@x.test"), b"one")
        second = Transaction(env("b@x.test"), b"two")
        assert await client.submit(first) == []  # data written, final reply not yet read
        assert client.in_flight == 1
        assert first.data_sent
        assert not first.done
        completed = await client.submit(second)
        assert completed == [first]
        assert first.results[0].delivered
        assert await client.drain() == [second]
        assert second.results[0].delivered
        await client.quit()
    # The second MAIL was written before the first message's final reply was read.
    assert stream.writes[2:5] == [
        b"one\r\n.\r\n",
        b"MAIL FROM:<bounce@s.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n",
        b"two\r\n.\r\n",
    ]
    assert [t.data for t in server.transactions] == [b"one\r\n", b"two\r\n"]


async def test_held_data_rides_with_the_next_commands_one_write_per_transaction() -> None:
    async with serving(ServerScript()) as server:
        with trio.fail_after(10):
            client, stream = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            txns = [
                Transaction(Envelope("s@x.test", (f"{n}@x.test",)), n.encode())
                for n in ("one", "two", "three")
            ]
            for txn in txns:
                await client.submit(txn, hold=True)
            await client.drain()
            await client.quit()
    assert all(r.delivered for t in txns for r in t.results)
    assert stream.writes[1:5] == [
        b"MAIL FROM:<s@x.test>\r\nRCPT TO:<one@x.test>\r\nDATA\r\n",
        b"one\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<two@x.test>\r\nDATA\r\n",
        b"two\r\n.\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<three@x.test>\r\nDATA\r\n",
        b"three\r\n.\r\n",
    ]
    assert [t.data for t in server.transactions] == [b"one\r\n", b"two\r\n", b"three\r\n"]


async def test_without_pipelining_commands_go_one_by_one() -> None:
    async with serving(ServerScript(pipelining=False)) as server:
        with trio.fail_after(10):
            client, stream = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            txn = Transaction(env("a@x.test", "b@x.test"), b"x")
            assert await client.submit(txn) == [txn]
            assert all(r.delivered for r in txn.results)
            await client.quit()
    assert stream.writes[1:6] == [
        b"MAIL FROM:<bounce@s.test>\r\n",
        b"RCPT TO:<a@x.test>\r\n",
        b"RCPT TO:<b@x.test>\r\n",
        b"DATA\r\n",
        b"x\r\n.\r\n",
    ]


async def test_helo_fallback() -> None:
    async with serving(ServerScript(esmtp=False)) as server:
        with trio.fail_after(10):
            client, stream = await open_client(server)
            await client.handshake(tls=TlsMode.OPPORTUNISTIC)
            assert stream.writes[:2] == [b"EHLO client.test\r\n", b"HELO client.test\r\n"]
            assert not client.extensions.pipelining
            assert (await client.send(env("a@x.test"), b"x"))[0].delivered
            await client.quit()


@pytest.mark.parametrize(
    ("script", "code", "enhanced"),
    [
        (ServerScript(greylist=True), 451, "4.7.1"),
        (ServerScript(max_recipients=1), 452, "4.5.3"),
    ],
)
async def test_transient_recipient_replies(script: ServerScript, code: int, enhanced: str) -> None:
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test", "b@x.test"), b"x")
            await client.quit()
    error = results[1].error
    assert isinstance(error, TransientReplyError)
    assert (error.code, error.enhanced_code) == (code, enhanced)


async def test_421_mid_session_defers_everything_and_ends_the_connection() -> None:
    async with serving(ServerScript(max_messages_per_connection=1)) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            first = Transaction(env("a@x.test"), b"1")
            second = Transaction(env("b@x.test", "c@x.test"), b"2")
            await client.submit(first)
            done = await client.submit(second)
            assert done == [first, second]
            assert first.results[0].delivered
            for result in second.results:
                assert isinstance(result.error, TransientReplyError)
                assert result.error.code == 421
            assert not client.usable
            third = Transaction(env("d@x.test"), b"3")
            assert await client.submit(third) == [third]
            assert isinstance(third.results[0].error, SMTPConnectionError)
            await client.aclose()
    assert len(server.transactions) == 1


async def test_421_as_final_reply_is_a_deferral_not_in_doubt() -> None:
    async with serving(ServerScript(fail_every=1)) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x")
            await client.aclose()
    error = results[0].error
    assert isinstance(error, TransientReplyError)
    assert not isinstance(error, InDoubtError)
    assert error.stage == "end of data"


async def test_lost_final_reply_is_in_doubt() -> None:
    async with serving(ServerScript(disconnect_after="dot")) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test", "b@x.test"), b"x")
            await client.aclose()
    assert all(isinstance(r.error, InDoubtError) for r in results)
    assert all(r.error is not None and r.error.transient for r in results)


@pytest.mark.parametrize("point", ["greeting", "ehlo", "mail", "rcpt"])
async def test_disconnect_before_data_is_a_plain_deferral(point: str) -> None:
    script = ServerScript(disconnect_after=point)  # type: ignore[arg-type]
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            try:
                await client.handshake(tls=TlsMode.NONE)
            except SMTPConnectionError:
                assert point in ("greeting", "ehlo")
                await client.aclose()
                return
            results = await client.send(env("a@x.test"), b"x")
            await client.aclose()
    error = results[0].error
    assert isinstance(error, SMTPConnectionError)
    assert not isinstance(error, InDoubtError)
    assert not client.usable


async def test_close_after_354_is_in_doubt() -> None:
    # Once the data is written the client cannot tell a server that closed before reading
    # it from one that took the message and died: the outcome is in doubt, never delivered.
    async with serving(ServerScript(disconnect_after="data")) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x")
            await client.aclose()
    assert isinstance(results[0].error, InDoubtError)
    assert server.transactions == []


async def test_final_reply_timeout_is_in_doubt() -> None:
    script = ServerScript(replies={"DOT": Respond(reply="250 ok", delay=30)})
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=replace(FAST, final_dot=0.3))
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x")
            await client.aclose()
    assert isinstance(results[0].error, InDoubtError)


async def test_slow_drip_does_not_escape_the_deadline() -> None:
    # 0.05 s per byte: the ~45-byte greeting takes >2 s; each byte arrives well within 1 s.
    script = ServerScript(drip=0.05)
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=replace(FAST, greeting=1.0))
            with pytest.raises(SMTPTimeoutError, match="within 1s") as info:
                await client.handshake(tls=TlsMode.NONE)
            assert info.value.transient
            assert isinstance(info.value, TimeoutError)
            assert not client.usable
            await client.aclose()


@pytest.mark.parametrize("broken", [GARBAGE_REPLY, OVERLONG_REPLY, MISMATCHED_REPLY])
async def test_broken_replies_defer_never_bounce(broken: bytes) -> None:
    async with serving(ServerScript(replies={"RCPT": broken})) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x")
            await client.aclose()
    error = results[0].error
    assert isinstance(error, RemoteProtocolError)
    assert error.transient
    assert not client.usable


async def test_354_with_no_accepted_recipient_ends_with_a_lone_dot() -> None:
    script = ServerScript(
        unknown_mailboxes=frozenset({"nobody@x.test"}),
        replies={"DATA": "354 go ahead anyway"},
    )
    async with serving(script) as server:
        with trio.fail_after(10):
            client, stream = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("nobody@x.test"), b"secret body")
            assert client.usable
            assert (await client.send(env("a@x.test"), b"fine"))[0].delivered
            await client.quit()
    assert isinstance(results[0].error, PermanentReplyError)
    assert b".\r\n" in stream.writes
    assert all(b"secret body" not in w for w in stream.writes)


async def test_refused_mail_skips_pipelined_replies_and_stays_in_step() -> None:
    script = ServerScript(replies={"MAIL": "550 5.7.1 sender blocked"})
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test", "b@x.test"), b"x")
            assert client.usable
            assert (await client.noop()).code == 250
            await client.quit()
    for result in results:
        assert isinstance(result.error, PermanentReplyError)
        assert result.error.stage == "MAIL"


async def test_bad_addresses_fail_alone_and_nothing_is_injected(server: SMTPServer) -> None:
    with trio.fail_after(10):
        client, stream = await open_client(server)
        await client.handshake(tls=TlsMode.NONE)
        results = await client.send(
            env("evil@x.test>\r\nRSET", "good@x.test", "a\x00@x.test"), b"x"
        )
        await client.quit()
    assert [r.delivered for r in results] == [False, True, False]
    assert isinstance(results[0].error, LocalProtocolError)
    assert not results[0].error.transient
    assert b"RSET" not in b"".join(stream.writes)
    assert server.transactions[0].rcpt_to == ("good@x.test",)


async def test_size_limit_refused_before_sending() -> None:
    async with serving(ServerScript(size=100)) as server:
        with trio.fail_after(10):
            client, stream = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x" * 200)
            ok = await client.send(env("a@x.test"), b"x" * 20)
            await client.quit()
    assert isinstance(results[0].error, LocalProtocolError)
    assert ok[0].delivered
    assert (
        stream.writes[1] == b"MAIL FROM:<bounce@s.test> SIZE=20\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
    )


async def test_thousands_of_recipients_do_not_deadlock(server: SMTPServer) -> None:
    rcpts = tuple(f"user{i}@x.test" for i in range(5000))
    with trio.fail_after(30):
        client, _ = await open_client(server)
        await client.handshake(tls=TlsMode.NONE)
        results = await client.send(env(*rcpts), b"x")
        await client.quit()
    assert all(r.delivered for r in results)
    assert len(server.transactions[0].rcpt_to) == 5000


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"..", b"a", b"QUIT", b" "]), max_size=30
    ).map(b"".join)
)
async def test_server_receives_exactly_the_normalised_body(body: bytes) -> None:
    async with serving() as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), body)
            assert client.usable
            assert (await client.noop()).code == 250  # still in step: nothing was smuggled
            await client.quit()
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert results[0].delivered
    assert [t.data for t in server.transactions] == [expected]


# ------------------------------------------------------------------------------ TLS


def tls_script(ca: trustme.CA, **kwargs: object) -> ServerScript:
    return ServerScript(tls_context=server_context(ca, "mx.test"), **kwargs)  # type: ignore[arg-type]


async def test_starttls_injection_has_no_effect(ca: trustme.CA) -> None:
    script = tls_script(ca, starttls_inject=b"250-forged\r\n250 AUTH PLAIN\r\n")
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _stream = await open_client(server)
            await client.handshake(
                tls=TlsMode.REQUIRED, ssl_context=client_context(ca), server_hostname="mx.test"
            )
            assert client.tls_active
            assert client.extensions.auth == frozenset()
            assert client.extensions.pipelining
            assert (await client.send(env("a@x.test"), b"x"))[0].delivered
            await client.quit()
    assert server.transactions[0].tls


async def test_auth_after_starttls(ca: trustme.CA) -> None:
    script = tls_script(ca, auth_credentials={"user": "s3cret"}, auth_requires_tls=True)
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(
                tls=TlsMode.REQUIRED, ssl_context=client_context(ca), server_hostname="mx.test"
            )
            await client.authenticate("user", "s3cret")
            assert (await client.send(env("a@x.test"), b"x"))[0].delivered
            await client.quit()
    assert server.transactions[0].authenticated_as == "user"


@pytest.mark.parametrize("mechanisms", [("PLAIN",), ("LOGIN",)])
async def test_auth_mechanisms_and_bad_password(
    ca: trustme.CA, mechanisms: tuple[str, ...]
) -> None:
    script = tls_script(ca, auth_credentials={"user": "right"}, auth_mechanisms=mechanisms)
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            with pytest.raises(LocalProtocolError, match="without TLS"):
                await client.authenticate("user", "right")
            await client.quit()
            client, _ = await open_client(server)
            await client.handshake(
                tls=TlsMode.REQUIRED, ssl_context=client_context(ca), server_hostname="mx.test"
            )
            with pytest.raises(PermanentReplyError) as info:
                await client.authenticate("user", "wrong-pw")
            assert "wrong-pw" not in str(info.value)
            await client.authenticate("user", "right")
            await client.quit()


async def test_tls_required_but_not_offered() -> None:
    async with serving() as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            with pytest.raises(TLSError, match="does not offer STARTTLS"):
                await client.handshake(tls=TlsMode.REQUIRED)
            await client.aclose()


async def test_opportunistic_tls_with_bad_certificate_fails_the_connection(
    ca: trustme.CA,
) -> None:
    async with serving(tls_script(ca)) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            with pytest.raises(TLSError):
                await client.handshake(
                    tls=TlsMode.OPPORTUNISTIC,
                    ssl_context=ssl.create_default_context(),
                    server_hostname="mx.test",
                )
            assert not client.usable
            await client.aclose()


async def test_greeting_refused() -> None:
    async with serving(ServerScript(greeting="554 5.7.1 go away")) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            with pytest.raises(PermanentReplyError, match="greeting"):
                await client.handshake(tls=TlsMode.NONE)
            await client.aclose()


async def test_connect_refused_is_a_connection_error() -> None:
    with refused_port() as port, trio.fail_after(10), pytest.raises(SMTPConnectionError):
        await SMTPClient.connect("127.0.0.1", port, hostname="c.test", timeouts=FAST)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    # A bound but not listening socket: connecting to its port is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_transaction_left_open_is_reset_before_the_next_mail() -> None:
    # All recipients refused: the server keeps the MAIL transaction (Postfix does), so the
    # next transaction must start with RSET or it gets "503 nested MAIL".
    async with serving(ServerScript(unknown_mailboxes=frozenset({"nobody@x.test"}))) as server:
        with trio.fail_after(10):
            client, stream = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            refused = await client.send(env("nobody@x.test"), b"x")
            accepted = await client.send(env("a@x.test"), b"y")
            await client.quit()
    assert isinstance(refused[0].error, PermanentReplyError)
    assert accepted[0].delivered
    assert stream.writes[2] == (
        b"RSET\r\nMAIL FROM:<bounce@s.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"
    )


async def test_held_data_is_in_doubt_when_its_write_fails() -> None:
    # The message data held back for the next write goes out with it; if that write fails,
    # the message may have reached the server: in doubt, and flush() does not raise.
    async with serving(ServerScript(disconnect_after="data")) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            txn = Transaction(env("a@x.test"), b"held")
            assert await client.submit(txn, hold=True) == []
            assert not txn.data_sent  # still held
            await trio.sleep(0.2)  # the server has closed by now
            done = await client.flush()
            done += await client.drain()
            await client.aclose()
    assert done == [txn]
    assert isinstance(txn.results[0].error, InDoubtError)


async def test_a_failing_big_pipelined_batch_is_a_plain_deferral() -> None:
    # Over 16 KiB of commands are written by a child task while replies are read; a failure
    # there must come out as the recipients' results, not as an exception group.
    rcpts = tuple(f"user{i}@x.test" for i in range(800))
    async with serving(ServerScript(disconnect_after="mail")) as server:
        with trio.fail_after(20):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            txn = Transaction(env(*rcpts), b"x")
            done = await client.submit(txn)
            await client.aclose()
    assert done == [txn]
    assert all(isinstance(r.error, SMTPConnectionError) for r in txn.results)
    assert not any(isinstance(r.error, InDoubtError) for r in txn.results)


async def test_a_3xx_final_reply_is_not_a_delivery() -> None:
    async with serving(ServerScript(replies={"DOT": "354 what?"})) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x")
            assert not client.usable
            await client.aclose()
    assert not results[0].delivered
    # A 3xx cannot answer the final dot: the session is out of step and what the server did
    # with the message it received is unknown (in doubt, a temporary outcome).
    assert isinstance(results[0].error, InDoubtError)


# ------------------------------------------------------ a server out of step with its replies
# RFC 5321 §4.1.1.4: only a 2xx to the final dot delivers; DATA's only go-ahead is 354. A
# reply that cannot answer the command it is matched with, or one nobody asked for, ends the
# session: every recipient not yet decided is deferred (temporary), the connection is not used
# again, and the server gets no message from us.


def deferred_not_delivered(results: list[RecipientResult]) -> None:
    for result in results:
        assert not result.delivered
        assert result.error is not None
        assert classify_error(result.error).kind is Kind.DEFERRED, result.error


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
@pytest.mark.parametrize("code", [250, 251, 220, 299, 334, 300])
async def test_data_answered_with_anything_but_354_delivers_nothing(
    code: int, pipelining: bool
) -> None:
    script = ServerScript(
        pipelining=pipelining, replies={"DATA": f"{code} 2.0.0 go"}, record_wire=True
    )
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test", "b@x.test"), b"secret body")
            assert not client.usable
            await client.quit()
    deferred_not_delivered(results)
    assert all(isinstance(r.error, RemoteProtocolError) for r in results)
    assert f"{code} " in str(results[0].error) and "cannot answer DATA" in str(results[0].error)
    assert server.transactions == [] and server.stats.final_dots == 0
    assert b"secret body" not in server.connections[0].received
    assert not server.connections[0].quit  # a broken session is closed, not QUIT


def extra_after_rcpt(index: int) -> Hook:
    def hook(session: Session, verb: str, arg: str) -> str | None:
        if verb == "RCPT" and len(session.rcpt_to) == index:
            session.rcpt_to.append(arg[4:-1])
            return "250 2.1.5 OK\n250 2.1.5 extra"
        return None

    return hook


OUT_OF_STEP = {
    "MAIL answered 354": ServerScript(replies={"MAIL": "354 go ahead"}),
    "RCPT answered 334": ServerScript(replies={"RCPT": "334 go on"}),
    "extra line after MAIL": ServerScript(replies={"MAIL": "250 2.1.0 OK\n250 2.1.0 extra"}),
    "extra line after RCPT 1": ServerScript(hook=extra_after_rcpt(0)),
    "extra line after RCPT 2": ServerScript(hook=extra_after_rcpt(1)),
    "extra line after 354": ServerScript(replies={"DATA": "354 go ahead\n250 2.0.0 extra"}),
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
@pytest.mark.parametrize("stage", list(OUT_OF_STEP))
async def test_replies_out_of_step_deliver_nothing(stage: str, pipelining: bool) -> None:
    script = replace(OUT_OF_STEP[stage], pipelining=pipelining, record_wire=True)
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test", "b@x.test"), b"secret body")
            assert not client.usable
            await client.quit()
    deferred_not_delivered(results)
    assert server.transactions == [] and server.stats.final_dots == 0
    assert b"secret body" not in server.connections[0].received


@pytest.mark.parametrize("hold", [True, False], ids=["held data", "data written"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
async def test_an_extra_line_after_the_final_dot_shifts_nothing(
    pipelining: bool, hold: bool
) -> None:
    script = ServerScript(
        pipelining=pipelining, replies={"DOT": "250 2.0.0 queued\n250 2.0.0 extra"}
    )
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            first = Transaction(env("a@x.test"), b"one")
            second = Transaction(env("b@x.test"), b"two")
            await client.submit(first, hold=hold)
            await trio.sleep(0.1)  # let the final reply and the extra line arrive together
            await client.submit(second, hold=hold)
            await client.drain()
            assert not client.usable
            await client.quit()
    assert first.results[0].delivered  # the server did take it
    deferred_not_delivered(second.results)
    assert [t.rcpt_to for t in server.transactions] == [("a@x.test",)]


STAGE_TIMEOUTS = {"MAIL": "mail", "RCPT": "rcpt", "DATA": "data_init", "DOT": "final_dot"}


@pytest.mark.parametrize("verb", list(STAGE_TIMEOUTS))
async def test_no_reply_at_all_ends_at_the_stage_deadline(verb: str) -> None:
    timeouts = replace(FAST, **{STAGE_TIMEOUTS[verb]: 0.3})
    async with serving(ServerScript(pipelining=False, replies={verb: HANG})) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=timeouts)
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(env("a@x.test"), b"x")
            assert not client.usable
            await client.quit()
    error = results[0].error
    assert not results[0].delivered
    assert isinstance(error, InDoubtError if verb == "DOT" else SMTPTimeoutError), error
    assert server.transactions == []


# Session commands: a 3xx where none can come, a 2xx to DATA's place, an extra line, silence.
SESSION_FAULTS = [
    ("greeting 354", ServerScript(greeting="354 go"), RemoteProtocolError),
    ("greeting extra line", ServerScript(greeting="220 hi\n250 extra"), RemoteProtocolError),
    ("EHLO 354", ServerScript(replies={"EHLO": "354 go"}), RemoteProtocolError),
    ("EHLO extra line", ServerScript(replies={"EHLO": "250 mx\n250 extra"}), RemoteProtocolError),
    ("EHLO silence", ServerScript(replies={"EHLO": HANG}), SMTPTimeoutError),
    ("HELO 334", ServerScript(esmtp=False, replies={"HELO": "334 go"}), RemoteProtocolError),
]


@pytest.mark.parametrize(
    ("script", "error"), [f[1:] for f in SESSION_FAULTS], ids=[f[0] for f in SESSION_FAULTS]
)
async def test_hostile_handshake_replies_end_the_session(
    script: ServerScript, error: type[Exception]
) -> None:
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=replace(FAST, ehlo=0.3))
            with pytest.raises(error):
                await client.handshake(tls=TlsMode.NONE)
            assert not client.usable
            await client.aclose()
    assert server.transactions == []


@pytest.mark.parametrize(
    ("reply", "error"), [("354 go", RemoteProtocolError), (HANG, SMTPTimeoutError)]
)
async def test_hostile_starttls_replies(
    ca: trustme.CA, reply: Respond | str, error: type[Exception]
) -> None:
    # (An extra line after the 220 is discarded, RFC 3207 §4.2: see the injection test.)
    async with serving(tls_script(ca, replies={"STARTTLS": reply})) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=replace(FAST, starttls=0.3))
            with pytest.raises(error):
                await client.handshake(tls=TlsMode.OPPORTUNISTIC, ssl_context=client_context(ca))
            assert not client.usable
            await client.aclose()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("354 go", RemoteProtocolError),
        ("235 ok\n250 extra", RemoteProtocolError),
        (HANG, SMTPTimeoutError),
    ],
)
async def test_hostile_auth_replies(
    ca: trustme.CA, reply: Respond | str, error: type[Exception]
) -> None:
    script = tls_script(ca, auth_credentials={"u": "p"}, replies={"AUTH": reply})
    async with serving(script) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=replace(FAST, auth=0.3))
            await client.handshake(
                tls=TlsMode.REQUIRED, ssl_context=client_context(ca), server_hostname="mx.test"
            )
            with pytest.raises(error):
                await client.authenticate("u", "p")
            assert not client.usable
            await client.aclose()
    assert server.transactions == []


async def test_hostile_rset_replies() -> None:
    async with serving(ServerScript(replies={"RSET": "354 go"})) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            with pytest.raises(RemoteProtocolError, match="cannot answer RSET"):
                await client.rset()
            assert not client.usable
            await client.aclose()
            server.script = ServerScript(replies={"RSET": "250 ok\n250 extra"})
            client, _ = await open_client(server)
            await client.handshake(tls=TlsMode.NONE)
            assert (await client.rset()).code == 250
            with pytest.raises(RemoteProtocolError, match="unsolicited"):
                await client.noop()
            assert not client.usable
            await client.aclose()


@pytest.mark.parametrize("reply", [HANG, "354 go", "221 bye\n250 extra"])
async def test_quit_is_bounded_whatever_the_server_answers(reply: Respond | str) -> None:
    async with serving(ServerScript(replies={"QUIT": reply})) as server:
        with trio.fail_after(10):
            client, _ = await open_client(server, timeouts=replace(FAST, quit=0.3))
            await client.handshake(tls=TlsMode.NONE)
            assert (await client.send(env("a@x.test"), b"x"))[0].delivered
            start = trio.current_time()
            await client.quit()
            assert trio.current_time() - start < 2
            assert not client.usable
    assert server.connections[0].quit


async def test_aclose_of_a_healthy_idle_session_still_says_quit(server: SMTPServer) -> None:
    # RFC 5321 §4.1.1.10, also when the close comes from a cancellation (a stop, the end of
    # a run): QUIT is written, shielded and within its deadline; its reply is not awaited.
    with trio.fail_after(10):
        client, stream = await open_client(server)
        await client.handshake(tls=TlsMode.NONE)
        assert (await client.send(env("a@x.test"), b"x"))[0].delivered
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.aclose()
        await server.wait_until(lambda: server.stats.connections_current == 0)
    assert stream.writes[-1] == b"QUIT\r\n"
    assert server.connections[0].quit


async def test_aclose_with_a_reply_owed_closes_without_quit(server: SMTPServer) -> None:
    with trio.fail_after(10):
        client, stream = await open_client(server)
        await client.handshake(tls=TlsMode.NONE)
        txn = Transaction(env("a@x.test"), b"x")
        await client.submit(txn)
        assert client.in_flight == 1
        await client.aclose()  # QUIT now would land where the final reply is due
        await server.wait_until(lambda: server.stats.connections_current == 0)
    assert b"QUIT\r\n" not in stream.writes
    assert not server.connections[0].quit
