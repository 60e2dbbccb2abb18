"""Fixtures for the command-line tests (helpers live in tests.cli.cli_helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksend.journal import Category, Journal, NewRecipient, Outcome

IDENTITY = "cli-test-campaign"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def finished_journal(tmp_path: Path) -> Path:
    """A journal with 5 recipients: 3 delivered, 1 bounced (bad mailbox), 1 pending."""
    path = tmp_path / "done.sqlite3"
    with Journal.open(path, IDENTITY, now=1_700_000_000.0) as journal:
        journal.import_recipients(
            [
                NewRecipient("a@one.test", {"n": 1}),
                NewRecipient("b@one.test", {"n": 2}),
                NewRecipient("c@two.test", {"n": 3}),
                NewRecipient("=cmd@two.test", {"n": 4}),
                "e@three.test",
            ],
            now=1_700_000_000.0,
        )
        for rid in (1, 2, 3):
            journal.record(rid, Outcome.delivered(250, "2.0.0", "OK"), now=1_700_000_001.0)
        journal.record(
            4,
            Outcome.bounced(550, "5.1.1", "=HYPERLINK no such user", Category.BAD_MAILBOX),
            now=1_700_000_002.0,
        )
    return path
