"""DSN, ARF, plain bounces and auto-replies, parsed from fixtures modelled on what Postfix,
Exim, Microsoft 365, Gmail and Yahoo send; garbage never raises."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.inbound.parse import Kind, Notice, Parsed, Verp, parse_message
from bulksend.journal import Category

FIXTURES = Path(__file__).parent / "fixtures"
VERP = Verp.from_template("bounces+{token}@sender.test")


def parse(name: str, verp: Verp | None = VERP) -> Parsed:
    return parse_message((FIXTURES / name).read_bytes(), verp=verp)


def only(parsed: Parsed) -> Notice:
    assert len(parsed.notices) == 1, parsed
    return parsed.notices[0]


@pytest.mark.parametrize(
    ("fixture", "address", "status", "category"),
    [
        ("postfix_5_1_1.eml", "gone@example.com", "5.1.1", Category.BAD_MAILBOX),
        ("gmail_5_1_1.eml", "missing@gmail.com", "5.1.1", Category.BAD_MAILBOX),
        # Exchange's 5.1.10 "recipient not found" is RFC 7505's null MX code: both hard.
        ("m365_ndr.eml", "nobody@contoso.com", "5.1.10", Category.DNS),
        ("gmail_policy.eml", "reader@gmail.com", "5.7.1", Category.POLICY),
    ],
)
def test_dsn_bounces_are_found_by_their_verp_token(
    fixture: str, address: str, status: str, category: Category
) -> None:
    parsed = parse(fixture)
    assert parsed.kind is Kind.BOUNCE
    notice = only(parsed)
    assert (notice.address, notice.found_by, notice.status) == (address, "verp", status)
    assert notice.category is category
    assert notice.permanent


def test_dsn_keeps_the_diagnostic_and_the_returned_ids() -> None:
    notice = only(parse("m365_ndr.eml"))
    assert notice.code == 550
    assert notice.diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient")
    assert notice.message_id == "<11223344556677889900aabbccddeeff@sender.test>"
    assert notice.feedback_id == "december:news:sender"


def test_dsn_without_verp_names_the_final_recipient() -> None:
    # Exim, a shared return path (no token): the block's Final-Recipient is the address.
    notice = only(parse("exim_mailbox_full.eml"))
    assert (notice.kind, notice.address, notice.found_by) == (
        Kind.BOUNCE,
        "full@example.org",
        "final-recipient",
    )
    assert (notice.code, notice.status, notice.category) == (552, "5.2.2", Category.MAILBOX_FULL)
    assert notice.message_id == "<9d8c7b6a5f4e3d2c1b0a99887766aabb@sender.test>"
    # Without a VERP template, Postfix's Original-Recipient is used.
    notice = only(parse("postfix_5_1_1.eml", verp=None))
    assert (notice.address, notice.found_by) == ("gone@example.com", "original-recipient")


def test_a_delay_dsn_is_never_a_bounce() -> None:
    parsed = parse("postfix_delayed.eml")
    assert parsed.kind is Kind.DELAY
    notice = only(parsed)
    assert (notice.address, notice.status, notice.category) == ("slow@example.net", "4.4.1", None)
    assert not notice.permanent


def test_a_plain_failure_notice_is_classified_by_its_text() -> None:
    # Yahoo's qmail-style notice: no DSN part, the reply and the recipient are in the text.
    for verp, found_by in ((VERP, "verp"), (None, "text")):
        parsed = parse("yahoo_failure_notice.eml", verp)
        assert parsed.kind is Kind.BOUNCE
        notice = only(parsed)
        assert (notice.address, notice.found_by) == ("nobody@yahoo.com", found_by)
        assert notice.code == 554
        assert notice.category is Category.BAD_MAILBOX


@pytest.mark.parametrize(
    ("fixture", "address"),
    [("yahoo_arf.eml", "reader@yahoo.com"), ("microsoft_jmrp.eml", "reader@outlook.com")],
)
def test_arf_abuse_reports_are_complaints(fixture: str, address: str) -> None:
    parsed = parse(fixture)
    assert parsed.kind is Kind.COMPLAINT
    notice = only(parsed)
    assert (notice.address, notice.found_by, notice.feedback_type) == (address, "verp", "abuse")


def test_arf_without_verp_takes_original_rcpt_to() -> None:
    notice = only(parse("yahoo_arf.eml", verp=None))
    assert (notice.address, notice.found_by) == ("redacted@yahoo.com", "original-rcpt-to")
    assert notice.feedback_id == "december:news:sender"


def test_arf_not_spam_is_ignored() -> None:
    parsed = parse("arf_not_spam.eml")
    assert parsed.kind is Kind.IGNORED
    assert only(parsed).address == "fan@example.net"


@pytest.mark.parametrize("fixture", ["vacation.eml", "m365_autoreply.eml"])
def test_auto_replies_are_never_bounces(fixture: str) -> None:
    parsed = parse(fixture)
    assert parsed.kind is Kind.AUTO_REPLY
    assert parsed.notices == ()


def test_a_persons_reply_is_not_feedback() -> None:
    assert parse("human_reply.eml").kind is Kind.NOT_FEEDBACK


def test_an_unknown_token_names_nobody() -> None:
    parsed = parse("unknown_token.eml")
    assert parsed.kind is Kind.BOUNCE
    notice = only(parsed)
    assert notice.address is None
    assert notice.bad_token


def test_eight_bit_headers_are_read_as_utf8() -> None:
    # RFC 6533: an SMTPUTF8 recipient in a raw UTF-8 field; invalid octets are replaced.
    data = (
        b"From: MAILER-DAEMON@x.test\nSubject: Undelivered\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
        b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x.test\n\n"
        b"Final-Recipient: utf-8; j\xc3\xb6rg@example.com\nAction: failed\nStatus: 5.1.1\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 no such user \xff\xfe\n\n--b--\n"
    )
    notice = only(parse_message(data))
    assert notice.address == "jörg@example.com"
    assert notice.diagnostic == "550 5.1.1 no such user \ufffd\ufffd"


def test_too_large_is_unparseable() -> None:
    parsed = parse_message(b"Subject: x\n\n" + b"x" * (10 * 1024 * 1024))
    assert parsed.kind is Kind.UNPARSEABLE
    assert "larger than" in parsed.detail


def test_a_report_without_recipient_blocks_is_unparseable() -> None:
    data = (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
        b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n--b--\n"
    )
    assert parse_message(data, verp=VERP).kind is Kind.UNPARSEABLE


_HEADER_NAMES = st.sampled_from(
    [
        "Content-Type",
        "Content-Transfer-Encoding",
        "From",
        "To",
        "Subject",
        "Delivered-To",
        "Auto-Submitted",
        "Return-Path",
        "Final-Recipient",
        "Action",
        "Status",
        "Diagnostic-Code",
        "Feedback-Type",
        "Original-Mail-From",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "multipart/report; report-type=delivery-status; boundary=b",
            "multipart/report; report-type=feedback-report; boundary=b",
            "message/delivery-status",
            "message/feedback-report",
            "message/rfc822",
            "text/rfc822-headers",
            "multipart/mixed; boundary=b",
            "base64",
            "quoted-printable",
            "failed",
            "delayed",
            "5.1.1",
            "rfc822; a@b",
            "rfc822;",
            "<bounces+x=y@sender.test>",
            "bounces++ZZ=@sender.test",
            "=?utf-8?b?////?=",
            "=?x-unknown?q?a?=",
            "MAILER-DAEMON",
            "abuse",
        ]
    ),
    st.text(max_size=40),
)
_LINES = st.one_of(
    st.tuples(_HEADER_NAMES, _VALUES).map(lambda nv: f"{nv[0]}: {nv[1]}"),
    st.sampled_from(["", "--b", "--b--", "\t folded", "."]),
    st.text(max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=40), st.binary(max_size=64))
def test_garbage_mime_never_raises(lines: list[str], tail: bytes) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + tail
    parsed = parse_message(data, verp=VERP, envelope_to="bounces+x=y@sender.test")
    assert isinstance(parsed.kind, Kind)
    for notice in parsed.notices:
        assert notice.kind in (
            Kind.BOUNCE,
            Kind.DELAY,
            Kind.DELIVERED,
            Kind.COMPLAINT,
            Kind.IGNORED,
        )


def test_mail_to_the_unsubscribe_address_unsubscribes_its_sender() -> None:
    data = (FIXTURES / "mailto_unsubscribe.eml").read_bytes()
    parsed = parse_message(data, verp=VERP, mailto="Unsubscribe@sender.test")
    assert parsed.kind is Kind.UNSUBSCRIBE
    assert (only(parsed).address, only(parsed).found_by) == ("Reader10@Example.com", "from")
    # Without the mailto address configured it is ordinary mail.
    assert parse_message(data, verp=VERP).kind is Kind.NOT_FEEDBACK
    # A vacation reply that reaches the unsubscribe address unsubscribes nobody.
    vacation = (FIXTURES / "vacation.eml").read_bytes()
    parsed = parse_message(
        vacation, envelope_to="unsubscribe@sender.test", mailto="unsubscribe@sender.test"
    )
    assert parsed.kind is Kind.AUTO_REPLY


def test_a_subject_of_200k_encoded_words_is_read_in_bounded_time() -> None:
    # The stdlib's RFC 2047 decoder is quadratic in the number of words: unbounded, this
    # 2.8 MB header took over a minute of the receiver's only worker thread.
    subject = b" ".join(b"=?utf-8?q?a?=" for _ in range(200_000))
    data = b"From: MAILER-DAEMON@mx.test\r\nSubject: " + subject + b"\r\n\r\n550 5.1.1 gone\r\n"
    start = time.perf_counter()
    parsed = parse_message(data, verp=VERP)
    assert time.perf_counter() - start < 15  # unbounded: 80-100 s here
    assert parsed.kind is Kind.BOUNCE
    assert parsed.detail.startswith("aaaa")


def test_a_dsn_reports_on_at_most_1000_recipients() -> None:
    # A forged report of 5,000 recipient blocks suppresses no more than a real one could.
    blocks = b"".join(
        b"Final-Recipient: rfc822; u%d@victim.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n" % n
        for n in range(5000)
    )
    data = (
        b"From: MAILER-DAEMON@mx.test\r\nTo: bounces@sender.test\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n"
        + blocks
        + b"--B--\r\n"
    )
    parsed = parse_message(data, verp=VERP)
    assert parsed.kind is Kind.BOUNCE
    assert [n.address for n in parsed.notices] == [f"u{n}@victim.test" for n in range(1000)]


@pytest.mark.parametrize(
    ("to", "text"),
    [
        # A token that decodes to a NUL and an ESC: PostgreSQL cannot store the first.
        (b"bounces+a+00+1B=victim.test@sender.test", b""),
        # A qmail-style recipient line with a terminal escape sequence in it.
        (b"bounces@sender.test", b"<a\x1b[2Jb@victim.test>:\r\n"),
    ],
)
def test_an_address_with_control_characters_names_nobody(to: bytes, text: bytes) -> None:
    data = (
        b"From: MAILER-DAEMON@mx.test\r\nTo: " + to + b"\r\nSubject: failure notice\r\n\r\n"
        + text + b"550 5.1.1 gone\r\n"
    )  # fmt: skip
    notice = only(parse_message(data, verp=VERP))
    assert (notice.kind, notice.address) == (Kind.BOUNCE, None)


def test_an_unsubscribe_from_an_address_with_control_characters_is_not_one() -> None:
    data = b"From: a\x1b@victim.test\r\nTo: unsubscribe@sender.test\r\nSubject: x\r\n\r\nx\r\n"
    parsed = parse_message(data, verp=VERP, mailto="unsubscribe@sender.test")
    assert parsed.kind is Kind.NOT_FEEDBACK


def test_address_headers_without_an_address_are_read_in_linear_time() -> None:
    # 1,000 "To:" lines of 8,000 octets and no "@": the address pattern scanned each from
    # every one of its characters (about 80 s).
    headers = b"To: " + b"a" * 8000 + b"\r\n"
    data = b"From: MAILER-DAEMON@mx.test\r\n" + headers * 1000 + b"Subject: x\r\n\r\n550 5.1.1\r\n"
    start = time.perf_counter()
    parsed = parse_message(data, verp=VERP)
    assert time.perf_counter() - start < 15  # unbounded: 80-100 s here
    assert (parsed.kind, only(parsed).address) == (Kind.BOUNCE, None)
