"""Opening the suppression store a campaign or a command names: a SQLite file, or a
PostgreSQL database's ``postgresql://`` URL (psycopg is an optional dependency); and where a
campaign's store is when it names none (:func:`campaign_store`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from bulksend.config.schema import CampaignConfig
from bulksend.errors import SuppressionError
from bulksend.store_urls import database_url, is_postgres_url
from bulksend.suppression.store import SuppressionStore

if TYPE_CHECKING:
    from bulksend.suppression.postgres import PostgresSuppressionStore

__all__ = ["DEFAULT_STORE", "AnyStore", "campaign_store", "open_suppression_store"]

#: The store of campaigns that name none, beside the journal (by default beside the campaign
#: file): every campaign whose journal is kept in one directory shares it.
DEFAULT_STORE: Final = "suppression.sqlite3"

#: A suppression store of either backend (they offer the same methods).
AnyStore: TypeAlias = "SuppressionStore | PostgresSuppressionStore"


def open_suppression_store(spec: Path | str) -> AnyStore:
    """Open (creating if needed) the store at ``spec``: a path, or a ``postgresql://`` URL.

    Raises:
        SuppressionError: the store cannot be opened or created, or psycopg is missing.
    """
    if not is_postgres_url(spec):
        return SuppressionStore.open(Path(spec))
    try:
        from bulksend.suppression.postgres import PostgresSuppressionStore  # noqa: PLC0415
    except ImportError as e:
        raise SuppressionError(
            f"a PostgreSQL suppression store needs psycopg: pip install 'bulksend[postgres]' ({e})"
        ) from None
    return PostgresSuppressionStore(str(spec))


def campaign_store(config: CampaignConfig, journal: Path | str | None) -> Path | str | None:
    """The suppression store of a campaign whose journal is ``journal`` (None: the campaign's
    own, ``[journal] url`` or beside the campaign file).

    The store ``[suppression] store`` names; else, with a PostgreSQL journal, that journal's
    database (every worker on every machine shares it, as they share the journal); else
    :data:`DEFAULT_STORE` beside the journal (a directory the run can write, where the
    campaign's may be read-only). None with ``store = false``.
    """
    wanted = config.suppression
    if not wanted.enabled:
        return None
    if wanted.store is not None:
        return wanted.store
    location = journal if journal is not None else config.journal_url
    if isinstance(location, str) and is_postgres_url(location):
        return database_url(location)
    directory = location.parent if isinstance(location, Path) else config.source.parent
    return directory / DEFAULT_STORE
