"""A campaign's journal in PostgreSQL, shared by many workers (psycopg 3, synchronous).

How this works
==============

The same recipients table and state machine as the SQLite journal (:mod:`bulksend.journal`;
outcomes are planned by the same :func:`~bulksend.journal.store.plan_updates`), in one
PostgreSQL schema per campaign, ``bulksend_<campaign>`` (see
:mod:`~bulksend.journal.postgres_schema`): a campaign is dropped with its schema, its
indexes hold only its rows, and no query needs a campaign column. Every store opens one
connection (autocommit; each operation is one explicit transaction), used from one thread at
a time: the :class:`~bulksend.journal.writer.JournalWriter` calls it through
``trio.to_thread`` as it does the SQLite store.

Claims are leases. :meth:`PostgresJournal.fetch_due` picks due rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` and marks them claimed by this store's ``worker`` id
until ``now + lease`` (``lease_holder``, ``lease_expires_at``), so any number of workers
claim from one campaign at once and never get the same recipient. The lease (5 minutes by
default) is renewed for every row the worker holds whenever it fetches, asks for due domains
or applies outcomes and a third of the lease has passed since the last renewal, and by
:meth:`PostgresJournal.renew_leases`, which the :class:`~bulksend.journal.writer.JournalWriter`
calls when it has been idle for a third of the lease (a store with a ``lease`` is a
:class:`~bulksend.journal.protocol.LeasedStore`): a live run never loses its claims.

A lease that expires (its worker died or hung) makes the row due again at once as
``in_doubt``: the journal does not record whether DATA had started, so, exactly as the
SQLite journal's crash recovery does, every claimed row without an outcome may have been
sent and is counted in doubt. Expired leases are collected before each claim and each
due-domain count, and when a store opens; a worker reopened under its own ``worker`` id
takes its old claims back in doubt at once (a restart need not wait for the lease).
Different workers need different ids (the default is host, pid and a random part).

Outcomes are applied in one transaction per batch, as in SQLite. An outcome for a row that
another worker holds now (this worker's lease expired meanwhile) is applied only when it is
final (delivered, bounced, ...): a delivery must never be lost, but a retry must not take
another worker's claim away.

A lost database (a server restarted, a network cut) is waited for: every operation of a run
(claims, due domains, outcomes, lease renewals, suppression, the waiting checks) is one
transaction that :meth:`PostgresJournal._retried` runs again on a new connection, trying to
reconnect with backoff (0.2 s doubling to 5 s) for up to one lease, with one warning when the
database is lost and one when it is back, then a one-line :class:`JournalError`. Running a
transaction again is safe because a failed one rolled back as a whole; the one exception is a
connection lost *while committing*, when the commit may or may not have happened. A claim or
an apply (or a suppression) is therefore not trusted to be idempotent (a claim run twice
would lease other rows to nobody who knows them, renewed forever; an apply run twice would
count a deferral twice) but verified: it reads its own ``txid_current()`` first, and after
reconnecting ``txid_status`` says whether it committed; if it did, the rows it returned
before the commit are the result and it is not run again. Leases, expiry and the reads are
idempotent and simply run again. The import and the reports are not retried (they fail with
one line; an import resumes where it stopped). While the database is away the worker's
leases are not renewed: an outage longer than the lease hands its claims to the others (in
doubt), and its outcomes for them are still applied when final.

Import: ``COPY`` in batches of ``batch_size`` rows, one transaction each with the import
position, streamed row by row from the recipients iterator (memory stays flat); the indexes
are built after the last batch, duplicates keeping their first position. One worker imports
at a time (a session advisory lock); another waits and then finds the import complete.
Opening creates the schema under a transaction advisory lock, refuses another schema
version, and compares the campaign identity as the SQLite journal does.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql

from bulksend.config import RetryPolicy
from bulksend.errors import JournalError
from bulksend.journal.identity import _normalise_identity
from bulksend.journal.opening import Identity, compare_identity, new_campaign_id
from bulksend.journal.outcomes import WAITING, Outcome, Status, Step
from bulksend.journal.postgres_load import Cursor, copy_recipients, no_nul
from bulksend.journal.postgres_reports import PostgresReports
from bulksend.journal.postgres_schema import (
    DEFAULT_LEASE,
    FEEDBACK_TABLE,
    KEPT_SQL,
    PG_SCHEMA_VERSION,
    RELEASE_SET,
    REPLIED_SQL,
    TABLES,
    UPGRADE_1_TO_2,
    WAITING_IN,
    Location,
    NoJournal,
    parse_url,
    read_password,
)
from bulksend.journal.protocol import OutcomeRecord
from bulksend.journal.records import (
    Due,
    ImportStats,
    NewRecipient,
    _decode_data,
)
from bulksend.journal.store import _STATUS, StoreBase, _distinct_runs, plan_updates
from bulksend.text import first_line

__all__ = ["DEFAULT_LEASE", "PostgresJournal", "PostgresPeek"]


log = logging.getLogger("bulksend")
_T = TypeVar("_T")

#: Seconds between tries to reach a lost database: the first wait, and the longest.
_BACKOFF_FIRST: Final = 0.2
_BACKOFF_LAST: Final = 5.0


def connect(
    location: Location, *, application_name: str = "bulksend"
) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection (autocommit) to the database of a journal's ``location``."""
    return psycopg.connect(
        location.conninfo,
        autocommit=True,
        password=read_password(location),
        connect_timeout=10,
        application_name=application_name,
    )


class PostgresJournal(PostgresReports, StoreBase):
    """The durable recipient queue of one campaign in PostgreSQL (synchronous core).

    Open with :meth:`open`; it implements :class:`~bulksend.journal.protocol.JournalStore`.
    """

    def __init__(
        self,
        location: Location,
        db: psycopg.Connection[tuple[Any, ...]],
        *,
        policy: RetryPolicy,
        rng: random.Random,
        worker: str,
        lease: float,
    ) -> None:
        self.location = location
        self._db = db
        self.policy = policy
        self._rng = rng
        self.worker = worker
        self.lease = lease
        self._owner: object = None
        self._renewed_at = -float("inf")
        self.campaign_id = ""
        self.identity: dict[str, str] = {}
        self.recovered_in_doubt = 0
        self.forced = False
        self.changes: dict[str, str] = {}
        self._import_done = False

    @property
    def path(self) -> str:
        """Where the journal is, for messages (the URL, which holds no password)."""
        return str(self.location)

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        identity: Identity | None,
        *,
        force: bool = False,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        now: float | None = None,
        worker: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> PostgresJournal:
        """Open (resume) or create the campaign's journal at ``url``.

        Args:
            identity: the campaign identity; ``None`` opens an existing journal (reports).
            worker: this store's lease holder id (default: host, pid and a random part).
            lease: seconds a claim is held without renewal.

        Raises:
            JournalError: a password in the URL, the server unreachable, another schema
                version, a changed campaign (unless ``force``), or a database error.
        """
        location = parse_url(url)
        try:
            db = connect(location)
        except psycopg.Error as e:
            raise JournalError(
                f"cannot connect to the PostgreSQL journal {location}: {first_line(e)}"
            ) from None
        journal = cls(
            location,
            db,
            policy=policy or RetryPolicy(),
            rng=rng or random.Random(),
            worker=worker or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
            lease=lease,
        )
        try:
            journal._set_up(identity, force=force, now=time.time() if now is None else now)
        except BaseException:
            journal.close()
            raise
        return journal

    @contextmanager
    def _tx(self, what: str) -> Iterator[Cursor]:
        """One transaction; a database error becomes a one-line :class:`JournalError`.

        Not retried (an import, a report: run it again); a connection lost before, by a
        retried operation or while idle, is opened again first (once, no waiting).
        """
        try:
            if self._db.broken:
                self._reopen()
            with self._db.transaction(), self._db.cursor() as cur:
                yield cur
        except psycopg.Error as e:
            raise JournalError(f"{self.location}: cannot {what}: {first_line(e)}") from None

    def _retried(self, what: str, body: Callable[[Cursor], _T], *, verify: bool = False) -> _T:
        """``body`` in one transaction, run again when the connection is lost meanwhile.

        A transaction that failed with its connection rolled back as a whole, so running it
        again is safe, except when the connection was lost while it committed: then, with
        ``verify``, its transaction id (read inside it) tells whether it committed, and a
        committed one's result is returned rather than done twice. The database is tried
        again with backoff for up to :attr:`lease` seconds (the time this worker's claims
        are held for), with one warning when it is lost and one when it is back; then a
        one-line :class:`JournalError`. Any other database error is a :class:`JournalError`
        at once.
        """
        lost_at: float | None = None
        while True:
            xid: int | None = None
            done = False
            result: _T | None = None
            try:
                if self._db.broken:
                    raise psycopg.OperationalError("the connection was lost")
                with self._db.transaction(), self._db.cursor() as cur:
                    if verify:
                        cur.execute("SELECT txid_current()")
                        xid = int(_one(cur)[0])
                    result = body(cur)
                    done = True
                if lost_at is not None:
                    log.warning(
                        "the PostgreSQL journal %s is back (after %.1f s)",
                        self.location,
                        time.monotonic() - lost_at,
                    )
                return result
            except psycopg.Error as e:
                if not self._db.broken:
                    raise JournalError(f"{self.location}: cannot {what}: {first_line(e)}") from None
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning(
                        "lost the PostgreSQL journal %s (%s); trying again for up to %.0f s",
                        self.location,
                        first_line(e),
                        self.lease,
                    )
            self._reconnect(what, lost_at)
            if done and xid is not None and self._committed(xid, what, lost_at):
                log.warning(
                    "the PostgreSQL journal %s is back (after %.1f s)",
                    self.location,
                    time.monotonic() - lost_at,
                )
                return result  # type: ignore[return-value]  # (done: body returned it)

    def _reopen(self) -> None:
        """A new connection in place of a lost one, with the journal's ``search_path``."""
        self._db.close()
        self._db = connect(self.location)
        self._db.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(self.location.schema))
        )

    def _reconnect(self, what: str, lost_at: float) -> None:
        """Open a new connection, waiting with backoff until ``lost_at + lease``."""
        delay = _BACKOFF_FIRST
        while True:
            try:
                self._reopen()
                return
            except psycopg.Error as e:
                left = lost_at + self.lease - time.monotonic()
                if left <= 0:
                    raise JournalError(
                        f"{self.location}: cannot {what}: the database was lost and did not "
                        f"come back within {self.lease:.0f} s ({first_line(e)})"
                    ) from None
                time.sleep(min(left, delay * self._rng.uniform(0.5, 1.0)))
                delay = min(delay * 2, _BACKOFF_LAST)

    def _committed(self, xid: int, what: str, lost_at: float) -> bool:
        """Whether transaction ``xid``, whose connection was lost, committed."""
        while True:
            try:
                status = self._db.execute("SELECT txid_status(%s)", (xid,)).fetchone()
            except psycopg.Error:
                if not self._db.broken:
                    raise
                self._reconnect(what, lost_at)
                continue
            state = None if status is None else status[0]
            if state != "in progress":  # (its server session has not ended yet)
                break
            if time.monotonic() > lost_at + self.lease:
                state = None
                break
            time.sleep(_BACKOFF_FIRST)
        if state is None:
            raise JournalError(
                f"{self.location}: cannot {what}: the connection was lost while it "
                "committed, and the database cannot tell whether it did"
            )
        return bool(state == "committed")

    def _set_up(self, identity: Identity | None, *, force: bool, now: float) -> None:
        schema = sql.Identifier(self.location.schema)
        with self._tx("create the journal") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.location.schema,))
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self.location.schema}.meta",))
            fresh = not _one(cur)[0]
            if fresh and identity is None:
                raise NoJournal(f"there is no journal at {self.location}")
            if fresh:  # (a reader needs no CREATE privilege)
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            cur.execute(sql.SQL("SET search_path TO {}").format(schema))
            if fresh:
                assert identity is not None
                self.identity = _normalise_identity(identity)
                self.campaign_id = new_campaign_id(self.identity, now)
                for statement in TABLES:
                    cur.execute(statement)
                cur.executemany(
                    "INSERT INTO meta VALUES (%s, %s)",
                    [
                        ("schema_version", str(PG_SCHEMA_VERSION)),
                        ("identity", json.dumps(self.identity, sort_keys=True)),
                        ("campaign_id", self.campaign_id),
                        ("created_at", repr(now)),
                        ("import_position", "0"),
                        ("import_complete", "0"),
                    ],
                )
            if identity is not None:
                cur.execute(FEEDBACK_TABLE)
            meta = self._meta(cur)
            if meta.get("schema_version") == "1" and identity is not None:  # a run: upgrade
                for statement in UPGRADE_1_TO_2:
                    cur.execute(statement)
                meta["schema_version"] = "2"
        # The session's search_path stays (SET, not SET LOCAL, survives the commit).
        if meta.get("schema_version") != str(PG_SCHEMA_VERSION):
            raise JournalError(
                f"{self.location} has schema version {meta.get('schema_version')}; this "
                f"bulksend reads version {PG_SCHEMA_VERSION}. Use the bulksend version that "
                "wrote it."
            )
        self.campaign_id = meta["campaign_id"]
        self._import_done = meta["import_complete"] == "1"
        if not fresh:
            stored = json.loads(meta["identity"])
            checked = compare_identity(str(self.location), stored, identity, force=force)
            self.identity, self.changes, self.forced = (
                checked.identity,
                checked.changes,
                checked.forced,
            )
            if checked.identity is not stored:
                with self._tx("record a changed campaign") as cur:
                    cur.execute(
                        "UPDATE meta SET value = %s WHERE key = 'identity'",
                        (json.dumps(checked.identity, sort_keys=True),),
                    )
                    if checked.forced:
                        cur.execute(
                            "INSERT INTO meta VALUES ('forced_at', %s) ON CONFLICT (key)"
                            " DO UPDATE SET value = excluded.value",
                            (repr(now),),
                        )
        if identity is not None:
            # Our own claims from before (a worker restarted under its id) and expired ones.
            with self._tx("recover claimed recipients") as cur:
                self.recovered_in_doubt = self._expire(cur, now, own=True)

    @staticmethod
    def _meta(cur: Cursor) -> dict[str, str]:
        cur.execute("SELECT key, value FROM meta")
        return {str(k): str(v) for k, v in cur.fetchall()}

    def discard(self) -> None:
        """Drop the campaign's schema and close (a run that imported nothing to send)."""
        with self._tx("drop the journal") as cur:
            cur.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.location.schema))
            )
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent); leases it holds expire in their time."""
        self._db.close()

    @property
    def where(self) -> str:
        return f"journal {self.location}"

    def _import(
        self,
        recipients: Iterable[NewRecipient | str],
        now: float,
        batch_size: int,
        not_imported: Mapping[str, int] | None,
    ) -> ImportStats:
        """``COPY`` in batches (:mod:`~bulksend.journal.postgres_load`), one worker at a time."""
        with self._advisory_lock(f"{self.location.schema} import"):
            with self._tx("read meta") as cur:
                meta = self._meta(cur)
            if meta["import_complete"] == "1":  # another worker imported meanwhile
                return ImportStats(0, 0, 0)
            return copy_recipients(
                self._tx,
                recipients,
                position=int(meta["import_position"]),
                now=now,
                batch_size=batch_size,
                not_imported=not_imported,
            )

    @contextmanager
    def _advisory_lock(self, name: str) -> Iterator[None]:
        """Hold PostgreSQL's session advisory lock ``name`` (waiting for it)."""
        with self._tx("lock " + name) as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (name,))
        try:
            yield
        finally:
            with self._tx("unlock " + name) as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))

    # --- leases ----------------------------------------------------------------------------

    def _expire(self, cur: Cursor, now: float, *, own: bool = False) -> int:
        """Make rows whose lease expired (and, with ``own``, this worker's) due as in doubt."""
        which = "lease_expires_at <= %(now)s" + (" OR lease_holder = %(own)s" if own else "")
        cur.execute(
            f"UPDATE recipients SET status = 'in_doubt', in_doubt = in_doubt + 1, {RELEASE_SET},"  # noqa: S608
            " next_attempt_at = %(now)s, updated_at = %(now)s WHERE id IN (SELECT id FROM"
            f" recipients WHERE {which} FOR UPDATE SKIP LOCKED)",
            {"now": now, "own": self.worker},
        )
        return cur.rowcount

    def _renew(self, cur: Cursor, now: float) -> None:
        if now - self._renewed_at >= self.lease / 3:
            self._renew_now(cur, now)

    def _renew_now(self, cur: Cursor, now: float) -> int:
        cur.execute(
            "UPDATE recipients SET lease_expires_at = %s WHERE lease_holder = %s",
            (now + self.lease, self.worker),
        )
        self._renewed_at = now
        return cur.rowcount

    def renew_leases(self, *, now: float | None = None, owner: object = None) -> int:
        """Extend this worker's leases to ``now + lease``; returns how many it holds."""
        self._check_owner(owner)
        at = time.time() if now is None else now
        return self._retried("renew leases", lambda cur: self._renew_now(cur, at))

    # --- a run's claims and outcomes (JournalStore) ----------------------------------------

    def fetch_due(
        self, domain: str, limit: int, *, now: float | None = None, owner: object = None
    ) -> list[Due]:
        """Lease up to ``limit`` recipients of ``domain`` due at ``now`` (in-doubt first)."""
        self._check_owner(owner)
        self._check_imported()
        now = time.time() if now is None else now

        def claim(cur: Cursor) -> list[tuple[Any, ...]]:
            found: list[tuple[Any, ...]] = []
            # Durable at once (synchronous_commit stays on): a claim lost to a server crash
            # would let another worker send a recipient this one may be sending, uncounted.
            # SQLite's claims skip the fsync because a killed process keeps its WAL writes;
            # PostgreSQL with synchronous_commit = off may not have written them at all.
            self._renew(cur, now)
            self._expire(cur, now)
            for status in WAITING[::-1]:  # in doubt first
                if len(found) >= limit:
                    break
                cur.execute(
                    "WITH picked AS (SELECT id, next_attempt_at FROM recipients"
                    " WHERE status = %(status)s AND domain = %(domain)s"
                    " AND next_attempt_at <= %(now)s ORDER BY next_attempt_at, id"
                    " LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                    " UPDATE recipients r SET claimed_at = %(now)s, next_attempt_at = NULL,"
                    " lease_holder = %(worker)s, lease_expires_at = %(until)s FROM picked"
                    " WHERE r.id = picked.id RETURNING picked.next_attempt_at, r.id,"
                    " r.address, r.domain, r.data, r.status, r.attempts, r.in_doubt",
                    {
                        "status": str(status),
                        "domain": domain.lower(),
                        "now": now,
                        "limit": limit - len(found),
                        "worker": self.worker,
                        "until": now + self.lease,
                    },
                )
                found += sorted(cur.fetchall())
            return found

        found = self._retried("claim due recipients", claim, verify=True)
        data = _decode_data
        return [
            Due(rid, address, dom, None if d is None else data(d), _STATUS[st], tries, doubt)
            for _, rid, address, dom, d, st, tries, doubt in found
        ]

    def due_domains(self, *, now: float | None = None, owner: object = None) -> dict[str, int]:
        """Domains with recipients due at ``now`` (expired leases included), with counts."""
        self._check_owner(owner)
        self._check_imported()
        at = time.time() if now is None else now

        def due(cur: Cursor) -> dict[str, int]:
            self._renew(cur, at)
            self._expire(cur, at)
            cur.execute(
                f"SELECT domain, count(*) FROM recipients WHERE {WAITING_IN}"  # noqa: S608
                " AND next_attempt_at <= %s GROUP BY domain",
                (at,),
            )
            return {str(d): int(n) for d, n in cur.fetchall()}

        return self._retried("list due domains", due)

    def next_due_at(self, *, owner: object = None) -> float | None:
        """The earliest time any unclaimed waiting recipient, or any lease, is due."""
        self._check_owner(owner)

        def first(cur: Cursor) -> Any:
            cur.execute(
                "SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM recipients"  # noqa: S608
                f" WHERE {WAITING_IN} UNION ALL SELECT min(lease_expires_at) FROM recipients"
                " WHERE lease_holder <> %s) AS due",
                (self.worker,),
            )
            return _one(cur)[0]

        at = self._retried("find the next due time", first)
        return None if at is None else float(at)

    def waiting(self, *, owner: object = None) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""
        self._check_owner(owner)

        def any_waiting(cur: Cursor) -> bool:
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM recipients WHERE {WAITING_IN})")  # noqa: S608
            return bool(_one(cur)[0])

        return self._retried("look for waiting recipients", any_waiting)

    def update_warmup(
        self, source: str, change: Callable[[str | None], str], *, owner: object = None
    ) -> str:
        """Replace one egress source's warm-up state (JSON) by ``change(saved)``, atomically
        across the workers sharing the journal (the row is locked meanwhile); returns it."""
        self._check_owner(owner)
        key = f"warmup:{source}"

        def update(cur: Cursor) -> str:
            # The row exists before it is locked: two first takers wait on one lock.
            cur.execute("INSERT INTO meta VALUES (%s, '') ON CONFLICT (key) DO NOTHING", (key,))
            cur.execute("SELECT value FROM meta WHERE key = %s FOR UPDATE", (key,))
            state = change(str(_one(cur)[0]) or None)
            cur.execute("UPDATE meta SET value = %s WHERE key = %s", (state, key))
            return state

        return self._retried("update a warm-up state", update)

    def suppress_waiting(
        self,
        suppressed: Callable[[str], bool],
        *,
        now: float | None = None,
        owner: object = None,
    ) -> int:
        """Mark every unclaimed waiting recipient whose address is ``suppressed``."""
        self._check_owner(owner)
        self._check_imported()
        at = time.time() if now is None else now

        def read(cur: Cursor) -> list[int]:
            with cur.connection.cursor(name="waiting") as named:
                named.execute(
                    f"SELECT id, address FROM recipients WHERE {WAITING_IN}"  # noqa: S608
                    " AND claimed_at IS NULL"
                )
                return [rid for rid, address in named if suppressed(address)]

        def mark(cur: Cursor) -> int:
            cur.execute(
                "UPDATE recipients SET status = 'suppressed', next_attempt_at = NULL,"  # noqa: S608
                f" updated_at = %s WHERE id = ANY(%s) AND claimed_at IS NULL AND {WAITING_IN}",
                (at, ids),
            )
            return cur.rowcount

        ids = self._retried("read waiting recipients", read)
        return self._retried("mark suppressed recipients", mark, verify=True) if ids else 0

    def record(self, recipient_id: int, outcome: Outcome, *, now: float | None = None) -> bool:
        """Record one outcome and commit it (outside a run); whether it applied."""
        now = time.time() if now is None else now
        return self.apply([(recipient_id, outcome, now)])[0] == 1

    def retry_unrendered(self, *, now: float | None = None) -> int:
        """Make every ``not_rendered`` recipient pending again, due at ``now``."""
        self._check_owner(None)
        at = time.time() if now is None else now
        with self._tx("requeue recipients not rendered") as cur:
            cur.execute(
                "UPDATE recipients SET status = 'pending', next_attempt_at = %s,"
                " updated_at = %s WHERE status = 'not_rendered'",
                (at, at),
            )
            return cur.rowcount

    def apply(
        self,
        records: Sequence[OutcomeRecord],
        *,
        owner: object = None,
        expired: list[int] | None = None,
    ) -> tuple[int, int]:
        """Apply outcomes in one transaction; returns how many applied, and expired (their
        ids are appended to ``expired``, if given)."""
        self._check_owner(owner)

        def record(cur: Cursor) -> tuple[int, list[int]]:
            applied, ended = 0, list[int]()
            if records:
                self._renew(cur, max(at for _, _, at in records))
            for part in _distinct_runs(records):
                a, e = self._apply_run(cur, part)
                applied += a
                ended += e
            return applied, ended

        applied, ended = self._retried("record outcomes", record, verify=True)
        if expired is not None:
            expired += ended
        return applied, len(ended)

    def _apply_run(self, cur: Cursor, records: Sequence[OutcomeRecord]) -> tuple[int, list[int]]:
        cur.execute(
            "SELECT id, status, attempts, first_attempt_at, lease_holder FROM recipients"
            " WHERE id = ANY(%s) FOR UPDATE",
            ([rid for rid, _, _ in records],),
        )
        rows = {r[0]: r for r in cur.fetchall()}
        worker = self.worker

        def taken(row: Sequence[Any], step: Step) -> bool:
            # Another worker's lease now: only a final outcome may take it over.
            return row[4] not in (None, worker) and step.status.waiting

        kept, replied, expired = plan_updates(records, rows, self.policy, self._rng, taken)
        # One statement per kind of update, the rows as arrays (unnest): set-based, as the
        # SQLite store's executemany runs without a round trip per row.
        if kept:
            cur.execute(KEPT_SQL, _columns(kept))
        if replied:
            columns = _columns(replied)
            columns[8] = [no_nul(t) for t in columns[8]]  # a remote reply's text
            cur.execute(REPLIED_SQL, columns)
        return len(kept) + len(replied), expired


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _one(cur: Cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return row


class PostgresPeek:
    """:class:`~bulksend.journal.reports.JournalPeek`'s look, into a PostgreSQL journal: a
    reader connection of its own, which sees what the running workers committed."""

    def __init__(self, url: str) -> None:
        self._journal = PostgresJournal.open(url, None)
        self.path = self._journal.path

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""
        return self._journal.counts()

    def import_complete(self) -> bool:
        """Whether the recipients import finished."""
        return self._journal.import_finished()

    def waiting_by_domain(self) -> dict[str, int]:
        """Recipients still waiting (pending or in doubt) per domain."""
        return self._journal.waiting_by_domain()

    def close(self) -> None:
        self._journal.close()

    def __enter__(self) -> PostgresPeek:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
