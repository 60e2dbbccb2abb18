"""The journal file: creation, schema, import, claiming due recipients, reports, refusals."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bulksend.errors import JournalError
from bulksend.journal import (
    Category,
    Journal,
    JournalPeek,
    NewRecipient,
    Outcome,
    Status,
    campaign_identity,
    export_csv,
    export_jsonl,
    hash_files,
)
from tests.helpers.files import flip
from tests.journal.journal_helpers import IDENTITY, T0, addresses

Opener = Callable[..., Journal]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_private(open_journal: Opener, journal_path: Path) -> None:
    j = open_journal()
    j.import_recipients(addresses(5), now=T0)
    j.fetch_due("a.example", 2, now=T0)  # a write: the WAL and its index exist now
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(journal_path) + suffix)
        assert path.exists(), suffix
        assert mode(path) == 0o600, suffix


@pytest.mark.sqlite_only
def test_one_status_per_recipient_is_enforced_by_the_schema(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE recipients SET status = 'sent' WHERE id = 1")
    # A final recipient cannot also be scheduled, a waiting one must be due or claimed.
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE recipients SET status = 'delivered' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE recipients SET next_attempt_at = NULL WHERE id = 1")
    db.close()


def test_import_stores_rows(journal: Journal) -> None:
    assert journal.import_complete
    assert journal.counts()[Status.PENDING] == 10
    due = journal.fetch_due("b.example", 1, now=T0)
    assert [(d.id, d.address, d.domain, d.data, d.status, d.attempts) for d in due] == [
        (2, "user1@b.example", "b.example", {"i": 1}, Status.PENDING, 0)
    ]
    # A second import is a no-op.
    assert journal.import_recipients(["late@a.example"], now=T0).imported == 0


def test_import_normalises_the_domain_and_drops_duplicates(open_journal: Opener) -> None:
    j = open_journal()
    stats = j.import_recipients(
        [
            "Bob@Example.COM",
            NewRecipient("bob@example.com"),  # another mailbox: local parts are case-sensitive
            "Bob@example.com",  # the first one again
            NewRecipient("not-an-address", status=Status.INVALID, reason="no @"),
            NewRecipient("gone@example.com", status=Status.SUPPRESSED, reason="unsubscribed"),
        ],
        now=T0,
    )
    assert (stats.imported, stats.duplicates) == (4, 1)
    rows = {s.id: s for s in j.iter_states()}
    assert sorted(rows) == [1, 2, 4, 5]
    assert rows[1].address == "Bob@example.com"
    assert rows[1].domain == "example.com"
    assert (rows[4].status, rows[4].text) == (Status.INVALID, "no @")
    assert rows[5].status is Status.SUPPRESSED
    assert j.due_domains(now=T0) == {"example.com": 2}


def test_rows_left_out_are_counted_as_the_recipients_are_read(open_journal: Opener) -> None:
    # The caller counts what it leaves out while the import reads: read only at the end.
    left_out: dict[str, int] = {}

    def reading() -> Iterator[str]:
        for i, address in enumerate(addresses(6)):
            if i % 3 == 0:
                left_out["invalid"] = left_out.get("invalid", 0) + 1
            else:
                yield address
        yield addresses(6)[1]  # a duplicate

    j = open_journal()
    j.import_recipients(reading(), now=T0, not_imported=left_out, batch_size=2)
    assert j.not_imported() == {"invalid": 2, "duplicate": 1}
    assert sum(j.counts().values()) == 4


def test_import_rejects_pending_rows_without_a_domain(open_journal: Opener) -> None:
    j = open_journal()
    with pytest.raises(ValueError, match="no domain"):
        j.import_recipients(["nobody"], now=T0)


def test_partial_import_resumes_where_it_stopped(open_journal: Opener) -> None:
    items = addresses(25)

    def crashing() -> Iterator[str]:
        for i, a in enumerate(items):
            if i == 17:
                raise RuntimeError("reader died")
            yield a

    j = open_journal()
    with pytest.raises(RuntimeError):
        j.import_recipients(crashing(), now=T0, batch_size=5)
    assert not j.import_complete
    with pytest.raises(JournalError, match="import has not finished"):
        j.fetch_due("a.example", 1, now=T0)
    j.close()

    j = open_journal()
    assert not j.import_complete
    stats = j.import_recipients(items, now=T0, batch_size=5)
    assert (stats.skipped, stats.imported) == (15, 10)
    assert j.import_complete
    assert [s.address for s in j.iter_states()] == items


def test_fetch_due_claims(journal: Journal) -> None:
    first = journal.fetch_due("a.example", 3, now=T0)
    assert [d.id for d in first] == [1, 3, 5]
    second = journal.fetch_due("A.EXAMPLE", 10, now=T0)
    assert [d.id for d in second] == [7, 9]  # claimed ones are not handed out twice
    assert journal.fetch_due("a.example", 10, now=T0) == []
    assert journal.due_domains(now=T0) == {"b.example": 5}
    assert journal.due_domains(now=T0 - 1) == {}
    assert journal.next_due_at() == T0


def test_released_recipients_come_back(journal: Journal) -> None:
    claimed = journal.fetch_due("a.example", 5, now=T0)
    for d in claimed:
        journal.record(d.id, Outcome.released(), now=T0 + 1)
    again = journal.fetch_due("a.example", 5, now=T0 + 1)
    assert [d.id for d in again] == [d.id for d in claimed]
    assert all(d.status is Status.PENDING and d.attempts == 0 for d in again)
    assert journal.in_doubt_total() == 0


def test_final_outcomes_are_never_undone(journal: Journal) -> None:
    [d] = journal.fetch_due("a.example", 1, now=T0)
    assert journal.record(d.id, Outcome.delivered(250, "2.0.0", "queued"), now=T0)
    assert not journal.record(d.id, Outcome.bounced(550, "5.1.1", "no such user"), now=T0)
    assert not journal.record(d.id, Outcome.throttled(5.0), now=T0)
    assert not journal.record(999, Outcome.delivered(), now=T0)  # unknown recipient
    row = journal.get(d.id)
    assert row is not None
    assert (row.status, row.attempts, row.code, row.text) == (Status.DELIVERED, 1, 250, "queued")


def _deliver_some(journal: Journal) -> None:
    due = journal.fetch_due("a.example", 5, now=T0) + journal.fetch_due("b.example", 5, now=T0)
    outcomes = [
        Outcome.delivered(250, "2.0.0", "ok"),
        Outcome.bounced(
            550, "5.1.1", '=HYPERLINK("http://evil") user unknown', Category.BAD_MAILBOX
        ),
        Outcome.bounced(554, "5.7.1", "blocked", Category.POLICY),
        Outcome.deferred(421, "4.7.0", "later", Category.POLICY),
        Outcome.delivered(),
        Outcome.delivered(),
        Outcome.bounced(550, "5.7.1", "spam", Category.POLICY),
        Outcome.in_doubt(),
    ]
    for d, outcome in zip(due, outcomes, strict=False):
        journal.record(d.id, outcome, now=T0 + 10)
    for d in due[len(outcomes) :]:
        journal.record(d.id, Outcome.released(), now=T0 + 10)


def test_reports(journal: Journal) -> None:
    _deliver_some(journal)
    counts = journal.counts()
    assert counts == {
        Status.PENDING: 3,
        Status.IN_DOUBT: 1,
        Status.DELIVERED: 3,
        Status.BOUNCED: 3,
        Status.EXPIRED: 0,
        Status.SUPPRESSED: 0,
        Status.INVALID: 0,
        Status.NOT_RENDERED: 0,
        Status.CANCELLED: 0,
    }
    assert sum(counts.values()) == 10
    assert journal.counts_by_category() == {Category.BAD_MAILBOX: 1, Category.POLICY: 2}
    by_domain = journal.counts_by_domain()
    assert sum(sum(v.values()) for v in by_domain.values()) == 10
    assert by_domain["a.example"][Status.DELIVERED] == 2
    assert journal.in_doubt_total() == 1


def test_exports(journal: Journal) -> None:
    _deliver_some(journal)
    out = io.StringIO(newline="")
    assert export_csv(journal.iter_states(), out) == 10
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == 10
    assert rows[0] == {
        "id": "1",
        "address": "user0@a.example",
        "status": "delivered",
        "code": "250",
        "enhanced_code": "2.0.0",
        "text": "ok",
        "category": "",
        "attempts": "1",
        "in_doubt": "0",
        "time": "2024-01-01T00:00:10+00:00",
    }
    # Remote text that a spreadsheet would run as a formula is defused.
    assert rows[2]["text"].startswith("'=HYPERLINK")

    lines = io.StringIO()
    assert export_jsonl(journal.iter_states([Status.BOUNCED]), lines) == 3
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [r["status"] for r in records] == ["bounced"] * 3
    assert records[0]["text"].startswith("=HYPERLINK")  # JSON keeps it as it came
    assert records[0]["code"] == 550


def test_changed_campaign_is_refused_unless_forced(open_journal: Opener) -> None:
    j = open_journal()
    j.import_recipients(addresses(3), now=T0)
    campaign_id = j.campaign_id
    j.close()
    changed = {**IDENTITY, "recipients file": "r2"}
    with pytest.raises(JournalError, match=r"recipients file changed") as info:
        open_journal(identity=changed)
    assert "templates" not in str(info.value)
    j = open_journal(identity=changed, force=True)
    assert j.forced
    assert j.campaign_id == campaign_id  # Message-IDs stay the same
    assert j.counts()[Status.PENDING] == 3
    j.close()
    j = open_journal(identity=changed)
    assert not j.forced  # the new identity is now the stored one
    j.close()
    with pytest.raises(JournalError, match="campaign, campaign file, recipients file, templates"):
        open_journal(identity="just-a-hash")  # a different set of parts


def test_reports_open_without_identity(journal: Journal, open_journal: Opener) -> None:
    journal.close()
    assert open_journal(identity=None).counts()[Status.PENDING] == 10


def test_a_new_journal_needs_an_identity(open_journal: Opener, journal_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        open_journal(identity=None)
    assert not journal_path.exists()  # a report on a wrong path leaves nothing behind
    journal_path.touch()
    with pytest.raises(JournalError, match="identity"):
        open_journal(identity=None)


@pytest.mark.sqlite_only
def test_one_process_at_a_time(journal: Journal, open_journal: Opener) -> None:
    with pytest.raises(JournalError, match="in use"):
        open_journal()


@pytest.mark.parametrize(
    "content",
    [b"recipient,name\nbob@example.com,Bob\n" * 300, b"SQLite format 3\x00" + b"\xff" * 5000],
)
def test_a_corrupt_file_is_refused(
    open_journal: Opener, journal_path: Path, content: bytes
) -> None:
    journal_path.write_bytes(content)
    with pytest.raises(JournalError, match="not a bulksend journal"):
        open_journal()
    assert journal_path.read_bytes() == content  # never silently replaced


def test_another_sqlite_database_is_refused(open_journal: Opener, journal_path: Path) -> None:
    db = sqlite3.connect(journal_path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="another SQLite database"):
        open_journal()


@pytest.mark.sqlite_only
def test_a_wrong_schema_version_is_refused(journal: Journal, open_journal: Opener) -> None:
    journal.close()
    db = sqlite3.connect(journal.path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(JournalError, match="schema version 99"):
        open_journal()


def test_an_empty_file_becomes_a_journal(open_journal: Opener, journal_path: Path) -> None:
    journal_path.touch()
    open_journal().import_recipients(addresses(2), now=T0)


def test_identity_helpers(tmp_path: Path) -> None:
    campaign = tmp_path / "campaign.toml"
    template = tmp_path / "body.txt"
    recipients = tmp_path / "recipients.csv"
    campaign.write_text("subject = 'hi'\n")
    template.write_text("Hello {{ name }}\n")
    recipients.write_text("email\nbob@example.com\n")
    first = campaign_identity(campaign, [template], recipients)
    assert first == campaign_identity(campaign, [template], recipients)
    recipients.write_text("email\nalice@example.com\n")
    second = campaign_identity(campaign, [template], recipients)
    assert [k for k in first if first[k] != second[k]] == ["recipients file"]
    assert hash_files([campaign, template]) != hash_files([template, campaign])
    with pytest.raises(JournalError, match="cannot read"):
        hash_files([tmp_path / "missing"])


@pytest.mark.sqlite_only
def test_disk_full_during_import_stops_the_journal(open_journal: Opener) -> None:
    j = open_journal()
    pages = j._db.execute("PRAGMA page_count").fetchone()[0]
    j._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLITE_FULL, as from ENOSPC
    items = [NewRecipient(a, {"pad": "x" * 500}) for a in addresses(200)]
    with pytest.raises(JournalError, match="database or disk is full"):
        j.import_recipients(items, now=T0, batch_size=50)
    with pytest.raises(JournalError, match="stopped"):
        j.record(1, Outcome.delivered(), now=T0)
    assert not j.import_complete


@pytest.mark.sqlite_only
def test_a_failed_claim_leaves_commits_synced(journal: Journal) -> None:
    # A claim commits without its own fsync (synchronous = NORMAL for that transaction);
    # one that fails half-way must not leave every later outcome commit unsynced.
    with pytest.raises(TypeError):
        journal.fetch_due("a.example", None, now=T0)  # type: ignore[arg-type]
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal.record(1, Outcome.delivered(), now=T0)
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert [d.id for d in journal.fetch_due("a.example", 2, now=T0)] == [3, 5]


# --- damage and lost history ---------------------------------------------------------------


def state_file(path: Path) -> Path:
    return path.with_name(path.name + ".state")


def deliver_some(journal: Journal, n: int) -> None:
    for due in journal.fetch_due("a.example", n, now=T0):
        journal.record(due.id, Outcome.delivered(), now=T0)


def copy_journal(path: Path, into: Path, *suffixes: str) -> Path:
    """Copy a journal's files (the main file and those ``suffixes``), as a backup would."""
    into.mkdir()
    for suffix in ("", *suffixes):
        shutil.copyfile(path.with_name(path.name + suffix), into / (path.name + suffix))
    return into / path.name


def main_file_rows(path: Path) -> int:
    """Recipients in the main file alone (immutable: SQLite ignores any -wal)."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM recipients").fetchone()[0])
    finally:
        db.close()


@pytest.mark.sqlite_only
def test_a_journal_copied_without_its_wal_is_refused(journal: Journal, tmp_path: Path) -> None:
    # The outcomes since the import live in the -wal until a checkpoint: a copy of the main
    # file alone (or a journal whose -wal was lost) must not pass for a journal with nothing
    # sent, or every recipient delivered since would be mailed again, 0 counted in doubt.
    deliver_some(journal, 3)
    copy = copy_journal(journal.path, tmp_path / "backup", ".state")
    assert main_file_rows(copy) == 10  # the checkpoint after the import kept the recipients
    with pytest.raises(JournalError, match=r"lost committed history: it holds \d+ of the \d+"):
        Journal.open(copy, IDENTITY)
    with pytest.raises(JournalError, match="lost committed history"):
        JournalPeek(copy, check=True)


@pytest.mark.sqlite_only
def test_a_torn_wal_tail_is_refused(journal: Journal, tmp_path: Path) -> None:
    # SQLite silently stops reading a -wal at the first frame that fails its checksum and
    # falls back to the commit before: the commit count in the state file notices.
    deliver_some(journal, 3)
    copy = copy_journal(journal.path, tmp_path / "backup", "-wal", ".state")
    wal = copy.with_name(copy.name + "-wal")
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 100)
    with pytest.raises(JournalError, match="lost committed history"):
        Journal.open(copy, IDENTITY)


@pytest.mark.sqlite_only
def test_a_whole_copy_resumes(journal: Journal, tmp_path: Path) -> None:
    deliver_some(journal, 3)
    copy = copy_journal(journal.path, tmp_path / "backup", "-wal", ".state")
    with Journal.open(copy, IDENTITY) as j:
        assert j.counts()[Status.DELIVERED] == 3


def test_an_emptied_journal_with_a_state_file_is_refused(
    journal: Journal, open_journal: Opener, journal_path: Path
) -> None:
    journal.close()
    journal_path.write_bytes(b"")  # as a journal that lived in its lost -wal
    with pytest.raises(JournalError, match="it is empty, yet its state file records 10 "):
        open_journal()
    assert journal_path.read_bytes() == b""  # not re-created


def test_a_journal_without_its_state_file_is_refused(
    journal: Journal, open_journal: Opener, journal_path: Path
) -> None:
    journal.close()
    state_file(journal_path).unlink()
    with pytest.raises(JournalError, match=r"no state file .*\.state"):
        open_journal()


def recipients_root_page(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        root = int(
            db.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'recipients'").fetchone()[0]
        )
    finally:
        db.close()
    return (root - 1) * page_size


@pytest.mark.parametrize("where", ["pages", "check constraint"])
def test_a_damaged_journal_is_refused_before_anything_is_written(
    journal: Journal, open_journal: Opener, journal_path: Path, where: str
) -> None:
    deliver_some(journal, 3)
    journal.close()  # checkpointed: everything is in the main file
    data = journal_path.read_bytes()
    if where == "pages":
        flip(journal_path, recipients_root_page(journal_path), 8)  # the b-tree page header
    else:
        # One letter of a state name in the CHECK text: SQLite still parses it.
        flip(journal_path, data.index(b"status = 'expired'") + 10, 1)
    damaged = journal_path.read_bytes()
    for opening in (
        open_journal,
        lambda: open_journal(identity=None),
        lambda: JournalPeek(journal_path, check=True),
    ):
        with pytest.raises(JournalError, match=r"is damaged: .*; restore it from a backup"):
            opening()
    assert journal_path.read_bytes() == damaged


def test_suppress_waiting_marks_unclaimed_waiting_recipients(journal: Journal) -> None:
    [claimed] = journal.fetch_due("a.example", 1, now=T0)  # user0, in a sender's hands
    journal.record(3, Outcome.delivered(), now=T0)  # user2: final, stays delivered
    journal.record(5, Outcome.in_doubt(), now=T0)  # user4: in doubt, waiting
    on_list = {"user0@a.example", "user2@a.example", "user4@a.example", "user6@a.example"}
    assert journal.suppress_waiting(on_list.__contains__, now=T0) == 2
    statuses = {s.address: s.status for s in journal.iter_states()}
    assert statuses["user0@a.example"] is Status.PENDING  # claimed: the sender drops it
    assert statuses["user2@a.example"] is Status.DELIVERED
    assert statuses["user4@a.example"] is statuses["user6@a.example"] is Status.SUPPRESSED
    assert all(d.id != 7 for d in journal.fetch_due("a.example", 10, now=T0 + 1e6))
    assert journal.record(claimed.id, Outcome.suppressed(), now=T0)
    assert journal.get(claimed.id).status is Status.SUPPRESSED  # type: ignore[union-attr]
    assert journal.get(claimed.id).attempts == 0  # type: ignore[union-attr]


def test_another_journals_state_file_is_refused(
    journal: Journal, open_journal: Opener, journal_path: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.journal"
    Journal.open(other, {"campaign": "another"}, now=T0).close()
    journal.close()
    shutil.copyfile(state_file(other), state_file(journal_path))
    with pytest.raises(JournalError, match="belongs to another journal"):
        open_journal()


def test_warmup_states_are_saved_and_survive_a_reopen(open_journal: Opener) -> None:
    # The egress sources' warm-up counts (bulksend.egress.warmup) live in the journal: each
    # update sees the state saved before it (None at first) and replaces it.
    seen: list[str | None] = []

    def put(state: str) -> Callable[[str | None], str]:
        def change(saved: str | None) -> str:
            seen.append(saved)
            return state

        return change

    journal = open_journal()
    journal.update_warmup("ip1", put('{"start": 1.0, "day": 1, "sent": 5}'))
    journal.update_warmup("ip2", put('{"start": 2.0, "day": 1, "sent": 1}'))
    saved = journal.update_warmup("ip1", put('{"start": 1.0, "day": 2, "sent": 0}'))  # replaced
    assert saved == '{"start": 1.0, "day": 2, "sent": 0}'
    journal.close()
    reopened = open_journal()
    reopened.update_warmup("ip1", put("1"))
    reopened.update_warmup("ip2", put("2"))
    assert seen == [
        None,
        None,
        '{"start": 1.0, "day": 1, "sent": 5}',
        '{"start": 1.0, "day": 2, "sent": 0}',
        '{"start": 2.0, "day": 1, "sent": 1}',
    ]
