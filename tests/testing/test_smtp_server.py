"""The test SMTP server does what its script says, byte for byte, on real loopback sockets."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import smtplib
import ssl
from email.message import EmailMessage

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.testing.smtp import (
    BARE_LF_REPLY,
    DISCONNECT,
    GARBAGE_REPLY,
    HANG,
    MISMATCHED_REPLY,
    OVERLONG_REPLY,
    RESET,
    Respond,
    ServerScript,
    Session,
    serving,
)

ENVELOPE = b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"


def stuff(body: bytes) -> bytes:
    """Reference dot-stuffing (RFC 5321 §4.5.2): every line that starts with "." gets one more."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


async def greeted(connect, server):
    wire = await connect(server)
    assert (await wire.reply()).startswith(b"220 ")
    return wire


async def ehloed(connect, server):
    wire = await greeted(connect, server)
    assert (await wire.command(b"EHLO client.test")).startswith(b"250")
    return wire


# -- greeting and EHLO -------------------------------------------------------------------


async def test_default_greeting_and_ehlo(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wire = await connect(server)
            assert await wire.reply() == b"220 mx.test ESMTP bulksend test server\r\n"
            assert await wire.command(b"EHLO client.test") == (
                b"250-mx.test greets client.test\r\n"
                b"250-PIPELINING\r\n"
                b"250-8BITMIME\r\n"
                b"250 ENHANCEDSTATUSCODES\r\n"
            )
            assert await wire.command(b"QUIT") == b"221 2.0.0 Bye\r\n"
            assert await wire.until_closed() == b""


async def test_every_extension_advertised(connect, server_tls):
    script = ServerScript(
        size=1000,
        smtputf8=True,
        tls_context=server_tls,
        auth_credentials={"u": "p"},
        chunking=True,
        extra_extensions=("DSN",),
    )
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await greeted(connect, server)
            assert await wire.command(b"EHLO c") == (
                b"250-mx.test greets c\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
                b"250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n"
                b"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n"
            )


async def test_extensions_off_and_no_enhanced_codes(connect):
    script = ServerScript(pipelining=False, eightbitmime=False, enhancedstatuscodes=False)
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await greeted(connect, server)
            assert await wire.command(b"EHLO c") == b"250 mx.test greets c\r\n"
            assert await wire.command(b"MAIL FROM:<a@b>") == b"250 OK\r\n"
            assert await wire.command(b"MAIL FROM:<a@b>") == b"503 Nested MAIL command\r\n"


async def test_helo_only_server(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(esmtp=False)) as server:
            wire = await greeted(connect, server)
            assert (await wire.command(b"EHLO c")).startswith(b"502 ")
            assert await wire.command(b"HELO c") == b"250 mx.test\r\n"
            assert await wire.command(b"MAIL FROM:<a@b> BODY=8BITMIME") == (
                b"555 Unsupported parameter BODY\r\n"
            )
            assert await wire.command(b"MAIL FROM:<a@b>") == b"250 OK\r\n"


@pytest.mark.parametrize("code", [b"554", b"421"])
async def test_refusing_greeting(connect, code):
    script = ServerScript(greeting=code.decode() + " 5.3.2 go away")
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await connect(server)
            assert await wire.reply() == code + b" 5.3.2 go away\r\n"
            if code == b"421":
                assert await wire.until_closed() == b""
                return
            assert await wire.command(b"EHLO c") == b"503 5.5.1 No service, only QUIT\r\n"
            assert await wire.command(b"QUIT") == b"221 2.0.0 Bye\r\n"


async def test_multi_line_greeting_on_another_loopback_address(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(greeting="220-first\n220 second"), host="127.0.0.2") as s:
            assert s.address[0] == "127.0.0.2"
            wire = await connect(s)
            assert await wire.reply() == b"220-first\r\n220 second\r\n"


# -- command handling --------------------------------------------------------------------


async def test_pipelined_batch_answered_in_order_in_one_write(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(record_wire=True)) as server:
            wire = await ehloed(connect, server)
            await wire.send(
                b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n"
                b"RCPT TO:broken\r\nNOOP\r\nRSET\r\nVRFY b\r\nFROB\r\nRCPT TO:<d@x.test>\r\n"
            )
            assert await wire.replies(9) == [
                b"250 2.1.0 OK\r\n",
                b"250 2.1.5 OK\r\n",
                b"250 2.1.5 OK\r\n",
                b"501 5.5.4 Syntax: RCPT TO:<address>\r\n",
                b"250 2.0.0 OK\r\n",
                b"250 2.0.0 OK\r\n",
                b"252 2.5.2 Cannot VRFY user, but will accept message\r\n",
                b"500 5.5.2 Command not recognized\r\n",
                b"503 5.5.1 Need MAIL before RCPT\r\n",
            ]
            # One read on the server side, one write back (the batch was one segment).
            assert server.connections[0].writes[-1].count(b"\r\n") == 9


async def test_transaction_recorded(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(record_wire=True)) as server:
            wire = await ehloed(connect, server)
            sent = (
                b"MAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@x.test>\r\n"
                b"RCPT TO:<c@x.test>\r\nDATA\r\n"
            )
            await wire.send(sent)
            assert [r[:3] for r in await wire.replies(4)] == [b"250", b"250", b"250", b"354"]
            await wire.send(b"Subject: hi\r\n\r\n..dot\r\n.\r\n")
            assert await wire.reply() == b"250 2.0.0 OK queued as 1\r\n"
            [tx] = server.transactions
            assert tx.mail_from == "a@x.test"
            assert tx.mail_params == ("BODY=8BITMIME",)
            assert tx.rcpt_to == ("b@x.test", "c@x.test")
            assert tx.data == b"Subject: hi\r\n\r\n.dot\r\n"
            assert not tx.tls
            assert server.stats.messages == 1
            assert server.stats.recipients == 2
            assert server.stats.message_times == [tx.time]
            assert server.connections[0].received.endswith(
                sent + b"Subject: hi\r\n\r\n..dot\r\n.\r\n"
            )


async def test_sequence_errors(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wire = await greeted(connect, server)
            assert (
                await wire.command(b"MAIL FROM:<a@b>") == b"503 5.5.1 Send EHLO or HELO first\r\n"
            )
            await wire.command(b"EHLO c")
            assert await wire.command(b"DATA") == b"503 5.5.1 Need MAIL before DATA\r\n"
            assert (
                await wire.command(b"MAIL FROM:a@b") == b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
            )
            assert await wire.command(b"MAIL FROM:<a@b> FOO=1") == (
                b"555 5.5.4 Unsupported parameter FOO\r\n"
            )
            assert await wire.command(b"MAIL FROM:<>") == b"250 2.1.0 OK\r\n"
            assert await wire.command(b"DATA") == b"554 5.5.1 No valid recipients\r\n"
            assert await wire.command(b"RCPT TO:<j\xc3\xb6@b>") == (
                b"553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n"
            )
            assert await wire.command(b"RSET") == b"250 2.0.0 OK\r\n"
            assert await wire.command(b"BDAT 3 LAST") == b"502 5.5.1 BDAT not implemented\r\n"
            assert await wire.command(b"RCPT TO:<x@b>") == b"503 5.5.1 Need MAIL before RCPT\r\n"


async def test_bare_lf_and_overlong_command_lines(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wire = await ehloed(connect, server)
            assert await wire.command(b"NOOP\nMAIL FROM:<a@b>") == (
                b"500 5.5.2 Bare CR or LF in command line\r\n"
            )
            await wire.send(b"NOOP " + b"x" * 10_000 + b"\r\nNOOP\r\n")
            assert await wire.replies(2) == [b"500 5.5.6 Line too long\r\n", b"250 2.0.0 OK\r\n"]
            # An over-long line that arrives in pieces gets one 500, then the stream resyncs.
            await wire.send(b"NOOP " + b"y" * 5000)
            assert await wire.reply() == b"500 5.5.6 Line too long\r\n"
            await wire.send(b"y" * 5000 + b"\r")
            await trio.sleep(0.05)
            await wire.send(b"\nNOOP\r\n")
            assert await wire.reply() == b"250 2.0.0 OK\r\n"


async def test_size_enforced(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(size=10)) as server:
            wire = await ehloed(connect, server)
            assert await wire.command(b"MAIL FROM:<a@b> SIZE=11") == (
                b"552 5.3.4 Message size exceeds fixed limit\r\n"
            )
            await wire.send(b"MAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<c@d>\r\nDATA\r\n")
            assert [r[:3] for r in await wire.replies(3)] == [b"250", b"250", b"354"]
            assert await wire.command(b"0123456789\r\n.") == (
                b"552 5.3.4 Message size exceeds fixed limit\r\n"
            )
            assert server.transactions == []


# -- DATA framing ------------------------------------------------------------------------

BODY_PIECES = st.sampled_from(
    [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"a", b"\x00"]
)
BODIES = st.one_of(st.binary(max_size=300), st.lists(BODY_PIECES, max_size=40).map(b"".join))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(bodies=st.lists(BODIES, min_size=1, max_size=3), piece=st.integers(1, 64))
async def test_dot_unstuffing_is_exact(connect, bodies, piece):
    """Any body, stuffed by the reference function, comes back exactly, however it is cut."""
    bodies = [b if b == b"" or b.endswith(b"\r\n") else b + b"\r\n" for b in bodies]
    with trio.fail_after(10):
        async with serving() as server:
            wire = await ehloed(connect, server)
            wire_bytes = b"".join(ENVELOPE + stuff(body) + b".\r\n" for body in bodies)
            for start in range(0, len(wire_bytes), piece):
                await wire.send(wire_bytes[start : start + piece])
            replies = await wire.replies(4 * len(bodies))
            assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250"] * len(bodies)
            assert [tx.data for tx in server.transactions] == bodies


async def test_empty_message_and_lone_dot_line(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wire = await ehloed(connect, server)
            await wire.send(
                ENVELOPE + b".\r\n" + ENVELOPE + b"\r\n.\r\n" + ENVELOPE + b"..\r\n.\r\n"
            )
            assert [r[:3] for r in await wire.replies(12)] == [b"250", b"250", b"354", b"250"] * 3
            assert [tx.data for tx in server.transactions] == [b"", b"\r\n", b".\r\n"]


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"])
async def test_only_crlf_dot_crlf_ends_data(connect, fake_end):
    """SMTP smuggling: a bare LF or CR around the dot is data, and the 'command' after it too."""
    smuggled = b"hello" + fake_end + b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\nevil\r\n"
    with trio.fail_after(5):
        async with serving() as server:
            wire = await ehloed(connect, server)
            await wire.send(ENVELOPE + smuggled + b".\r\nNOOP\r\n")
            assert [r[:3] for r in await wire.replies(5)] == [
                b"250",
                b"250",
                b"354",
                b"250",
                b"250",
            ]
            [tx] = server.transactions
            # A line that starts with "." loses it (the sender did not stuff), nothing more.
            assert tx.data == smuggled.replace(b"\r\n.", b"\r\n")


async def test_terminator_split_byte_by_byte(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wire = await ehloed(connect, server)
            await wire.send(ENVELOPE)
            await wire.replies(3)
            for byte in b"..x\r\n\r\n.\r\n":
                await wire.send(bytes([byte]))
                await trio.sleep(0.002)
            assert await wire.reply() == b"250 2.0.0 OK queued as 1\r\n"
            assert server.transactions[0].data == b".x\r\n\r\n"


# -- recipient and message policy --------------------------------------------------------


async def test_greylisting_refuses_first_try_only(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(greylist=True)) as server:
            wire = await ehloed(connect, server)
            await wire.send(
                b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\n"
            )
            assert await wire.replies(4) == [
                b"250 2.1.0 OK\r\n",
                b"451 4.7.1 Greylisted, try again later\r\n",
                b"250 2.1.5 OK\r\n",
                b"451 4.7.1 Greylisted, try again later\r\n",
            ]
            # Another sender is another pair.
            await wire.send(b"RSET\r\nMAIL FROM:<z@x>\r\nRCPT TO:<b@X>\r\n")
            assert (await wire.replies(3))[2].startswith(b"451 4.7.1")


async def test_greylisting_with_a_minimum_wait(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(greylist=True, greylist_seconds=60)) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<b@x>\r\n")
            assert [r[:3] for r in await wire.replies(3)] == [b"250", b"451", b"451"]


async def test_unknown_mailboxes(connect):
    script = ServerScript(unknown_mailboxes=frozenset({"gone@Example.test"}))
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await ehloed(connect, server)
            await wire.send(
                b"MAIL FROM:<a@x>\r\nRCPT TO:<gone@EXAMPLE.test>\r\nRCPT TO:<Gone@example.test>\r\n"
            )
            assert await wire.replies(3) == [
                b"250 2.1.0 OK\r\n",
                b"550 5.1.1 No such user here\r\n",
                b"250 2.1.5 OK\r\n",  # the local part is case-sensitive
            ]


async def test_too_many_recipients(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(max_recipients=2)) as server:
            wire = await ehloed(connect, server)
            await wire.send(
                b"MAIL FROM:<a@x>\r\n" + b"".join(b"RCPT TO:<r%d@x>\r\n" % i for i in range(4))
            )
            replies = await wire.replies(5)
            assert replies[3:] == [b"452 4.5.3 Too many recipients\r\n"] * 2
            await wire.send(b"DATA\r\nhi\r\n.\r\n")
            assert [r[:3] for r in await wire.replies(2)] == [b"354", b"250"]
            assert server.transactions[0].rcpt_to == ("r0@x", "r1@x")


async def test_421_after_n_messages_then_close(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(max_messages_per_connection=2)) as server:
            wire = await ehloed(connect, server)
            await wire.send((ENVELOPE + b"x\r\n.\r\n") * 3)
            replies = await wire.replies(9)
            assert [r[:3] for r in replies] == [b"250", b"250", b"354", b"250"] * 2 + [b"421"]
            assert replies[-1] == b"421 4.7.0 Too many messages on this connection\r\n"
            assert await wire.until_closed() == b""
            assert server.stats.messages == 2


async def test_rate_limit_per_server(connect):
    script = ServerScript(rate_limit=2, rate_window=60)
    with trio.fail_after(5):
        async with serving(script) as server:
            first = await ehloed(connect, server)
            await first.send((ENVELOPE + b"x\r\n.\r\n") * 2)
            await first.replies(8)
            second = await ehloed(connect, server)
            assert await second.command(b"MAIL FROM:<a@b>") == (
                b"421 4.7.0 Rate limited, try again later\r\n"
            )
            assert await second.until_closed() == b""
            assert len(server.stats.message_times) == 2


async def test_rate_limit_with_451(connect):
    script = ServerScript(rate_limit=1, rate_window=60, rate_limit_reply="451 4.7.0 slow down")
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"MAIL FROM:<a@b>\r\nRSET\r\nMAIL FROM:<a@b>\r\nNOOP\r\n")
            assert [r[:3] for r in await wire.replies(4)] == [b"250", b"250", b"451", b"250"]


async def test_fail_every_kth_message(connect):
    script = ServerScript(fail_every=2, fail_every_reply="451 4.3.0 every second one")
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await ehloed(connect, server)
            await wire.send((ENVELOPE + b"x\r\n.\r\n") * 4)
            dots = [r for i, r in enumerate(await wire.replies(16)) if i % 4 == 3]
            assert [d[:3] for d in dots] == [b"250", b"451", b"250", b"451"]
            assert server.stats.messages == 2
            assert server.stats.final_dots == 4


# -- timing ------------------------------------------------------------------------------


async def test_delay_before_greeting_and_reply(connect):
    script = ServerScript(reply_delays={"GREETING": 0.1, "NOOP": 0.1})
    with trio.fail_after(5):
        async with serving(script) as server:
            started = trio.current_time()
            wire = await greeted(connect, server)
            assert trio.current_time() - started >= 0.1
            started = trio.current_time()
            assert await wire.command(b"NOOP") == b"250 2.0.0 OK\r\n"
            assert trio.current_time() - started >= 0.1


async def test_slow_drip_sends_one_byte_per_write(connect):
    script = ServerScript(drip=0.002, drip_verbs=frozenset({"NOOP"}), record_wire=True)
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await ehloed(connect, server)
            started = trio.current_time()
            await wire.send(b"NOOP\r\nRSET\r\n")
            assert await wire.replies(2) == [b"250 2.0.0 OK\r\n"] * 2
            assert trio.current_time() - started >= 0.002 * len(b"250 2.0.0 OK\r\n")
            writes = server.connections[0].writes
            assert writes[2:] == [bytes([b]) for b in b"250 2.0.0 OK\r\n"] + [b"250 2.0.0 OK\r\n"]


# -- disconnects and broken replies ------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "before_close"),
    [
        ("connect", []),
        ("greeting", [b"220"]),
        ("ehlo", [b"220", b"250"]),
        ("mail", [b"220", b"250", b"250"]),
        ("rcpt", [b"220", b"250", b"250", b"250"]),
        ("data", [b"220", b"250", b"250", b"250", b"354"]),
        ("dot", [b"220", b"250", b"250", b"250", b"354"]),
        ("dot_reply", [b"220", b"250", b"250", b"250", b"354", b"250"]),
    ],
)
async def test_disconnect_points(connect, point, before_close):
    with trio.fail_after(5):
        async with serving(ServerScript(disconnect_after=point)) as server:
            wire = await connect(server)
            await wire.send(b"EHLO c\r\n" + ENVELOPE + b"hi\r\n.\r\nNOOP\r\n")
            codes = []
            with contextlib.suppress(EOFError):
                while True:
                    codes.append((await wire.reply())[:3])
            assert codes == before_close
            assert len(server.transactions) == (1 if point == "dot_reply" else 0)


@pytest.mark.parametrize("broken", [GARBAGE_REPLY, OVERLONG_REPLY, MISMATCHED_REPLY, BARE_LF_REPLY])
async def test_broken_replies_sent_verbatim(connect, broken):
    with trio.fail_after(5):
        async with serving(ServerScript(replies={"NOOP": broken})) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"NOOP\r\nQUIT\r\n")
            assert await wire.until_closed() == broken + b"221 2.0.0 Bye\r\n"


async def test_hook_drives_replies_and_effects(connect):
    seen: list[tuple[str, str]] = []

    def hook(session: Session, verb: str, arg: str):
        seen.append((verb, arg))
        if verb == "RCPT" and "temp" in arg:
            return "450 4.2.0 mailbox busy"
        if verb == "RCPT" and "yes" in arg:
            return Respond("251 forwarding", delay=0.01)
        if verb == "DOT":
            return f"250 got {len(session.data)} bytes for {len(session.rcpt_to)}"
        if verb == "NOOP":
            return DISCONNECT
        return None

    with trio.fail_after(5):
        async with serving(ServerScript(hook=hook)) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<temp@x>\r\nRCPT TO:<yes@x>\r\nDATA\r\n")
            assert [r[:3] for r in await wire.replies(4)] == [b"250", b"450", b"251", b"354"]
            await wire.send(b"abc\r\n.\r\nNOOP\r\n")
            assert await wire.until_closed() == b"250 got 5 bytes for 1\r\n"
            assert server.transactions[0].rcpt_to == ("yes@x",)
            assert ("DOT", "") in seen


async def test_hook_can_hang_the_session(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(replies={"DATA": HANG})) as server:
            wire = await ehloed(connect, server)
            await wire.send(ENVELOPE)
            assert len(await wire.replies(2)) == 2
            with trio.move_on_after(0.2) as waited:
                await wire.reply()
            assert waited.cancelled_caught


async def test_data_without_recipients_forced_to_354(connect):
    """The client rule of RFC 2920 §3.1 needs a server that says 354 with no recipient."""
    with trio.fail_after(5):
        async with serving(ServerScript(replies={"DATA": "354 go on"})) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"MAIL FROM:<a@x>\r\nRCPT TO:b\r\nDATA\r\n.\r\n")
            assert [r[:3] for r in await wire.replies(4)] == [b"250", b"501", b"354", b"554"]


async def test_black_hole_never_answers(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(mode="blackhole", record_wire=True)) as server:
            wire = await connect(server)
            await wire.send(b"EHLO c\r\n")
            with trio.move_on_after(0.2) as waited:
                await wire.reply()
            assert waited.cancelled_caught
            assert server.connections[0].received == b"EHLO c\r\n"
            assert server.connections[0].writes == []


async def test_reset_instead_of_a_reply(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(replies={"NOOP": RESET})) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"NOOP\r\n")
            with pytest.raises(trio.BrokenResourceError):
                await wire.reply()


async def test_reset_mode(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(mode="reset")) as server:
            wire = await connect(server)
            with pytest.raises(trio.BrokenResourceError):
                await wire.reply()


# -- STARTTLS and AUTH -------------------------------------------------------------------


async def test_starttls(connect, server_tls, client_tls):
    script = ServerScript(
        tls_context=server_tls,
        require_tls=True,
        auth_credentials={"u": "p"},
        auth_requires_tls=True,
        record_wire=True,
    )
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await greeted(connect, server)
            assert b"AUTH" not in await wire.command(b"EHLO c")
            assert await wire.command(b"MAIL FROM:<a@b>") == (
                b"530 5.7.0 Must issue a STARTTLS command first\r\n"
            )
            assert await wire.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
            await wire.start_tls(client_tls)
            assert (
                await wire.command(b"MAIL FROM:<a@b>") == b"503 5.5.1 Send EHLO or HELO first\r\n"
            )
            ehlo = await wire.command(b"EHLO c")
            assert b"STARTTLS" not in ehlo
            assert b"250-AUTH PLAIN LOGIN\r\n" in ehlo
            assert await wire.command(b"STARTTLS") == b"503 5.5.1 TLS already active\r\n"
            await wire.send(ENVELOPE + b"secret\r\n.\r\n")
            assert [r[:3] for r in await wire.replies(4)] == [b"250", b"250", b"354", b"250"]
            [tx] = server.transactions
            assert tx.tls
            assert tx.data == b"secret\r\n"
            record = server.connections[0]
            assert record.tls
            assert record.received[record.tls_offset :].startswith(b"MAIL FROM:<a@b>\r\n")


async def test_starttls_discards_pipelined_plaintext(connect, server_tls, client_tls):
    with trio.fail_after(5):
        async with serving(ServerScript(tls_context=server_tls)) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n")
            assert await wire.reply() == b"220 2.0.0 Ready to start TLS\r\n"
            await wire.start_tls(client_tls)
            assert await wire.command(b"EHLO c") != b""
            assert server.connections[0].discarded_after_starttls == b"MAIL FROM:<injected@x>\r\n"
            assert await wire.command(b"RCPT TO:<b@x>") == b"503 5.5.1 Need MAIL before RCPT\r\n"


async def test_starttls_injection_sent_in_one_write(connect, server_tls, client_tls):
    script = ServerScript(
        tls_context=server_tls,
        replies={"STARTTLS": "220 ready"},
        starttls_inject=b"250-forged\r\n250 PIPELINING\r\n",
        record_wire=True,
    )
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await ehloed(connect, server)
            await wire.send(b"STARTTLS\r\n")
            assert await wire.replies(2) == [b"220 ready\r\n", b"250-forged\r\n250 PIPELINING\r\n"]
            assert (
                server.connections[0].writes[-1] == b"220 ready\r\n250-forged\r\n250 PIPELINING\r\n"
            )
            await wire.start_tls(client_tls)  # the handshake still works afterwards
            assert (await wire.command(b"EHLO c")).startswith(b"250-mx.test")


async def test_tls_handshake_failure_does_not_break_the_server(connect, server_tls):
    with trio.fail_after(5):
        async with serving(ServerScript(tls_context=server_tls)) as server:
            wire = await ehloed(connect, server)
            await wire.command(b"STARTTLS")
            await wire.send(b"not a client hello\r\n" * 10)
            with contextlib.suppress(trio.BrokenResourceError):
                await wire.until_closed()
            await server.wait_until(lambda: server.stats.connections_current == 0)
            await ehloed(connect, server)


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


async def test_auth_plain(connect):
    script = ServerScript(auth_credentials={"user": "pw"}, require_auth=True)
    with trio.fail_after(5):
        async with serving(script) as server:
            wire = await ehloed(connect, server)
            assert (
                await wire.command(b"MAIL FROM:<a@b>") == b"530 5.7.0 Authentication required\r\n"
            )
            assert await wire.command(b"AUTH PLAIN " + plain("user", "bad")) == (
                b"535 5.7.8 Authentication credentials invalid\r\n"
            )
            assert await wire.command(b"AUTH PLAIN !!!") == b"501 5.5.2 Cannot decode response\r\n"
            assert await wire.command(b"AUTH PLAIN") == b"334 \r\n"
            assert await wire.command(b"*") == b"501 5.7.0 Authentication cancelled\r\n"
            assert await wire.command(b"AUTH CRAM-MD5") == (
                b"504 5.5.4 Unrecognized authentication type\r\n"
            )
            assert await wire.command(b"AUTH PLAIN") == b"334 \r\n"
            assert await wire.command(plain("user", "pw")) == (
                b"235 2.7.0 Authentication successful\r\n"
            )
            assert await wire.command(b"AUTH PLAIN " + plain("user", "pw")) == (
                b"503 5.5.1 Already authenticated\r\n"
            )
            await wire.send(ENVELOPE + b"x\r\n.\r\n")
            await wire.replies(4)
            assert server.transactions[0].authenticated_as == "user"


async def test_auth_plain_initial_response(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(auth_credentials={"user": "pw"})) as server:
            wire = await ehloed(connect, server)
            assert await wire.command(b"AUTH PLAIN " + plain("user", "pw")) == (
                b"235 2.7.0 Authentication successful\r\n"
            )


async def test_auth_login(connect):
    b64 = base64.b64encode
    with trio.fail_after(5):
        async with serving(ServerScript(auth_credentials={"user": "pw"})) as server:
            wire = await ehloed(connect, server)
            assert await wire.command(b"AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
            assert await wire.command(b64(b"user")) == b"334 UGFzc3dvcmQ6\r\n"
            assert await wire.command(b64(b"nope")) == (
                b"535 5.7.8 Authentication credentials invalid\r\n"
            )
            assert await wire.command(b"AUTH LOGIN " + b64(b"user")) == b"334 UGFzc3dvcmQ6\r\n"
            assert await wire.command(b64(b"pw")) == b"235 2.7.0 Authentication successful\r\n"


async def test_auth_not_offered(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wire = await ehloed(connect, server)
            assert await wire.command(b"AUTH PLAIN") == b"502 5.5.1 AUTH not available\r\n"


# -- bookkeeping -------------------------------------------------------------------------


async def test_connection_counts(connect):
    with trio.fail_after(5):
        async with serving() as server:
            wires = [await greeted(connect, server) for _ in range(3)]
            assert server.stats.connections_current == 3
            for wire in wires:
                await wire.aclose()
            await server.wait_until(lambda: server.stats.connections_current == 0)
            await greeted(connect, server)
            assert server.stats.connections_opened == 4
            assert server.stats.connections_peak == 3
            assert all(r.closed_at is not None for r in server.connections[:3])


async def test_record_off_counts_only(connect):
    with trio.fail_after(5):
        async with serving(ServerScript(record=False)) as server:
            wire = await ehloed(connect, server)
            await wire.send((ENVELOPE + b"x\r\n.\r\n") * 3)
            await wire.replies(12)
            await server.wait_until(lambda: server.stats.messages == 3)
            assert server.transactions == []
            assert server.stats.message_times == []
            assert server.connections[0].received == b""


async def test_serving_reraises_the_body_exception():
    with trio.fail_after(5), pytest.raises(KeyError):
        async with serving():
            raise KeyError("from the body")


async def test_script_can_be_replaced_for_new_connections(connect):
    with trio.fail_after(5):
        async with serving() as server:
            server.script = dataclasses.replace(server.script, greeting="554 closed now")
            wire = await connect(server)
            assert await wire.reply() == b"554 closed now\r\n"


# -- an independent client ---------------------------------------------------------------


async def test_smtplib_client(server_tls, client_tls):
    script = ServerScript(tls_context=server_tls, auth_credentials={"me": "secret"})
    message = EmailMessage()
    message["From"] = "me@example.test"
    message["To"] = "you@example.test"
    message["Subject"] = "hello"
    message.set_content("first line\n.leading dot\n.\nlast line\n")

    with trio.fail_after(10):
        async with serving(script) as server:
            host, port = server.address

            def send() -> None:
                with smtplib.SMTP(host, port, timeout=5) as client:
                    client.starttls(context=client_tls)
                    client.login("me", "secret")
                    client.send_message(message)

            await trio.to_thread.run_sync(send)
            await server.wait_until(lambda: server.stats.connections_current == 0)
            [tx] = server.transactions
            assert tx.mail_from == "me@example.test"
            assert tx.rcpt_to == ("you@example.test",)
            assert tx.tls
            assert tx.authenticated_as == "me"
            assert tx.data.endswith(b"\r\nfirst line\r\n.leading dot\r\n.\r\nlast line\r\n")
            assert b"Subject: hello\r\n" in tx.data


async def test_smtplib_auth_login_without_tls():
    with trio.fail_after(10):
        async with serving(ServerScript(auth_credentials={"me": "secret"})) as server:
            host, port = server.address

            def send() -> None:
                with smtplib.SMTP(host, port, timeout=5) as client:
                    client.ehlo()
                    client.esmtp_features["auth"] = "LOGIN"
                    client.login("me", "secret")
                    client.sendmail("a@x.test", ["b@x.test"], b"Subject: x\r\n\r\nbody\r\n")

            await trio.to_thread.run_sync(send)
            await server.wait_until(lambda: server.stats.messages == 1)
            assert server.transactions[0].data == b"Subject: x\r\n\r\nbody\r\n"


def test_client_tls_context_is_strict(client_tls):
    assert client_tls.verify_mode == ssl.CERT_REQUIRED
