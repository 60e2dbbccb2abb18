"""A Redis/Valkey server for the session, and a fresh campaign id per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.redis import RedisServer, server_binary

_ids = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip(
            "neither redis-server nor valkey-server is installed (apt-get install redis-server)"
        )
    server = RedisServer(binary, Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def campaign_id() -> str:
    return f"test{next(_ids)}"
