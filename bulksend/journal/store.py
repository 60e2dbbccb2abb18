"""The synchronous SQLite store of one campaign run: open and set up, crash recovery, the
state file, import, claims and applying outcomes (see :mod:`bulksend.journal`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

from bulksend.config import RetryPolicy
from bulksend.errors import JournalError
from bulksend.files import private_fd
from bulksend.journal.exports import _Reports
from bulksend.journal.identity import _describe_changes, _is_policy_part, _normalise_identity
from bulksend.journal.integrity import (
    _STATE_SIZE,
    _check_damage,
    _check_history,
    _damaged,
    _is_damage,
    _read_state,
    _state_path,
    _write_error,
)
from bulksend.journal.outcomes import Category, Outcome, Status, plan_step
from bulksend.journal.records import (
    _STATE_COLUMNS,
    Due,
    ImportStats,
    NewRecipient,
    RecipientState,
    _state,
)
from bulksend.journal.schema import (
    _ADDRESS_INDEX,
    _INDEXES,
    _SCHEMA,
    APPLICATION_ID,
    SCHEMA_VERSION,
    WAITING_SQL,
)

MAX_TEXT: Final = 2000

_T = TypeVar("_T")


class Journal(_Reports):
    """The durable recipient queue of one campaign run (synchronous core).

    Open with :meth:`open`. While a :class:`JournalWriter` runs, use the writer's async
    methods; the synchronous methods here raise ``RuntimeError`` then.
    """

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        lock_fd: int,
        policy: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        self.policy = policy
        self._rng = rng
        self._failed: BaseException | None = None
        self._owner: object | None = None
        self.identity: dict[str, str] = {}
        self.campaign_id = ""
        #: Recipients found claimed without an outcome when opened (crash): now in_doubt.
        self.recovered_in_doubt = 0
        self.forced = False
        #: What changed since the journal was last opened: "policy" (allowed) and "content"
        #: (forced) mapped to a description.
        self.changes: dict[str, str] = {}
        self._import_done = False
        #: Durable commits made (``meta.commits``) and rows imported, mirrored in the state
        #: file after every durable commit (see "Damage and lost history").
        self._commits = 0
        self._imported = 0
        self._state_fd = -1

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        identity: str | bytes | Mapping[str, str | bytes] | None,
        *,
        force: bool = False,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        now: float | None = None,
    ) -> Journal:
        """Open (resume) or create the journal at ``path``.

        Args:
            identity: the campaign identity (see :func:`campaign_identity`); ``None`` opens an
                existing journal without checking it (reports).
            force: resume even though the identity changed.
            now: wall-clock time (epoch seconds) for crash recovery.

        Raises:
            JournalError: not a journal, a different schema version, a changed campaign
                (unless ``force``), in use by another process, or an I/O error.
        """
        p = Path(path)
        now = time.time() if now is None else now
        if identity is None and not p.exists():
            raise JournalError(f"there is no journal at {str(p)!r}")
        try:
            # 0600 before SQLite sees it (its -wal and -shm files take this file's mode).
            fd = private_fd(p, os.O_RDWR)
        except OSError as e:
            raise JournalError(f"cannot open journal {str(p)!r}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd)
            os.close(fd)
            raise JournalInUse(
                f"journal {str(p)!r} is in use by another bulksend process"
                + ("" if holder is None else f" (pid {holder})")
                + "; `bulksend status` shows its progress"
            ) from e
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
            journal = cls(p, db, fd, policy or RetryPolicy(), rng or random.Random())
            journal._setup(identity, force=force, now=now)
        except BaseException:
            if db is not None:
                db.close()
            os.close(fd)
            raise
        return journal

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> Journal:
        """Open an existing journal for reading only, without its lock (reports).

        WAL mode lets this read the last committed state while a run holds the journal. No
        crash recovery runs: recipients a running (or killed) run has claimed still count as
        waiting, and their possible sends are not yet counted in doubt.

        Raises:
            JournalError: no journal there, not a journal, another schema version.
        """
        p = Path(path)
        if not p.is_file():
            raise JournalError(f"there is no journal at {str(p)!r}")
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise JournalError(f"cannot open journal {str(p)!r}: {e}") from e
        try:
            uri = f"file:{quote(str(p.resolve()))}?mode=ro"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            os.close(fd)
            raise JournalError(f"cannot read journal {str(p)!r}: {e}") from None
        journal = cls(p, db, fd, RetryPolicy(), random.Random())
        try:
            if journal._check_format():
                raise JournalError(f"journal {str(p)!r} is empty: its run never imported")
            journal._check_intact(fresh=False, thorough=False)
            journal._check_identity(None, force=False, now=0.0)
            journal._import_done = (
                journal._read("read meta", lambda: journal._meta("import_complete")) == "1"
            )
        except BaseException:
            journal.close()
            raise
        return journal

    def _check_format(self) -> bool:
        """Check the file is a journal of our schema version; True if it is still empty."""
        where = f"journal {str(self.path)!r}"
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{where} is not a bulksend journal ({e})") from e
        fresh = app_id == 0 and tables == 0
        if not fresh and app_id != APPLICATION_ID:
            raise JournalError(f"{where} is not a bulksend journal (another SQLite database)")
        if not fresh and version != SCHEMA_VERSION:
            raise JournalError(
                f"{where} has schema version {version}; this bulksend reads version "
                f"{SCHEMA_VERSION}. Use the bulksend version that wrote it."
            )
        return bool(fresh)

    def _check_intact(self, *, fresh: bool, thorough: bool) -> str | None:
        """Refuse a damaged journal or one that lost history; returns its commit count.

        Before anything is written or sent: a damaged journal would resend (or lose) work.
        A run gets the thorough check (it also compares every index with its table).
        """
        where = f"journal {str(self.path)!r}"
        state = _read_state(self.path)  # before the journal: a commit may land meanwhile
        if not fresh:
            _check_damage(self._db, where, thorough=thorough)
        _check_history(
            where,
            self.path,
            state,
            lambda key: self._read("read meta", lambda: self._meta_or_none(key)),
            fresh,
        )
        return None if fresh else self._meta_or_none("commits")

    def _setup(
        self, identity: str | bytes | Mapping[str, str | bytes] | None, *, force: bool, now: float
    ) -> None:
        where = f"journal {str(self.path)!r}"
        fresh = self._check_format()
        commits = self._check_intact(fresh=fresh, thorough=identity is not None)
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{where}: cannot switch to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA cache_size = -32768")
        except sqlite3.Error as e:
            raise JournalError(f"{where}: {e}") from e
        if fresh and identity is None:
            raise JournalError(f"{where} does not exist yet; a campaign identity is needed")
        try:
            self._state_fd = private_fd(_state_path(self.path), os.O_RDWR)
        except OSError as e:
            raise JournalError(f"{where}: cannot open its state file: {e}") from e
        if fresh:
            assert identity is not None
            self._create(_normalise_identity(identity), now)
        else:
            if commits is None:
                # Written before journals counted their commits: start counting now.
                with self._write("start counting commits"):
                    self._db.execute("INSERT INTO meta VALUES ('commits', '0')")
            else:
                self._commits = int(commits)
            self._check_identity(identity, force=force, now=now)
        self._import_done = self._read("read meta", lambda: self._meta("import_complete")) == "1"
        self._imported = int(self._read("read meta", lambda: self._meta("import_position")))
        self._recover(now)

    def _create(self, identity: dict[str, str], now: float) -> None:
        campaign_id = hashlib.sha256(
            json.dumps(identity, sort_keys=True).encode() + repr(now).encode()
        ).hexdigest()[:32]
        meta = {
            "identity": json.dumps(identity, sort_keys=True),
            "campaign_id": campaign_id,
            "created_at": repr(now),
            "import_position": "0",
            "import_complete": "0",
            "commits": "0",
        }
        self.campaign_id = campaign_id
        with self._write("create the journal"):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        self.identity = identity

    def _check_identity(
        self, identity: str | bytes | Mapping[str, str | bytes] | None, *, force: bool, now: float
    ) -> None:
        stored = json.loads(self._read("read meta", lambda: self._meta("identity")))
        self.campaign_id = self._read("read meta", lambda: self._meta("campaign_id"))
        self.identity = stored
        if identity is None:
            return
        given = _normalise_identity(identity)
        changed = sorted(k for k in stored.keys() | given.keys() if stored.get(k) != given.get(k))
        if not changed:
            return
        content = [k for k in changed if not _is_policy_part(k)]
        if content and not force:
            raise JournalError(
                f"journal {str(self.path)!r} was written for other campaign content: "
                f"{_describe_changes(stored, given, content)} changed since. Resuming would "
                "send the remaining recipients the changed message: resume with --force to do "
                "that (a new journal would send everyone again)."
            )
        policy = [k for k in changed if _is_policy_part(k)]
        for kind, group in (("policy", policy), ("content", content)):
            if group:
                self.changes[kind] = _describe_changes(stored, given, group)
        with self._write("record a changed campaign"):
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'identity'",
                (json.dumps(given, sort_keys=True),),
            )
            if content:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('forced_at', ?)",
                    (repr(now),),
                )
        self.identity = given
        self.forced = bool(content)

    def _recover(self, now: float) -> None:
        with self._write("recover claimed recipients"):
            cur = self._db.execute(
                "UPDATE recipients SET status = 'in_doubt', in_doubt = in_doubt + 1,"
                " claimed_at = NULL, next_attempt_at = ?, updated_at = ?"
                " WHERE claimed_at IS NOT NULL",
                (now, now),
            )
            self.recovered_in_doubt = cur.rowcount

    def _meta(self, key: str) -> str:
        value = self._meta_or_none(key)
        if value is None:
            raise JournalError(
                f"journal {str(self.path)!r} is damaged: meta {key!r} missing; "
                "restore it from a backup"
            )
        return value

    def _meta_or_none(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _save_state(self) -> None:
        # After the commit it describes: the state file may lag the journal (a crash in
        # between), never lead it.
        record = json.dumps(
            {"campaign_id": self.campaign_id, "imported": self._imported, "commits": self._commits}
        )
        data = record.encode().ljust(_STATE_SIZE - 1) + b"\n"
        assert len(data) == _STATE_SIZE
        try:
            os.pwrite(self._state_fd, data, 0)  # one small write in place: never torn
        except OSError as e:
            raise JournalError(
                f"journal {str(self.path)!r}: cannot write its state file: {e}"
            ) from e

    def discard(self) -> None:
        """Close and delete the journal with its -wal, -shm and state files (a run that
        imported nothing to send leaves none behind)."""
        self.close()
        for path in (self.path, *(Path(f"{self.path}{s}") for s in ("-wal", "-shm"))):
            path.unlink(missing_ok=True)
        _state_path(self.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the connection and release the lock (idempotent)."""
        if self._lock_fd < 0:
            return
        try:
            self._db.close()
        finally:
            if self._state_fd >= 0:
                os.close(self._state_fd)
                self._state_fd = -1
            # Only after SQLite closed: closing another fd of the file drops its POSIX locks.
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions ----------------------------------------------------------------------

    def _check_imported(self) -> None:
        if not self._import_done:
            raise JournalError(
                f"journal {str(self.path)!r}: the recipients import has not finished; "
                "import them (again: a partial import resumes) before sending"
            )

    def _check_free(self) -> None:
        if self._owner is not None:
            raise RuntimeError("the journal is owned by a running JournalWriter; use its methods")

    @contextlib.contextmanager
    def _write(self, what: str, *, durable: bool = True) -> Iterator[None]:
        """One write transaction; any SQLite error stops the journal.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL``): such a commit
        survives a process crash (the WAL is in the OS's cache) and becomes durable with the
        next durable commit, which syncs the WAL up to there (a WAL loses only a suffix).
        """
        if self._failed is not None:
            raise JournalError(
                f"journal {str(self.path)!r} stopped after a write failure ({self._failed}); "
                "nothing more is recorded"
            )
        if self._lock_fd < 0:
            raise JournalError(f"journal {str(self.path)!r} is closed")
        try:
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                if durable:
                    self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'commits'")
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    # Whatever happened, the next commit must sync again.
                    self._rollback()
                    self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            self._failed = e
            self._rollback()
            raise _write_error(str(self.path), what, e) from e
        except BaseException:
            self._rollback()
            raise
        if durable:
            self._commits += 1
            self._save_state()

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _read(self, what: str, fn: Callable[[], _T]) -> _T:
        if self._lock_fd < 0:
            raise JournalError(f"journal {str(self.path)!r} is closed")
        try:
            return fn()
        except sqlite3.Error as e:
            if _is_damage(e):
                raise _damaged(f"journal {str(self.path)!r}", str(e)) from e
            raise JournalError(f"journal {str(self.path)!r}: could not {what}: {e}") from e

    # --- import ----------------------------------------------------------------------------

    @property
    def import_complete(self) -> bool:
        """True once every recipient is imported (and the indexes are built)."""
        return self._import_done

    def import_recipients(
        self,
        recipients: Iterable[NewRecipient | str],
        *,
        now: float | None = None,
        batch_size: int = 50_000,
        not_imported: Mapping[str, int] | None = None,
    ) -> ImportStats:
        """Write recipients in large transactions, resuming a partial import.

        Items already imported (by position) before a crash are skipped, so pass the same
        recipients again on resume. The secondary indexes are built once, when the last
        batch is in (much faster than maintaining them row by row); an address seen twice is
        then kept only at its first position. Pending recipients are due at ``now``.
        ``not_imported`` (read once ``recipients`` is exhausted) counts the rows the caller
        left out, by reason; it is kept, with the duplicates found here, for :meth:`tally`.
        """
        self._check_free()
        now = time.time() if now is None else now
        if self._import_done:
            return ImportStats(0, 0, 0)
        position = int(self._read("read meta", lambda: self._meta("import_position")))
        it = iter(recipients)
        skipped = sum(1 for _ in zip(range(position), it, strict=False))
        insert = (
            "INSERT INTO recipients (id, address, domain, data, status,"
            " next_attempt_at, updated_at, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        written = duplicates = 0
        while True:
            items = list(itertools.islice(it, batch_size))
            last = len(items) < batch_size
            with self._write("import recipients"):
                if items:
                    self._db.executemany(insert, _import_rows(items, position + 1, now))
                    position += len(items)
                    written += len(items)
                    self._imported = position
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'import_position'", (str(position),)
                    )
                if last:
                    duplicates = self._build_indexes()
                    left_out = dict(not_imported or {})
                    left_out["duplicate"] = left_out.get("duplicate", 0) + duplicates
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('not_imported', ?)",
                        (json.dumps(left_out, sort_keys=True),),
                    )
                    self._db.execute("UPDATE meta SET value = '1' WHERE key = 'import_complete'")
            if last:
                self._import_done = True
                # Into the main file: a journal copied without its -wal (a backup, a move)
                # or one whose -wal is lost keeps its recipients.
                self._read(
                    "checkpoint the import",
                    lambda: self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
                )
                return ImportStats(written - duplicates, duplicates, skipped)

    def _build_indexes(self) -> int:
        """Create the secondary indexes (inside the import's last transaction).

        Returns how many duplicate addresses were removed to make the address unique.
        """
        db = self._db
        removed = 0
        db.execute("SAVEPOINT address_index")
        try:
            db.execute(_ADDRESS_INDEX)
        except sqlite3.IntegrityError:
            # Duplicates are rare: only then pay for finding them.
            db.execute("ROLLBACK TO address_index")
            db.execute("CREATE INDEX recipients_address_dups ON recipients (address, id)")
            removed = db.execute(
                "DELETE FROM recipients WHERE id NOT IN"
                " (SELECT min(id) FROM recipients GROUP BY address)"
            ).rowcount
            db.execute("DROP INDEX recipients_address_dups")
            db.execute(_ADDRESS_INDEX)
        db.execute("RELEASE address_index")
        for statement in _INDEXES:
            db.execute(statement)
        return removed

    # --- scheduler API ---------------------------------------------------------------------

    def fetch_due(self, domain: str, limit: int, *, now: float | None = None) -> list[Due]:
        """Claim up to ``limit`` recipients of ``domain`` due at ``now`` (in-doubt first).

        Claimed recipients are not fetched again until an outcome is recorded for them.
        """
        self._check_free()
        return self._fetch_due(domain, limit, now)

    def _fetch_due(self, domain: str, limit: int, now: float | None) -> list[Due]:
        self._check_imported()
        now = time.time() if now is None else now
        domain = domain.lower()
        query = (
            "SELECT id, address, domain, data, status, attempts, in_doubt FROM recipients"
            " WHERE status = ? AND domain = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id LIMIT ?"
        )
        found: list[tuple[Any, ...]] = []
        # Claims need no fsync of their own: a kill -9 keeps them (the WAL is in the OS's
        # cache), and the next outcome commit makes them durable along with it.
        with self._write("claim due recipients", durable=False):
            for status in (Status.IN_DOUBT, Status.PENDING):
                if len(found) < limit:
                    found += self._db.execute(
                        query, (str(status), domain, now, limit - len(found))
                    ).fetchall()
            self._db.executemany(
                "UPDATE recipients SET claimed_at = ?, next_attempt_at = NULL WHERE id = ?",
                [(now, r[0]) for r in found],
            )
        return [
            Due(
                r[0],
                r[1],
                r[2],
                None if r[3] is None else json.loads(r[3]),
                Status(r[4]),
                r[5],
                r[6],
            )
            for r in found
        ]

    def due_domains(self, *, now: float | None = None) -> dict[str, int]:
        """Domains with recipients due at ``now``, with how many are due."""
        self._check_free()
        return self._due_domains(now)

    def _due_domains(self, now: float | None) -> dict[str, int]:
        self._check_imported()
        now = time.time() if now is None else now

        def q() -> dict[str, int]:
            counts: dict[str, int] = {}
            for status in (Status.IN_DOUBT, Status.PENDING):
                for domain, n in self._db.execute(
                    "SELECT domain, count(*) FROM recipients"
                    " WHERE status = ? AND next_attempt_at <= ? GROUP BY domain",
                    (str(status), now),
                ):
                    counts[domain] = counts.get(domain, 0) + n
            return counts

        return self._read("list due domains", q)

    def next_due_at(self) -> float | None:
        """The earliest time any unclaimed waiting recipient is due, or None."""
        self._check_free()
        return self._next_due_at()

    def _next_due_at(self) -> float | None:
        def q() -> float | None:
            row = self._db.execute(
                f"SELECT min(next_attempt_at) FROM recipients WHERE {WAITING_SQL}"  # noqa: S608
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return self._read("find the next due time", q)

    def waiting(self) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""
        self._check_free()
        return self._waiting()

    def _waiting(self) -> bool:
        return self._read(
            "look for waiting recipients",
            lambda: bool(
                self._db.execute(
                    f"SELECT EXISTS (SELECT 1 FROM recipients WHERE {WAITING_SQL})"  # noqa: S608
                ).fetchone()[0]
            ),
        )

    def suppress_waiting(
        self, suppressed: Callable[[str], bool], *, now: float | None = None
    ) -> int:
        """Mark every unclaimed waiting recipient whose address is ``suppressed`` as such.

        For a suppression list that changed since the import (resume, or during a run).
        Claimed recipients are a sender's to check. Returns how many were marked.
        """
        self._check_free()
        return self._suppress_waiting(suppressed, now)

    def _suppress_waiting(self, suppressed: Callable[[str], bool], now: float | None) -> int:
        self._check_imported()
        now = time.time() if now is None else now
        cursor = self._read(
            "read waiting recipients",
            lambda: self._db.execute(
                f"SELECT id, address FROM recipients WHERE {WAITING_SQL} AND claimed_at IS NULL"  # noqa: S608
            ),
        )
        ids: list[tuple[float, int]] = []
        try:
            while rows := self._read("read waiting recipients", lambda: cursor.fetchmany(10_000)):
                ids += [(now, rid) for rid, address in rows if suppressed(address)]
        finally:
            cursor.close()
        if ids:
            with self._write("mark suppressed recipients"):
                self._db.executemany(
                    "UPDATE recipients SET status = 'suppressed', next_attempt_at = NULL,"  # noqa: S608
                    " updated_at = ? WHERE id = ? AND claimed_at IS NULL"
                    f" AND {WAITING_SQL}",
                    ids,
                )
        return len(ids)

    def record(self, recipient_id: int, outcome: Outcome, *, now: float | None = None) -> bool:
        """Record one outcome and commit it (outside a run; the writer batches during one).

        Returns whether it applied (False: unknown recipient or already final).
        """
        self._check_free()
        now = time.time() if now is None else now
        return self._apply([(recipient_id, outcome, now)])[0] == 1

    def retry_unrendered(self, *, now: float | None = None) -> int:
        """Make every ``not_rendered`` recipient pending again, due at ``now``.

        For a campaign fixed after its messages could not be made: they were never sent,
        so sending them now sends each once. Returns how many.
        """
        self._check_free()
        now = time.time() if now is None else now
        with self._write("requeue recipients not rendered"):
            return self._db.execute(
                "UPDATE recipients SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE status = 'not_rendered'",
                (now, now),
            ).rowcount

    def _apply(self, records: Sequence[tuple[int, Outcome, float]]) -> tuple[int, int]:
        """Apply outcomes in one transaction; returns how many applied, and expired."""
        applied = expired = 0
        select = "SELECT status, attempts, first_attempt_at FROM recipients WHERE id = ?"
        with self._write("record outcomes"):
            for rid, outcome, now in records:
                row = self._db.execute(select, (rid,)).fetchone()
                if row is None or not Status(row[0]).waiting:
                    continue  # a final recipient never changes again
                step = plan_step(
                    outcome,
                    status=Status(row[0]),
                    attempts=row[1],
                    first_attempt_at=row[2],
                    now=now,
                    policy=self.policy,
                    rng=self._rng,
                )
                if step.keeps_reply:
                    # Not an attempt: the last real reply stays (an expiry keeps it too).
                    self._db.execute(
                        "UPDATE recipients SET status = ?, first_attempt_at = ?,"
                        " next_attempt_at = ?, claimed_at = NULL, updated_at = ? WHERE id = ?",
                        (str(step.status), step.first_attempt_at, step.next_attempt_at, now, rid),
                    )
                else:
                    self._db.execute(
                        "UPDATE recipients SET status = ?, attempts = ?, first_attempt_at = ?,"
                        " last_attempt_at = ?, next_attempt_at = ?, claimed_at = NULL,"
                        " in_doubt = in_doubt + ?, code = ?, enhanced_code = ?, text = ?,"
                        " category = ?, updated_at = ? WHERE id = ?",
                        (
                            str(step.status),
                            step.attempts,
                            step.first_attempt_at,
                            now,
                            step.next_attempt_at,
                            step.in_doubt_added,
                            outcome.code,
                            outcome.enhanced_code,
                            outcome.text[:MAX_TEXT],
                            None if outcome.category is None else str(outcome.category),
                            now,
                            rid,
                        ),
                    )
                applied += 1
                expired += step.status is Status.EXPIRED
        return applied, expired

    # --- reports ---------------------------------------------------------------------------

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""
        self._check_free()

        def q() -> dict[Status, int]:
            counts = dict.fromkeys(Status, 0)
            for status, n in self._db.execute(
                "SELECT status, count(*) FROM recipients GROUP BY status"
            ):
                counts[Status(status)] = n
            return counts

        return self._read("count recipients", q)

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        """Recipients per domain and status (only non-zero statuses)."""
        self._check_free()

        def q() -> dict[str, dict[Status, int]]:
            out: dict[str, dict[Status, int]] = {}
            for domain, status, n in self._db.execute(
                "SELECT domain, status, count(*) FROM recipients GROUP BY domain, status"
            ):
                out.setdefault(domain, {})[Status(status)] = n
            return out

        return self._read("count recipients per domain", q)

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        """Recipients in ``statuses`` (default: bounced) per category of their last reply."""
        self._check_free()
        wanted = [str(s) for s in statuses]

        def q() -> dict[Category, int]:
            out: dict[Category, int] = {}
            marks = ", ".join("?" * len(wanted))
            for category, n in self._db.execute(
                f"SELECT coalesce(category, 'other'), count(*) FROM recipients"  # noqa: S608
                f" WHERE status IN ({marks}) GROUP BY 1",
                wanted,
            ):
                out[Category(category)] = n
            return out

        return self._read("count bounce categories", q)

    def in_doubt_total(self) -> int:
        """How many sends may have been duplicated (in-doubt events, all recipients)."""
        self._check_free()
        return self._read(
            "count in-doubt sends",
            lambda: int(self._db.execute("SELECT total(in_doubt) FROM recipients").fetchone()[0]),
        )

    def not_imported(self) -> dict[str, int]:
        """Rows of the recipients file left out of the journal, by reason (see import)."""
        self._check_free()

        def q() -> dict[str, int]:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'not_imported'").fetchone()
            return {} if row is None else {str(k): int(n) for k, n in json.loads(row[0]).items()}

        return self._read("read meta", q)

    def get(self, recipient_id: int) -> RecipientState | None:
        """One recipient's row."""
        self._check_free()

        def q() -> RecipientState | None:
            row = self._db.execute(
                f"SELECT {_STATE_COLUMNS} FROM recipients WHERE id = ?",  # noqa: S608
                (recipient_id,),
            ).fetchone()
            return None if row is None else _state(row)

        return self._read("read a recipient", q)

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        """Every recipient's row in id order (streamed), optionally only some statuses."""
        self._check_free()
        sql = f"SELECT {_STATE_COLUMNS} FROM recipients"  # noqa: S608
        args: list[str] = []
        if statuses is not None:
            args = [str(s) for s in statuses]
            sql += f" WHERE status IN ({', '.join('?' * len(args))})"
        sql += " ORDER BY id"
        cursor = self._read("export outcomes", lambda: self._db.execute(sql, args))
        try:
            while True:
                rows = self._read("export outcomes", lambda: cursor.fetchmany(1000))
                if not rows:
                    return
                yield from map(_state, rows)
        finally:
            cursor.close()


class JournalInUse(JournalError):
    """Another process holds the journal (a run is going)."""


def _lock_holder(fd: int) -> int | None:
    """The pid holding an flock on ``fd``'s file, from Linux's /proc/locks (None elsewhere)."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


_encode_json: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _import_rows(
    items: Sequence[NewRecipient | str], first_id: int, now: float
) -> Iterator[tuple[Any, ...]]:
    # The import's inner loop: kept lean (1M rows must import in seconds).
    pending = Status.PENDING
    encode = _encode_json
    for rid, item in enumerate(items, first_id):
        r = NewRecipient(item) if type(item) is str else item
        assert isinstance(r, NewRecipient)
        address = r.address
        local, _, given_domain = address.rpartition("@")
        domain = given_domain.lower()
        if domain != given_domain:
            address = f"{local}@{domain}"
        data = None if r.data is None else encode(r.data)
        if r.status is pending:
            if not local or not domain:
                raise ValueError(
                    f"recipient {rid}: {r.address!r} has no domain; import it as invalid"
                )
            yield (rid, address, domain, data, "pending", now, now, r.reason or None)
        elif r.status in (Status.SUPPRESSED, Status.INVALID):
            yield (rid, r.address, domain, data, r.status.value, None, now, r.reason or None)
        else:
            raise ValueError(f"recipient {rid}: cannot import with status {r.status}")
