"""Upgrading an older SQLite journal's schema in place, when a run opens it for writing.

Version 2 -> 3 adds the ``cancelled`` status (``bulksend ctl cancel``) and the ``schedule``
category (expired at ``[schedule] stop_at``). Only the CHECK constraints on
``recipients.status`` and ``recipients.category`` change, and each only allows one more
value: no stored row can break them, so the table is not rebuilt. The new text is written into
``sqlite_schema`` the way SQLite's documentation allows for CHECK constraints ("Making
Other Kinds Of Table Schema Changes", https://www.sqlite.org/lang_altertable.html):
``writable_schema``, then ``schema_version`` bumped so every connection reloads it, in one
transaction. The file is then byte for byte what a version 3 journal would have.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from bulksend.errors import JournalError
from bulksend.journal.connection import Connection
from bulksend.journal.integrity import _expected_schema
from bulksend.journal.outcomes import Category, Status
from bulksend.journal.schema import APPLICATION_ID, SCHEMA_VERSION

_ADDED: Final = (f" OR status = '{Status.CANCELLED}'", f" OR category = '{Category.SCHEDULE}'")


def upgrade(conn: Connection) -> None:
    """Bring a version 2 journal to the current version (others are left to the checks)."""
    db = conn.db
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError:
        return  # not a database: check_format says so
    if app_id != APPLICATION_ID or version != 2 or SCHEMA_VERSION != 3:
        return
    new = _expected_schema()["recipients"]
    assert new is not None
    old = new
    for added in _ADDED:
        old = old.replace(added, "", 1)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'recipients'"
            ).fetchone()
            if found is None or found[0] != old:
                raise JournalError(
                    f"{conn.where} is damaged: the definition of recipients is not "
                    "bulksend's; restore it from a backup"
                )
            schema_version = db.execute("PRAGMA schema_version").fetchone()[0]
            db.execute("PRAGMA writable_schema = ON")
            db.execute(
                "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'recipients'",
                (new,),
            )
            db.execute(f"PRAGMA schema_version = {int(schema_version) + 1}")
            db.execute("PRAGMA writable_schema = OFF")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise JournalError(f"{conn.where}: cannot upgrade it to schema version 3: {e}") from e
