"""The suppression store in PostgreSQL: the SQLite store's rows, shared by every worker and
machine of a sender (``[suppression] store = "postgresql://user@host/db"``).

How this works. The tables live in the schema ``bulksend_suppression`` of the database the
URL names (created on first use, under an advisory lock so that workers starting together do
not race): ``suppressions`` and ``soft_bounces`` as in the SQLite store, and ``changes``, one
row counting the transactions that changed the suppressions. Every such transaction first
increments that row, which also orders the writers (an event merges into the row it read,
never into a stale copy). :meth:`PostgresSuppressionStore.version` is that count less this
connection's own changes: like SQLite's ``PRAGMA data_version``, it moves only when another
connection wrote, so a run reloads its view for ``bulksend suppress``, ``inbound`` and
``unsubscribe-server``, not for its own inline bounces. The URL follows the journal's rule:
no password in it (``password_file=PATH``, ``PGPASSFILE`` or ``PGPASSWORD``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Final

import psycopg

from bulksend.errors import SuppressionError
from bulksend.store_urls import read_password_file, split_store_url, without_query
from bulksend.suppression.store import (
    _ACTIVE,
    _BATCH,
    _COLUMNS,
    Entry,
    StoreBase,
    _entry,
    clean_detail,
)
from bulksend.text import first_line

__all__ = ["PostgresSuppressionStore"]

SCHEMA: Final = "bulksend_suppression"
_SET_UP: Final = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"SET search_path TO {SCHEMA}",
    """CREATE TABLE IF NOT EXISTS suppressions (
    key text COLLATE "C" PRIMARY KEY,
    reason text NOT NULL,
    source text NOT NULL,
    first_at double precision NOT NULL,
    last_at double precision NOT NULL,
    count integer NOT NULL,
    expires_at double precision,
    detail text NOT NULL DEFAULT ''
)""",
    "CREATE TABLE IF NOT EXISTS soft_bounces (key text NOT NULL, at double precision NOT NULL)",
    "CREATE INDEX IF NOT EXISTS soft_bounces_key ON soft_bounces (key, at)",
    "CREATE TABLE IF NOT EXISTS changes (n bigint NOT NULL)",
    "INSERT INTO changes SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM changes)",
)
_UPSERT: Final = f"""INSERT INTO suppressions ({_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, source = excluded.source,
    first_at = excluded.first_at, last_at = excluded.last_at, count = excluded.count,
    expires_at = excluded.expires_at, detail = excluded.detail"""  # noqa: S608


class PostgresSuppressionStore(StoreBase):
    """The suppression store in PostgreSQL; safe to share between threads.

    Every method raises :class:`~bulksend.errors.SuppressionError` when the database fails.
    """

    def __init__(self, url: str) -> None:
        try:
            _parts, _query, password_file = split_store_url(url)
        except ValueError:
            raise SuppressionError(
                "a PostgreSQL suppression store URL must not hold a password (it would show "
                "in process lists and logs): use password_file=PATH, PGPASSFILE or PGPASSWORD"
            ) from None
        conninfo = without_query(url, "password_file")
        self.path = conninfo
        self._lock = threading.Lock()
        self._own = 0
        try:
            password = None if password_file is None else read_password_file(password_file)
        except OSError as e:
            raise SuppressionError(
                f"cannot read the PostgreSQL password file {str(password_file)!r}: {e.strerror}"
            ) from None
        try:
            self._db = psycopg.connect(
                conninfo,
                autocommit=True,
                password=password,
                connect_timeout=10,
                application_name="bulksend",
            )
        except psycopg.Error as e:
            raise SuppressionError(
                f"cannot connect to the suppression store {conninfo}: {first_line(e)}"
            ) from None
        try:
            with self._tx("set up") as cur:
                # Set up once: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even
                # when the schema is there, which a worker's role need not have.
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.changes",))
                ready = cur.fetchone()
                if ready is not None and ready[0]:
                    cur.execute(f"SET search_path TO {SCHEMA}")
                else:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA,))
                    for statement in _SET_UP:
                        cur.execute(statement)
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _tx(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction; a database error becomes a one-line SuppressionError."""
        with self._lock:
            try:
                with self._db.transaction(), self._db.cursor() as cur:
                    yield cur
            except psycopg.Error as e:
                raise SuppressionError(
                    f"{self.path}: suppression store failed to {what} ({first_line(e)})"
                ) from None

    def _changing(self, cur: psycopg.Cursor[Any]) -> None:
        """Count (and order) a transaction that changes the suppressions."""
        cur.execute("UPDATE changes SET n = n + 1")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # --- writes -----------------------------------------------------------------------------

    def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        stored: list[Entry] = []
        with self._tx("record") as cur:
            self._changing(cur)
            for new in entries:
                entry = replace(new, detail=clean_detail(new.detail))
                cur.execute(
                    f"SELECT {_COLUMNS} FROM suppressions WHERE key = %s",  # noqa: S608
                    (entry.key,),
                )
                row = cur.fetchone()
                if row is not None:
                    entry = _entry(row).merged(entry)
                cur.execute(_UPSERT, entry.row())
                stored.append(entry)
        self._own += 1
        return stored

    def remove(self, key: str) -> bool:
        """Lift the suppression of ``key`` (and forget its soft bounces); False if none."""
        with self._tx("remove") as cur:
            self._changing(cur)
            cur.execute("DELETE FROM suppressions WHERE key = %s", (key,))
            removed = cur.rowcount > 0
            cur.execute("DELETE FROM soft_bounces WHERE key = %s", (key,))
        self._own += 1
        return removed

    def soft_bounces(self, key: str, *, now: float, window: float) -> int:
        """Record a soft bounce of ``key``; return how many fall within ``window`` seconds."""
        with self._tx("count a soft bounce") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
            cur.execute("DELETE FROM soft_bounces WHERE key = %s AND at <= %s", (key, now - window))
            cur.execute("INSERT INTO soft_bounces (key, at) VALUES (%s, %s)", (key, now))
            cur.execute("SELECT count(*) FROM soft_bounces WHERE key = %s", (key,))
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    # --- reads ------------------------------------------------------------------------------

    def version(self) -> int:
        """Changes whenever another connection commits a change to the suppressions."""
        with self._tx("read its version") as cur:
            cur.execute("SELECT n FROM changes")
            row = cur.fetchone()
        return (0 if row is None else int(row[0])) - self._own

    def get(self, key: str) -> Entry | None:
        with self._tx("read") as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM suppressions WHERE key = %s",  # noqa: S608
                (key,),
            )
            row = cur.fetchone()
        return None if row is None else _entry(row)

    def _page(self, after: str, now: float | None) -> list[Entry]:
        query = f"SELECT {_COLUMNS} FROM suppressions WHERE key > %s"  # noqa: S608
        args: tuple[object, ...] = (after,)
        if now is not None:
            query += " AND " + _ACTIVE.replace("?", "%s")
            args += (now,)
        with self._tx("read") as cur:
            cur.execute(f"{query} ORDER BY key LIMIT {_BATCH}", args)
            rows = cur.fetchall()
        return [_entry(row) for row in rows]
