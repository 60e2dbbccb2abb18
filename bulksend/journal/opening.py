"""Opening a SQLite journal: the lock, the format and damage checks, creation, the campaign
identity check and crash recovery (see "Durability and crash semantics" and "Damage and lost
history" in :mod:`bulksend.journal`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bulksend.errors import JournalError
from bulksend.files import private_fd
from bulksend.journal.connection import Connection
from bulksend.journal.identity import _describe_changes, _is_policy_part, _normalise_identity
from bulksend.journal.integrity import _check_damage, _check_history, _read_state
from bulksend.journal.schema import _SCHEMA, ADD_FEEDBACK_TABLE, APPLICATION_ID, SCHEMA_VERSION

Identity = str | bytes | Mapping[str, str | bytes]


class JournalInUse(JournalError):
    """Another process holds the journal (a run is going)."""


def lock(path: Path) -> int:
    """Open (creating, 0600) and ``flock`` the journal file; returns the locked fd."""
    try:
        # 0600 before SQLite sees it (its -wal and -shm files take this file's mode).
        fd = private_fd(path, os.O_RDWR)
    except OSError as e:
        raise JournalError(f"cannot open journal {str(path)!r}: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _lock_holder(fd)
        os.close(fd)
        raise JournalInUse(
            f"journal {str(path)!r} is in use by another bulksend process"
            + ("" if holder is None else f" (pid {holder})")
            + "; `bulksend status` shows its progress"
        ) from e
    return fd


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


def check_format(conn: Connection) -> bool:
    """Check the file is a journal of our schema version; True if it is still empty."""
    db = conn.db
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise JournalError(f"{conn.where} is not a bulksend journal ({e})") from e
    fresh = app_id == 0 and tables == 0
    if not fresh and app_id != APPLICATION_ID:
        raise JournalError(f"{conn.where} is not a bulksend journal (another SQLite database)")
    if not fresh and version != SCHEMA_VERSION:
        raise JournalError(
            f"{conn.where} has schema version {version}; this bulksend reads version "
            f"{SCHEMA_VERSION}. Use the bulksend version that wrote it."
        )
    return bool(fresh)


def check_intact(conn: Connection, *, fresh: bool, thorough: bool) -> str | None:
    """Refuse a damaged journal or one that lost history; returns its commit count.

    Before anything is written or sent: a damaged journal would resend (or lose) work.
    A run gets the thorough check (it also compares every index with its table).
    """
    state = _read_state(conn.path)  # before the journal: a commit may land meanwhile
    if not fresh:
        _check_damage(conn.db, conn.where, thorough=thorough)
    _check_history(
        conn.where,
        conn.path,
        state,
        lambda key: conn.read("read meta", lambda: conn.meta_or_none(key)),
        fresh,
    )
    return None if fresh else conn.meta_or_none("commits")


def set_up(conn: Connection) -> None:
    """WAL mode and a durable commit by default."""
    try:
        mode = conn.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"{conn.where}: cannot switch to WAL mode (got {mode!r})")
        conn.db.execute("PRAGMA synchronous = FULL")
        conn.db.execute("PRAGMA cache_size = -32768")
    except sqlite3.Error as e:
        raise JournalError(f"{conn.where}: {e}") from e


def new_campaign_id(identity: Mapping[str, str], now: float) -> str:
    """A new journal's stable campaign id (Message-IDs are derived from it)."""
    return hashlib.sha256(
        json.dumps(identity, sort_keys=True).encode() + repr(now).encode()
    ).hexdigest()[:32]


def create(conn: Connection, identity: dict[str, str], now: float) -> None:
    """Write the schema and the meta rows of a new journal."""
    campaign_id = new_campaign_id(identity, now)
    meta = {
        "identity": json.dumps(identity, sort_keys=True),
        "campaign_id": campaign_id,
        "created_at": repr(now),
        "import_position": "0",
        "import_complete": "0",
        "commits": "0",
    }
    conn.campaign_id = campaign_id
    with conn.write("create the journal") as db:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())


def add_feedback_table(conn: Connection) -> None:
    """Migration step: give a journal from before it the ``feedback`` table. The same text
    as a new journal's, so the schema check accepts it either way."""
    query = "SELECT 1 FROM sqlite_schema WHERE name = 'feedback'"
    if conn.read("read the schema", lambda: conn.db.execute(query).fetchone()) is None:
        with conn.write("add the feedback table") as db:
            db.execute(ADD_FEEDBACK_TABLE)


@dataclass(slots=True)
class IdentityCheck:
    """The campaign identity a journal now holds, and what changed since it was written."""

    identity: dict[str, str]
    #: "policy" (allowed) and "content" (forced) mapped to a description.
    changes: dict[str, str] = field(default_factory=dict)
    forced: bool = False


def check_identity(
    conn: Connection, identity: Identity | None, *, force: bool, now: float
) -> IdentityCheck:
    """Compare the campaign with the journal's; refuse changed content unless ``force``."""
    stored = json.loads(conn.read("read meta", lambda: conn.meta("identity")))
    conn.campaign_id = conn.read("read meta", lambda: conn.meta("campaign_id"))
    result = compare_identity(conn.where, stored, identity, force=force)
    if result.identity is stored:
        return result
    with conn.write("record a changed campaign") as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'identity'",
            (json.dumps(result.identity, sort_keys=True),),
        )
        if result.forced:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('forced_at', ?)", (repr(now),))
    return result


def compare_identity(
    where: str, stored: dict[str, str], identity: Identity | None, *, force: bool
) -> IdentityCheck:
    """Compare the campaign with a journal's ``stored`` identity (pure, any backend).

    The result holds ``stored`` itself when nothing changed (nothing to write back).

    Raises:
        JournalError: the content changed and ``force`` is not given.
    """
    if identity is None:
        return IdentityCheck(stored)
    given = _normalise_identity(identity)
    changed = sorted(k for k in stored.keys() | given.keys() if stored.get(k) != given.get(k))
    if not changed:
        return IdentityCheck(stored)
    content = [k for k in changed if not _is_policy_part(k)]
    if content and not force:
        raise JournalError(
            f"{where} was written for other campaign content: "
            f"{_describe_changes(stored, given, content)} changed since. Resuming would "
            "send the remaining recipients the changed message: resume with --force to do "
            "that (a new journal would send everyone again)."
        )
    policy = [k for k in changed if _is_policy_part(k)]
    result = IdentityCheck(given, forced=bool(content))
    for kind, group in (("policy", policy), ("content", content)):
        if group:
            result.changes[kind] = _describe_changes(stored, given, group)
    return result


def recover(conn: Connection, now: float) -> int:
    """Turn every claimed recipient (a crash left it) into ``in_doubt``; returns how many."""
    with conn.write("recover claimed recipients") as db:
        return db.execute(
            "UPDATE recipients SET status = 'in_doubt', in_doubt = in_doubt + 1,"
            " claimed_at = NULL, next_attempt_at = ?, updated_at = ?"
            " WHERE claimed_at IS NOT NULL",
            (now, now),
        ).rowcount
