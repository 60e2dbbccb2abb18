"""URLs of the shared stores (the PostgreSQL journal, the Redis/Valkey throttle store).

One rule for both: a URL never holds a password (it would show in process lists, shell
history and logs); ``password_file=PATH`` in its query names a file whose first line is the
password (a mounted Secret, say). :func:`split_store_url` takes that parameter out of the
URL and refuses a password; :func:`read_password_file` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, unquote_plus, urlsplit

__all__ = [
    "StoreURL",
    "database_url",
    "is_postgres_url",
    "read_password_file",
    "split_store_url",
    "without_query",
]

StoreURL = tuple[SplitResult, Sequence[tuple[str, str]], Path | None]


def is_postgres_url(spec: object) -> bool:
    """Whether ``spec`` names a PostgreSQL journal (``postgresql://...``)."""
    return isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://"))


def split_store_url(url: str) -> StoreURL:
    """The URL's parts, its query without ``password_file``, and that file (or None).

    Raises:
        ValueError: the URL holds a password (in its user part or as ``password=``).
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is not None or any(k == "password" for k, _ in query):
        raise ValueError("a password in the URL")
    files = [v for k, v in query if k == "password_file"]
    rest = [(k, v) for k, v in query if k != "password_file"]
    return parts, rest, Path(files[-1]) if files else None


def without_query(url: str, *names: str) -> str:
    """``url`` less the query parameters ``names`` (ours: ``campaign``, ``password_file``),
    the rest kept byte for byte: re-encoding would turn libpq's ``%20`` into ``+`` (which
    libpq reads as a plus) and ``postgresql:///db`` into ``postgresql:/db``."""
    base, _, rest = url.partition("?")
    query = rest.partition("#")[0]
    kept = [p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) not in names]
    return f"{base}?{'&'.join(kept)}" if kept else base


def database_url(url: str) -> str:
    """A PostgreSQL journal's URL without its ``campaign``: the database that every campaign
    in it shares (the default suppression store), ``password_file`` and libpq's parameters
    kept."""
    return without_query(url, "campaign")


def read_password_file(path: Path) -> str:
    """The password: the file's first line ("" for an empty file).

    Raises:
        OSError: the file cannot be read.
    """
    text = path.read_text(encoding="utf-8")
    return text.splitlines()[0] if text else ""
