"""Fixtures for journal tests: a fresh journal with a few recipients, at a fixed time."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bulksend.config import RetryPolicy
from bulksend.journal import Journal, NewRecipient
from tests.journal.journal_helpers import IDENTITY, T0, addresses


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "run.journal"


@pytest.fixture
def policy() -> RetryPolicy:
    return RetryPolicy(
        initial=300.0, factor=2.0, maximum=4 * 3600.0, jitter=0.2, max_age=2 * 86400.0
    )


@pytest.fixture
def open_journal(journal_path: Path, policy: RetryPolicy) -> Iterator[Callable[..., Journal]]:
    """Open (or reopen) the journal at ``journal_path``; every one opened is closed after."""
    opened: list[Journal] = []

    def _open(**kwargs: object) -> Journal:
        kwargs.setdefault("identity", IDENTITY)
        kwargs.setdefault("policy", policy)
        kwargs.setdefault("rng", random.Random(7))
        kwargs.setdefault("now", T0)
        identity = kwargs.pop("identity")
        j = Journal.open(journal_path, identity, **kwargs)  # type: ignore[arg-type]
        opened.append(j)
        return j

    yield _open
    for j in opened:
        j.close()


@pytest.fixture
def journal(open_journal: Callable[..., Journal]) -> Journal:
    """A journal with 10 pending recipients over two domains, imported at T0."""
    j = open_journal()
    j.import_recipients([NewRecipient(a, {"i": i}) for i, a in enumerate(addresses(10))], now=T0)
    return j
