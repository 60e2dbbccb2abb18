"""``bulksend report --feedback``: which recipients bounced later, complained or unsubscribed,
exported from the journal's feedback table (SQLite and PostgreSQL), as CSV and JSON Lines
bytes; shards merged, a journal a run holds, a journal from before the table."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result

from bulksend.cli import main as cli
from bulksend.journal import Category, Journal
from bulksend.journal.feedback import FeedbackEvent, FeedbackKind
from bulksend.journal.feedback_log import open_feedback_log
from tests.suppression.test_feedback_journal import INLINE, sent

T1 = 1_700_000_100.0  # 2023-11-14T22:15:00+00:00
T2 = 1_700_003_700.0  # an hour later
#: A remote server's text: a spreadsheet formula, an ANSI escape, a comma and quotes.
HOSTILE = "=cmd|' /C calc'!A0 \x1b[31m, \"no such user\""

HEADER = (
    "id,address,domain,status,kind,category,enhanced_code,code,source,detail,first_time,"
    "last_time,count\r\n"
)
CSV_ROWS = [
    "1,gone@example.com,example.com,delivered,async_bounce,bad_mailbox,5.1.1,550,dsn,"
    '"\'=cmd|\' /C calc\'!A0 \\x1b[31m, ""no such user""",2023-11-14T22:15:00+00:00,'
    "2023-11-14T23:15:00+00:00,2\r\n",
    "1,gone@example.com,example.com,delivered,complaint,,,,arf,,2023-11-14T22:15:00+00:00,"
    "2023-11-14T22:15:00+00:00,1\r\n",
    "3,reader@yahoo.com,yahoo.com,delivered,complaint,,,,arf,abuse,2023-11-14T22:15:00+00:00,"
    "2023-11-14T22:15:00+00:00,1\r\n",
    "4,reader10@example.com,example.com,delivered,unsubscribe,,,,mailto,,"
    "2023-11-14T23:15:00+00:00,2023-11-14T23:15:00+00:00,1\r\n",
    "6,nobody@contoso.com,contoso.com,bounced,complaint,,,,arf,,2023-11-14T22:15:00+00:00,"
    "2023-11-14T22:15:00+00:00,1\r\n",
]


def came_back(spec: str | Path) -> None:
    """Feedback on a journal from :func:`sent`, recorded by ``bulksend inbound``'s log."""
    log = open_feedback_log(spec)
    bounce = FeedbackEvent(
        "gone@example.com",
        FeedbackKind.ASYNC_BOUNCE,
        T1,
        "dsn",
        Category.BAD_MAILBOX,
        "5.1.1",
        550,
        "first report",
    )
    events = [
        FeedbackEvent("gone@example.com", FeedbackKind.COMPLAINT, T1, "arf"),  # before its bounce
        FeedbackEvent("reader10@example.com", FeedbackKind.UNSUBSCRIBE, T2, "mailto"),
        FeedbackEvent("reader@yahoo.com", FeedbackKind.COMPLAINT, T1, "arf", detail="abuse"),
        bounce,
        FeedbackEvent(INLINE, FeedbackKind.COMPLAINT, T1, "arf"),
        # The same bounce again, later: counted twice, the latest details kept.
        FeedbackEvent(
            "gone@example.com",
            FeedbackKind.ASYNC_BOUNCE,
            T2,
            "dsn",
            Category.BAD_MAILBOX,
            "5.1.1",
            550,
            HOSTILE,
        ),
    ]
    assert log.record(events) == [True] * len(events)
    log.close()


def report(*args: str) -> Result:
    return CliRunner().invoke(cli, ["report", *args])


def exported(*args: str) -> bytes:
    """What ``report --feedback ARGS`` writes to stdout (it succeeds)."""
    result = report(*args, "--feedback")
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


@pytest.fixture
def journal(journal_spec: str | Path) -> str:
    """A journal from :func:`sent` with the feedback of :func:`came_back`."""
    sent(journal_spec)
    came_back(journal_spec)
    return str(journal_spec)


def test_the_feedback_as_csv(journal: str) -> None:
    # By recipient id, then kind; the reply text escaped and kept from running as a formula.
    assert exported(journal, "--format", "csv") == (HEADER + "".join(CSV_ROWS)).encode()


def test_the_feedback_as_json_lines(journal: str) -> None:
    out = exported(journal, "--format", "jsonl")
    lines = out.decode().split("\n")
    assert lines.pop() == ""  # every line ends in a newline
    assert lines[0] == (
        '{"id": 1, "address": "gone@example.com", "domain": "example.com", "status": '
        '"delivered", "kind": "async_bounce", "category": "bad_mailbox", "enhanced_code": '
        '"5.1.1", "code": 550, "source": "dsn", "detail": "=cmd|\' /C calc\'!A0 \\\\x1b[31m, '
        '\\"no such user\\"", "first_time": "2023-11-14T22:15:00+00:00", "last_time": '
        '"2023-11-14T23:15:00+00:00", "count": 2}'
    )
    assert b"\x1b" not in out
    assert [(r["id"], r["kind"], r["status"]) for r in map(json.loads, lines)] == [
        (1, "async_bounce", "delivered"),
        (1, "complaint", "delivered"),
        (3, "complaint", "delivered"),
        (4, "unsubscribe", "delivered"),
        (6, "complaint", "bounced"),
    ]


def test_status_keeps_the_feedback_of_recipients_in_it(journal: str) -> None:
    csv = (journal, "--format", "csv")
    assert exported(*csv, "--status", "bounced") == (HEADER + CSV_ROWS[4]).encode()
    assert exported(*csv, "--status", "delivered") == (HEADER + "".join(CSV_ROWS[:4])).encode()


def test_shards_one_held_by_a_run_are_exported_one_after_the_other(tmp_path: Path) -> None:
    one, two = tmp_path / "one.journal", tmp_path / "two.journal"
    sent(one)
    sent(two)
    came_back(one)
    log = open_feedback_log(two)
    assert log.record([FeedbackEvent("quiet@example.com", FeedbackKind.UNSUBSCRIBE, T1, "mailto")])
    log.close()
    with Journal.open(two, "test"):  # a run holds shard two: read its committed state
        result = report(str(one), str(two), "--format", "csv", "--feedback")
    assert result.exit_code == 0, result.output
    assert (
        result.stdout_bytes
        == (
            HEADER
            + "".join(CSV_ROWS)
            + "5,quiet@example.com,example.com,delivered,unsubscribe,,,,mailto,,"
            "2023-11-14T22:15:00+00:00,2023-11-14T22:15:00+00:00,1\r\n"
        ).encode()
    )
    assert f"{two} is in use by a run" in result.stderr


def test_a_journal_from_before_the_feedback_table_has_no_feedback(journal_spec: str | Path) -> None:
    sent(journal_spec)
    with contextlib.ExitStack() as running:
        if isinstance(journal_spec, Path):
            # A run holds it (the report reads it read-only), and it has no table.
            running.enter_context(Journal.open(journal_spec, "test"))
            with contextlib.closing(sqlite3.connect(journal_spec)) as db:
                db.execute("DROP TABLE feedback")
        else:
            with psycopg.connect(journal_spec.split("?")[0], autocommit=True) as pg:
                pg.execute("DROP TABLE bulksend_c1.feedback")
        assert exported(str(journal_spec), "--format", "csv") == HEADER.encode()
        assert exported(str(journal_spec), "--format", "jsonl") == b""


def test_feedback_in_the_table_format_is_a_usage_error(tmp_path: Path) -> None:
    sent(tmp_path / "run.journal")
    result = report(str(tmp_path / "run.journal"), "--feedback")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert (
        "Error: --feedback exports rows: add --format csv or --format jsonl"
        in result.stderr.splitlines()
    )
