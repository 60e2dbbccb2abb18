"""What comes back: delivery status notifications, complaint reports and auto-replies, parsed.

Pure functions over the bytes of one inbound message (stdlib :mod:`email`, the compat32
policy, which never raises on a malformed header); nothing here does I/O. How a message is
read, in this order:

1. ``multipart/report; report-type=delivery-status`` (RFC 3464 §2): the
   ``message/delivery-status`` part holds per-message fields, then one block per recipient
   (``Final-Recipient``, ``Original-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``,
   ``Remote-MTA``). ``Action: failed`` is a bounce; ``delayed`` a delay, never a bounce;
   ``delivered``, ``relayed`` and ``expanded`` are success notices.
2. ``multipart/report; report-type=feedback-report`` (RFC 5965 §2, ARF): the
   ``message/feedback-report`` part's ``Feedback-Type`` ``abuse``, ``fraud``, ``virus`` or
   ``other`` is a complaint; ``not-spam`` and ``auth-failure`` are not.
3. A bounce without a DSN part (qmail and Yahoo's "failure notice", older MTAs): a message
   from ``MAILER-DAEMON`` or ``postmaster``, or with a bounce-like subject, is classified by
   the SMTP reply in its text with the inline classifier's categories
   (:func:`~bulksend.delivery.outcome.categorize`); a "delayed"/"will retry" text is a delay.
4. Auto-replies (RFC 3834 ``Auto-Submitted`` other than ``no``, ``X-Autoreply``,
   ``Precedence: auto_reply``, vacation and out-of-office subjects): never a bounce.
5. Mail to the campaign's ``[unsubscribe] mailto`` address (RFC 2369 ``List-Unsubscribe:
   <mailto:...>``) unsubscribes the address in its ``From``.
6. Anything else is not feedback (a person's reply, spam to the bounce address).

Which recipient a notice is about: the VERP token of the address the report was sent to
(``bounces+user=example.com@...``: ``Delivered-To``, ``X-Original-To``, ``To``...), or of the
returned message's ``Return-Path`` or the ARF ``Original-Mail-From``; without one, the
block's ``Original-Recipient``, then ``Final-Recipient``, or the ARF ``Original-Rcpt-To``;
but a message whose VERP token does not decode is about nobody (it is not ours, or forged).
The returned message's ``Message-ID`` (and ``Feedback-ID``) are kept for a caller that can
map them to a campaign. A message that cannot be read at all is ``unparseable``, never an
exception.
"""

from __future__ import annotations

import contextlib
import email
import email.errors
import email.header
import email.policy
import email.utils
import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Final

from bulksend.campaign.render import verp_decode
from bulksend.campaign.verp import split_tag, tag_verifies
from bulksend.delivery.outcome import categorize, parse_enhanced_code
from bulksend.journal import Category

__all__ = ["MAX_SIZE", "Kind", "Notice", "Parsed", "Verp", "parse_message"]

#: Larger messages are not parsed (a report is a few kilobytes plus the returned message).
MAX_SIZE: Final = 10 * 1024 * 1024

_ENVELOPE_HEADERS: Final = (
    "delivered-to",
    "x-original-to",
    "envelope-to",
    "x-envelope-to",
    "to",
)
_COMPLAINTS: Final = frozenset({"abuse", "fraud", "virus", "other"})
_REPLY: Final = re.compile(r"(?<![\d.])([245]\d\d)[ :-]+(?:#?([245]\.\d{1,3}\.\d{1,3})\b)?")
_ENHANCED_ANYWHERE: Final = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
# An address never holds a control character (an escape sequence for a terminal, a NUL that
# PostgreSQL cannot store): text that does is not an address.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_QMAIL_RECIPIENT: Final = re.compile(
    r"^<([^<>\s@\x00-\x1f\x7f]+@[^<>\s@\x00-\x1f\x7f]+)>:\s*$", re.MULTILINE
)
_ATOM: Final = r"[^<>\s;@\x00-\x1f\x7f]"
# The look-behind starts a match only where a run of address characters starts: without
# it, a run of 8 KiB with no "@" is scanned from each of its characters (quadratic).
_ADDRESS: Final = re.compile(rf"<?((?<!{_ATOM}){_ATOM}+@{_ATOM}+)>?")
_DAEMON: Final = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.I)
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|delivery status notification|failure notice|returned mail|"
    r"delivery failure|mail delivery failed|delivery has failed|could not be delivered|"
    r"non-delivery|nondeliverable",
    re.I,
)
_DELAY_TEXT: Final = re.compile(
    r"\bdelayed\b|will (?:retry|continue to try|keep trying)|still trying|not yet been delivered|"
    r"(?<!\w)delay\)",
    re.I,
)
_AUTO_SUBJECT: Final = re.compile(
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)|"
    r"\bvacation\b|abwesenheit|absence|r[ée]ponse automatique",
    re.I,
)
_TEXT_LIMIT: Final = 64 * 1024  # of a body scanned for a reply
_DETAIL_LIMIT: Final = 500
# Of a header read: the stdlib's RFC 2047 decoder takes time quadratic in the number of
# encoded words (100k words in a Subject: minutes of CPU); no header we read needs more.
_HEADER_LIMIT: Final = 8192
# Recipient blocks read from one DSN: it reports on one envelope of ours (RFC 5321 §4.5.3.1.8:
# servers take 100 recipients, and a transaction of ours has fewer); a forged one names more.
_MAX_BLOCKS: Final = 1000


class Kind(enum.StrEnum):
    """What an inbound message (or one recipient block of it) says."""

    BOUNCE = "bounce"  # delivery failed (hard or soft: see the category)
    DELAY = "delay"  # still being retried: never a bounce
    DELIVERED = "delivered"  # a success notice (delivered, relayed, expanded)
    COMPLAINT = "complaint"  # an ARF abuse/fraud/virus/other report
    AUTO_REPLY = "auto_reply"  # vacation, out of office: never a bounce
    UNSUBSCRIBE = "unsubscribe"  # mail to the List-Unsubscribe mailto address (RFC 2369)
    IGNORED = "ignored"  # a report that asks nothing of us (ARF not-spam, auth-failure)
    NOT_FEEDBACK = "not_feedback"  # ordinary mail to the bounce address
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True, slots=True)
class Verp:
    """The VERP return path, split around ``{token}``: ``bounces+`` and ``@example.org``."""

    before: str
    after: str
    #: Signing keys (bulksend.campaign.verp): with any, only a token with a tag is one.
    keys: tuple[bytes, ...] = ()

    @classmethod
    def from_template(cls, template: str, keys: Sequence[bytes] = ()) -> Verp | None:
        """``"bounces+{token}@example.org"`` -> ``Verp``; None without ``{token}``."""
        before, token, after = template.partition("{token}")
        return cls(before.lower(), after.lower(), tuple(keys)) if token else None

    def recipient(self, address: str) -> str | None:
        """The campaign recipient a return-path address stands for, or None (with keys: also
        when its token carries no tag).

        Raises:
            ValueError: the address has the VERP shape, but its token does not decode, or
                (with keys) its tag does not verify.
        """
        address = address.strip().strip("<>").strip()
        lowered = address.lower()
        if not (lowered.startswith(self.before) and lowered.endswith(self.after)):
            return None
        token = address[len(self.before) : len(address) - len(self.after)]
        if not token or "@" in token:
            return None
        tagged = split_tag(token) if self.keys else None
        if self.keys and tagged is None:
            return None
        decoded = verp_decode(token if tagged is None else tagged[1])
        if _CONTROL.search(decoded):
            raise ValueError(f"{token!r} decodes to control characters")
        if tagged is not None and not tag_verifies(self.keys, tagged[0], decoded):
            raise ValueError(f"{token!r}: its tag does not verify")
        return decoded


@dataclass(frozen=True, slots=True)
class Notice:
    """What an inbound message says about one recipient (``address`` None: unknown)."""

    kind: Kind
    address: str | None = None
    #: How ``address`` was found: "verp", "original-recipient", "final-recipient",
    #: "original-rcpt-to", "text"; "" when it was not.
    found_by: str = ""
    status: str | None = None  # the enhanced status code (RFC 3463)
    code: int | None = None  # the SMTP reply code in the diagnostic, if any
    diagnostic: str = ""
    category: Category | None = None
    feedback_type: str = ""
    #: The returned (original) message's Message-ID and Feedback-ID, if it came back.
    message_id: str = ""
    feedback_id: str = ""
    #: A VERP token was there but did not decode: counted and dropped.
    bad_token: bool = False

    @property
    def permanent(self) -> bool:
        """Whether the failure is permanent (status class 5, or no status at all)."""
        parsed = parse_enhanced_code(self.status)
        return parsed is None or parsed[0] == 5


@dataclass(frozen=True, slots=True)
class Parsed:
    """One inbound message: its kind, and a notice per recipient it reports on."""

    kind: Kind
    notices: tuple[Notice, ...] = ()
    detail: str = ""


def parse_message(
    data: bytes, *, verp: Verp | None = None, envelope_to: str = "", mailto: str = ""
) -> Parsed:
    """Read one inbound message (see the module's comment for how).

    Args:
        data: the message as received.
        verp: the campaign's return-path template, to find recipients by their token.
        envelope_to: the address it was delivered to (RCPT TO), when known.
        mailto: the ``[unsubscribe] mailto`` address: mail to it unsubscribes its sender.
    """
    if len(data) > MAX_SIZE:
        return Parsed(Kind.UNPARSEABLE, detail=f"larger than {MAX_SIZE} bytes")
    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        return _parse(message, verp, envelope_to, mailto.strip().lower())
    except Exception as exc:
        # The stdlib parser and header decoder have raised on crafted input before (e.g.
        # CPython issues with encoded words and nested parts): a bad message is classified,
        # never allowed to stop the ingest or the listener.
        return Parsed(Kind.UNPARSEABLE, detail=f"{type(exc).__name__}: {exc}"[:_DETAIL_LIMIT])


def _parse(message: Message, verp: Verp | None, envelope_to: str, mailto: str) -> Parsed:
    content_type = message.get_content_type()
    report_type = email.utils.collapse_rfc2231_value(message.get_param("report-type") or "")
    report_type = report_type.lower()
    if content_type == "multipart/report" and report_type == "delivery-status":
        status = _part(message, "message/delivery-status")
        if status is not None:
            return _dsn(message, status, verp, envelope_to)
    if content_type == "multipart/report" and report_type == "feedback-report":
        report = _part(message, "message/feedback-report")
        if report is not None:
            return _arf(message, report, verp, envelope_to)
    subject = _header(message, "subject")
    sender = _header(message, "from")
    if _DAEMON.search(sender) or _BOUNCE_SUBJECT.search(subject):
        return _plain_bounce(message, subject, verp, envelope_to)
    if _auto_reply(message, subject):
        return Parsed(Kind.AUTO_REPLY, detail=subject[:_DETAIL_LIMIT])
    if mailto and any(a.lower() == mailto for a in _addressed_to(message, envelope_to)):
        address = email.utils.parseaddr(sender)[1]
        if "@" in address and not _CONTROL.search(address):
            notice = Notice(Kind.UNSUBSCRIBE, address, found_by="from")
            return Parsed(Kind.UNSUBSCRIBE, (notice,), detail=subject[:_DETAIL_LIMIT])
    return Parsed(Kind.NOT_FEEDBACK, detail=subject[:_DETAIL_LIMIT])


# --- DSN (RFC 3464) ---------------------------------------------------------------------------


def _dsn(message: Message, status: Message, verp: Verp | None, envelope_to: str) -> Parsed:
    blocks = _status_blocks(status)
    original = _returned(message)
    verp_address, bad_token = _verp_recipient(message, original, verp, envelope_to)
    message_id, feedback_id = _original_ids(original)
    notices = []
    for block in blocks[1 : _MAX_BLOCKS + 1]:  # the first holds the per-message fields
        action = _header(block, "action").lower()
        kind = {
            "failed": Kind.BOUNCE,
            "delayed": Kind.DELAY,
            "delivered": Kind.DELIVERED,
            "relayed": Kind.DELIVERED,
            "expanded": Kind.DELIVERED,
        }.get(action)
        if kind is None:
            continue
        status_code = _header(block, "status").split(" ")[0] or None
        diagnostic = _diagnostic(_header(block, "diagnostic-code"))
        code = _reply_code(diagnostic)
        # A token that does not decode is not ours (or forged): no fallback to the block.
        address, found_by = (None, "") if bad_token else _block_recipient(block, verp_address)
        category = categorize(code, status_code, diagnostic) if kind is Kind.BOUNCE else None
        notices.append(
            Notice(
                kind=kind,
                address=address,
                found_by=found_by,
                status=status_code,
                code=code,
                diagnostic=diagnostic[:_DETAIL_LIMIT],
                category=category,
                message_id=message_id,
                feedback_id=feedback_id,
                bad_token=bad_token,
            )
        )
    if not notices:
        return Parsed(Kind.UNPARSEABLE, detail="a delivery-status report without recipients")
    if verp_address is not None:
        # One recipient per envelope: every block is about it; keep the worst.
        notices = [min(notices, key=lambda n: _SEVERITY[n.kind])]
    return Parsed(notices[0].kind, tuple(notices))


_SEVERITY: Final = {Kind.BOUNCE: 0, Kind.DELAY: 1, Kind.DELIVERED: 2}


def _status_blocks(status: Message) -> list[Message]:
    payload = status.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    # Some MTAs send the part base64- or 8bit-encoded, which the parser leaves as text.
    text = _text(status)
    return [
        email.message_from_string(block.strip() + "\n", policy=email.policy.compat32)
        for block in re.split(r"\r?\n\s*\r?\n", text)
        if block.strip()
    ]


def _block_recipient(block: Message, verp_address: str | None) -> tuple[str | None, str]:
    if verp_address is not None:
        return verp_address, "verp"
    for name in ("original-recipient", "final-recipient"):
        address = _typed_address(_header(block, name))
        if address is not None:
            return address, name
    return None, ""


def _typed_address(value: str) -> str | None:
    """``rfc822; user@example.com`` -> ``user@example.com`` (RFC 3464 §2.3.1)."""
    kind, _, address = value.partition(";")
    if not address:
        kind, address = "rfc822", kind
    if kind.strip().lower() not in ("rfc822", "utf-8"):
        return None
    m = _ADDRESS.fullmatch(address.strip())
    return None if m is None else m[1]


def _diagnostic(value: str) -> str:
    """``smtp; 550 5.1.1 ...`` -> ``550 5.1.1 ...`` (folded lines joined)."""
    kind, sep, text = value.partition(";")
    return " ".join((text if sep else kind).split())


def _reply_code(text: str) -> int | None:
    m = _REPLY.search(text)
    return None if m is None else int(m[1])


# --- ARF (RFC 5965) ---------------------------------------------------------------------------


def _arf(message: Message, report: Message, verp: Verp | None, envelope_to: str) -> Parsed:
    fields = _report_fields(report)
    feedback_type = _header(fields, "feedback-type").lower()
    original = _returned(message)
    message_id, feedback_id = _original_ids(original)
    mail_from = _header(fields, "original-mail-from")
    verp_address, bad_token = _verp_recipient(message, original, verp, envelope_to, mail_from)
    address, found_by = verp_address, "verp" if verp_address is not None else ""
    if address is None and not bad_token:
        address = _typed_address(_header(fields, "original-rcpt-to"))
        found_by = "original-rcpt-to" if address is not None else ""
    kind = Kind.COMPLAINT if feedback_type in _COMPLAINTS else Kind.IGNORED
    notice = Notice(
        kind=kind,
        address=address,
        found_by=found_by,
        feedback_type=feedback_type,
        message_id=message_id,
        feedback_id=feedback_id,
        bad_token=bad_token,
    )
    return Parsed(kind, (notice,), detail=f"feedback-type {feedback_type or '(none)'}")


def _report_fields(report: Message) -> Message:
    payload = report.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    return email.message_from_string(_text(report), policy=email.policy.compat32)


# --- bounces without a DSN part, auto-replies -----------------------------------------------


def _plain_bounce(message: Message, subject: str, verp: Verp | None, envelope_to: str) -> Parsed:
    body = _body_text(message)
    text = " ".join(body.split())
    verp_address, bad_token = _verp_recipient(message, _returned(message), verp, envelope_to)
    address, found_by = verp_address, "verp" if verp_address is not None else ""
    if address is None and not bad_token:
        m = _QMAIL_RECIPIENT.search(body)
        address, found_by = (m[1], "text") if m is not None else (None, "")
    if _DELAY_TEXT.search(subject) or _DELAY_TEXT.search(text):
        kind, category = Kind.DELAY, None
        code = None
        status = None
    else:
        m = _REPLY.search(text)
        code = None if m is None else int(m[1])
        enhanced = None if m is None else m[2]
        status = enhanced or _first_enhanced(text)
        kind, category = Kind.BOUNCE, categorize(code, status, text)
    notice = Notice(
        kind=kind,
        address=address,
        found_by=found_by,
        status=status,
        code=code,
        diagnostic=text[:_DETAIL_LIMIT],
        category=category,
        bad_token=bad_token,
    )
    return Parsed(kind, (notice,), detail=subject[:_DETAIL_LIMIT])


def _first_enhanced(text: str) -> str | None:
    m = _ENHANCED_ANYWHERE.search(text)
    return None if m is None else m[1]


def _auto_reply(message: Message, subject: str) -> bool:
    auto = _header(message, "auto-submitted").lower()
    if auto and auto != "no":
        return True
    if message.get("x-autoreply") is not None or message.get("x-autorespond") is not None:
        return True
    if _header(message, "precedence").lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.search(subject))


# --- shared helpers ---------------------------------------------------------------------------


def _part(message: Message, content_type: str) -> Message | None:
    for part in _walk(message):
        if part.get_content_type() == content_type:
            return part
    return None


# Parts not entered: returned messages (their parts are not the report's) and report fields.
_LEAVES: Final = frozenset(
    {
        "message/rfc822",
        "text/rfc822-headers",
        "message/delivery-status",
        "message/feedback-report",
    }
)


def _walk(message: Message, depth: int = 0) -> Iterator[Message]:
    """The parts of a message, depth first (nested no deeper than a report ever is)."""
    yield message
    if depth > 8 or message.get_content_type() in _LEAVES:
        return
    payload = message.get_payload()
    if isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _walk(part, depth + 1)


def _returned(message: Message) -> Message | None:
    """The returned original message (or its headers), if the report carries it."""
    for part in _walk(message):
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind == "text/rfc822-headers":
            return email.message_from_string(_text(part), policy=email.policy.compat32)
    return None


def _original_ids(original: Message | None) -> tuple[str, str]:
    if original is None:
        return "", ""
    return _header(original, "message-id"), _header(original, "feedback-id")


def _verp_recipient(
    message: Message,
    original: Message | None,
    verp: Verp | None,
    envelope_to: str,
    *more: str,
) -> tuple[str | None, bool]:
    """The recipient a VERP token names, and whether a token was there but did not decode."""
    if verp is None:
        return None, False
    returned = () if original is None else (_header(original, "return-path"),)
    bad = False
    for candidate in _addressed_to(message, envelope_to, *more, *returned):
        try:
            address = verp.recipient(candidate)
        except ValueError:
            bad = True
            continue
        if address is not None:
            return address, False
    return None, bad


def _addressed_to(message: Message, envelope_to: str, *more: str) -> Iterator[str]:
    """Every address the message was (or says it was) delivered to, most reliable first."""
    texts = [envelope_to, *more]
    for name in _ENVELOPE_HEADERS:
        texts += [_header(value, "") for value in message.get_all(name, [])]
    for text in texts:
        for m in _ADDRESS.finditer(text):
            yield m[1]


def _header(message: Message | str, name: str) -> str:
    """A header as one line of text, RFC 2047 words decoded ('' when absent)."""
    value = message if isinstance(message, str) else message.get(name)
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        value = _raw_header(value)
    text = str(value)[:_HEADER_LIMIT]
    if "=?" in text:
        # An undecodable word is shown as written: it is still text.
        with contextlib.suppress(
            ValueError, LookupError, UnicodeError, email.errors.HeaderParseError
        ):
            text = str(email.header.make_header(email.header.decode_header(text)))
    return " ".join(text.split())


def _raw_header(value: email.header.Header) -> str:
    """A header with raw 8-bit octets (compat32 wraps those): read as UTF-8 (RFC 6532)."""
    parts = []
    for chunk, charset in email.header.decode_header(value):
        if isinstance(chunk, str):
            parts.append(chunk)
            continue
        try:
            parts.append(chunk.decode(charset or "utf-8", "replace"))
        except LookupError:  # "unknown-8bit", or a charset Python does not know
            parts.append(chunk.decode("utf-8", "replace"))
    return "".join(parts)


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload[:_TEXT_LIMIT].decode(charset, "replace")
        except LookupError:
            return payload[:_TEXT_LIMIT].decode("utf-8", "replace")
    raw = part.get_payload()
    return raw[:_TEXT_LIMIT] if isinstance(raw, str) else ""


def _body_text(message: Message) -> str:
    """The text/plain parts of a message (the first few), the human-readable bounce."""
    texts = [_text(p) for p in _walk(message) if p.get_content_type() == "text/plain"]
    return "\n".join(texts)[:_TEXT_LIMIT]
