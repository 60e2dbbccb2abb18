"""Fixtures for journal tests: a fresh journal with a few recipients, at a fixed time.

The tests of the store protocol run against both backends: ``backend`` is parametrised
("sqlite", "postgres") for the modules in :data:`BOTH_BACKENDS`, except for a test that
asks for ``journal_path`` itself or is marked ``sqlite_only`` (it looks at the SQLite
file). PostgreSQL is the session's temporary server (``postgres_url`` in tests/conftest.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bulksend.config import RetryPolicy
from bulksend.journal import Journal, NewRecipient
from tests.journal.journal_helpers import IDENTITY, T0, addresses

#: Test modules whose tests run against both backends.
BOTH_BACKENDS = {
    "test_journal_store",
    "test_journal_batch",
    "test_journal_retry",
    "test_journal_resume",
    "test_journal_reports",
    "test_journal_writer",
    "test_journal_run",
    "test_journal_unrendered",
    "test_journal_cancelled",
    "test_journal_import",
    "test_journal_postgres",
    "test_journal_report_feedback",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    direct = metafunc.definition._fixtureinfo.argnames
    if module == "test_journal_postgres":
        metafunc.parametrize("backend", ["postgres"])
    elif (
        module in BOTH_BACKENDS
        and "journal_path" not in direct
        and metafunc.definition.get_closest_marker("sqlite_only") is None
    ):
        metafunc.parametrize("backend", ["sqlite", "postgres"])
    else:
        metafunc.parametrize("backend", ["sqlite"])


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "run.journal"


@pytest.fixture
def journal_spec(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | Path:
    """Where this test's journal is: a file, or a campaign in a fresh PostgreSQL database."""
    if backend == "sqlite":
        return tmp_path / "run.journal"
    return str(request.getfixturevalue("postgres_url")) + "?campaign=c1"


@pytest.fixture
def policy() -> RetryPolicy:
    return RetryPolicy(
        initial=300.0, factor=2.0, maximum=4 * 3600.0, jitter=0.2, max_age=2 * 86400.0
    )


@pytest.fixture
def open_journal(journal_spec: str | Path, policy: RetryPolicy) -> Iterator[Callable[..., Journal]]:
    """Open (or reopen) this test's journal; every one opened is closed after."""
    from bulksend.journal.backend import open_journal as open_any  # noqa: PLC0415

    opened: list[Any] = []

    def _open(**kwargs: Any) -> Journal:
        kwargs.setdefault("identity", IDENTITY)
        kwargs.setdefault("policy", policy)
        kwargs.setdefault("rng", random.Random(7))
        kwargs.setdefault("now", T0)
        identity = kwargs.pop("identity")
        if isinstance(journal_spec, Path):
            j: Any = Journal.open(journal_spec, identity, **kwargs)
        else:
            # One worker, restarted under its id: its claims come back in doubt at once.
            kwargs.setdefault("worker", "w1")
            j = open_any(journal_spec, identity, **kwargs)
        opened.append(j)
        return j  # type: ignore[no-any-return]

    yield _open
    for j in opened:
        j.close()


@pytest.fixture
def journal(open_journal: Callable[..., Journal]) -> Journal:
    """A journal with 10 pending recipients over two domains, imported at T0."""
    j = open_journal()
    j.import_recipients([NewRecipient(a, {"i": i}) for i, a in enumerate(addresses(10))], now=T0)
    return j
