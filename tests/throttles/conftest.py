"""A fresh campaign id per test (the Redis/Valkey server: ``redis_server`` in tests/conftest.py)."""

from __future__ import annotations

import itertools

import pytest

_ids = itertools.count(1)


@pytest.fixture
def campaign_id() -> str:
    return f"test{next(_ids)}"
