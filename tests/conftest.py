"""Fixtures every test gets, and the shared ones: the test CA and its TLS contexts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from tests.helpers.tls import client_context, server_context


@pytest.fixture(autouse=True)
def sent_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own record of sent campaigns (never the user's state directory)."""
    path = tmp_path / "state" / "sent.jsonl"
    monkeypatch.setenv("BULKSEND_SENT_RECORD", str(path))
    return path


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test CA: it issues every test certificate; no system trust store holds it."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server's context, its certificate for mx.test, 127.0.0.1 and 127.0.0.2."""
    return server_context(ca, "mx.test", "127.0.0.1", "127.0.0.2")


@pytest.fixture(scope="session")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client's context that trusts the test CA."""
    return client_context(ca)
