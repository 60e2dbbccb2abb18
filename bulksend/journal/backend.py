"""Opening a journal by where it is: a file path is a SQLite journal, a ``postgresql://``
URL a PostgreSQL one (:mod:`bulksend.journal.postgres`, needs the ``postgres`` extra)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from bulksend.config import RetryPolicy
from bulksend.errors import JournalError
from bulksend.journal.opening import Identity
from bulksend.journal.postgres_schema import NoJournal
from bulksend.journal.store import Journal
from bulksend.store_urls import is_postgres_url

if TYPE_CHECKING:
    from bulksend.journal.postgres import PostgresJournal, PostgresPeek
    from bulksend.journal.reports import JournalPeek

#: Either backend's store (both implement :class:`~bulksend.journal.protocol.JournalStore`,
#: the import, ``retry_unrendered`` and the opening attributes a run reads).
AnyJournal: TypeAlias = "Journal | PostgresJournal"

__all__ = [
    "AnyJournal",
    "journal_exists",
    "journal_spec",
    "open_journal",
    "open_peek",
]


def journal_spec(value: str | os.PathLike[str]) -> str | Path:
    """A ``--journal`` value as a PostgreSQL URL (kept as text) or a file path."""
    text = os.fspath(value)
    return text if is_postgres_url(text) else Path(text)


def open_journal(
    spec: str | os.PathLike[str],
    identity: Identity | None,
    *,
    force: bool = False,
    policy: RetryPolicy | None = None,
    rng: random.Random | None = None,
    now: float | None = None,
    worker: str | None = None,
    lease: float | None = None,
) -> AnyJournal:
    """Open (resume) or create the journal at ``spec``: a path (SQLite) or a
    ``postgresql://user@host:port/db?campaign=NAME`` URL. ``worker`` (the lease holder id;
    default: a new one) and ``lease`` (seconds) are for PostgreSQL only.

    Raises:
        JournalError: as the backend's ``open``; psycopg missing for a URL; a ``lease``
            for a SQLite journal (it has no leases).
    """
    where = journal_spec(spec)
    if isinstance(where, Path):
        if lease is not None:
            raise JournalError(
                f"{where}: a lease is for PostgreSQL journals; a SQLite journal has one "
                "process and no leases"
            )
        return Journal.open(where, identity, force=force, policy=policy, rng=rng, now=now)
    journal: PostgresJournal = _postgres().PostgresJournal.open(
        where,
        identity,
        force=force,
        policy=policy,
        rng=rng,
        now=now,
        worker=worker,
        **({} if lease is None else {"lease": lease}),
    )
    return journal


def _postgres() -> Any:
    """The PostgreSQL backend's module (psycopg is an optional dependency)."""
    try:
        from bulksend.journal import postgres  # noqa: PLC0415
    except ImportError as e:
        raise JournalError(
            f"a PostgreSQL journal needs psycopg: pip install 'bulksend[postgres]' ({e})"
        ) from None
    return postgres


def journal_exists(spec: str | os.PathLike[str]) -> bool:
    """Whether there is a journal at ``spec`` (a file, or a campaign in the database).

    Raises:
        JournalError: the database cannot be reached.
    """
    where = journal_spec(spec)
    if isinstance(where, Path):
        return where.exists()
    try:
        _postgres().PostgresJournal.open(where, None).close()
    except NoJournal:
        return False
    return True


def open_peek(spec: str | os.PathLike[str], *, check: bool = False) -> JournalPeek | PostgresPeek:
    """A read-only look into a running journal (see :class:`~bulksend.journal.JournalPeek`);
    ``check`` is SQLite's damage check (PostgreSQL checks its own pages)."""
    where = journal_spec(spec)
    if isinstance(where, Path):
        from bulksend.journal.reports import JournalPeek  # noqa: PLC0415

        return JournalPeek(where, check=check)
    peek: PostgresPeek = _postgres().PostgresPeek(where)
    return peek
