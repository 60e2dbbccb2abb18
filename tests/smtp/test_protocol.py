"""The sans-IO protocol, byte by byte: replies, extensions, encoders, data, the state table."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.smtp.encoding import check_address, encode_data
from bulksend.smtp.errors import LocalProtocolError, RemoteProtocolError, TransientReplyError
from bulksend.smtp.protocol import (
    MAX_LINE,
    ClientProtocol,
    Extensions,
    Reply,
    ReplyParser,
    State,
    Verb,
)


def parse_all(data: bytes, *, bytewise: bool) -> list[Reply]:
    parser = ReplyParser()
    replies: list[Reply] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        parser.feed(chunk)
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    return replies


REPLIES = [
    # (wire bytes, expected replies)
    (b"250 OK\r\n", [Reply(250, None, ("OK",))]),
    (b"250\r\n", [Reply(250, None, ("",))]),
    (b"550 5.1.1 No such user\r\n", [Reply(550, "5.1.1", ("No such user",))]),
    (
        b"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        b"550-5.1.1 Please try double-checking\r\n"
        b"550 5.1.1 https://support.google.com/mail/?p=NoSuchUser\r\n",
        [
            Reply(
                550,
                "5.1.1",
                (
                    "The email account that you tried to reach does not exist.",
                    "Please try double-checking",
                    "https://support.google.com/mail/?p=NoSuchUser",
                ),
            )
        ],
    ),
    # An enhanced code whose class disagrees with the reply code is just text (RFC 3463 §2).
    (b"250 5.1.1 odd\r\n", [Reply(250, None, ("5.1.1 odd",))]),
    (b"421 4.7.0 Try again later\r\n", [Reply(421, "4.7.0", ("Try again later",))]),
    (b"452 4.5.3 Too many recipients\r\n", [Reply(452, "4.5.3", ("Too many recipients",))]),
    # Leading zeros are normalised away.
    (b"250 2.00.000 fine\r\n", [Reply(250, "2.0.0", ("fine",))]),
    # Bare LF line ends are tolerated in replies (they cannot smuggle anything to a server).
    (b"250-a\n250 b\n", [Reply(250, None, ("a", "b"))]),
    (b"220 one\r\n250 two\r\n", [Reply(220, None, ("one",)), Reply(250, None, ("two",))]),
    (
        b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        [Reply(250, None, ("mx.example.org Hello", "PIPELINING", "SIZE 1000"))],
    ),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("wire", "expected"), REPLIES)
def test_reply_parsing(wire: bytes, expected: list[Reply], bytewise: bool) -> None:
    assert parse_all(wire, bytewise=bytewise) == expected


BROKEN = [
    (b"250-first\r\n251 second\r\n", "changed code"),
    (b"25O OK\r\n", "malformed"),
    (b"hello\r\n", "malformed"),
    (b"250_OK\r\n", "malformed"),
    (b"650 nope\r\n", "malformed"),
    (b"2\r\n", "malformed"),
    (b"250 " + b"x" * MAX_LINE + b"\r\n", "longer than"),
    (b"250-" + b"x" * 1000 + b"\r\n", None),  # fine so far, reply not finished
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("wire", "error"), BROKEN)
def test_broken_replies_are_remote_protocol_errors(
    wire: bytes, error: str | None, bytewise: bool
) -> None:
    if error is None:
        assert parse_all(wire, bytewise=bytewise) == []
        return
    with pytest.raises(RemoteProtocolError, match=error) as info:
        parse_all(wire, bytewise=bytewise)
    # Never a made-up permanent failure: a broken server is a temporary problem.
    assert info.value.transient


def test_line_without_end_is_cut_off_at_the_limit() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * (MAX_LINE + 10))
    with pytest.raises(RemoteProtocolError, match="longer than"):
        parser.next_reply()


def test_reply_size_is_bounded() -> None:
    many = b"".join(b"250-" + b"x" * 1000 + b"\r\n" for _ in range(80))
    with pytest.raises(RemoteProtocolError, match="reply longer"):
        parse_all(many + b"250 end\r\n", bytewise=False)


def test_extensions_from_ehlo() -> None:
    reply = parse_all(
        b"250-mx.example.org greets you\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n"
        b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH PLAIN login XOAUTH2\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
        bytewise=False,
    )[0]
    ext = Extensions.from_ehlo(reply)
    assert ext == Extensions(
        pipelining=True,
        size=35882577,
        eightbitmime=True,
        smtputf8=True,
        starttls=True,
        auth=frozenset({"PLAIN", "LOGIN", "XOAUTH2"}),
        enhancedstatuscodes=True,
        chunking=True,
    )
    bare = Extensions.from_ehlo(Reply(250, None, ("mx hi", "SIZE")))
    assert bare.size == 0 and not bare.pipelining


# -------------------------------------------------------------------------- encoders


def ready(pipelining: bool = True, extra: str = "") -> ClientProtocol:
    proto = ClientProtocol("client.example.org")
    proto.receive_data(b"220 mx ready\r\n")
    assert proto.next_reply() == (Verb.GREETING, Reply(220, None, ("mx ready",)))
    proto.send_ehlo()
    lines = ["mx"] + (["PIPELINING"] if pipelining else []) + ["SIZE 1000", "8BITMIME"]
    if extra:
        lines.append(extra)
    wire = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
    proto.receive_data(wire.encode())
    assert proto.next_reply() is not None
    assert proto.state is State.READY
    return proto


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example\r\nRCPT TO:<evil@x>",
        "a@b.example\n",
        "a\r@b.example",
        "a\x00@b.example",
        "a\x1b@b.example",
        "a\x7f@b.example",
        "a\t@b.example",
        "a>@b.example",
        "x" * 65 + "@b.example",
        "a@" + "b" * 256,
        "a" * 60 + "@" + ("b" * 60 + ".") * 4 + "example",
        "nodomain",
        "ünicode@b.example",
    ],
)
def test_bad_addresses_refused_before_any_byte(address: str) -> None:
    proto = ready()
    with pytest.raises(LocalProtocolError):
        proto.send_mail(address)
    with pytest.raises(LocalProtocolError):
        check_address(address)
    # Nothing was recorded as sent: the session is still idle and usable.
    assert proto.state is State.READY
    assert proto.pending == 0
    assert proto.send_mail("ok@b.example").startswith(b"MAIL FROM:<ok@b.example>")


def test_control_characters_in_ehlo_name_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ClientProtocol("host\r\nMAIL FROM:<x@y>")


def test_mail_parameters_follow_extensions() -> None:
    proto = ready(extra="SMTPUTF8")
    assert (
        proto.send_mail("a@b.example", size=120, eightbitmime=True, smtputf8=True)
        == b"MAIL FROM:<a@b.example> SIZE=120 BODY=8BITMIME SMTPUTF8\r\n"
    )
    plain = ready(pipelining=False)
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        plain.send_mail("a@b.example", smtputf8=True)
    with pytest.raises(LocalProtocolError, match="exceeds server SIZE"):
        plain.send_mail("a@b.example", size=5000)
    assert plain.send_mail("", size=10) == b"MAIL FROM:<> SIZE=10\r\n"


# ---------------------------------------------------------------------- message data

DATA_CASES = [
    (b"", b".\r\n"),
    (b"hello", b"hello\r\n.\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"a\rb", b"a\r\nb\r\n.\r\n"),
    (b".start\r\n", b"..start\r\n.\r\n"),
    (b"x\r\n.\r\ny", b"x\r\n..\r\ny\r\n.\r\n"),
    # Smuggling attempts: bare-LF and bare-CR dot lines become stuffed CRLF lines.
    (b"x\n.\nMAIL FROM:<a@b>\n", b"x\r\n..\r\nMAIL FROM:<a@b>\r\n.\r\n"),
    (b"x\r.\rRCPT", b"x\r\n..\r\nRCPT\r\n.\r\n"),
    (b"x\r\n.\nq", b"x\r\n..\r\nq\r\n.\r\n"),
    (b"...\r\n", b"....\r\n.\r\n"),
    # Already CRLF-normalised bodies (as rendered) take the fast path, with the same wire.
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
    (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a.\r\n\r\nb\r\n", b"a.\r\n\r\nb\r\n.\r\n"),
]


@pytest.mark.parametrize(("body", "wire"), DATA_CASES)
def test_encode_data(body: bytes, wire: bytes) -> None:
    assert encode_data(body) == wire


def normalise(body: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", body)


@given(
    st.lists(st.sampled_from([b"a", b".", b"..", b" ", b"x.y", b"\r", b"\n"]), max_size=12).map(
        b"\r\n".join
    )
)
def test_normalised_bodies_get_the_full_encoding(body: bytes) -> None:
    # Mostly CRLF-only bodies: the fast path must give what normalising and stuffing give.
    lines = normalise(body).split(b"\r\n")
    stuffed = b"\r\n".join(b"." + x if x.startswith(b".") else x for x in lines)
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    assert encode_data(body) == stuffed + b".\r\n"


def server_receives(wire: bytes) -> tuple[bytes, bytes]:
    """What an RFC 5321 server takes as the message, and what it reads after it."""
    if wire.startswith(b".\r\n"):
        return b"", wire[3:]
    end = wire.index(b"\r\n.\r\n")
    message, rest = wire[: end + 2], wire[end + 5 :]
    lines = message.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines), rest


@given(
    st.lists(
        st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"..", b"a", b"MAIL", b" ", b"\x00"]),
        max_size=40,
    ).map(b"".join)
    | st.binary(max_size=300)
)
def test_server_receives_exactly_the_normalised_body(body: bytes) -> None:
    wire = encode_data(body)
    received, rest = server_receives(wire)
    expected = normalise(body)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert received == expected
    assert rest == b""  # no early end of data: nothing is left to be read as a command
    # No bare CR or LF anywhere on the wire.
    assert b"\r" not in wire.replace(b"\r\n", b"")
    assert b"\n" not in wire.replace(b"\r\n", b"")


# --------------------------------------------------------------------- state machine


def test_state_table_rejects_illegal_sequences() -> None:
    proto = ClientProtocol("c.example")
    with pytest.raises(LocalProtocolError, match="awaiting"):
        proto.send_ehlo()  # greeting not yet received
    proto.receive_data(b"220 hi\r\n")
    proto.next_reply()
    with pytest.raises(LocalProtocolError, match="MAIL in state"):
        proto.send_mail("a@b.example")  # before EHLO
    proto = ready()
    with pytest.raises(LocalProtocolError, match="RCPT in state"):
        proto.send_rcpt("a@b.example")
    with pytest.raises(LocalProtocolError, match="DATA in state"):
        proto.send_data()
    proto.send_mail("a@b.example")
    with pytest.raises(LocalProtocolError, match="DATA in state"):
        proto.send_data()  # no RCPT yet
    proto.send_rcpt("c@d.example")
    proto.send_data()
    with pytest.raises(LocalProtocolError, match="awaiting reply"):
        proto.send_body(b"x")  # the 354 has not come yet: DATA ends a pipelined group


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    proto = ready(pipelining=False)
    proto.send_mail("a@b.example")
    with pytest.raises(LocalProtocolError, match="outstanding"):
        proto.send_rcpt("c@d.example")
    proto.receive_data(b"250 ok\r\n")
    assert proto.next_reply() == (Verb.MAIL, Reply(250, None, ("ok",)))
    proto.send_rcpt("c@d.example")


def test_pipelined_transaction_and_next_one_behind_the_dot() -> None:
    proto = ready()
    wire = proto.send_mail("a@b.example") + proto.send_rcpt("c@d.example") + proto.send_data()
    assert wire == b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
    proto.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert [proto.next_reply() for _ in range(3)] == [
        (Verb.MAIL, Reply(250, "2.1.0", ("ok",))),
        (Verb.RCPT, Reply(250, "2.1.5", ("ok",))),
        (Verb.DATA, Reply(354, None, ("go",))),
    ]
    assert proto.state is State.DATA
    proto.send_body(b"hi")
    # RFC 2920: the next transaction may follow the end of data without waiting.
    proto.send_mail("a@b.example")
    proto.send_rcpt("e@f.example")
    assert proto.state is State.RCPT
    proto.receive_data(b"250 queued\r\n550 5.1.1 unknown\r\n")
    assert proto.next_reply() == (Verb.BODY, Reply(250, None, ("queued",)))
    assert proto.next_reply() == (Verb.MAIL, Reply(550, "5.1.1", ("unknown",)))
    # The refused MAIL does not reset the state: a pipelined RCPT already followed it.
    assert proto.state is State.RCPT


def test_refused_mail_without_followers_returns_to_ready() -> None:
    proto = ready(pipelining=False)
    proto.send_mail("a@b.example")
    proto.receive_data(b"550 5.7.1 sender refused\r\n")
    proto.next_reply()
    assert proto.state is State.READY


def test_421_closes_and_forgets_everything_owed() -> None:
    proto = ready()
    proto.send_mail("a@b.example")
    proto.send_rcpt("c@d.example")
    proto.receive_data(b"421 4.7.0 closing\r\n")
    assert proto.next_reply() == (Verb.MAIL, Reply(421, "4.7.0", ("closing",)))
    assert proto.state is State.CLOSED
    assert proto.pending == 0
    with pytest.raises(LocalProtocolError):
        proto.send_rset()


def test_unsolicited_replies() -> None:
    proto = ready()
    proto.receive_data(b"421 idle timeout\r\n")
    assert proto.next_reply() == (Verb.QUIT, Reply(421, None, ("idle timeout",)))
    assert proto.state is State.CLOSED
    proto = ready()
    proto.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        proto.next_reply()


def test_starttls_discards_bytes_that_came_with_the_220() -> None:
    proto = ready(extra="STARTTLS")
    proto.send_starttls()
    # A forged EHLO reply injected in the same packet as the 220 (CVE-2011-0411 class).
    proto.receive_data(b"220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n")
    assert proto.next_reply() == (Verb.STARTTLS, Reply(220, None, ("go ahead",)))
    assert proto.next_reply() is None
    assert proto.state is State.TLS
    proto.tls_started()
    assert proto.extensions == Extensions()
    assert proto.state is State.NEED_HELLO
    proto.send_ehlo()
    proto.receive_data(b"250-mx\r\n250 8BITMIME\r\n")
    _verb, reply = proto.next_reply() or (None, None)
    assert reply is not None and reply.lines == ("mx", "8BITMIME")
    assert proto.extensions.auth == frozenset()


def test_auth_login_continuation() -> None:
    proto = ready(extra="AUTH LOGIN")
    assert proto.send_auth_login("user") == b"AUTH LOGIN dXNlcg==\r\n"
    proto.receive_data(b"334 UGFzc3dvcmQ6\r\n")
    proto.next_reply()
    assert proto.state is State.AUTH_CONTINUE
    assert proto.send_auth_response("secret") == b"c2VjcmV0\r\n"
    proto.receive_data(b"235 2.7.0 ok\r\n")
    proto.next_reply()
    assert proto.state is State.READY


def test_auth_plain_encoding_and_refusal_of_control_chars() -> None:
    proto = ready(extra="AUTH PLAIN")
    assert proto.send_auth_plain("user", "pass") == b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
    other = ready(extra="AUTH PLAIN")
    with pytest.raises(LocalProtocolError) as info:
        other.send_auth_plain("user", "hunter2\r\nzz")
    assert "hunter2" not in str(info.value)  # a secret never appears in an error


def test_quit_then_nothing() -> None:
    proto = ready()
    assert proto.send_quit() == b"QUIT\r\n"
    with pytest.raises(LocalProtocolError):
        proto.send_noop()


# ------------------------------------------------- replies that cannot answer their command


def test_reply_codes_are_judged_by_their_first_digit() -> None:
    # RFC 5321 §4.2: 2yz success, 4yz transient, whatever the second and third digits.
    assert parse_all(b"299 fine\r\n471 later\r\n", bytewise=False) == [
        Reply(299, None, ("fine",)),
        Reply(471, None, ("later",)),
    ]
    proto = ready(pipelining=False)
    proto.send_mail("a@b.example")
    proto.receive_data(b"471 4.7.1 try later\r\n")
    assert proto.next_reply() == (Verb.MAIL, Reply(471, "4.7.1", ("try later",)))
    assert proto.state is State.READY  # refused, the session goes on
    proto.send_mail("a@b.example")
    proto.receive_data(b"250 ok\r\n")
    proto.next_reply()
    proto.send_rcpt("c@d.example")
    proto.receive_data(b"299 2.1.5 fine\r\n")
    assert proto.next_reply() == (Verb.RCPT, Reply(299, "2.1.5", ("fine",)))
    assert proto.state is State.RCPT
    proto.send_data()  # the recipient counts as accepted


@pytest.mark.parametrize("wire", [b"199 x\r\n", b"600 x\r\n", b"2x0 x\r\n", b"1 x\r\n"])
def test_reply_codes_outside_2xx_to_5xx_stay_malformed(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed"):
        parse_all(wire, bytewise=False)


def owing(verb: Verb) -> ClientProtocol:
    """A protocol whose next owed reply answers ``verb`` (nothing else owed)."""
    if verb is Verb.GREETING:
        return ClientProtocol("client.example.org")
    proto = ClientProtocol("client.example.org")
    _answer(proto, b"220 mx\r\n")
    proto.send_ehlo()
    _answer(proto, b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n")
    if verb is Verb.EHLO:
        proto.send_ehlo()
    elif verb is Verb.HELO:
        proto.send_helo()
    elif verb is Verb.STARTTLS:
        proto.send_starttls()
    elif verb is Verb.AUTH:
        proto.send_auth_plain("u", "p")
    elif verb is Verb.AUTH_RESPONSE:
        proto.send_auth_login("u")
        proto.receive_data(b"334 UGFzc3dvcmQ6\r\n")
        proto.next_reply()
        proto.send_auth_response("p")
    elif verb is Verb.RSET:
        proto.send_rset()
    elif verb is Verb.NOOP:
        proto.send_noop()
    elif verb is Verb.QUIT:
        proto.send_quit()
    else:
        steps = [(proto.send_mail, ("a@b.example",), b"250 ok\r\n")]
        steps += [(proto.send_rcpt, ("c@d.example",), b"250 ok\r\n")]
        steps += [(proto.send_data, (), b"354 go\r\n")]
        for send, args, reply in steps:
            send(*args)  # type: ignore[operator]
            if proto.next_expected is verb:
                return proto
            proto.receive_data(reply)
            proto.next_reply()
        proto.send_body(b"x")
    assert proto.next_expected is verb and proto.pending == 1
    return proto


# (command, codes that can answer it, codes that cannot). 421 and other 4yz/5yz answer
# anything; DATA's only positive reply is 354 (RFC 5321 §4.1.1.4, §4.3.2).
ANSWERS = [
    (Verb.GREETING, [220, 299, 421, 554], [354, 334, 300]),
    (Verb.EHLO, [250, 299, 502, 421], [354, 334]),
    (Verb.HELO, [250, 550], [354]),
    (Verb.STARTTLS, [220, 454, 501], [354, 334]),
    (Verb.AUTH, [235, 334, 535, 454], [354, 300]),
    (Verb.AUTH_RESPONSE, [235, 535], [354, 300]),
    (Verb.MAIL, [250, 251, 299, 471, 550], [354, 334, 300]),
    (Verb.RCPT, [250, 251, 299, 452, 550], [354, 334, 300]),
    (Verb.DATA, [354, 451, 554], [250, 251, 220, 299, 334, 300]),
    (Verb.BODY, [250, 299, 452, 552], [354, 334, 300]),
    (Verb.RSET, [250, 500], [354]),
    (Verb.NOOP, [250, 500], [354]),
    (Verb.QUIT, [221, 500], [354]),
]


@pytest.mark.parametrize(("verb", "good", "bad"), ANSWERS, ids=[v.name for v, _, _ in ANSWERS])
def test_a_reply_that_cannot_answer_its_command_ends_the_session(
    verb: Verb, good: list[int], bad: list[int]
) -> None:
    for code in good:
        proto = owing(verb)
        proto.receive_data(f"{code} text\r\n".encode())
        assert proto.next_reply() == (verb, Reply(code, None, ("text",)))
    for code in bad:
        proto = owing(verb)
        proto.receive_data(f"{code} text\r\n".encode())
        with pytest.raises(RemoteProtocolError, match=f"cannot answer {verb.value}") as info:
            proto.next_reply()
        assert info.value.transient
        assert proto.state is State.CLOSED and proto.pending == 0


def test_a_2xx_to_data_is_never_the_go_ahead_even_pipelined() -> None:
    proto = ready()
    proto.send_mail("a@b.example")
    proto.send_rcpt("c@d.example")
    proto.send_data()
    # An extra line after MAIL shifts every reply by one: DATA would get RCPT's 250.
    proto.receive_data(b"250 2.1.0 ok\r\n250 2.1.0 extra\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert proto.next_reply() == (Verb.MAIL, Reply(250, "2.1.0", ("ok",)))
    assert proto.next_reply() == (Verb.RCPT, Reply(250, "2.1.0", ("extra",)))
    with pytest.raises(RemoteProtocolError, match=r"250 2\.1\.5 ok cannot answer DATA"):
        proto.next_reply()
    with pytest.raises(LocalProtocolError):
        proto.send_body(b"x")  # nothing more is sent on this session


def _answer(proto: ClientProtocol, wire: bytes) -> None:
    proto.receive_data(wire)
    while proto.pending and proto.next_reply() is not None:
        pass


# (what to send, its reply with an extra line queued behind it, the next command)
EXTRA = [
    ("greeting", b"220 hi\r\n250 extra\r\n", "ehlo"),
    ("ehlo", b"250 mx\r\n250 extra\r\n", "mail"),
    ("mail", b"250 ok\r\n250 extra\r\n", "rcpt"),
    ("rcpt", b"250 ok\r\n250 extra\r\n", "data"),
    ("data", b"354 go\r\n250 extra\r\n", "body"),
    ("body", b"250 queued\r\n250 extra\r\n", "mail"),
    ("rset", b"250 ok\r\n250 extra\r\n", "mail"),
    ("noop", b"250 ok\r\n250 extra\r\n", "quit"),
    ("body", b"250 queued\r\n25", "quit"),  # a partial line is unsolicited too
]


@pytest.mark.parametrize(("stage", "wire", "following"), EXTRA)
def test_unsolicited_bytes_are_found_before_the_next_command(
    stage: str, wire: bytes, following: str
) -> None:
    proto = ClientProtocol("client.example.org")
    sends = {
        "ehlo": proto.send_ehlo,
        "mail": lambda: proto.send_mail("a@b.example"),
        "rcpt": lambda: proto.send_rcpt("c@d.example"),
        "data": proto.send_data,
        "body": lambda: proto.send_body(b"x"),
        "rset": proto.send_rset,
        "noop": proto.send_noop,
        "quit": proto.send_quit,
    }
    order = ["greeting", "ehlo", "mail", "rcpt", "data", "body"]
    if stage in ("rset", "noop"):
        order = ["greeting", "ehlo", stage]
    proven = {
        "greeting": b"220 hi\r\n",
        "ehlo": b"250 mx\r\n",
        "mail": b"250 ok\r\n",
        "rcpt": b"250 ok\r\n",
        "data": b"354 go\r\n",
        "body": b"250 queued\r\n",
        "rset": b"250 ok\r\n",
        "noop": b"250 ok\r\n",
    }
    for step in order:
        if step != "greeting":
            sends[step]()
        if step == stage:
            _answer(proto, wire)
            break
        _answer(proto, proven[step])
    assert proto.out_of_step
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        sends[following]()
    assert proto.state is State.CLOSED


def test_a_421_queued_while_idle_is_the_server_closing() -> None:
    proto = ready()
    proto.receive_data(b"421 4.4.2 idle timeout\r\n")
    with pytest.raises(TransientReplyError) as info:
        proto.send_mail("a@b.example")
    assert (info.value.code, info.value.stage) == (421, "MAIL")
    assert proto.state is State.CLOSED


def test_starttls_220_with_injected_bytes_is_not_out_of_step() -> None:
    proto = ready(extra="STARTTLS")
    proto.send_starttls()
    proto.receive_data(b"220 go\r\n250 injected\r\n")
    proto.next_reply()
    assert not proto.out_of_step
