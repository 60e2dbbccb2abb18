"""The recipients import into a PostgreSQL journal: ``COPY`` in batches, streamed (see
"Import" in :mod:`bulksend.journal.postgres`)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final, TypeAlias

import psycopg

from bulksend.journal.load import _import_rows
from bulksend.journal.postgres_schema import ADDRESS_INDEX, INDEXES
from bulksend.journal.records import ImportStats, NewRecipient

Cursor: TypeAlias = psycopg.Cursor[tuple[Any, ...]]
#: One transaction, named for its error message (the store's ``_tx``).
Transaction: TypeAlias = Callable[[str], AbstractContextManager[Cursor]]

_COPY: Final = (
    "COPY recipients (id, address, domain, data, status, next_attempt_at, updated_at, text)"
    " FROM STDIN"
)


def copy_recipients(
    tx: Transaction,
    recipients: Iterable[NewRecipient | str],
    *,
    position: int,
    now: float,
    batch_size: int,
    not_imported: Mapping[str, int] | None,
) -> ImportStats:
    """Import ``recipients`` after ``position`` (those before are skipped: a resume), one
    transaction of ``batch_size`` rows at a time; the last builds the indexes.

    Rows go to the server as they are read (``COPY`` streams), so memory stays flat. What
    reading raises rolls back the batch being read and propagates. ``not_imported`` is
    read once ``recipients`` is exhausted (the caller counts as it reads).
    """
    it = iter(recipients)
    skipped = sum(1 for _ in zip(range(position), it, strict=False))
    written = 0
    while True:
        with tx("import recipients") as cur:
            n = 0
            with cur.copy(_COPY) as copy:
                for row in _import_rows(itertools.islice(it, batch_size), position + 1):
                    r = row
                    if "\x00" in r[1] or "\x00" in (r[5] or ""):
                        r = (r[0], no_nul(r[1]), no_nul(r[2]), r[3], r[4], no_nul(r[5]))
                    copy.write_row((*r[:5], now if r[4] == "pending" else None, now, r[5]))
                    n += 1
            position += n
            written += n
            cur.execute(
                "UPDATE meta SET value = %s WHERE key = 'import_position'", (str(position),)
            )
            if n < batch_size:
                duplicates = _build_indexes(cur)
                left_out = dict(not_imported or {})
                left_out["duplicate"] = left_out.get("duplicate", 0) + duplicates
                cur.execute(
                    "INSERT INTO meta VALUES ('not_imported', %s)",
                    (json.dumps(left_out, sort_keys=True),),
                )
                cur.execute("UPDATE meta SET value = '1' WHERE key = 'import_complete'")
                return ImportStats(written - duplicates, duplicates, skipped)


def no_nul(text: str | None) -> str | None:
    """``text`` with U+FFFD for each NUL, which PostgreSQL's text cannot hold (only an
    invalid address, a reject reason or a remote reply can bring one)."""
    return None if text is None else text.replace("\x00", "\ufffd")


def _build_indexes(cur: Cursor) -> int:
    """Create the indexes (in the import's last transaction); returns how many duplicate
    addresses were removed, each address keeping its first position."""
    removed = 0
    try:
        with cur.connection.transaction():  # a savepoint
            cur.execute(ADDRESS_INDEX)
    except psycopg.errors.UniqueViolation:
        # Duplicates are rare: only then pay for finding them.
        cur.execute(
            "DELETE FROM recipients r USING recipients first"
            " WHERE r.address = first.address AND r.id > first.id"
        )
        removed = cur.rowcount
        cur.execute(ADDRESS_INDEX)
    for statement in INDEXES:
        cur.execute(statement)
    return removed
