"""One journal file's SQLite connection: its lock, its transactions, its meta table and the
state file beside it (see "Durability", "Disk faults" and "Damage and lost history" in
:mod:`bulksend.journal`).

The store (:mod:`~bulksend.journal.store`) and the import (:mod:`~bulksend.journal.load`)
write through :meth:`Connection.write` only, so every write stops the journal on failure
and every durable commit is counted in ``meta.commits`` and the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from bulksend.errors import JournalError
from bulksend.files import private_fd
from bulksend.journal.integrity import (
    _STATE_SIZE,
    _damaged,
    _is_damage,
    _state_path,
    _write_error,
)

_T = TypeVar("_T")


class Connection:
    """The SQLite connection of one journal file, with the ``flock`` held on it.

    ``commits`` (durable commits made) and ``imported`` (rows imported) are mirrored in the
    state file after every durable commit.
    """

    def __init__(self, path: Path, db: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self.db = db
        self._lock_fd = lock_fd
        self._state_fd = -1
        self._failed: BaseException | None = None
        self.campaign_id = ""
        self.commits = 0
        self.imported = 0

    @property
    def where(self) -> str:
        """How messages name this journal."""
        return f"journal {str(self.path)!r}"

    def open_state_file(self) -> None:
        try:
            self._state_fd = private_fd(_state_path(self.path), os.O_RDWR)
        except OSError as e:
            raise JournalError(f"{self.where}: cannot open its state file: {e}") from e

    def close(self) -> None:
        """Close the connection and release the lock (idempotent)."""
        if self._lock_fd < 0:
            return
        try:
            self.db.close()
        finally:
            if self._state_fd >= 0:
                os.close(self._state_fd)
                self._state_fd = -1
            # Only after SQLite closed: closing another fd of the file drops its POSIX locks.
            os.close(self._lock_fd)
            self._lock_fd = -1

    def meta(self, key: str) -> str:
        value = self.meta_or_none(key)
        if value is None:
            raise JournalError(
                f"{self.where} is damaged: meta {key!r} missing; restore it from a backup"
            )
        return value

    def meta_or_none(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @contextlib.contextmanager
    def write(self, what: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite error stops the journal.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL``): such a commit
        survives a process crash (the WAL is in the OS's cache) and becomes durable with the
        next durable commit, which syncs the WAL up to there (a WAL loses only a suffix).
        """
        if self._failed is not None:
            raise JournalError(
                f"{self.where} stopped after a write failure ({self._failed}); "
                "nothing more is recorded"
            )
        if self._lock_fd < 0:
            raise JournalError(f"{self.where} is closed")
        db = self.db
        try:
            if not durable:
                db.execute("PRAGMA synchronous = NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                if durable:
                    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'commits'")
                db.execute("COMMIT")
            finally:
                if not durable:
                    # Whatever happened, the next commit must sync again.
                    self._rollback()
                    db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            self._failed = e
            self._rollback()
            raise _write_error(str(self.path), what, e) from e
        except BaseException:
            self._rollback()
            raise
        if durable:
            self.commits += 1
            self._save_state()

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def read(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run a query; SQLite's errors become :class:`JournalError` (damage named so)."""
        if self._lock_fd < 0:
            raise JournalError(f"{self.where} is closed")
        try:
            return fn()
        except sqlite3.Error as e:
            if _is_damage(e):
                raise _damaged(self.where, str(e)) from e
            raise JournalError(f"{self.where}: could not {what}: {e}") from e

    def _save_state(self) -> None:
        # After the commit it describes: the state file may lag the journal (a crash in
        # between), never lead it.
        record = json.dumps(
            {"campaign_id": self.campaign_id, "imported": self.imported, "commits": self.commits}
        )
        data = record.encode().ljust(_STATE_SIZE - 1) + b"\n"
        assert len(data) == _STATE_SIZE
        try:
            os.pwrite(self._state_fd, data, 0)  # one small write in place: never torn
        except OSError as e:
            raise JournalError(f"{self.where}: cannot write its state file: {e}") from e
