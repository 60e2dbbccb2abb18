"""What comes back, recorded in the campaign's journal (SQLite and PostgreSQL): a recipient
delivered that later bounces, complains or unsubscribes (by mail or one click), as
``bulksend report`` shows it; while a run holds the journal; and in a journal from before the
feedback table."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import psycopg
import pytest
import trio
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.config import SuppressionConfig
from bulksend.inbound.ingest import Ingest
from bulksend.inbound.parse import Verp
from bulksend.inbound.unsubscribe import UnsubscribeEndpoint
from bulksend.journal import Category, Journal, NewRecipient, Outcome
from bulksend.journal.backend import open_journal
from bulksend.journal.feedback import FeedbackEvent, FeedbackKind
from bulksend.journal.feedback_log import SqliteFeedbackLog, open_feedback_log
from bulksend.metrics import FeedbackMetrics
from bulksend.suppression.rules import Rules
from bulksend.suppression.store import SuppressionStore
from bulksend.testing.scenario import campaign_toml, write_campaign
from tests.suppression.test_inbound_listen import FIXTURES, client, listening
from tests.suppression.test_unsubscribe_endpoint import KEY, ONE_CLICK, link, request

DELIVERED = [
    "gone@example.com",  # postfix_5_1_1.eml: a hard bounce later
    "full@example.org",  # exim_mailbox_full.eml: a soft bounce later
    "reader@yahoo.com",  # yahoo_arf.eml: a complaint
    "reader10@example.com",  # mailto_unsubscribe.eml: an unsubscribe by mail
    "quiet@example.com",
]
INLINE = "nobody@contoso.com"  # bounced during the run; m365_ndr.eml says it again
INBOX = (
    "postfix_5_1_1.eml",
    "exim_mailbox_full.eml",
    "yahoo_arf.eml",
    "mailto_unsubscribe.eml",
    "m365_ndr.eml",
    "postfix_delayed.eml",
    "vacation.eml",
)


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "run.journal"
    return str(request.getfixturevalue("postgres_url")) + "?campaign=c1"


def sent(spec: str | Path) -> None:
    """A journal whose run delivered :data:`DELIVERED` and bounced :data:`INLINE`."""
    with open_journal(spec, "test") as journal:
        journal.import_recipients([NewRecipient(a, {}) for a in [*DELIVERED, INLINE]], now=0)
        claimed = [
            d for domain in journal.due_domains(now=1) for d in journal.fetch_due(domain, 10, now=1)
        ]
        bounce = Outcome.bounced(550, "5.1.1", "no such user", Category.BAD_MAILBOX)
        journal.apply(
            [(d.id, bounce if d.address == INLINE else Outcome.delivered(), 2.0) for d in claimed]
        )


def campaign(tmp_path: Path, feedback_id: str = "") -> Path:
    toml = campaign_toml(extra='[suppression]\nstore = "s.sqlite3"\n').replace(
        "[unsubscribe]\n", '[unsubscribe]\nmailto = "unsubscribe@sender.test"\n'
    )
    if feedback_id:
        toml = toml.replace("[message]\n", f'[message]\nfeedback_id = "{feedback_id}"\n')
    return write_campaign(tmp_path, [*DELIVERED, INLINE], toml=toml)


def report(spec: str | Path) -> str:
    result = CliRunner().invoke(cli, ["report", str(spec)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_later_bounces_complaints_and_unsubscribes_are_recorded_in_the_journal(
    tmp_path: Path, spec: str | Path
) -> None:
    sent(spec)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in INBOX:
        shutil.copy(FIXTURES / name, inbox / name)
    args = ["inbound", "ingest", str(inbox), "--campaign", str(campaign(tmp_path))]
    for _ in range(2):  # the same mailbox twice: the journal counts recipients, not mails
        result = CliRunner().invoke(cli, [*args, "--journal", str(spec), "-v"])
        assert result.exit_code == 0, result.output
        # The DSN of the recipient that bounced inline is not a second bounce; the delay
        # and the vacation reply are nothing.
        assert "recorded in the journal: 4" in result.stdout.splitlines()
    text = report(spec)
    assert "bounced inline (5xx during the run)  1" in text
    assert "bounced later (DSN after delivery)   2" in text
    assert "complaints (ARF)                     1" in text
    assert "unsubscribes                         1" in text
    assert (
        "complaint rate: 20.00% of 5 delivered (over the 0.3% that Gmail and Yahoo allow)" in text
    )
    later = text.split("later bounces by category\n")[1].splitlines()
    assert [line.split() for line in later[1:3]] == [["bad_mailbox", "1"], ["mailbox_full", "1"]]
    # The recipients keep their final state: delivered, and bounced inline.
    with open_journal(spec, None) as journal:
        assert journal.counts_by_category() == {Category.BAD_MAILBOX: 1}
        assert journal.feedback_counts() == {
            (FeedbackKind.ASYNC_BOUNCE, Category.BAD_MAILBOX): 1,
            (FeedbackKind.ASYNC_BOUNCE, Category.MAILBOX_FULL): 1,
            (FeedbackKind.COMPLAINT, None): 1,
            (FeedbackKind.UNSUBSCRIBE, None): 1,
        }


@pytest.mark.parametrize(
    ("feedback_id", "recorded"), [("december:news:sender", 1), ("spring:news:sender", 0)]
)
def test_a_complaint_about_another_campaign_is_not_recorded_in_this_one(
    tmp_path: Path, feedback_id: str, recorded: int
) -> None:
    # yahoo_arf.eml returns a message with Feedback-ID: december:news:sender.
    path = tmp_path / "run.journal"
    sent(path)
    args = ["inbound", "ingest", str(FIXTURES / "yahoo_arf.eml"), "--journal", str(path)]
    result = CliRunner().invoke(cli, [*args, "--campaign", str(campaign(tmp_path, feedback_id))])
    assert result.exit_code == 0, result.output
    assert "suppressed  1" in result.stdout  # the sender's to suppress either way
    assert f"recorded in the journal: {recorded}" in result.stdout


def test_a_report_without_feedback_says_so_in_zeros(tmp_path: Path, spec: str | Path) -> None:
    sent(spec)
    text = report(spec)
    assert "bounced later (DSN after delivery)   0" in text
    assert "complaint rate: 0.00% of 5 delivered\n" in text
    assert "later bounces by category" not in text


async def test_a_dsn_over_smtp_is_recorded_while_the_run_holds_the_journal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.journal"
    sent(path)
    metrics = FeedbackMetrics()
    with (
        Journal.open(path, "test") as held,  # the run: its lock, its connection
        SuppressionStore.open(tmp_path / "s.sqlite3") as store,
    ):
        log = SqliteFeedbackLog(path)
        verp = Verp.from_template("bounces+{token}@sender.test")
        applying = Ingest(store, Rules(SuppressionConfig()), verp, metrics=metrics, journals=[log])

        def deliver(data: bytes, recipients: list[str]) -> None:
            applying.message(data, now=1000.0, envelope_to=recipients[0])

        with trio.fail_after(20):
            async with listening(deliver) as port, client(port) as c:
                for name in ("postfix_5_1_1.eml", "exim_mailbox_full.eml", "gmail_5_1_1.eml"):
                    data = (FIXTURES / name).read_bytes()
                    reply = await c.send_message("bounces@sender.test", data)
                    assert reply.startswith("250 2.0.0"), name
        log.close()
        # The run goes on committing outcomes, and sees the rows.
        held.retry_unrendered(now=3.0)
        assert held.feedback_counts() == {
            (FeedbackKind.ASYNC_BOUNCE, Category.BAD_MAILBOX): 1,
            (FeedbackKind.ASYNC_BOUNCE, Category.MAILBOX_FULL): 1,
        }
    # missing@gmail.com is no recipient of this journal: counted, not recorded.
    assert applying.recorded == 2
    sample = metrics.registry.get_sample_value
    assert sample("bulksend_async_bounces_total", {"category": "bad_mailbox"}) == 2
    assert sample("bulksend_async_bounces_total", {"category": "mailbox_full"}) == 1
    # The journal passes every check when opened again (its schema is bulksend's).
    Journal.open(path, "test").close()


def test_remote_text_of_any_kind_is_recorded(spec: str | Path) -> None:
    sent(spec)
    log = open_feedback_log(spec)
    detail = "550 \x00 \udcff " + "x" * 900  # a NUL, a lone surrogate, too long
    event = FeedbackEvent("gone@example.com", FeedbackKind.ASYNC_BOUNCE, 5.0, "dsn", detail=detail)
    assert log.record([event]) == [True]
    log.close()


def test_a_journal_from_before_the_feedback_table(tmp_path: Path) -> None:
    path = tmp_path / "run.journal"
    sent(path)
    db = sqlite3.connect(path)
    db.execute("DROP TABLE feedback")  # what a journal written before it looks like
    db.close()
    assert "bounced later (DSN after delivery)   0" in report(path)  # read-only: no table
    with Journal.open(path, "test") as journal:  # the migration step adds it
        assert journal.feedback_counts() == {}
    db = sqlite3.connect(path)
    db.execute("DROP TABLE feedback")
    db.close()
    log = open_feedback_log(path)  # so does bulksend inbound
    event = FeedbackEvent("gone@example.com", FeedbackKind.COMPLAINT, 5.0, "arf")
    assert log.record(
        [event, FeedbackEvent("stranger@x.test", FeedbackKind.COMPLAINT, 5.0, "arf")]
    ) == [True, False]
    log.close()
    with Journal.open(path, "test") as journal:
        assert journal.feedback_counts() == {(FeedbackKind.COMPLAINT, None): 1}


async def test_one_click_unsubscribes_are_recorded_in_their_campaigns_journal(
    tmp_path: Path, spec: str | Path
) -> None:
    sent(spec)
    log = open_feedback_log(spec)
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store:
        server = UnsubscribeEndpoint(store, [KEY], journals={"spring": [log]})
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(server.serve, "127.0.0.1", 0)
                port = listeners[0].socket.getsockname()[1]
                for target in (
                    link("reader10@example.com"),
                    link("reader10@example.com"),  # a second click
                    link("quiet@example.com", campaign="autumn"),  # another campaign's link
                ):
                    assert (await request(port, "POST", target, ONE_CLICK))[0] == 200
                assert (await request(port, "GET", link("gone@example.com")))[0] == 200
                nursery.cancel_scope.cancel()
        assert {e.key for e in store.entries()} == {"reader10@example.com", "quiet@example.com"}
    log.close()
    with open_journal(spec, None) as journal:
        assert journal.feedback_counts() == {(FeedbackKind.UNSUBSCRIBE, None): 1}
    assert "unsubscribes                         1" in report(spec)


def test_the_endpoint_needs_the_campaign_of_its_journal(tmp_path: Path) -> None:
    sent(tmp_path / "run.journal")
    (tmp_path / "key").write_text("k" * 32)
    args = ["unsubscribe-server", "--listen", "127.0.0.1:0", "--key-file", str(tmp_path / "key")]
    args += ["--store", str(tmp_path / "s.sqlite3"), "--journal", str(tmp_path / "run.journal")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "--journal needs --campaign" in result.stderr


def test_a_postgresql_journal_from_before_the_feedback_table(postgres_url: str) -> None:
    spec = postgres_url + "?campaign=c1"
    sent(spec)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE bulksend_c1.feedback")
    assert "bounced later (DSN after delivery)   0" in report(spec)  # a reader adds nothing
    log = open_feedback_log(spec)  # bulksend inbound adds it
    event = FeedbackEvent("gone@example.com", FeedbackKind.COMPLAINT, 5.0, "arf")
    assert log.record([event]) == [True]
    log.close()
    with open_journal(spec, None) as journal:
        assert journal.feedback_counts() == {(FeedbackKind.COMPLAINT, None): 1}
