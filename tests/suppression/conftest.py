"""The suppression store's backends: a test that asks for ``store_spec`` runs against a SQLite
file and against a fresh PostgreSQL database (the session's temporary server)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where this test's store is: a SQLite file, or a PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "suppressions.sqlite3"
    return str(request.getfixturevalue("postgres_url"))
