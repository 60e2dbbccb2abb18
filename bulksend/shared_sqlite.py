"""SQLite files that several processes open at the same moment: the suppression store and
the TLS policy state, which every worker of ``send --workers N`` opens as it starts.

Why this is needed: SQLite answers "database is locked" at once, without waiting out
``busy_timeout``, to a connection that switches the file to WAL mode (or writes its schema)
while another connection does the same: both hold a shared lock and want it exclusive, and
waiting could deadlock. So the first open of a new file by two workers at once failed one
of them. :func:`set_up` retries the set-up for a while; once the file is in WAL mode and has
its tables, further opens change nothing and never race.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from typing import Final, TypeVar

__all__ = ["BUSY_MS", "set_up"]

_T = TypeVar("_T")

#: ``busy_timeout`` of these files, and how long :func:`set_up` keeps trying (milliseconds).
BUSY_MS: Final = 10_000


def set_up(db: sqlite3.Connection, body: Callable[[], _T]) -> _T:
    """Set ``busy_timeout`` on ``db``, switch it to WAL mode and run ``body`` (its schema),
    trying again (a few milliseconds later, for up to ``busy_timeout``) while another
    process holds the lock for the same; returns what ``body`` returns.

    Raises:
        sqlite3.Error: it failed otherwise, or the lock was still held after that.
    """
    db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    give_up = time.monotonic() + BUSY_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return body()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > give_up:
                raise
            if db.in_transaction:
                db.rollback()
        time.sleep(random.uniform(0.005, 0.05))
