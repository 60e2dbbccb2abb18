"""Measure the journal: importing recipients, claiming due ones, committing outcome batches.

    .venv/bin/python benchmarks/journal_import.py [--count 1000000] [--domains 1000]

"end to end" builds each ``NewRecipient`` (with a small merge-data dict) lazily from a
generator inside the timed section, as a campaign reader would hand them over; "journal
only" imports a list built beforehand, so it times only the journal's own work.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator

from bulksend.journal import Journal, NewRecipient, Outcome


def recipients(count: int, domains: int) -> Iterator[NewRecipient]:
    for i in range(count):
        yield NewRecipient(f"user{i}@example{i % domains}.com", {"name": f"User {i}", "n": i})


def timed_import(path: str, items: Iterable[NewRecipient], label: str) -> None:
    journal = Journal.open(path, "bench", now=time.time())
    t = time.perf_counter()
    stats = journal.import_recipients(items)
    elapsed = time.perf_counter() - t
    print(
        f"import ({label}): {stats.imported:,} recipients in {elapsed:.2f} s "
        f"= {stats.imported / elapsed:,.0f}/s; file {os.path.getsize(path) / 2**20:.0f} MiB"
    )
    journal.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--domains", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "journal.db")
        timed_import(path, recipients(args.count, args.domains), "end to end")
        prebuilt = list(recipients(args.count, args.domains))
        other = os.path.join(tmp, "journal2.db")
        timed_import(other, prebuilt, "journal only")
        del prebuilt

        now = time.time()
        journal = Journal.open(path, "bench", now=now, rng=random.Random(1))
        t = time.perf_counter()
        due = journal.due_domains(now=now)
        print(f"due_domains: {len(due)} domains in {(time.perf_counter() - t) * 1000:.1f} ms")

        t = time.perf_counter()
        batch = journal.fetch_due("example1.com", 500, now=now)
        print(f"fetch_due: {len(batch)} claimed in {(time.perf_counter() - t) * 1000:.1f} ms")

        t = time.perf_counter()
        n = journal._apply([(d.id, Outcome.delivered(), now) for d in batch])
        print(f"commit of {n} outcomes: {(time.perf_counter() - t) * 1000:.1f} ms")
        journal.close()

        t = time.perf_counter()
        Journal.open(path, "bench", now=now).close()
        print(f"reopen (identity check, recovery): {(time.perf_counter() - t) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
