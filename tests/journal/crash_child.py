"""Child process for the crash test: sends (pretends to) until done or killed.

Usage: python crash_child.py JOURNAL SEED NOW

Prints one JSON line per event, flushed at once:
``{"fetched": [ids]}`` when recipients are claimed, and ``{"acked": [[id, kind], ...]}``
only after ``flush()`` returned, i.e. after those outcomes are committed.
"""

from __future__ import annotations

import json
import random
import sys

import trio

from bulksend.config import RetryPolicy
from bulksend.journal import Journal, JournalWriter, Outcome

POLICY = RetryPolicy(initial=1.0, factor=1.0, maximum=1.0, jitter=0.0, max_age=1e9)


def emit(event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def pick(rng: random.Random, attempts: int) -> Outcome:
    if attempts >= 3:
        return Outcome.delivered()
    r = rng.random()
    if r < 0.45:
        return Outcome.delivered(250, "2.0.0", "queued")
    if r < 0.65:
        return Outcome.bounced(550, "5.1.1", "no such user")
    if r < 0.8:
        return Outcome.deferred(421, "4.7.0", "try later")
    if r < 0.9:
        return Outcome.in_doubt()
    return Outcome.throttled(0.5, "our throttle")


async def run(journal: Journal, rng: random.Random, now: float) -> None:
    writer = JournalWriter(journal, batch_size=rng.choice([1, 5, 50]), interval=0.002)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        while True:
            await writer.flush()  # claims in flight are not "due": settle them first
            next_due = await writer.next_due_at()
            if next_due is None:
                break
            now = max(now + 1.0, next_due)
            for domain in await writer.due_domains(now=now):
                due = await writer.fetch_due(domain, rng.randint(1, 15), now=now)
                emit({"fetched": [d.id for d in due]})
                acked = []
                for d in due:
                    outcome = pick(rng, d.attempts)
                    await writer.record(d.id, outcome, now=now)
                    acked.append([d.id, str(outcome.kind)])
                if rng.random() < 0.8:
                    await writer.flush()
                    emit({"acked": acked})
                # else: committed by the writer's own timer, never acknowledged
        await writer.flush()
        await writer.aclose()
    emit({"done": True})


def main() -> None:
    path, seed, now = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    journal = Journal.open(path, "crash-test", policy=POLICY, rng=random.Random(seed), now=now)
    emit({"recovered": journal.recovered_in_doubt})
    try:
        trio.run(run, journal, random.Random(seed), now)
    finally:
        journal.close()


if __name__ == "__main__":
    main()
