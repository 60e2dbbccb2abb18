"""The hot path's pieces, byte by byte: the bulk reply scanner, replies read lazily,
envelopes checked once."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.smtp.encoding import Envelope
from bulksend.smtp.errors import LocalProtocolError, RemoteProtocolError
from bulksend.smtp.protocol import Reply, ReplyParser


def test_replies_before_a_malformed_line_are_read_first() -> None:
    # A final-dot 250 and garbage in one segment: the 250 still counts (the message was
    # taken); only the reply after it is broken.
    parser = ReplyParser()
    parser.feed(b"250 2.0.0 queued\r\n250-a\r\n250 b\r\nhello\r\n250 later\r\n")
    assert parser.next_reply() == Reply(250, "2.0.0", ("queued",))
    assert parser.next_reply() == Reply(250, None, ("a", "b"))
    with pytest.raises(RemoteProtocolError, match="malformed"):
        parser.next_reply()
    assert parser.buffered


def test_an_overlong_partial_line_is_reported_after_the_complete_replies() -> None:
    parser = ReplyParser()
    parser.feed(b"250 ok\r\n250 " + b"x" * (9 * 1024))
    assert parser.next_reply() == Reply(250, None, ("ok",))
    with pytest.raises(RemoteProtocolError, match="longer than"):
        parser.next_reply()


def test_discard_forgets_replies_already_scanned() -> None:
    parser = ReplyParser()
    parser.feed(b"250 one\r\n250 two\r\n")
    assert parser.next_reply() == Reply(250, None, ("one",))
    parser.discard()
    assert not parser.buffered
    assert parser.next_reply() is None


@given(
    code=st.integers(200, 599),
    texts=st.lists(
        st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t),
        min_size=1,
        max_size=4,
    ),
    enhanced=st.sampled_from(["", "2.1.5 ", "4.7.1 ", "5.1.1 ", "5.01.001 "]),
)
def test_a_reply_read_lazily_equals_the_one_parsed_at_once(
    code: int, texts: list[str], enhanced: str
) -> None:
    wire = b"".join(
        f"{code}{'-' if i < len(texts) - 1 else ' '}{enhanced}{t}\r\n".encode()
        for i, t in enumerate(texts)
    )
    parser = ReplyParser()
    parser.feed(wire)
    lazy = parser.next_reply()
    assert lazy is not None
    eager = Reply(lazy.code, lazy.enhanced_code, lazy.lines)
    assert lazy == eager and hash(lazy) == hash(eager)
    assert (str(lazy), repr(lazy), lazy.text) == (str(eager), repr(eager), eager.text)
    assert lazy.code == code


def test_a_reply_is_immutable_and_copies_as_a_value() -> None:
    reply = Reply(250, None, ("ok",))
    with pytest.raises(AttributeError):
        reply.code = 550  # type: ignore[misc]
    parser = ReplyParser()
    parser.feed(b"550 5.1.1 no such user\r\n")
    lazy = parser.next_reply()
    assert pickle.loads(pickle.dumps(lazy)) == Reply(550, "5.1.1", ("no such user",))
    assert copy.copy(lazy) == lazy


def test_an_envelope_checks_each_address_once_and_keeps_the_verdict() -> None:
    env = Envelope("s@x.test", ("a@x.test", "bad\r\n@x.test", "", "c@x.test"))
    assert [r is None for r in env.refusals] == [True, False, False, True]
    assert env.sender_refusal is None
    assert all(isinstance(r, LocalProtocolError) for r in env.refusals[1:3])
    assert Envelope("s\n@x.test", ()).sender_refusal is not None
    # Equality and hashing are those of the addresses and flags, as before.
    assert env == Envelope("s@x.test", ("a@x.test", "bad\r\n@x.test", "", "c@x.test"))
