"""Classification of replies, errors and DNS answers (bulksend.delivery.outcome)."""

from __future__ import annotations

import pytest

from bulksend.delivery.outcome import (
    categorize,
    classify_dns,
    classify_error,
    classify_reply,
    parse_enhanced_code,
    throttled,
)
from bulksend.journal import Category, Kind
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
from bulksend.smtp.protocol import Reply, Verb

D, T, B = Kind.DELIVERED, Kind.DEFERRED, Kind.BOUNCED
C = Category

# (stage, code, enhanced code, text, kind, category): replies as real servers send them.
# The stage as people write it; the command it names (_VERBS) is what classification reads.
REPLIES = [
    ("data", 250, "2.0.0", "OK  1700000000 abc.123 - gsmtp", D, None),
    ("data", 250, None, "Ok: queued as 4ABCD", D, None),
    # Gmail
    (
        "rcpt",
        550,
        "5.1.1",
        "The email account that you tried to reach does not exist. Please try\n"
        "double-checking the recipient's email address for typos or\n"
        "unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
        B,
        C.BAD_MAILBOX,
    ),
    (
        "data",
        421,
        "4.7.28",
        "Gmail has detected an unusual rate of unsolicited mail originating\n"
        "from your IP address. To protect our users from spam, mail sent from your IP\n"
        "address has been temporarily rate limited. - gsmtp",
        T,
        C.POLICY,
    ),
    (
        "data",
        550,
        "5.7.26",
        "This mail has been blocked because the sender is unauthenticated. Gmail requires "
        "all senders to authenticate with either SPF or DKIM. - gsmtp",
        B,
        C.POLICY,
    ),
    (
        "data",
        452,
        "4.2.2",
        "The recipient's inbox is out of storage space. Please direct the\n"
        "recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
        T,
        C.MAILBOX_FULL,
    ),
    (
        "data",
        552,
        "5.2.2",
        "The email account that you tried to reach is over quota. - gsmtp",
        B,
        C.MAILBOX_FULL,
    ),
    (
        "data",
        552,
        "5.3.4",
        "Your message exceeded Google's message size limits. - gsmtp",
        B,
        C.MESSAGE_TOO_BIG,
    ),
    (
        "mail",
        530,
        "5.7.0",
        "Must issue a STARTTLS command first. - gsmtp",
        T,  # our TLS went wrong, not the recipient: retry (with TLS) rather than lose them
        C.TLS,
    ),
    # Yahoo
    (
        "connect",
        421,
        "4.7.0",
        "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or "
        "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        T,
        C.POLICY,
    ),
    ("rcpt", 554, "5.7.9", "Message not accepted for policy reasons.", B, C.POLICY),
    ("rcpt", 552, "1", "1 Requested mail action aborted, mailbox not found", T, C.BAD_MAILBOX),
    (
        "rcpt",
        554,
        None,
        "delivery error: dd This user doesn't have a yahoo.com account",
        B,
        C.BAD_MAILBOX,
    ),
    # Outlook / Microsoft
    (
        "rcpt",
        550,
        "5.7.1",
        "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet "
        "service provider since part of their network is on our block list (S3150).",
        B,
        C.POLICY,
    ),
    (
        "rcpt",
        452,
        "4.2.2",
        "The email account that you tried to reach is over quota.",
        T,
        C.MAILBOX_FULL,
    ),
    (
        "rcpt",
        550,
        "5.5.0",
        "Requested action not taken: mailbox unavailable (S2017)",
        B,
        C.BAD_MAILBOX,
    ),
    (
        "rcpt",
        550,
        "5.4.1",
        "Recipient address rejected: Access denied. AS(201806281) [x.prod.outlook.com]",
        B,
        C.BAD_MAILBOX,
    ),
    (
        "rcpt",
        451,
        "4.7.500",
        "Server busy. Please try again later from [192.0.2.1]. (S77719)",
        T,
        C.POLICY,
    ),
    # RFC 5321 §4.5.3.1.10: 552 to RCPT is temporary, whatever the enhanced code says.
    ("rcpt", 552, "5.2.2", "mailbox full", T, C.MAILBOX_FULL),
    ("RCPT TO", 552, None, "Too many recipients", T, C.POLICY),
    # ... but not at the end of data.
    ("data", 552, None, "Message size exceeds fixed maximum message size", B, C.MESSAGE_TOO_BIG),
    # A session out of step (Postfix after a transaction left open) is not the recipient's fault.
    ("MAIL", 503, "5.5.1", "Error: nested MAIL command", T, C.OTHER),
    ("MAIL", 530, "5.7.0", "Authentication required", T, C.POLICY),
    # Contradictory classes: a 4.x.x detail makes a 5xx temporary; a 4xx is never a bounce.
    ("rcpt", 550, "4.7.1", "Greylisted, please try again later", T, C.POLICY),
    ("rcpt", 450, "5.1.1", "User unknown", T, C.BAD_MAILBOX),
    # No enhanced codes: text heuristics.
    (
        "rcpt",
        550,
        None,
        "<bob@example.com>: Recipient address rejected: User unknown",
        B,
        C.BAD_MAILBOX,
    ),
    ("rcpt", 550, None, "No such user here", B, C.BAD_MAILBOX),
    ("rcpt", 452, None, "Mailbox full", T, C.MAILBOX_FULL),
    ("data", 554, None, "Your message was rejected because it looks like spam", B, C.POLICY),
    ("connect", 554, None, "192.0.2.1 is blocked using zen.spamhaus.org", B, C.POLICY),
    ("data", 451, None, "Temporary local problem - please try later", T, C.OTHER),
    ("data", 554, None, "Transaction failed", B, C.OTHER),
    # Generic enhanced codes fall back to the text.
    ("data", 550, "5.0.0", "Message size exceeds limit", B, C.MESSAGE_TOO_BIG),
    # Other codes: judged as protocol errors, never delivered or bounced.
    ("data", 354, None, "go ahead", T, C.OTHER),
    ("data", 600, None, "???", T, C.OTHER),
]


_VERBS = {
    "connect": Verb.GREETING,
    "mail": Verb.MAIL,
    "MAIL": Verb.MAIL,
    "rcpt": Verb.RCPT,
    "RCPT TO": Verb.RCPT,
    "data": Verb.BODY,
}


@pytest.mark.parametrize(("stage", "code", "enhanced", "text", "kind", "category"), REPLIES)
def test_classify_reply(
    stage: str,
    code: int,
    enhanced: str | None,
    text: str,
    kind: Kind,
    category: Category | None,
) -> None:
    reply = Reply(code, enhanced, tuple(text.split("\n")))
    outcome = classify_reply(reply, stage=_VERBS[stage])
    assert outcome.kind is kind
    assert outcome.category is category
    assert outcome.code == code
    assert outcome.enhanced_code == enhanced
    assert outcome.is_attempt


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("5.1.1", (5, 1, 1)),
        ("4.7.500", (4, 7, 500)),
        (" 2.0.0 ", (2, 0, 0)),
        ("5.1", None),
        ("3.1.1", None),
        ("5.1.1.1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_enhanced_code(code: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_enhanced_code(code) == expected


@pytest.mark.parametrize(
    ("enhanced", "text", "category"),
    [
        ("5.1.1", "spam", C.BAD_MAILBOX),  # the enhanced code wins over the text
        ("5.1.10", "", C.DNS),
        ("5.2.3", "", C.MESSAGE_TOO_BIG),
        ("4.4.4", "", C.DNS),
        ("5.7.10", "", C.TLS),
        ("5.7.1", "relaying denied", C.POLICY),
        ("5.6.0", "", C.OTHER),
        (None, "", C.OTHER),
    ],
)
def test_categorize(enhanced: str | None, text: str, category: Category) -> None:
    assert categorize(550, enhanced, text) is category


def test_reply_errors_classify_by_their_reply() -> None:
    reply = Reply(550, "5.1.1", ("No such user",))
    outcome = classify_error(PermanentReplyError(reply, Verb.RCPT))
    assert (outcome.kind, outcome.category) == (B, C.BAD_MAILBOX)
    reply = Reply(552, "5.2.2", ("mailbox full",))
    assert classify_error(PermanentReplyError(reply, Verb.RCPT)).kind is T
    assert classify_error(TransientReplyError(Reply(421, None, ("bye",)), Verb.MAIL)).kind is T


@pytest.mark.parametrize(
    ("exc", "kind", "category"),
    [
        (SMTPConnectionError("connection reset"), T, C.OTHER),
        (SMTPTimeoutError("rcpt: no reply within 300 s"), T, C.OTHER),
        (RemoteProtocolError("malformed reply"), T, C.OTHER),
        (TLSError("certificate verify failed"), T, C.TLS),
        (ConnectionRefusedError(111, "refused"), T, C.OTHER),
        (InDoubtError("no reply to the final dot"), Kind.IN_DOUBT, C.OTHER),
        (LocalProtocolError("address contains CR"), B, C.OTHER),
    ],
)
def test_classify_error(exc: BaseException, kind: Kind, category: Category) -> None:
    outcome = classify_error(exc)
    assert outcome.kind is kind
    assert outcome.category is category
    assert outcome.text


def test_classify_error_refuses_bugs() -> None:
    with pytest.raises(TypeError):
        classify_error(KeyError("oops"))


def test_classify_dns() -> None:
    nx = classify_dns(transient=False, enhanced_code="5.1.2", text="example.invalid: NXDOMAIN")
    assert (nx.kind, nx.category, nx.enhanced_code) == (B, C.DNS, "5.1.2")
    servfail = classify_dns(transient=True, text="SERVFAIL")
    assert (servfail.kind, servfail.category, servfail.enhanced_code) == (T, C.DNS, "4.4.3")
    null_mx = classify_dns(transient=False, enhanced_code="5.1.10", text="null MX")
    assert null_mx.kind is B


def test_throttled_is_not_an_attempt() -> None:
    outcome = throttled(42.0, "site rate limit")
    assert outcome.kind is Kind.THROTTLED
    assert not outcome.is_attempt
    assert outcome.retry_after == 42.0
    with pytest.raises(ValueError, match="retry_after"):
        throttled(-1.0)
    with pytest.raises(ValueError, match="retry_after"):
        throttled(float("nan"))
