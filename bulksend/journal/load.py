"""The recipients import into a SQLite journal (see "Import" in :mod:`bulksend.journal`)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from bulksend.journal.connection import Connection
from bulksend.journal.outcomes import Status
from bulksend.journal.records import ImportStats, NewRecipient
from bulksend.journal.schema import _ADDRESS_INDEX, _INDEXES

_INSERT: Final = (
    "INSERT INTO recipients (id, address, domain, data, status,"
    " next_attempt_at, updated_at, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def import_recipients(
    conn: Connection,
    recipients: Iterable[NewRecipient | str],
    *,
    now: float,
    batch_size: int,
    not_imported: Mapping[str, int] | None,
) -> ImportStats:
    """Write recipients in large transactions, resuming a partial import; build the indexes.

    See :meth:`Journal.import_recipients <bulksend.journal.store.Journal.import_recipients>`.
    """
    position = int(conn.read("read meta", lambda: conn.meta("import_position")))
    it = iter(recipients)
    skipped = sum(1 for _ in zip(range(position), it, strict=False))
    written = duplicates = 0
    while True:
        items = list(itertools.islice(it, batch_size))
        last = len(items) < batch_size
        with conn.write("import recipients") as db:
            if items:
                db.executemany(_INSERT, _import_rows(items, position + 1, now))
                position += len(items)
                written += len(items)
                conn.imported = position
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'import_position'", (str(position),)
                )
            if last:
                duplicates = _build_indexes(db)
                left_out = dict(not_imported or {})
                left_out["duplicate"] = left_out.get("duplicate", 0) + duplicates
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('not_imported', ?)",
                    (json.dumps(left_out, sort_keys=True),),
                )
                db.execute("UPDATE meta SET value = '1' WHERE key = 'import_complete'")
        if last:
            # Into the main file: a journal copied without its -wal (a backup, a move)
            # or one whose -wal is lost keeps its recipients.
            conn.read(
                "checkpoint the import",
                lambda: conn.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
            )
            return ImportStats(written - duplicates, duplicates, skipped)


def _build_indexes(db: sqlite3.Connection) -> int:
    """Create the secondary indexes (inside the import's last transaction).

    Returns how many duplicate addresses were removed to make the address unique.
    """
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
