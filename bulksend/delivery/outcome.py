"""Outcome classification: what a reply, an error or a DNS answer means for a recipient.

Pure functions, no I/O. The vocabulary (:class:`~bulksend.journal.Outcome`,
:class:`~bulksend.journal.Kind`, :class:`~bulksend.journal.Category`) and the retry schedule
live in :mod:`bulksend.journal`, the layer below (imports point downward). Where a decision
depends on the command a reply answered, it is named by the protocol's
:class:`~bulksend.smtp.protocol.Verb`, never by free text.

How a reply is judged (RFC 5321 §4.2: act on the reply code, an unknown code by its first
digit; RFC 3463: enhanced status codes class.subject.detail):

- 2xx: delivered.
- 4xx: deferred (temporary), whatever its enhanced code says: a bounce loses the recipient
  for good, so a contradictory 4xx with 5.x.x is never bounced.
- 5xx: bounced, except
  * 552 to RCPT (``Verb.RCPT``), which RFC 5321 §4.5.3.1.10 says must be treated as
    temporary ("too many recipients" / mailbox full on old servers);
  * 503 (bad sequence of commands) and 530 (authentication required, RFC 4954): our
    session went wrong, never the recipient's fault;
  * a 5xx whose enhanced code has class 4 (4.x.x). RFC 3463 §2 requires the classes to
    agree; when they do not, the more specific field says "transient" and we believe it. A
    wrong deferral costs retries bounded by ``max_age``; a wrong bounce loses the recipient.
- anything else (1xx, 3xx as a final reply, >= 600): a protocol error, deferred.
- network, timeout, TLS and remote protocol errors: deferred (RFC 5321 §3.8: a dropped
  connection is a temporary failure); :class:`InDoubtError` (no reply to the final dot):
  its own kind, in_doubt; a :class:`LocalProtocolError` (we refused the input, such as an
  address with CR/LF, before any I/O) bounces: retrying cannot fix it. It carries the
  enhanced code a server would have given where there is one (5.3.4 over the server's SIZE:
  ``message_too_big``; 5.6.7 an address that needs SMTPUTF8; 5.6.3 8BITMIME).
- an *error* carrying a 2xx or 3xx reply (a reply that could not answer its command) is a
  protocol error, deferred: only a 2xx to the final dot is a delivery (RFC 5321 §4.1.1.4).
- DNS answers as routing reports them (:func:`classify_dns`): category ``dns``.
- our own throttle or backoff: :func:`throttled`, not an attempt.

Every non-delivered outcome gets a :class:`Category`: the enhanced code decides when it is
specific (X.1.x bad mailbox, X.2.2 mailbox full, X.2.3/X.3.4 too big, X.7.x policy, X.4.3 /
X.4.4 DNS); otherwise (no enhanced code, or a generic one such as 5.0.0 / 4.7.0 / 5.5.0)
the text is matched against phrases real servers use.
"""

from __future__ import annotations

import re
from typing import Final

from bulksend.journal import Category, Outcome
from bulksend.smtp.errors import (
    InDoubtError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplyError,
    SMTPConnectionError,
    SMTPError,
    SMTPTimeoutError,
    TLSError,
)
from bulksend.smtp.protocol import Reply, Verb

__all__ = [
    "categorize",
    "classify_dns",
    "classify_error",
    "classify_reply",
    "parse_enhanced_code",
    "throttled",
]

_ENHANCED: Final = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")

# Phrases checked in this order; the first that matches decides. Lower case.
_TEXT_RULES: Final[tuple[tuple[Category, tuple[str, ...]], ...]] = (
    (
        Category.MESSAGE_TOO_BIG,
        (
            "message size exceeds",
            "size exceeds",
            "message too big",
            "message too large",
            "message is too large",
            "too big",
            "too large",
            "exceeds size limit",
            "size limit",
        ),
    ),
    (
        Category.MAILBOX_FULL,
        (
            "mailbox full",
            "mailbox is full",
            "over quota",
            "quota exceeded",
            "exceeded storage",
            "out of storage",
            "insufficient storage",
            "inbox is full",
            "mailbox size limit",
        ),
    ),
    (
        Category.BAD_MAILBOX,
        (
            "user unknown",
            "unknown user",
            "no such user",
            "no such recipient",
            "unknown recipient",
            "recipient unknown",
            "does not exist",
            "doesn't exist",
            "user doesn't have",  # Yahoo: "This user doesn't have a yahoo.com account"
            "mailbox unavailable",
            "mailbox not found",
            "user not found",
            "invalid recipient",
            "invalid mailbox",
            "no mailbox",
            "account disabled",
            "account has been disabled",
            "address rejected: user unknown",
            # Exchange Online directory-based edge blocking: the mailbox does not exist.
            "recipient address rejected: access denied",
        ),
    ),
    (
        Category.TLS,
        ("starttls", "tls required", "tls is required", "encryption required", "certificate"),
    ),
    (
        Category.POLICY,
        (
            "spam",
            "blocked",
            "block list",
            "blocklist",
            "blacklist",
            "denylist",
            "spamhaus",
            "policy",
            "reputation",
            "unsolicited",
            "complaint",
            "rate limit",
            "rate-limit",
            "too many",
            "greylist",
            "graylist",
            "temporarily deferred",
            "dmarc",
            "spf",
            "dkim",
            "access denied",
            "not authorized",
            "refused",
        ),
    ),
)


def parse_enhanced_code(code: str | None) -> tuple[int, int, int] | None:
    """``"5.1.1"`` -> ``(5, 1, 1)``; None for a missing or malformed code."""
    if not code:
        return None
    m = _ENHANCED.fullmatch(code.strip())
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3])


def _category_from_enhanced(subject: int, detail: int) -> Category | None:
    """The category an enhanced code names, or None when it is too generic to say."""
    if subject == 1:
        if detail in (1, 2, 3, 4, 5, 6, 9):
            return Category.BAD_MAILBOX
        if detail == 10:  # X.1.10 recipient address has null MX (RFC 7505)
            return Category.DNS
        return None
    if subject == 2:
        return {1: Category.BAD_MAILBOX, 2: Category.MAILBOX_FULL, 3: Category.MESSAGE_TOO_BIG}.get(
            detail
        )
    if subject == 3 and detail == 4:
        return Category.MESSAGE_TOO_BIG
    if subject == 4 and detail in (3, 4):  # directory server failure, unable to route
        return Category.DNS
    if subject == 7:
        # X.7.10 encryption needed, X.7.11 encryption required (RFC 5248).
        return Category.TLS if detail in (10, 11) else Category.POLICY
    return None


def _category_from_text(text: str) -> Category | None:
    lowered = text.lower()
    for category, phrases in _TEXT_RULES:
        if any(p in lowered for p in phrases):
            return category
    return None


def categorize(code: int | None, enhanced_code: str | None, text: str) -> Category:
    """The category of a non-delivered reply: enhanced code first, then the text."""
    parsed = parse_enhanced_code(enhanced_code)
    by_code = None if parsed is None else _category_from_enhanced(parsed[1], parsed[2])
    if by_code is Category.POLICY and _category_from_text(text) is Category.TLS:
        return Category.TLS  # "5.7.0 Must issue a STARTTLS command first"
    if by_code is not None:
        return by_code
    return _category_from_text(text) or Category.OTHER


def classify_reply(reply: Reply, *, stage: Verb | None = None) -> Outcome:
    """The outcome of a final reply to ``stage`` (the command it answered; None: unknown)."""
    code, enhanced, text = reply.code, reply.enhanced_code, reply.text
    if 200 <= code < 300:
        return Outcome.delivered(code, enhanced, text)
    category = categorize(code, enhanced, text)
    if 500 <= code < 600:
        parsed = parse_enhanced_code(enhanced)
        rcpt_552 = code == 552 and stage is Verb.RCPT
        # 503 "bad sequence of commands" and 530 "authentication required" say our session
        # went wrong, not the recipient: bouncing would lose every recipient to one mistake.
        if rcpt_552 or code in (503, 530) or (parsed is not None and parsed[0] == 4):
            return Outcome.deferred(code, enhanced, text, category)
        return Outcome.bounced(code, enhanced, text, category)
    if 400 <= code < 500:
        return Outcome.deferred(code, enhanced, text, category)
    return Outcome.deferred(code, enhanced, f"unexpected reply: {text}".strip(), Category.OTHER)


def classify_error(exc: BaseException) -> Outcome:
    """The outcome of an error raised while sending to a recipient.

    Raises:
        TypeError: ``exc`` is not an SMTP or network error (a bug must not be classified).
    """
    if isinstance(exc, ReplyError):
        if exc.code < 400:
            # An error is never a delivery, whatever code it carries: only a 2xx to the
            # final dot delivers (RFC 5321 §4.1.1.4), and that is not an error.
            text = f"protocol error: unexpected reply to {exc.stage}: {exc.reply}"
            return Outcome.deferred(None, None, text, Category.OTHER)
        return classify_reply(exc.reply, stage=Verb(exc.stage))
    if isinstance(exc, InDoubtError):
        return Outcome.in_doubt(str(exc) or "no reply to the end of data")
    if isinstance(exc, TLSError):
        return Outcome.deferred(None, None, str(exc), Category.TLS)
    if isinstance(exc, LocalProtocolError):
        parsed = parse_enhanced_code(exc.enhanced_code)
        category = None if parsed is None else _category_from_enhanced(parsed[1], parsed[2])
        return Outcome.bounced(None, exc.enhanced_code, str(exc), category or Category.OTHER)
    if isinstance(exc, SMTPTimeoutError | SMTPConnectionError | RemoteProtocolError | SMTPError):
        return Outcome.deferred(None, None, str(exc) or type(exc).__name__, Category.OTHER)
    if isinstance(exc, OSError):
        return Outcome.deferred(None, None, str(exc) or type(exc).__name__, Category.OTHER)
    raise TypeError(f"not a delivery error: {exc!r}") from exc


def classify_dns(*, transient: bool, enhanced_code: str | None = None, text: str = "") -> Outcome:
    """The outcome of a routing (DNS) failure as routing reports it.

    NXDOMAIN and null MX (RFC 7505) are permanent; a temporary resolver failure is retried.
    """
    if transient:
        return Outcome.deferred(None, enhanced_code or "4.4.3", text, Category.DNS)
    return Outcome.bounced(None, enhanced_code or "5.1.2", text, Category.DNS)


def throttled(retry_after: float, reason: str = "") -> Outcome:
    """A deferral by our own throttle or backoff: not an attempt, due in ``retry_after`` s."""
    return Outcome.throttled(retry_after, reason)
