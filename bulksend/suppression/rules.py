"""Which bounces enter the suppression store, and for how long.

- A hard bounce (the mailbox or the domain does not exist: X.1.x bad mailbox, 5.1.10 null MX
  (RFC 7505), NXDOMAIN or an unroutable domain) suppresses the address at once.
- A soft bounce (mailbox full, or a permanent failure with no more specific cause) is only
  counted; ``soft_bounce_limit`` of them within ``soft_bounce_window`` suppress the address
  as ``soft_bounce``, which by default expires after 30 days.
- A bounce for a reason that is ours rather than the recipient's (policy, reputation, TLS,
  message too big) never suppresses: fixing our side fixes it.

The categories are the inline classifier's (:mod:`bulksend.delivery.outcome`), so an
asynchronous bounce (DSN) and an inline reply with the same meaning are treated alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bulksend.campaign.recipients import normalise_address
from bulksend.config import SuppressionConfig, SuppressionReason
from bulksend.journal import Category, Kind, Outcome
from bulksend.suppression.backend import AnyStore
from bulksend.suppression.store import Entry, Source

__all__ = ["BounceRecorder", "Rules", "bounce_reason"]

_HARD = frozenset({Category.BAD_MAILBOX, Category.DNS})
_SOFT = frozenset({Category.MAILBOX_FULL, Category.OTHER})


def bounce_reason(category: Category | None) -> SuppressionReason | None:
    """What a bounce of this category counts as: a hard or a soft bounce, or neither."""
    if category in _HARD:
        return SuppressionReason.HARD_BOUNCE
    if category in _SOFT:
        return SuppressionReason.SOFT_BOUNCE
    return None


@dataclass(frozen=True, slots=True)
class Rules:
    """The ``[suppression]`` rules applied to a store."""

    config: SuppressionConfig

    def expires_at(self, reason: SuppressionReason, now: float) -> float | None:
        """When a suppression for ``reason`` recorded at ``now`` expires (None: never)."""
        after = self.config.expiry.get(reason)
        return None if after is None else now + after

    def apply(
        self,
        store: AnyStore,
        key: str,
        reason: SuppressionReason,
        source: Source,
        *,
        now: float,
        detail: str = "",
    ) -> Entry | None:
        """Record an event for ``key``; return the row when it is (now) suppressed.

        A soft bounce is only counted until the limit is reached within the window.
        """
        if reason is SuppressionReason.SOFT_BOUNCE:
            seen = store.soft_bounces(key, now=now, window=self.config.soft_bounce_window)
            if seen < self.config.soft_bounce_limit:
                return None
        expires_at = self.expires_at(reason, now)
        return store.add(key, reason, source, now=now, expires_at=expires_at, detail=detail)


@dataclass
class BounceRecorder:
    """Collects a run's inline bounces (cheaply, from the outcome hook) for the store.

    :meth:`note` runs on the hot path and only appends; :meth:`take` (in the same thread)
    hands over what was collected and :meth:`write` records it (blocking: run it in a thread).
    """

    store: AnyStore
    rules: Rules
    _pending: list[tuple[str, SuppressionReason, str]] = field(default_factory=list)

    def note(self, address: str, outcome: Outcome) -> None:
        """Remember ``outcome`` for ``address`` if it is a bounce the rules count."""
        if outcome.kind is not Kind.BOUNCED:
            return
        reason = bounce_reason(outcome.category)
        if reason is not None:
            detail = " ".join(
                str(part) for part in (outcome.code, outcome.enhanced_code, outcome.text) if part
            )
            self._pending.append((address, reason, detail))

    def take(self) -> list[tuple[str, SuppressionReason, str]]:
        """The bounces noted since the last call."""
        pending, self._pending = self._pending, []
        return pending

    def write(self, pending: list[tuple[str, SuppressionReason, str]], now: float) -> list[Entry]:
        """Apply bounces from :meth:`take`; return the suppressions they made."""
        made = []
        for address, reason, detail in pending:
            key = normalise_address(address)
            entry = self.rules.apply(
                self.store, key, reason, Source.CAMPAIGN, now=now, detail=detail
            )
            if entry is not None:
                made.append(entry)
        return made
