"""Damage and lost history: the schema and page checks and the state file beside a journal.

See "Damage and lost history" in :mod:`bulksend.journal`.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bulksend.errors import JournalError
from bulksend.journal.schema import _ADDRESS_INDEX, _INDEXES, _SCHEMA

#: The state file's size: one JSON record, padded, rewritten in place with one write.
_STATE_SIZE: Final = 256
#: SQLite's result codes for a file whose content is not what SQLite wrote.
_DAMAGE_CODES: Final = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_TABLES: Final = frozenset({"meta", "recipients"})


def _state_path(path: Path) -> Path:
    """The file beside a journal that records how much history the journal must hold."""
    return path.with_name(path.name + ".state")


@dataclass(frozen=True, slots=True)
class _State:
    campaign_id: str
    imported: int
    commits: int


def _read_state(path: Path) -> _State | None:
    """The journal's state file; None if there is none (or it was never written)."""
    where = f"journal {str(path)!r}"
    try:
        data = _state_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalError(f"{where}: cannot read its state file: {e}") from e
    if not data.strip():
        return _State("", 0, 0)  # created, no commit recorded yet
    try:
        record = json.loads(data)
        return _State(str(record["campaign_id"]), int(record["imported"]), int(record["commits"]))
    except (ValueError, KeyError, TypeError) as e:
        raise _damaged(where, f"its state file {str(_state_path(path))!r} is unreadable") from e


def _check_history(
    where: str, path: Path, state: _State | None, meta: Callable[[str], str | None], fresh: bool
) -> None:
    """Refuse a journal holding less history than its state file says it committed.

    ``meta`` reads the journal's meta table. Its ``commits`` is None for a journal from
    before commits were counted (which has no state file either).
    """
    state_file = str(_state_path(path))
    raw = None if fresh else meta("commits")
    commits = None if raw is None else int(raw)
    campaign_id = None if fresh else meta("campaign_id")
    if state is not None and state.campaign_id and campaign_id not in (None, state.campaign_id):
        raise JournalError(
            f"{where}: its state file {state_file!r} belongs to another journal (campaign id "
            f"{state.campaign_id}); put this journal's own state file beside it"
        )
    if state is None:
        if commits is not None:
            raise JournalError(
                f"{where} has no state file {state_file!r} beside it (moved or copied "
                "without it?); put it back, with the journal's -wal file if there is one"
            )
        return
    held = 0 if fresh or commits is None else commits
    if held >= state.commits:
        return
    what = (
        f"it is empty, yet its state file records {state.imported:,} recipients imported"
        if fresh
        else f"it holds {held:,} of the {state.commits:,} commits its state file records"
    )
    raise JournalError(
        f"{where} lost committed history: {what} (its -wal file was lost or torn, or the "
        "journal file was copied without it); sending now would mail recipients again without "
        "counting them in doubt. Restore it with its -wal file from a backup, or delete it "
        f"and {state_file!r} to start the campaign over"
    )


def _is_damage(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorname", "") in _DAMAGE_CODES


def _damaged(where: str, detail: str) -> JournalError:
    return JournalError(f"{where} is damaged: {detail}; restore it from a backup")


def _write_error(path: str, what: str, error: sqlite3.Error) -> JournalError:
    where = f"journal {path!r}"
    if _is_damage(error):
        return _damaged(where, f"could not {what}: {error}")
    if getattr(error, "sqlite_errorname", "") == "SQLITE_FULL":
        advice = "free disk space, then resume"
    else:
        advice = "check the disk and its free space, then resume"
    return JournalError(
        f"{where}: could not {what}: {error}. The journal is stopped; outcomes not yet "
        f"committed are not recorded ({advice})"
    )


@functools.cache
def _expected_schema() -> dict[str, str | None]:
    """Every schema object bulksend creates (tables and indexes), name -> SQL text."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        for statement in (_ADDRESS_INDEX, *_INDEXES):
            db.execute(statement)
        return dict(db.execute("SELECT name, sql FROM sqlite_schema"))
    finally:
        db.close()


def _check_damage(db: sqlite3.Connection, where: str, *, thorough: bool) -> None:
    """Refuse a journal whose schema text differs from ours or whose pages are damaged.

    ``thorough`` runs ``integrity_check`` (every index against its table: about 4 s per
    million recipients) instead of ``quick_check`` (the pages and records: about 0.4 s).
    """
    expected = _expected_schema()
    try:
        found = dict(db.execute("SELECT name, sql FROM sqlite_schema"))
        # An object altered or not ours, or a table missing (indexes come with the import).
        changed = sorted(
            name
            for name in expected.keys() | found.keys()
            if (name in found and found[name] != expected.get(name))
            or (name not in found and name in _TABLES)
        )
        if changed:
            raise _damaged(where, f"the definition of {', '.join(changed)} is not bulksend's")
        check = "integrity_check" if thorough else "quick_check"
        problems = [str(row[0]) for row in db.execute(f"PRAGMA {check}(3)")]
    except sqlite3.Error as e:
        raise _damaged(where, str(e)) from e
    if problems != ["ok"]:
        # One line: SQLite heads its report with "*** in database main ***" lines.
        lines = [line for p in problems for line in p.splitlines() if not line.startswith("***")]
        raise _damaged(where, "; ".join(lines))
