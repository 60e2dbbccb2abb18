"""``bulksend inbound ingest``: mailboxes in, rows in the store and counts out."""

from __future__ import annotations

import mailbox
import shutil
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksend.campaign import Campaign
from bulksend.cli import main as cli
from bulksend.config import SuppressionReason
from bulksend.inbound.ingest import messages
from bulksend.inbound.parse import MAX_SIZE, Kind, parse_message
from bulksend.journal import Journal, NewRecipient
from bulksend.suppression.store import Source, SuppressionStore
from bulksend.testing.scenario import campaign_toml, write_campaign

FIXTURES = Path(__file__).parent / "fixtures"
SENDER = "bounces+{token}@sender.test"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def stored(path: Path) -> dict[str, tuple[SuppressionReason, Source]]:
    with SuppressionStore.open(path) as store:
        return {e.key: (e.reason, e.source) for e in store.entries()}


def test_ingest_a_folder_of_eml_files(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite3"
    args = ["inbound", "ingest", str(FIXTURES), "--store", str(store), "--sender", SENDER]
    result = runner.invoke(cli, [*args, "-v"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "unknown_token.eml: unknown_recipient" in lines
    assert "postfix_delayed.eml: delay" in lines
    assert "vacation.eml: auto_reply" in lines
    assert [line.split() for line in lines[-8:]] == [
        ["suppressed", "6"],
        ["counted", "1"],
        ["not_suppressed", "1"],
        ["unknown_recipient", "1"],
        ["delay", "1"],
        ["ignored", "1"],
        ["auto_reply", "2"],
        ["not_feedback", "2"],  # a person's reply; the mailto unsubscribe, with no mailto given
    ]
    hard, complaint = (
        (SuppressionReason.HARD_BOUNCE, Source.DSN),
        (
            SuppressionReason.COMPLAINT,
            Source.ARF,
        ),
    )
    assert stored(store) == {
        "gone@example.com": hard,
        "missing@gmail.com": hard,
        "nobody@contoso.com": hard,
        "nobody@yahoo.com": hard,
        "reader@outlook.com": complaint,
        "reader@yahoo.com": complaint,
    }
    # The unknown token's Final-Recipient was not suppressed; delays and auto-replies neither.
    assert "victim@example.com" not in stored(store)
    # Soft bounces count towards the limit (3 by default): the mailbox-full DSN twice more.
    for _ in range(2):
        full = ["inbound", "ingest", str(FIXTURES / "exim_mailbox_full.eml")]
        assert runner.invoke(cli, [*full, "--store", str(store)]).exit_code == 0
    assert stored(store)["full@example.org"] == (SuppressionReason.SOFT_BOUNCE, Source.DSN)


def test_ingest_a_maildir_and_an_mbox(runner: CliRunner, tmp_path: Path) -> None:
    maildir = mailbox.Maildir(tmp_path / "Maildir", create=True)
    maildir.add((FIXTURES / "gmail_5_1_1.eml").read_bytes())
    maildir.add((FIXTURES / "vacation.eml").read_bytes())
    mbox = mailbox.mbox(tmp_path / "bounces.mbox", create=True)
    mbox.add((FIXTURES / "yahoo_arf.eml").read_bytes())
    mbox.add((FIXTURES / "human_reply.eml").read_bytes())
    mbox.close()
    store = tmp_path / "s.sqlite3"
    for source in ("Maildir", "bounces.mbox"):
        args = ["inbound", "ingest", str(tmp_path / source), "--store", str(store)]
        result = runner.invoke(cli, [*args, "--sender", SENDER, "-v"])
        assert result.exit_code == 0, result.output
    assert set(stored(store)) == {"missing@gmail.com", "reader@yahoo.com"}
    assert "bounces.mbox#2: not_feedback" in result.stdout


def test_ingest_with_the_campaign_and_its_journal(runner: CliRunner, tmp_path: Path) -> None:
    extra = '[suppression]\nstore = "s.sqlite3"\n'
    toml = campaign_toml(extra=extra).replace(
        "[unsubscribe]\n", '[unsubscribe]\nmailto = "unsubscribe@sender.test"\n'
    )
    recipients = ["gone@example.com", "user1@ok.test", "reader10@example.com"]
    campaign_path = write_campaign(tmp_path, recipients, toml=toml)
    campaign = Campaign.load(campaign_path, {})
    journal = tmp_path / "journal.sqlite3"
    with Journal.open(journal, "test") as opened:
        opened.import_recipients([NewRecipient(a, {}) for a in recipients])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("postfix_5_1_1.eml", "gmail_5_1_1.eml", "mailto_unsubscribe.eml"):
        shutil.copy(FIXTURES / name, inbox / name)
    # A bounce to a shared return path from a forwarding host: Final-Recipient is an alias,
    # only the returned Message-ID says whose message it was.
    (inbox / "alias.eml").write_text(
        "From: MAILER-DAEMON@ok.test\n"
        "To: bounces@sender.test\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
        "--b\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; ok.test\n\n"
        "Final-Recipient: rfc822; mbox-4711@store.ok.test\n"
        "Action: failed\nStatus: 5.1.1\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n"
        f"Message-ID: {campaign.message_id('user1@ok.test')}\n\n"
        "--b--\n"
    )
    args = ["inbound", "ingest", str(inbox), "--campaign", str(campaign_path)]
    result = runner.invoke(cli, [*args, "--journal", str(journal), "-v"])
    assert result.exit_code == 0, result.output
    assert "alias.eml: suppressed" in result.stdout
    assert "mailto_unsubscribe.eml: suppressed" in result.stdout
    # missing@gmail.com is not a recipient of this campaign: counted and dropped.
    assert "gmail_5_1_1.eml: unknown_recipient" in result.stdout
    assert stored(tmp_path / "s.sqlite3") == {
        "gone@example.com": (SuppressionReason.HARD_BOUNCE, Source.DSN),
        "user1@ok.test": (SuppressionReason.HARD_BOUNCE, Source.DSN),
        "reader10@example.com": (SuppressionReason.UNSUBSCRIBE, Source.MAILTO),
    }


def test_a_campaign_without_a_store_uses_the_one_beside_its_journal(
    runner: CliRunner, tmp_path: Path
) -> None:
    # The run sent with `--journal state/j.sqlite3`: its store is state/suppression.sqlite3,
    # and inbound, given that journal, applies the bounce there (not beside the campaign).
    campaign_path = write_campaign(tmp_path / "c", ["gone@example.com"], toml=campaign_toml())
    journal = tmp_path / "state" / "j.sqlite3"
    journal.parent.mkdir()
    with Journal.open(journal, "test") as opened:
        opened.import_recipients([NewRecipient("gone@example.com", {})])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(FIXTURES / "postfix_5_1_1.eml", inbox / "bounce.eml")
    args = ["inbound", "ingest", str(inbox), "--campaign", str(campaign_path)]
    result = runner.invoke(cli, [*args, "--journal", str(journal)])
    assert result.exit_code == 0, result.output
    assert stored(journal.parent / "suppression.sqlite3") == {
        "gone@example.com": (SuppressionReason.HARD_BOUNCE, Source.DSN)
    }
    assert not (campaign_path.parent / "suppression.sqlite3").exists()


def test_the_campaigns_verp_key_signs_and_verifies(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "verp.key").write_text("a-verp-key-of-32-bytes-or-so-xyz\n")
    (tmp_path / "verp.key").chmod(0o600)
    extra = '[suppression]\nstore = "s.sqlite3"\n\n[bounces]\nkey_file = "verp.key"\n'
    toml = campaign_toml(extra=extra).replace(
        "[unsubscribe]\n", '[unsubscribe]\nmailto = "unsubscribe@sender.test"\n'
    )
    recipients = ["gone@example.com", "missing@gmail.com", "reader10@example.com"]
    campaign_path = write_campaign(tmp_path, recipients, toml=toml)
    signed = Campaign.load(campaign_path, {}).envelope_sender("gone@example.com")
    assert signed != "bounces+gone=example.com@sender.test"
    journal = tmp_path / "journal.sqlite3"
    with Journal.open(journal, "test") as opened:
        opened.import_recipients([NewRecipient(a, {}) for a in recipients])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    bounce = (FIXTURES / "postfix_5_1_1.eml").read_bytes()
    (inbox / "signed.eml").write_bytes(
        bounce.replace(b"bounces+gone=example.com@sender.test", signed.encode())
    )
    forged = "bounces+" + "a" * 8 + signed[len("bounces+") + 8 :]
    (inbox / "forged.eml").write_bytes(
        bounce.replace(b"bounces+gone=example.com@sender.test", forged.encode())
    )
    shutil.copy(FIXTURES / "gmail_5_1_1.eml", inbox / "unsigned.eml")  # a recipient, no tag
    shutil.copy(FIXTURES / "mailto_unsubscribe.eml", inbox / "mailto.eml")
    args = ["inbound", "ingest", str(inbox), "--campaign", str(campaign_path), "-v"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = sorted(result.stdout.splitlines()[:4])
    # Without --journal a mailto unsubscribe names its recipient by no tag either.
    assert lines == [
        "forged.eml: forged",
        "mailto.eml: unsigned",
        "signed.eml: suppressed",
        "unsigned.eml: unsigned",
    ]
    assert set(stored(tmp_path / "s.sqlite3")) == {"gone@example.com"}
    # With the journal, a mailto unsubscribe of one of its recipients counts.
    result = runner.invoke(cli, [*args, "--journal", str(journal)])
    assert "mailto.eml: suppressed" in result.stdout
    assert "unsigned.eml: unsigned" in result.stdout


def test_a_short_verp_key_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "short.key").write_text("tiny")
    args = ["inbound", "ingest", str(FIXTURES), "--store", str(tmp_path / "s.sqlite3")]
    args += ["--sender", SENDER, "--verp-key-file", str(tmp_path / "short.key")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert "short.key: the key is 4 bytes, under 16" in result.stderr


def test_journal_without_campaign_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    with Journal.open(journal, "test") as opened:
        opened.import_recipients([NewRecipient("a@x.test", {})])
    args = ["inbound", "ingest", str(FIXTURES), "--store", str(tmp_path / "s.sqlite3")]
    result = runner.invoke(cli, [*args, "--journal", str(journal)])
    assert result.exit_code == 2
    assert "--journal needs --campaign" in result.stderr


def test_a_sender_without_token_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    args = ["inbound", "ingest", str(FIXTURES), "--store", str(tmp_path / "s.sqlite3")]
    result = runner.invoke(cli, [*args, "--sender", "bounces@sender.test"])
    assert result.exit_code == 1
    assert "has no {token}" in result.stderr


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_a_huge_message_in_a_mailbox_is_not_read_whole(tmp_path: Path, kind: str) -> None:
    # 60 MB: the parser refuses anything over 10 MB, so no more than that is read.
    huge = b"From: MAILER-DAEMON@mx.test\nSubject: failure notice\n\n" + b"x" * 75 + b"\n"
    huge += huge[-76:] * ((60 << 20) // 76)
    if kind == "maildir":
        box: mailbox.Mailbox[mailbox.Message] = mailbox.Maildir(tmp_path / "box")
    else:
        box = mailbox.mbox(tmp_path / "box")
    box.add(huge)
    box.close()
    del huge
    tracemalloc.start()
    try:
        ((_name, data),) = list(messages(tmp_path / "box"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) == MAX_SIZE + 1
    assert peak < 2 * MAX_SIZE
    assert parse_message(data).kind is Kind.UNPARSEABLE


def test_a_verp_key_without_a_return_path_is_a_usage_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "verp.key").write_text("a-verp-key-of-32-bytes-or-so-xyz")
    args = ["inbound", "ingest", str(FIXTURES), "--store", str(tmp_path / "s.sqlite3")]
    result = runner.invoke(cli, [*args, "--verp-key-file", str(tmp_path / "verp.key")])
    assert result.exit_code == 2
    assert "a VERP key needs the return path: give --sender or --campaign" in result.stderr
