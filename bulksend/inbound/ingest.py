"""``bulksend inbound ingest``: read bounces and complaints from a mailbox into the store.

A source is a maildir (a folder with ``cur/`` and ``new/``), an mbox file, a folder of
``.eml`` files, or one ``.eml`` file. Each message is parsed
(:func:`~bulksend.inbound.parse.parse_message`) and each notice applied to the suppression
store through the same rules as inline bounces (:mod:`bulksend.suppression.rules`):

- a bounce: a hard bounce suppresses its address, a soft one is counted (``counted``) until
  repeated; a bounce that is our fault (policy, TLS, size) suppresses nothing
  (``not_suppressed``);
- a complaint (ARF) suppresses its address as ``complaint``;
- a mail to the ``[unsubscribe] mailto`` address suppresses its sender as ``unsubscribe``;
- a notice whose recipient is unknown (no token, a token that does not decode, or, given the
  campaign's recipients, an address that is not one of them) is counted and dropped;
- delays, success notices, auto-replies, ordinary mail and unparseable messages are counted
  and change nothing.

Given the campaign's journals (:class:`~bulksend.journal.feedback_log.FeedbackLog`), a
bounce, complaint or unsubscribe of one of its recipients is also recorded there
(:mod:`bulksend.journal.feedback`), whatever the store makes of it: ``bulksend report``
then shows the asynchronous bounces beside the inline ones, and the complaint rate. A report
whose returned message carries another campaign's ``Feedback-ID`` (when the campaign writes
one) is not recorded there: the address is the sender's to suppress, the complaint another
campaign's to count.

Given the campaign's recipients (:class:`CampaignRecipients`, from its journal), a notice
without a recipient is matched by the returned message's Message-ID, which bulksend derives
from the campaign and the address.
"""

from __future__ import annotations

import collections
import mailbox
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Protocol

from bulksend.campaign.recipients import FingerprintSet, normalise_address
from bulksend.config import SuppressionReason
from bulksend.inbound.parse import MAX_SIZE, Kind, Notice, Parsed, Verp, parse_message
from bulksend.journal import Category
from bulksend.journal.feedback import FeedbackEvent, FeedbackKind
from bulksend.journal.feedback_log import FeedbackLog
from bulksend.metrics import FeedbackMetrics
from bulksend.suppression.backend import AnyStore
from bulksend.suppression.rules import Rules, bounce_reason
from bulksend.suppression.store import Source

__all__ = ["OUTCOMES", "CampaignRecipients", "Ingest", "messages"]

#: What happened to a message or notice, as ``bulksend inbound ingest`` counts it.
OUTCOMES: Final = (
    "suppressed",
    "counted",
    "not_suppressed",
    "unknown_recipient",
    "unsigned",
    "forged",
    "delay",
    "delivered",
    "ignored",
    "auto_reply",
    "not_feedback",
    "unparseable",
)


def messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """The messages at ``path`` as (name, bytes), in a stable order.

    Raises:
        OSError: the path cannot be read.
    """
    if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        maildir = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(maildir.iterkeys()):
            yield key, _read_at_most(maildir.get_file(key))
    elif path.is_dir():
        for file in sorted(path.glob("*.eml")):
            yield file.name, _read(file)
    else:
        with path.open("rb") as f:
            mbox = f.read(5) == b"From "
        if not mbox:
            yield path.name, _read(path)
            return
        box = mailbox.mbox(path, factory=None, create=False)
        try:
            for n, key in enumerate(box.iterkeys(), 1):
                yield f"{path.name}#{n}", _read_at_most(box.get_file(key))
        finally:
            box.close()


def _read(file: Path) -> bytes:
    with file.open("rb") as f:
        return _read_at_most(f)


#: The notices that can suppress an address.
_ACTIONABLE: Final = frozenset({Kind.BOUNCE, Kind.COMPLAINT, Kind.UNSUBSCRIBE})


class _Message(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def close(self) -> None: ...


def _read_at_most(f: _Message) -> bytes:
    """No more of a message than the parser takes: a larger one is refused by it, unread."""
    try:
        return f.read(MAX_SIZE + 1)
    finally:
        f.close()


class CampaignRecipients:
    """A campaign's recipients: which addresses are its own (as its journal spells them), and
    whose a Message-ID is.

    Memory: two fingerprint -> address maps (the address strings shared).
    """

    def __init__(self, addresses: Iterable[str], message_id: Callable[[str], str]) -> None:
        self._by_address: dict[int, str] = {}
        self._by_message_id: dict[int, str] = {}
        for address in addresses:
            self._by_address[FingerprintSet.fingerprint(normalise_address(address))] = address
            self._by_message_id[FingerprintSet.fingerprint(message_id(address))] = address

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.own(address) is not None

    def own(self, address: str) -> str | None:
        """The recipient ``address`` is (as the journal spells it, e.g. in another case)."""
        return self._by_address.get(FingerprintSet.fingerprint(normalise_address(address)))

    def by_message_id(self, message_id: str) -> str | None:
        """The recipient whose message had this Message-ID, or None."""
        return self._by_message_id.get(FingerprintSet.fingerprint(message_id.strip()))


@dataclass
class Ingest:
    """Applies parsed messages to the store and counts what each came to."""

    store: AnyStore
    rules: Rules
    verp: Verp | None = None
    recipients: CampaignRecipients | None = None
    mailto: str = ""  # the [unsubscribe] mailto address
    metrics: FeedbackMetrics | None = None
    journals: Sequence[FeedbackLog] = ()
    feedback_id: str = ""  # the campaign's [message] feedback_id
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Notices recorded in one of ``journals``.
    recorded: int = 0

    def message(self, data: bytes, *, now: float, envelope_to: str = "") -> list[str]:
        """Parse and apply one message; return an outcome (see :data:`OUTCOMES`) per notice."""
        parsed = parse_message(data, verp=self.verp, envelope_to=envelope_to, mailto=self.mailto)
        outcomes = self.apply(parsed, now=now)
        self.counts.update(outcomes)
        return outcomes

    def apply(self, parsed: Parsed, *, now: float) -> list[str]:
        """Apply a parsed message to the store."""
        if not parsed.notices:
            self._count(parsed.kind, parsed.kind.value)
            return [parsed.kind.value]
        outcomes = []
        for notice in parsed.notices:
            outcome = self._unverified(notice) or self._notice(self._resolved(notice), now)
            self._count(notice.kind, outcome)
            outcomes.append(outcome)
        return outcomes

    def _count(self, kind: Kind, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.feedback.labels(kind.value, outcome).inc()

    def _unverified(self, notice: Notice) -> str | None:
        """With VERP keys: "forged" or "unsigned" for a notice that could suppress and names
        its recipient by no verified tag (a mailto unsubscribe may, checked against the
        journal's recipients); else None."""
        if self.verp is None or not self.verp.keys or notice.kind not in _ACTIONABLE:
            return None
        if notice.bad_token:
            return "forged"
        if notice.found_by == "verp":
            return None
        if notice.kind is Kind.UNSUBSCRIBE and self.recipients is not None:
            return None
        return "unsigned"

    def _resolved(self, notice: Notice) -> Notice:
        """The notice with its recipient checked against (or found in) the campaign's."""
        if self.recipients is None or notice.bad_token:
            return notice
        own = None if notice.address is None else self.recipients.own(notice.address)
        if own is not None:
            return replace(notice, address=own)
        # Not one of ours (a forwarding alias in Final-Recipient, say): try the Message-ID.
        found = self.recipients.by_message_id(notice.message_id) if notice.message_id else None
        if found is None:
            return replace(notice, address=None, found_by="")
        return replace(notice, address=found, found_by="message-id")

    def _notice(self, notice: Notice, now: float) -> str:
        if notice.kind is Kind.BOUNCE:
            reason = bounce_reason(notice.category)
            if reason is SuppressionReason.HARD_BOUNCE and not notice.permanent:
                reason = SuppressionReason.SOFT_BOUNCE  # a 4.x.x status: given up, not gone
            source, kind = Source.DSN, FeedbackKind.ASYNC_BOUNCE
        elif notice.kind is Kind.COMPLAINT:
            reason, source, kind = SuppressionReason.COMPLAINT, Source.ARF, FeedbackKind.COMPLAINT
        elif notice.kind is Kind.UNSUBSCRIBE:
            reason, source = SuppressionReason.UNSUBSCRIBE, Source.MAILTO
            kind = FeedbackKind.UNSUBSCRIBE
        else:
            return notice.kind.value
        if notice.address is None:
            return "unknown_recipient"
        detail = notice.diagnostic or notice.feedback_type
        self._record(
            notice,
            FeedbackEvent(
                notice.address,
                kind,
                now,
                source.value,
                notice.category,
                notice.status,
                notice.code,
                detail,
            ),
        )
        if reason is None:
            return "not_suppressed"
        key = normalise_address(notice.address)
        entry = self.rules.apply(self.store, key, reason, source, now=now, detail=detail)
        if entry is None:
            return "counted"
        if self.metrics is not None:
            self.metrics.suppressions.labels(reason.value, source.value).inc()
        return "suppressed"

    def _record(self, notice: Notice, event: FeedbackEvent) -> None:
        """Count ``event`` and record it in the journal of its recipient, if one is given
        (and the returned message names no other campaign)."""
        if self.metrics is not None and event.kind is FeedbackKind.ASYNC_BOUNCE:
            self.metrics.async_bounces.labels((event.category or Category.OTHER).value).inc()
        if self.feedback_id and notice.feedback_id not in ("", self.feedback_id):
            return
        for journal in self.journals:
            if journal.record([event])[0]:
                self.recorded += 1
                return
