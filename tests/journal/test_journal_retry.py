"""The retry schedule: exponential with jitter, throttles that are not attempts, expiry."""

from __future__ import annotations

import random

import pytest

from bulksend.config import RetryPolicy
from bulksend.journal import Journal, Outcome, Status, plan_step, retry_delay
from tests.journal.journal_helpers import T0

NO_JITTER = RetryPolicy(initial=300.0, factor=2.0, maximum=4 * 3600.0, jitter=0.0, max_age=86400.0)


def test_delays_grow_exponentially_up_to_the_maximum() -> None:
    rng = random.Random(1)
    delays = [retry_delay(NO_JITTER, n, rng) for n in range(1, 9)]
    assert delays == [300.0, 600.0, 1200.0, 2400.0, 4800.0, 9600.0, 14400.0, 14400.0]
    assert retry_delay(NO_JITTER, 10_000, rng) == 14400.0  # no overflow for huge counts
    with pytest.raises(ValueError, match="attempts"):
        retry_delay(NO_JITTER, 0, rng)


def test_jitter_is_seeded_and_bounded(policy: RetryPolicy) -> None:
    first = [retry_delay(policy, n, random.Random(42)) for n in range(1, 8)]
    again = [retry_delay(policy, n, random.Random(42)) for n in range(1, 8)]
    assert first == again
    for n, delay in enumerate(first, 1):
        base = min(300.0 * 2 ** (n - 1), 14400.0)
        assert base * 0.8 <= delay <= base * 1.2
    spread = {retry_delay(policy, 1, random.Random(seed)) for seed in range(20)}
    assert len(spread) > 1


def step(outcome: Outcome, status: Status, attempts: int, first: float | None, now: float):  # type: ignore[no-untyped-def]
    return plan_step(
        outcome,
        status=status,
        attempts=attempts,
        first_attempt_at=first,
        now=now,
        policy=NO_JITTER,
        rng=random.Random(0),
    )


def test_throttle_is_not_an_attempt_and_does_not_lengthen_the_interval() -> None:
    s1 = step(Outcome.deferred(421, "4.7.0", "try later"), Status.PENDING, 0, None, T0)
    assert (s1.status, s1.attempts, s1.first_attempt_at, s1.next_attempt_at) == (
        Status.PENDING,
        1,
        T0,
        T0 + 300.0,
    )
    # Our own 5-minute suspension, over and over: attempts and first attempt stay put.
    s = s1
    now = T0 + 300.0
    for _ in range(12):
        s = step(Outcome.throttled(300.0), s.status, s.attempts, s.first_attempt_at, now)
        assert (s.attempts, s.first_attempt_at, s.next_attempt_at) == (1, T0, now + 300.0)
        assert s.keeps_reply
        now += 300.0
    s2 = step(Outcome.deferred(421), s.status, s.attempts, s.first_attempt_at, now)
    assert s2.attempts == 2
    assert s2.next_attempt_at == now + 600.0  # the second interval, not the 14th


def test_expiry_after_max_age_since_the_first_attempt() -> None:
    # A retry never lands after the deadline: the last try happens at it.
    late = T0 + 86400.0 - 100.0
    s = step(Outcome.deferred(451), Status.PENDING, 5, T0, late)
    assert (s.status, s.next_attempt_at) == (Status.PENDING, T0 + 86400.0)
    s = step(Outcome.deferred(451), Status.PENDING, 6, T0, T0 + 86400.0)
    assert (s.status, s.attempts, s.next_attempt_at) == (Status.EXPIRED, 7, None)
    # In doubt at the deadline also expires, and is still counted.
    s = step(Outcome.in_doubt(), Status.PENDING, 6, T0, T0 + 90000.0)
    assert (s.status, s.in_doubt_added) == (Status.EXPIRED, 1)
    # A delivery after the deadline still counts as delivered.
    s = step(Outcome.delivered(), Status.PENDING, 6, T0, T0 + 90000.0)
    assert s.status is Status.DELIVERED


def test_final_recipients_have_no_next_step() -> None:
    with pytest.raises(ValueError, match="final"):
        step(Outcome.deferred(451), Status.DELIVERED, 1, T0, T0)


def test_journal_applies_the_schedule(journal: Journal, policy: RetryPolicy) -> None:
    """Deterministic times in the journal: seeded jitter, passed-in now."""
    expected_rng = random.Random(7)  # the fixture's seed
    [due] = journal.fetch_due("a.example", 1, now=T0)
    journal.record(due.id, Outcome.deferred(421, "4.7.0", "try later"), now=T0)
    row = journal.get(due.id)
    assert row is not None
    first_delay = retry_delay(policy, 1, expected_rng)
    assert (row.status, row.attempts, row.next_attempt_at) == (Status.PENDING, 1, T0 + first_delay)
    assert (row.code, row.enhanced_code, row.text) == (421, "4.7.0", "try later")

    # Not due before its time, due after.
    assert due.id not in [d.id for d in journal.fetch_due("a.example", 10, now=T0 + 1)]
    t1 = T0 + first_delay
    [again] = [d for d in journal.fetch_due("a.example", 10, now=t1) if d.id == due.id]
    assert again.attempts == 1

    # Our throttle: due when it lifts, reply and attempts untouched.
    journal.record(due.id, Outcome.throttled(60.0, "site paused"), now=t1)
    row = journal.get(due.id)
    assert row is not None
    assert (row.attempts, row.next_attempt_at, row.text) == (1, t1 + 60.0, "try later")

    journal.fetch_due("a.example", 10, now=t1 + 60.0)
    journal.record(due.id, Outcome.deferred(451, None, "later"), now=t1 + 60.0)
    row = journal.get(due.id)
    assert row is not None
    second_delay = retry_delay(policy, 2, expected_rng)
    assert (row.attempts, row.next_attempt_at) == (2, t1 + 60.0 + second_delay)

    # After max_age since the first attempt: expired with its last reply.
    end = T0 + policy.max_age
    journal.fetch_due("a.example", 10, now=end)
    journal.record(due.id, Outcome.deferred(452, "4.2.2", "over quota"), now=end)
    row = journal.get(due.id)
    assert row is not None
    assert (row.status, row.attempts, row.code, row.text) == (
        Status.EXPIRED,
        3,
        452,
        "over quota",
    )
    assert row.next_attempt_at is None


def test_pushback_throttles_start_the_age_and_expire_at_max_age() -> None:
    # A receiver that pushes back on every try: never an attempt, but not forever either.
    pushback = Outcome.throttled(60.0, "421 4.7.0 try later", tried=True)
    first = step(pushback, Status.PENDING, 0, None, T0)
    assert (first.status, first.attempts, first.first_attempt_at) == (Status.PENDING, 0, T0)
    later = step(pushback, Status.PENDING, 0, T0, T0 + NO_JITTER.max_age - 1)
    assert later.status is Status.PENDING
    assert later.next_attempt_at == T0 + NO_JITTER.max_age - 1 + 60.0
    expired = step(pushback, Status.PENDING, 0, T0, T0 + NO_JITTER.max_age)
    assert (expired.status, expired.attempts, expired.next_attempt_at) == (Status.EXPIRED, 0, None)
    # Our own pacing (nothing tried) never starts the clock.
    ours = step(Outcome.throttled(0.0, "released"), Status.PENDING, 0, None, T0)
    assert ours.first_attempt_at is None


def test_journal_expires_a_recipient_pushed_back_past_max_age(
    journal: Journal, policy: RetryPolicy
) -> None:
    due = journal.fetch_due("a.example", 1, now=T0)[0]
    pushback = Outcome.throttled(1.0, "421 busy", tried=True)
    assert journal.record(due.id, pushback, now=T0)
    again = journal.fetch_due("a.example", 10, now=T0 + 5)
    assert due.id in {d.id for d in again}  # due again after its 1 s, same recipient
    assert journal.record(due.id, pushback, now=T0 + policy.max_age + 1)
    state = journal.get(due.id)
    assert state is not None
    assert (state.status, state.attempts) == (Status.EXPIRED, 0)
