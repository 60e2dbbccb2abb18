"""Opening the suppression store a campaign or a command names: a SQLite file, or a
PostgreSQL database's ``postgresql://`` URL (psycopg is an optional dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from bulksend.errors import SuppressionError
from bulksend.store_urls import is_postgres_url
from bulksend.suppression.store import SuppressionStore

if TYPE_CHECKING:
    from bulksend.suppression.postgres import PostgresSuppressionStore

__all__ = ["AnyStore", "open_suppression_store"]

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
