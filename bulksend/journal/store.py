"""The synchronous SQLite store of one campaign run: open and set up, crash recovery, claims,
applying outcomes and the report queries (see :mod:`bulksend.journal`). It implements
:class:`~bulksend.journal.protocol.JournalStore`; the import is in
:mod:`~bulksend.journal.load`, the transactions and the state file in
:mod:`~bulksend.journal.connection`.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote

from bulksend.config import RetryPolicy
from bulksend.errors import JournalError
from bulksend.journal import load, opening
from bulksend.journal.connection import Connection
from bulksend.journal.feedback import (
    COUNTS_SQL,
    FeedbackCounts,
    FeedbackRow,
    feedback_counts,
    feedback_row,
    rows_sql,
)
from bulksend.journal.identity import _normalise_identity
from bulksend.journal.integrity import _state_path
from bulksend.journal.opening import JournalInUse
from bulksend.journal.outcomes import WAITING, Category, Outcome, Status, Step, plan_step
from bulksend.journal.protocol import OutcomeRecord
from bulksend.journal.records import (
    _STATE_COLUMNS,
    Due,
    ImportStats,
    NewRecipient,
    RecipientState,
    _decode_data,
    _state,
    shard_placement,
)
from bulksend.journal.schema import WAITING_SQL
from bulksend.journal.upgrade import upgrade

__all__ = ["MAX_TEXT", "Journal", "JournalInUse", "StoreBase", "plan_updates"]

MAX_TEXT: Final = 2000
_T = TypeVar("_T")


class StoreBase:
    """What every journal store (SQLite, PostgreSQL) shares: the hold a running writer takes
    (see :class:`~bulksend.journal.protocol.JournalStore`), the import's resumption and
    completion flag, closing as a context manager."""

    _owner: object = None
    _import_done: bool = False

    @property
    def where(self) -> str:
        """The journal, as messages name it."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def import_complete(self) -> bool:
        """True once every recipient is imported (and the indexes are built)."""
        return self._import_done

    def _check_imported(self) -> None:
        if not self._import_done:
            raise JournalError(
                f"{self.where}: the recipients import has not finished; "
                "import them (again: a partial import resumes) before sending"
            )

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
        left out, by reason; it is kept, with the duplicates found here, for the tally.
        """
        self._check_owner(None)
        if self._import_done:
            return ImportStats(0, 0, 0)
        stats = self._import(
            recipients, time.time() if now is None else now, batch_size, not_imported
        )
        self._import_done = True
        return stats

    def _import(
        self,
        recipients: Iterable[NewRecipient | str],
        now: float,
        batch_size: int,
        not_imported: Mapping[str, int] | None,
    ) -> ImportStats:
        raise NotImplementedError

    def hold(self, owner: object) -> None:
        """Reserve the journal for ``owner`` (a running writer)."""
        self._check_owner(None)
        self._owner = owner

    def release(self, owner: object) -> None:
        """End ``owner``'s hold on the journal."""
        if self._owner is owner:
            self._owner = None

    def _check_owner(self, owner: object) -> None:
        """The one ownership guard: only the holder (or anyone, while none holds it)."""
        if self._owner is not owner:
            raise RuntimeError("the journal is owned by a running JournalWriter; use its methods")


class Journal(StoreBase):
    """The durable recipient queue of one campaign run (synchronous core).

    Open with :meth:`open`. While a :class:`JournalWriter` runs it holds the journal: use the
    writer's async methods; the methods here raise ``RuntimeError`` then.
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
        self._conn = Connection(path, db, lock_fd)
        self.policy = policy
        self._rng = rng
        self._owner: object = None
        self.identity: dict[str, str] = {}
        #: Recipients found claimed without an outcome when opened (crash): now in_doubt.
        self.recovered_in_doubt = 0
        self.forced = False
        #: What changed since the journal was last opened: "policy" (allowed) and "content"
        #: (forced) mapped to a description.
        self.changes: dict[str, str] = {}
        self._import_done = False

    @property
    def campaign_id(self) -> str:
        """Fixed when the journal is created; Message-IDs are derived from it."""
        return self._conn.campaign_id

    @property
    def _db(self) -> sqlite3.Connection:
        return self._conn.db

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
        fd = opening.lock(p)
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
            journal = cls(p, db, fd, policy or RetryPolicy(), rng or random.Random())
            journal._set_up(identity, force=force, now=now)
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
        conn = journal._conn
        try:
            if opening.check_format(conn):
                raise JournalError(f"journal {str(p)!r} is empty: its run never imported")
            opening.check_intact(conn, fresh=False, thorough=False)
            journal.identity = opening.check_identity(conn, None, force=False, now=0.0).identity
            journal._import_done = (
                conn.read("read meta", lambda: conn.meta("import_complete")) == "1"
            )
        except BaseException:
            journal.close()
            raise
        return journal

    def _set_up(self, identity: opening.Identity | None, *, force: bool, now: float) -> None:
        conn = self._conn
        upgrade(conn)  # an older version, opened for a run
        fresh = opening.check_format(conn)
        commits = opening.check_intact(conn, fresh=fresh, thorough=identity is not None)
        opening.set_up(conn)
        if fresh and identity is None:
            raise JournalError(f"{conn.where} does not exist yet; a campaign identity is needed")
        conn.open_state_file()
        if fresh:
            assert identity is not None
            self.identity = _normalise_identity(identity)
            opening.create(conn, self.identity, now)
        else:
            if commits is None:
                # Written before journals counted their commits: start counting now.
                with conn.write("start counting commits") as db:
                    db.execute("INSERT INTO meta VALUES ('commits', '0')")
            else:
                conn.commits = int(commits)
            checked = opening.check_identity(conn, identity, force=force, now=now)
            self.identity, self.changes, self.forced = (
                checked.identity,
                checked.changes,
                checked.forced,
            )
            opening.add_feedback_table(conn)
        self._import_done = conn.read("read meta", lambda: conn.meta("import_complete")) == "1"
        conn.imported = int(conn.read("read meta", lambda: conn.meta("import_position")))
        self.recovered_in_doubt = opening.recover(conn, now)

    def discard(self) -> None:
        """Close and delete the journal with its -wal, -shm and state files (a run that
        imported nothing to send leaves none behind)."""
        self.close()
        for path in (self.path, *(Path(f"{self.path}{s}") for s in ("-wal", "-shm"))):
            path.unlink(missing_ok=True)
        _state_path(self.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the connection and release the lock (idempotent)."""
        self._conn.close()

    @property
    def where(self) -> str:
        return f"journal {str(self.path)!r}"

    def _import(
        self,
        recipients: Iterable[NewRecipient | str],
        now: float,
        batch_size: int,
        not_imported: Mapping[str, int] | None,
    ) -> ImportStats:
        return load.import_recipients(
            self._conn, recipients, now=now, batch_size=batch_size, not_imported=not_imported
        )

    # --- a run's claims and outcomes (JournalStore) ----------------------------------------

    def fetch_due(
        self, domain: str, limit: int, *, now: float | None = None, owner: object = None
    ) -> list[Due]:
        """Claim up to ``limit`` recipients of ``domain`` due at ``now`` (in-doubt first).

        Claimed recipients are not fetched again until an outcome is recorded for them.
        """
        self._check_owner(owner)
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
        with self._conn.write("claim due recipients", durable=False) as db:
            for status in WAITING[::-1]:  # in doubt first
                if len(found) < limit:
                    found += db.execute(
                        query, (str(status), domain, now, limit - len(found))
                    ).fetchall()
            db.executemany(
                "UPDATE recipients SET claimed_at = ?, next_attempt_at = NULL WHERE id = ?",
                [(now, r[0]) for r in found],
            )
        data, statuses = _decode_data, _STATUS
        return [
            Due(rid, address, dom, None if d is None else data(d), statuses[st], tries, doubt)
            for rid, address, dom, d, st, tries, doubt in found
        ]

    def due_domains(self, *, now: float | None = None, owner: object = None) -> dict[str, int]:
        """Domains with recipients due at ``now``, with how many are due."""
        self._check_owner(owner)
        self._check_imported()
        at = time.time() if now is None else now

        def q() -> dict[str, int]:
            counts: dict[str, int] = {}
            for status in WAITING[::-1]:
                for domain, n in self._db.execute(
                    "SELECT domain, count(*) FROM recipients"
                    " WHERE status = ? AND next_attempt_at <= ? GROUP BY domain",
                    (str(status), at),
                ):
                    counts[domain] = counts.get(domain, 0) + n
            return counts

        return self._conn.read("list due domains", q)

    def next_due_at(self, *, owner: object = None) -> float | None:
        """The earliest time any unclaimed waiting recipient is due, or None."""
        self._check_owner(owner)

        def q() -> float | None:
            row = self._db.execute(
                f"SELECT min(next_attempt_at) FROM recipients WHERE {WAITING_SQL}"  # noqa: S608
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return self._conn.read("find the next due time", q)

    def waiting(self, *, owner: object = None) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""
        self._check_owner(owner)
        return self._conn.read(
            "look for waiting recipients",
            lambda: bool(
                self._db.execute(
                    f"SELECT EXISTS (SELECT 1 FROM recipients WHERE {WAITING_SQL})"  # noqa: S608
                ).fetchone()[0]
            ),
        )

    def placement(self) -> dict[str, int] | None:
        """The shard placement of the largest sites this shard's import began with (see
        :mod:`bulksend.delivery.shard`): ``{}`` for one begun by hash before placements were
        recorded; None for an import not begun."""
        conn = self._conn
        raw = conn.read("read meta", lambda: conn.meta_or_none("shard_placement"))
        return shard_placement(raw, conn.imported)

    def record_placement(self, placed: Mapping[str, int]) -> None:
        """Keep the placement this shard's import begins with: a resumed import, however it
        is started, must keep the same recipients."""
        with self._conn.write("record the shards' placement") as db:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('shard_placement', ?)",
                (json.dumps(dict(placed), sort_keys=True),),
            )

    def update_warmup(
        self, source: str, change: Callable[[str | None], str], *, owner: object = None
    ) -> str:
        """Replace one egress source's warm-up state (JSON) by ``change(saved)``; returns it.

        Not fsync'd (it survives a crash of the process; a power loss may forget the last
        few messages counted): it is written every few messages of a warming source.
        """
        self._check_owner(owner)
        key = f"warmup:{source}"
        with self._conn.write("update a warm-up state", durable=False) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            state = change(None if row is None else str(row[0]))
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, state))
        return state

    def suppress_waiting(
        self,
        suppressed: Callable[[str], bool],
        *,
        now: float | None = None,
        owner: object = None,
    ) -> int:
        """Mark every unclaimed waiting recipient whose address is ``suppressed`` as such.

        For a suppression list that changed since the import (resume, or during a run).
        Claimed recipients are a sender's to check. Returns how many were marked.
        """
        self._check_owner(owner)
        self._check_imported()
        now = time.time() if now is None else now
        cursor = self._conn.read(
            "read waiting recipients",
            lambda: self._db.execute(
                f"SELECT id, address FROM recipients WHERE {WAITING_SQL} AND claimed_at IS NULL"  # noqa: S608
            ),
        )
        ids: list[tuple[float, int]] = []
        try:
            while rows := self._conn.read(
                "read waiting recipients", lambda: cursor.fetchmany(10_000)
            ):
                ids += [(now, rid) for rid, address in rows if suppressed(address)]
        finally:
            cursor.close()
        if ids:
            with self._conn.write("mark suppressed recipients") as db:
                db.executemany(
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
        now = time.time() if now is None else now
        return self.apply([(recipient_id, outcome, now)])[0] == 1

    def retry_unrendered(self, *, now: float | None = None) -> int:
        """Make every ``not_rendered`` recipient pending again, due at ``now``.

        For a campaign fixed after its messages could not be made: they were never sent,
        so sending them now sends each once. Returns how many.
        """
        self._check_owner(None)
        now = time.time() if now is None else now
        with self._conn.write("requeue recipients not rendered") as db:
            return db.execute(
                "UPDATE recipients SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE status = 'not_rendered'",
                (now, now),
            ).rowcount

    def apply(
        self,
        records: Sequence[OutcomeRecord],
        *,
        owner: object = None,
        expired: list[int] | None = None,
    ) -> tuple[int, int]:
        """Apply outcomes in one durable transaction; returns how many applied, and expired
        (their ids are appended to ``expired``, if given).

        An outcome for an unknown or final recipient is ignored (delivered is never undone).
        """
        self._check_owner(owner)
        applied, ended = 0, list[int]()
        with self._conn.write("record outcomes") as db:
            for part in _distinct_runs(records):
                a, e = self._apply_run(db, part)
                applied += a
                ended += e
        if expired is not None:
            expired += ended
        return applied, len(ended)

    def _apply_run(
        self, db: sqlite3.Connection, records: Sequence[OutcomeRecord]
    ) -> tuple[int, list[int]]:
        """Apply outcomes for distinct recipients: one SELECT, the steps planned in order
        (the retry jitter draws as one at a time would), then one ``executemany`` per shape."""
        rows = {
            r[0]: r
            for r in db.execute(
                "SELECT id, status, attempts, first_attempt_at FROM recipients"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([rid for rid, _, _ in records]),),
            )
        }
        kept, replied, ended = plan_updates(records, rows, self.policy, self._rng)
        if kept:
            db.executemany(
                "UPDATE recipients SET status = ?, first_attempt_at = ?,"
                " next_attempt_at = ?, claimed_at = NULL, updated_at = ? WHERE id = ?",
                kept,
            )
        if replied:
            db.executemany(
                "UPDATE recipients SET status = ?, attempts = ?, first_attempt_at = ?,"
                " last_attempt_at = ?, next_attempt_at = ?, claimed_at = NULL,"
                " in_doubt = in_doubt + ?, code = ?, enhanced_code = ?, text = ?,"
                " category = ?, updated_at = ? WHERE id = ?",
                replied,
            )
        return len(kept) + len(replied), ended

    # --- reports ---------------------------------------------------------------------------

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""
        self._check_owner(None)

        def q() -> dict[Status, int]:
            counts = dict.fromkeys(Status, 0)
            for status, n in self._db.execute(
                "SELECT status, count(*) FROM recipients GROUP BY status"
            ):
                counts[Status(status)] = n
            return counts

        return self._conn.read("count recipients", q)

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        """Recipients per domain and status (only non-zero statuses)."""
        self._check_owner(None)

        def q() -> dict[str, dict[Status, int]]:
            out: dict[str, dict[Status, int]] = {}
            for domain, status, n in self._db.execute(
                "SELECT domain, status, count(*) FROM recipients GROUP BY domain, status"
            ):
                out.setdefault(domain, {})[Status(status)] = n
            return out

        return self._conn.read("count recipients per domain", q)

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        """Recipients in ``statuses`` (default: bounced) per category of their last reply."""
        self._check_owner(None)
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

        return self._conn.read("count bounce categories", q)

    def feedback_counts(self) -> FeedbackCounts:
        """Recipients with asynchronous bounces, complaints, unsubscribes (by category)."""
        self._check_owner(None)

        def q() -> FeedbackCounts:
            if not self._has_feedback():
                return {}
            return feedback_counts(self._db.execute(COUNTS_SQL))

        return self._conn.read("count feedback", q)

    def _has_feedback(self) -> bool:
        # A journal from before the table, read without writing, has none yet.
        table = "SELECT 1 FROM sqlite_schema WHERE name = 'feedback'"
        return self._db.execute(table).fetchone() is not None

    def in_doubt_total(self) -> int:
        """How many sends may have been duplicated (in-doubt events, all recipients)."""
        self._check_owner(None)
        return self._conn.read(
            "count in-doubt sends",
            lambda: int(self._db.execute("SELECT total(in_doubt) FROM recipients").fetchone()[0]),
        )

    def not_imported(self) -> dict[str, int]:
        """Rows of the recipients file left out of the journal, by reason (see import)."""
        self._check_owner(None)

        def q() -> dict[str, int]:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'not_imported'").fetchone()
            return {} if row is None else {str(k): int(n) for k, n in json.loads(row[0]).items()}

        return self._conn.read("read meta", q)

    def get(self, recipient_id: int) -> RecipientState | None:
        """One recipient's row."""
        self._check_owner(None)

        def q() -> RecipientState | None:
            row = self._db.execute(
                f"SELECT {_STATE_COLUMNS} FROM recipients WHERE id = ?",  # noqa: S608
                (recipient_id,),
            ).fetchone()
            return None if row is None else _state(row)

        return self._conn.read("read a recipient", q)

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        """Every recipient's row in id order (streamed), optionally only some statuses."""
        self._check_owner(None)
        wanted, args = _wanted("status", statuses)
        sql = f"SELECT {_STATE_COLUMNS} FROM recipients WHERE {wanted} ORDER BY id"  # noqa: S608
        yield from self._stream("export outcomes", sql, args, _state)

    def iter_feedback(self, statuses: Iterable[Status] | None = None) -> Iterator[FeedbackRow]:
        """Every feedback row by recipient id, then kind (streamed), optionally only those of
        recipients in some statuses; none in a journal from before the table."""
        self._check_owner(None)
        if not self._conn.read("read the schema", self._has_feedback):
            return
        wanted, args = _wanted("r.status", statuses)
        yield from self._stream("export feedback", rows_sql(wanted), args, feedback_row)

    def _stream(
        self, what: str, sql: str, args: Sequence[str], row: Callable[[tuple[Any, ...]], _T]
    ) -> Iterator[_T]:
        cursor = self._conn.read(what, lambda: self._db.execute(sql, args))
        try:
            while True:
                rows = self._conn.read(what, lambda: cursor.fetchmany(1000))
                if not rows:
                    return
                yield from map(row, rows)
        finally:
            cursor.close()


def _wanted(column: str, statuses: Iterable[Status] | None) -> tuple[str, list[str]]:
    """The condition that ``column`` is one of ``statuses`` (None: any), and its arguments."""
    if statuses is None:
        return "1", []
    args = [str(s) for s in statuses]
    return f"{column} IN ({', '.join('?' * len(args))})", args


_STATUS: Final = {s.value: s for s in Status}


def plan_updates(
    records: Sequence[OutcomeRecord],
    rows: Mapping[int, Sequence[Any]],
    policy: RetryPolicy,
    rng: random.Random,
    skip: Callable[[Sequence[Any], Step], bool] | None = None,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[int]]:
    """Plan the updates of a run of distinct recipients' outcomes (pure, any backend).

    ``rows`` maps a recipient's id to its ``(id, status, attempts, first_attempt_at, ...)``
    row; an unknown or final recipient is left out. ``skip`` may leave out a planned step.
    Returns the rows whose last reply stays ``(status, first_attempt_at, next_attempt_at,
    updated_at, id)``, the rows with a new reply ``(status, attempts, first_attempt_at,
    last_attempt_at, next_attempt_at, in_doubt_added, code, enhanced_code, text, category,
    updated_at, id)``, and the ids of those that expired.
    """
    kept: list[tuple[Any, ...]] = []  # not an attempt: the last real reply stays
    replied: list[tuple[Any, ...]] = []
    expired: list[int] = []
    for rid, outcome, now in records:
        row = rows.get(rid)
        if row is None:
            continue  # unknown
        status = _STATUS[row[1]]
        if not status.waiting:
            continue  # a final recipient never changes again
        step = plan_step(
            outcome,
            status=status,
            attempts=row[2],
            first_attempt_at=row[3],
            now=now,
            policy=policy,
            rng=rng,
        )
        if skip is not None and skip(row, step):
            continue
        if step.keeps_reply:
            kept.append((step.status.value, step.first_attempt_at, step.next_attempt_at, now, rid))
        else:
            category = outcome.category
            replied.append(
                (
                    step.status.value,
                    step.attempts,
                    step.first_attempt_at,
                    now,
                    step.next_attempt_at,
                    step.in_doubt_added,
                    outcome.code,
                    outcome.enhanced_code,
                    outcome.text[:MAX_TEXT],
                    None if category is None else category.value,
                    now,
                    rid,
                )
            )
        if step.status is Status.EXPIRED:
            expired.append(rid)
    return kept, replied, expired


def _distinct_runs(records: Sequence[OutcomeRecord]) -> Iterator[Sequence[OutcomeRecord]]:
    """Split ``records`` where a recipient repeats: within a run each is read once, and a
    repeat sees the row its earlier outcome wrote (as one at a time would)."""
    seen: set[int] = set()
    start = 0
    for i, (rid, _, _) in enumerate(records):
        if rid in seen:
            yield records[start:i]
            seen.clear()
            start = i
        seen.add(rid)
    yield records[start:]
