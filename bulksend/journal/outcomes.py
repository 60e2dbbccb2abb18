"""A recipient's state machine, pure (no SQLite): its statuses, what an attempt came to,
the retry schedule and the step an outcome makes (:func:`plan_step`).

See :mod:`bulksend.journal` for how the journal applies them.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import Final

from bulksend.config import RetryPolicy


class Status(enum.StrEnum):
    """A recipient's one state."""

    PENDING = "pending"
    IN_DOUBT = "in_doubt"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    INVALID = "invalid"
    NOT_RENDERED = "not_rendered"  # set aside: the message could not be made
    CANCELLED = "cancelled"  # an operator cancelled it (``bulksend ctl cancel``): never sent

    @property
    def waiting(self) -> bool:
        """True for states that will still be sent (pending, in_doubt)."""
        return self in WAITING


#: The waiting statuses: recipients that will still be sent.
WAITING: Final = (Status.PENDING, Status.IN_DOUBT)


class Kind(enum.StrEnum):
    """What one delivery attempt (or non-attempt) came to."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"  # transient: retry later
    BOUNCED = "bounced"  # permanent
    IN_DOUBT = "in_doubt"  # the final-dot reply never came
    THROTTLED = "throttled"  # our own throttle/backoff: not an attempt
    SUPPRESSED = "suppressed"  # suppressed during the run, before it was sent: not an attempt
    NOT_RENDERED = "not_rendered"  # the message could not be made: not an attempt
    CANCELLED = "cancelled"  # an operator cancelled it before it was sent: not an attempt
    STOPPED = "stopped"  # not sent by the campaign's ``[schedule] stop_at``: not an attempt
    #: an operator bounced it before it was sent (``bulksend ctl bounce-now``): not an attempt
    OPERATOR_BOUNCED = "operator_bounced"


class Category(enum.StrEnum):
    """Why a recipient was not delivered, for reports and metrics."""

    BAD_MAILBOX = "bad_mailbox"
    MAILBOX_FULL = "mailbox_full"
    POLICY = "policy"
    MESSAGE_TOO_BIG = "message_too_big"
    DNS = "dns"
    TLS = "tls"
    OTHER = "other"
    SCHEDULE = "schedule"  # expired at the campaign's ``[schedule] stop_at``


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, as the journal records it.

    Build these with the constructors below, or from replies and errors with
    :mod:`bulksend.delivery.outcome`.
    """

    kind: Kind
    code: int | None = None
    enhanced_code: str | None = None
    text: str = ""
    category: Category | None = None
    #: THROTTLED only: seconds until the throttle lifts.
    retry_after: float | None = None
    #: THROTTLED only: a transaction was really tried (the receiver pushed back), so the
    #: recipient's age counts from now even though this is not an attempt.
    tried: bool = False

    def __post_init__(self) -> None:
        if self.kind is Kind.THROTTLED:
            if self.retry_after is None or not math.isfinite(self.retry_after):
                raise ValueError("a throttled outcome needs a finite retry_after")
            if self.retry_after < 0:
                raise ValueError("retry_after must not be negative")
        elif self.retry_after is not None:
            raise ValueError("retry_after is only for throttled outcomes")

    @property
    def is_attempt(self) -> bool:
        """False for throttles, suppressions, messages not rendered, cancellations and
        operator bounces: nothing was sent."""
        return self.kind not in _NOT_ATTEMPTS

    @classmethod
    def delivered(
        cls, code: int = 250, enhanced_code: str | None = None, text: str = ""
    ) -> Outcome:
        return cls(Kind.DELIVERED, code, enhanced_code, text)

    @classmethod
    def deferred(
        cls,
        code: int | None = None,
        enhanced_code: str | None = None,
        text: str = "",
        category: Category = Category.OTHER,
    ) -> Outcome:
        return cls(Kind.DEFERRED, code, enhanced_code, text, category)

    @classmethod
    def bounced(
        cls,
        code: int | None = None,
        enhanced_code: str | None = None,
        text: str = "",
        category: Category = Category.OTHER,
    ) -> Outcome:
        return cls(Kind.BOUNCED, code, enhanced_code, text, category)

    @classmethod
    def in_doubt(cls, text: str = "no reply to the end of data") -> Outcome:
        return cls(Kind.IN_DOUBT, None, None, text, Category.OTHER)

    @classmethod
    def throttled(cls, retry_after: float, text: str = "", *, tried: bool = False) -> Outcome:
        """A deferral by our own throttle or backoff: due again in ``retry_after`` seconds.

        ``tried``: the receiver pushed back on a real transaction (a backoff rule matched its
        reply): still not an attempt, but the recipient's ``max_age`` starts counting.
        """
        return cls(Kind.THROTTLED, None, None, text, None, float(retry_after), tried)

    @classmethod
    def suppressed(cls) -> Outcome:
        """The address went on the suppression list after it was claimed: never sent."""
        return cls(Kind.SUPPRESSED)

    @classmethod
    def not_rendered(cls, text: str) -> Outcome:
        """The recipient's message could not be made (``text`` says why): set it aside."""
        return cls(Kind.NOT_RENDERED, None, None, text)

    @classmethod
    def cancelled(cls, text: str) -> Outcome:
        """An operator cancelled the recipient before it was sent (``text`` says how)."""
        return cls(Kind.CANCELLED, None, None, text)

    @classmethod
    def operator_bounced(cls, text: str) -> Outcome:
        """An operator bounced the recipient before it was sent (``text`` says how): it ends
        ``bounced``, with no attempt and no receiver's reply (so no suppression either)."""
        return cls(Kind.OPERATOR_BOUNCED, None, None, text)

    @classmethod
    def stopped(cls, text: str) -> Outcome:
        """The campaign's ``stop_at`` passed before the recipient was sent: it expires."""
        return cls(Kind.STOPPED, None, None, text, Category.SCHEDULE)

    @classmethod
    def expired(cls, last: Outcome) -> Outcome:
        """What the event stream reports when the journal expired a recipient (its
        ``max_age`` ran out) on committing ``last``: an expiry with ``last``'s reply."""
        return cls(Kind.STOPPED, last.code, last.enhanced_code, last.text, last.category)

    @classmethod
    def released(cls) -> Outcome:
        """Hand an unsent claimed recipient back (graceful stop): due at once, not in doubt."""
        return cls.throttled(0.0, "released")


_NOT_ATTEMPTS: Final = frozenset(
    (
        Kind.THROTTLED,
        Kind.SUPPRESSED,
        Kind.NOT_RENDERED,
        Kind.CANCELLED,
        Kind.OPERATOR_BOUNCED,
        Kind.STOPPED,
    )
)


# --- retry schedule (pure) -----------------------------------------------------------------


def retry_delay(policy: RetryPolicy, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (``attempts >= 1``).

    ``min(initial * factor**(attempts-1), maximum)``, spread by +/- ``jitter``.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    delay = policy.initial
    for _ in range(attempts - 1):
        if delay >= policy.maximum:
            break
        delay *= policy.factor
    delay = min(delay, policy.maximum)
    if policy.jitter:
        delay *= 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    return max(delay, 0.0)


@dataclass(frozen=True, slots=True)
class Step:
    """What an outcome does to a recipient's row."""

    status: Status
    attempts: int
    first_attempt_at: float | None
    next_attempt_at: float | None
    in_doubt_added: int
    #: False for throttled deferrals: the row's last reply is left as it was.
    keeps_reply: bool


def plan_step(
    outcome: Outcome,
    *,
    status: Status,
    attempts: int,
    first_attempt_at: float | None,
    now: float,
    policy: RetryPolicy,
    rng: random.Random,
) -> Step:
    """Decide a waiting recipient's next state from an outcome (pure).

    A transient outcome schedules the next try no later than ``first_attempt_at + max_age``
    (so the last try happens at the deadline), and expires the recipient once that age has
    been reached.
    """
    if not status.waiting:
        raise ValueError(f"recipient is already final ({status})")
    if outcome.kind is Kind.SUPPRESSED:
        return Step(Status.SUPPRESSED, attempts, first_attempt_at, None, 0, True)
    if outcome.kind is Kind.NOT_RENDERED:
        # The sender's fault, not the recipient's: no attempt, no bounce; set aside.
        return Step(Status.NOT_RENDERED, attempts, first_attempt_at, None, 0, False)
    if outcome.kind is Kind.CANCELLED:
        return Step(Status.CANCELLED, attempts, first_attempt_at, None, 0, False)
    if outcome.kind is Kind.OPERATOR_BOUNCED:
        return Step(Status.BOUNCED, attempts, first_attempt_at, None, 0, False)
    if outcome.kind is Kind.STOPPED:
        return Step(Status.EXPIRED, attempts, first_attempt_at, None, 0, False)
    if not outcome.is_attempt:
        assert outcome.retry_after is not None
        first = now if first_attempt_at is None and outcome.tried else first_attempt_at
        if first is not None and now >= first + policy.max_age:
            # Throttled for longer than max_age: give up, with the last real reply kept.
            return Step(Status.EXPIRED, attempts, first, None, 0, True)
        return Step(status, attempts, first, now + outcome.retry_after, 0, True)
    done = attempts + 1
    first = now if first_attempt_at is None else first_attempt_at
    if outcome.kind is Kind.DELIVERED:
        return Step(Status.DELIVERED, done, first, None, 0, False)
    if outcome.kind is Kind.BOUNCED:
        return Step(Status.BOUNCED, done, first, None, 0, False)
    doubt = 1 if outcome.kind is Kind.IN_DOUBT else 0
    deadline = first + policy.max_age
    if now >= deadline:
        return Step(Status.EXPIRED, done, first, None, doubt, False)
    at = min(now + retry_delay(policy, done, rng), deadline)
    new_status = Status.IN_DOUBT if doubt else Status.PENDING
    return Step(new_status, done, first, at, doubt, False)
