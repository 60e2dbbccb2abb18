"""kill -9 at random points: every recipient in one state, no committed outcome lost.

A child process (crash_child.py) sends against the journal with the real writer task and
prints each batch of outcomes only after ``flush()`` returned. The parent kills it with
SIGKILL at a random moment, reopens the journal (as resume does) and checks that
everything acknowledged is there, then starts another child, until one finishes.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bulksend.errors import JournalError
from bulksend.journal import Journal, Kind, NewRecipient, Status
from tests.journal.journal_helpers import T0

CHILD = Path(__file__).with_name("crash_child.py")
REPO = Path(__file__).resolve().parents[2]
RECIPIENTS = 150
DOMAINS = ("a.example", "b.example", "c.example", "d.example")
FINAL = {str(Kind.DELIVERED): Status.DELIVERED, str(Kind.BOUNCED): Status.BOUNCED}
ATTEMPTS = {str(k) for k in (Kind.DELIVERED, Kind.BOUNCED, Kind.DEFERRED, Kind.IN_DOUBT)}


class Ledger:
    """What the children acknowledged, and the invariants over it."""

    def __init__(self) -> None:
        self.final: dict[int, Status] = {}
        self.attempts: Counter[int] = Counter()
        self.done = False
        self.recovered: list[int] = []  # claims found in flight by each reopen

    def take(self, line: str) -> bool:
        """Account for one complete line; True for an acknowledgement."""
        event = json.loads(line)
        if "fetched" in event:
            again = [i for i in event["fetched"] if i in self.final]
            assert not again, f"final recipients fetched again: {again}"
        if "done" in event:
            self.done = True
        if "acked" not in event:
            return False
        for rid, kind in event["acked"]:
            if kind in FINAL:
                self.final[rid] = FINAL[kind]
            if kind in ATTEMPTS:
                self.attempts[rid] += 1
        return True

    def check(self, path: Path, now: float) -> Journal:
        journal = Journal.open(path, "crash-test", now=now)
        self.recovered.append(journal.recovered_in_doubt)
        assert journal._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {s.id: s for s in journal.iter_states()}
        assert sorted(rows) == list(range(1, RECIPIENTS + 1))
        assert sum(journal.counts().values()) == RECIPIENTS
        for rid, status in self.final.items():
            assert rows[rid].status is status, rid
        for rid, n in self.attempts.items():
            assert rows[rid].attempts >= n, rid
        for state in rows.values():  # claims were recovered: nothing is left in flight
            assert state.status.waiting == (state.next_attempt_at is not None)
        return journal


def run_child(path: Path, seed: int, now: float, ledger: Ledger, kill_after: int | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(seed)
    deadline = time.monotonic() + 60
    buffer = b""
    acks = 0
    killed = False
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(seed), repr(now)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            while True:
                assert time.monotonic() < deadline, "child took too long"
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                # Lines written before a kill are acknowledgements too; a torn one is not.
                for line in lines:
                    acks += ledger.take(line.decode())
                if kill_after is not None and acks >= kill_after and not killed:
                    time.sleep(rng.random() * 0.003)  # land anywhere: mid-batch, mid-commit
                    proc.send_signal(signal.SIGKILL)
                    killed = True
            errors = proc.stderr.read().decode()
            returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    if killed:
        assert returncode in (-signal.SIGKILL, 0), errors
    else:
        assert returncode == 0, errors


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kill_minus_nine_loses_no_committed_outcome(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "crash.journal"
    with Journal.open(path, "crash-test", now=T0) as journal:
        journal.import_recipients(
            (
                NewRecipient(f"user{i}@{DOMAINS[i % len(DOMAINS)]}", {"i": i})
                for i in range(RECIPIENTS)
            ),
            now=T0,
        )
    rng = random.Random(seed)
    ledger = Ledger()
    now = T0
    for run in range(6):
        kill_after = None if run == 5 else rng.randint(0, 12)
        run_child(path, seed * 100 + run, now, ledger, kill_after)
        now += 10_000.0
        with ledger.check(path, now) as journal:
            if ledger.done:
                counts = journal.counts()
                assert counts[Status.PENDING] == counts[Status.IN_DOUBT] == 0
                assert counts[Status.DELIVERED] + counts[Status.BOUNCED] == RECIPIENTS
                # Every recipient caught in flight by a kill was counted as possibly resent.
                assert journal.in_doubt_total() >= sum(ledger.recovered)
                break
    assert ledger.done
    assert ledger.final  # the kills did not all land before any work


def test_a_killed_run_whose_wal_is_lost_is_refused(tmp_path: Path) -> None:
    # kill -9 leaves the outcomes since the import in the -wal only. Losing that file must
    # not turn the journal back into one where nothing was sent.
    path = tmp_path / "crash.journal"
    with Journal.open(path, "crash-test", now=T0) as journal:
        journal.import_recipients((f"user{i}@a.example" for i in range(RECIPIENTS)), now=T0)
    ledger = Ledger()
    run_child(path, 1, T0, ledger, kill_after=3)
    assert ledger.final  # something was acknowledged as committed before the kill
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    with pytest.raises(JournalError, match="lost committed history"):
        Journal.open(path, "crash-test", now=T0 + 1)
