"""The persistent suppression store (SQLite) and the view of it a run consults.

How this works. One SQLite file (mode 0600: it holds addresses) in WAL mode, shared by every
campaign of a sender and by ``bulksend suppress`` and ``bulksend inbound`` at the same time
(a busy timeout lets writers queue). A row's key is either an address, normalised exactly as
the recipients reader's de-duplication and suppression list normalise it
(:func:`~bulksend.campaign.recipients.normalise_address`: case-folded, domain in A-labels),
or a bare domain (no ``@``), which suppresses every address at it. A row keeps the reason,
the source that first or last set it, when it was first and last seen, how many times, when
it expires (never, for most reasons) and a short detail (the bounce text).

When an event arrives for a key that is already suppressed, the row is merged: the count
grows, the times widen, and the new reason (with its expiry) replaces the old one unless
that would shorten a suppression that never expires (a soft bounce after a complaint leaves
the complaint). Soft bounces are kept as dated events until enough of them fall within the
window (:mod:`bulksend.suppression.rules`).

A run does not query SQLite per recipient: :class:`StoreSuppression` holds the active keys
as 64-bit fingerprints (the reader's :class:`~bulksend.campaign.recipients.FingerprintSet`)
and reloads them when ``PRAGMA data_version`` says another connection wrote (``bulksend
suppress``, ``bulksend inbound``, another campaign), which is one cheap query, so it can be
asked every few seconds like the suppression file's ``stat``.
"""

from __future__ import annotations

import enum
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self

from bulksend.campaign.recipients import FingerprintSet, normalise_address
from bulksend.config import SuppressionReason
from bulksend.errors import SuppressionError
from bulksend.files import private_fd
from bulksend.shared_sqlite import set_up
from bulksend.text import CONTROL, storable

if TYPE_CHECKING:
    from bulksend.suppression.backend import AnyStore

__all__ = [
    "Entry",
    "Source",
    "StoreSuppression",
    "SuppressionStore",
    "Suppressions",
    "Watched",
    "normalise_key",
]

_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS suppressions (
    key TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    count INTEGER NOT NULL,
    expires_at REAL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS soft_bounces (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS soft_bounces_key ON soft_bounces (key, at);
"""
_COLUMNS: Final = "key, reason, source, first_at, last_at, count, expires_at, detail"
_ACTIVE: Final = "(expires_at IS NULL OR expires_at > ?)"
_DETAIL_LIMIT: Final = 500
_BATCH: Final = 1000


class Source(enum.StrEnum):
    """Where a suppression came from."""

    CAMPAIGN = "campaign"  # an inline bounce during a run
    DSN = "dsn"  # an asynchronous bounce (RFC 3464)
    ARF = "arf"  # a complaint report (RFC 5965)
    HTTP = "http"  # the one-click unsubscribe endpoint (RFC 8058)
    MAILTO = "mailto"  # mail to the List-Unsubscribe mailto address (RFC 2369)
    CLI = "cli"  # bulksend suppress add / import


def normalise_key(text: str) -> str:
    """The store key of an address (as the recipients reader normalises it) or of a domain.

    ``"John@Example.COM"`` -> ``"john@example.com"``; ``"Example.com"`` or ``"@example.com"``
    -> ``"example.com"`` (a whole domain).

    Raises:
        ValueError: empty, or an address without a local part or a domain.
    """
    text = text.strip().removeprefix("@")
    if "@" in text:
        key = normalise_address(text)
    else:
        key = normalise_address(f"x@{text}").rpartition("@")[2]
    local, at, domain = key.rpartition("@")
    if not domain or (at and not local) or any(c.isspace() for c in key) or CONTROL.search(key):
        raise ValueError(f"{text!r} is neither an address nor a domain")
    return key if at else key.rstrip(".")


@dataclass(frozen=True, slots=True)
class Entry:
    """One suppressed address or domain."""

    key: str
    reason: SuppressionReason
    source: Source
    first_at: float
    last_at: float
    count: int = 1
    expires_at: float | None = None  # None: never
    detail: str = ""

    def row(self) -> tuple[str, str, str, float, float, int, float | None, str]:
        """The columns of :data:`_COLUMNS`, in order, as a store writes them."""
        return (
            self.key,
            self.reason.value,
            self.source.value,
            self.first_at,
            self.last_at,
            self.count,
            self.expires_at,
            self.detail,
        )

    @property
    def is_domain(self) -> bool:
        """True when the key is a whole domain."""
        return "@" not in self.key

    def active(self, now: float) -> bool:
        """Whether the suppression holds at ``now`` (it has not expired)."""
        return self.expires_at is None or self.expires_at > now

    def merged(self, new: Entry) -> Entry:
        """This row after ``new`` arrives for the same key (see the module's comment)."""
        keep_old = self.expires_at is None and new.expires_at is not None
        latest, other = (self, new) if keep_old else (new, self)
        return Entry(
            key=self.key,
            reason=latest.reason,
            source=latest.source,
            first_at=min(self.first_at, new.first_at),
            last_at=max(self.last_at, new.last_at),
            count=self.count + new.count,
            expires_at=latest.expires_at,
            detail=latest.detail or other.detail,
        )


def _entry(row: tuple[str, str, str, float, float, int, float | None, str]) -> Entry:
    key, reason, source, first_at, last_at, count, expires_at, detail = row
    return Entry(
        key, SuppressionReason(reason), Source(source), first_at, last_at, count, expires_at, detail
    )


def clean_detail(detail: str) -> str:
    """Remote text as a store keeps it (:func:`~bulksend.text.storable`, 500 characters)."""
    return storable(detail, _DETAIL_LIMIT)


class StoreBase:
    """What both stores (SQLite, PostgreSQL) share: the queries built on their primitives."""

    path: Path | str

    def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        """Record events (or imported rows) in one transaction; return the rows as stored."""
        raise NotImplementedError

    def get(self, key: str) -> Entry | None:
        """The row of ``key`` (active or expired), or None."""
        raise NotImplementedError

    def _page(self, after: str, now: float | None) -> list[Entry]:
        """Up to ``_BATCH`` rows with a key after ``after``, in key order (active at ``now``)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(
        self,
        key: str,
        reason: SuppressionReason,
        source: Source,
        *,
        now: float,
        expires_at: float | None = None,
        detail: str = "",
    ) -> Entry:
        """Record one event for ``key`` (already normalised: :func:`normalise_key`)."""
        (stored,) = self.merge([Entry(key, reason, source, now, now, 1, expires_at, detail)])
        return stored

    def check(self, address: str, *, now: float | None = None) -> Entry | None:
        """The active suppression of an address: its own row, else its domain's; or None."""
        key = normalise_address(address)
        at = time.time() if now is None else now
        for candidate in (key, key.rpartition("@")[2]):
            entry = self.get(candidate)
            if entry is not None and entry.active(at):
                return entry
        return None

    def entries(self, *, now: float | None = None) -> Iterator[Entry]:
        """Every row in key order; with ``now``, only those active then."""
        last = ""
        while True:
            page = self._page(last, now)
            if not page:
                return
            yield from page
            last = page[-1].key


class SuppressionStore(StoreBase):
    """The suppression store in one SQLite file; safe to share between threads.

    Open with :meth:`open`; close with :meth:`close` or use as a context manager. Every
    method raises :class:`~bulksend.errors.SuppressionError` when SQLite fails.
    """

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> SuppressionStore:
        """Open the store, creating the file (mode 0600) and its tables if needed.

        Raises:
            SuppressionError: the file cannot be created or is not a suppression store.
        """
        try:
            os.close(private_fd(path, os.O_RDWR))
        except OSError as exc:
            raise SuppressionError(
                f"{path}: cannot create the suppression store ({exc.strerror})"
            ) from None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SuppressionError(f"{path}: cannot open the suppression store ({exc})") from None
        store = cls(path, db)

        def schema() -> None:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise SuppressionError(
                    f"{path}: written by a newer bulksend (schema {version}); upgrade"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

        try:
            with store._lock:
                set_up(db, schema)
        except sqlite3.Error as exc:
            db.close()
            raise SuppressionError(f"{path}: not a usable suppression store ({exc})") from None
        except BaseException:
            db.close()
            raise
        return store

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _fail(self, exc: sqlite3.Error) -> SuppressionError:
        return SuppressionError(f"{self.path}: suppression store failed ({exc})")

    # --- writes -----------------------------------------------------------------------------

    def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        """Record events (or imported rows) in one transaction; return the rows as stored."""
        stored: list[Entry] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for entry in entries:
                        stored.append(self._merge_one(entry))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return stored

    def _merge_one(self, entry: Entry) -> Entry:
        entry = replace(entry, detail=clean_detail(entry.detail))
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM suppressions WHERE key = ?",  # noqa: S608
            (entry.key,),
        ).fetchone()
        if row is not None:
            entry = _entry(row).merged(entry)
        self._db.execute(
            f"INSERT OR REPLACE INTO suppressions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            entry.row(),
        )
        return entry

    def remove(self, key: str) -> bool:
        """Lift the suppression of ``key`` (and forget its soft bounces); False if none."""
        with self._lock:
            try:
                cursor = self._db.execute("DELETE FROM suppressions WHERE key = ?", (key,))
                self._db.execute("DELETE FROM soft_bounces WHERE key = ?", (key,))
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
            return cursor.rowcount > 0

    def soft_bounces(self, key: str, *, now: float, window: float) -> int:
        """Record a soft bounce of ``key``; return how many fall within ``window`` seconds.

        Older events are forgotten.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "DELETE FROM soft_bounces WHERE key = ? AND at <= ?", (key, now - window)
                )
                self._db.execute("INSERT INTO soft_bounces (key, at) VALUES (?, ?)", (key, now))
                (count,) = self._db.execute(
                    "SELECT count(*) FROM soft_bounces WHERE key = ?", (key,)
                ).fetchone()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise self._fail(exc) from None
            return int(count)

    # --- reads ------------------------------------------------------------------------------

    def version(self) -> int:
        """Changes whenever another connection (a process) commits a change to the store."""
        with self._lock:
            try:
                (data_version,) = self._db.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
            return int(data_version)

    def get(self, key: str) -> Entry | None:
        """The row of ``key`` (active or expired), or None."""
        with self._lock:
            try:
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM suppressions WHERE key = ?",  # noqa: S608
                    (key,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return None if row is None else _entry(row)

    def _page(self, after: str, now: float | None) -> list[Entry]:
        query = f"SELECT {_COLUMNS} FROM suppressions WHERE key > ?"  # noqa: S608
        args: tuple[object, ...] = (after,)
        if now is not None:
            query += f" AND {_ACTIVE}"
            args += (now,)
        with self._lock:
            try:
                rows = self._db.execute(f"{query} ORDER BY key LIMIT {_BATCH}", args).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from None
        return [_entry(row) for row in rows]


class StoreSuppression:
    """The store as a run consults it: fingerprints of the active keys, reloaded on change.

    Has the interface of :class:`~bulksend.campaign.recipients.SuppressionFile` (``path``,
    :meth:`changed`, :meth:`reload`, ``address in view``), so a run watches both alike.
    """

    def __init__(self, store: AnyStore) -> None:
        self.store = store
        self.path = store.path
        self._stamp: int | None = None
        self._addresses = FingerprintSet()
        self._domains: frozenset[str] = frozenset()  # whole domains: few, kept as they are

    def changed(self) -> bool:
        """Whether another connection wrote to the store since it was last read.

        The run's own writes (its bounces, of recipients already final) do not count.
        """
        return self.store.version() != self._stamp

    def reload(self) -> None:
        """Read the active keys again."""
        stamp = self.store.version()
        addresses, domains = FingerprintSet(), set()
        for entry in self.store.entries(now=time.time()):
            if entry.is_domain:
                domains.add(entry.key)
            else:
                addresses.add(entry.key)
        self._addresses, self._domains = addresses, frozenset(domains)
        self._stamp = stamp

    def __contains__(self, address: object) -> bool:
        # Asked before every message is sent: an empty store costs nothing, and whole
        # domains (few) are a set lookup, not a fingerprint.
        if not isinstance(address, str) or not (self._addresses or self._domains):
            return False
        key = normalise_address(address)
        return key in self._addresses or key.rpartition("@")[2] in self._domains

    def reason(self, address: str) -> str | None:
        """Why ``address`` is suppressed (for the journal and the rejects file), or None."""
        if address not in self:
            return None
        entry = self.store.check(address)
        if entry is None:
            return None  # a fingerprint collision, or it expired since the reload
        scope = f"domain {entry.key}" if entry.is_domain else "address"
        return f"suppressed ({scope}): {entry.reason.value} via {entry.source.value}"


class Watched(Protocol):
    """A suppression source a run re-reads when it changes (a list file, the store)."""

    @property
    def path(self) -> Path | str: ...

    def changed(self) -> bool: ...
    def reload(self) -> None: ...
    def __contains__(self, address: object) -> bool: ...


class Suppressions:
    """Every suppression source a run honours, asked as one: ``address in suppressions``."""

    def __init__(self, sources: Sequence[Watched]) -> None:
        self.sources = tuple(sources)

    def __contains__(self, address: object) -> bool:
        for source in self.sources:  # noqa: SIM110 (asked per message: no generator)
            if address in source:
                return True
        return False
