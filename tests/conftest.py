"""Fixtures every test gets."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def sent_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own record of sent campaigns (never the user's state directory)."""
    path = tmp_path / "state" / "sent.jsonl"
    monkeypatch.setenv("BULKSEND_SENT_RECORD", str(path))
    return path
