"""Recipients: streaming, validation, rejects file, duplicates, suppression, flat memory."""

from __future__ import annotations

import csv
import json
import stat
import tracemalloc
from pathlib import Path

import pytest

from bulksend.campaign import (
    FingerprintSet,
    RecipientReader,
    Reject,
    RejectKind,
    RejectsFile,
    load_suppression,
)
from bulksend.errors import ConfigError


def read(path: Path, **kwargs: object) -> tuple[list[str], list[Reject]]:
    rejects: list[Reject] = []
    reader = RecipientReader(path, on_reject=rejects.append, **kwargs)  # type: ignore[arg-type]
    return [r.address for r in reader], rejects


def test_csv_rows_become_recipients_with_merge_fields(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("\ufeffEmail,first name,city\nAlice@Example.COM,Alice,Paris\n", "utf-8")
    (alice,) = RecipientReader(path)
    assert alice.address == "Alice@example.com"  # local part as given, domain lower-cased
    assert alice.fields == {"Email": "Alice@Example.COM", "first name": "Alice", "city": "Paris"}
    assert alice.line == 2
    assert alice.domain == "example.com"
    assert not alice.needs_smtputf8


def test_bad_rows_go_to_rejects_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(
        b"email,name\n"  # 1
        b"good@example.com,G\n"  # 2
        b"not-an-address,X\n"  # 3
        b"\n"  # 4: blank, skipped silently
        b'"multi@example.com","two\nlines"\n'  # 5-6
        b"short@example.com\n"  # 7
        b",Empty\n"  # 8
        b"two@@example.com,At\n"  # 9
        b"user@localhost,L\n"  # 10
        b"last@example.com,Z\n"  # 11
    )
    addresses, rejects = read(path)
    assert addresses == ["good@example.com", "multi@example.com", "last@example.com"]
    assert [(r.line, r.kind) for r in rejects] == [
        (3, RejectKind.INVALID),
        (7, RejectKind.INVALID),
        (8, RejectKind.INVALID),
        (9, RejectKind.INVALID),
        (10, RejectKind.INVALID),
    ]
    reasons = {r.line: r.reason for r in rejects}
    assert "invalid address" in reasons[3]
    assert reasons[7] == "expected 2 columns, found 1"
    assert reasons[8] == "empty email"
    assert "invalid address" in reasons[9]
    assert rejects[0].raw_email == "not-an-address"


def test_rejects_file_content_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("email\nok@example.com\nbroken\nok@example.com\nOK@EXAMPLE.COM\n")
    rejects_path = tmp_path / "rejects.csv"
    rejects_path.write_text("old personal data\n")
    rejects_path.chmod(0o644)
    with RejectsFile(rejects_path) as rejects:
        got = [r.address for r in RecipientReader(path, on_reject=rejects)]
    assert got == ["ok@example.com", "OK@example.com"]
    assert stat.S_IMODE(rejects_path.stat().st_mode) == 0o600
    with rejects_path.open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["line", "email", "reason"]
    assert rows[1][:2] == ["3", "broken"]
    assert "invalid address" in rows[1][2]
    assert rows[2] == ["4", "ok@example.com", "duplicate address"]
    assert len(rows) == 3


def test_new_rejects_file_is_private(tmp_path: Path) -> None:
    with RejectsFile(tmp_path / "new.csv"):
        pass
    assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o600


def test_duplicates_compare_domain_without_case_local_part_with_case(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "email\na@example.com\na@EXAMPLE.com\nA@example.com\n a@example.com \n"
        "jo@bücher.example\njo@xn--bcher-kva.example\n"
    )
    addresses, rejects = read(path)
    assert addresses == ["a@example.com", "A@example.com", "jo@xn--bcher-kva.example"]
    assert [(r.line, r.kind) for r in rejects] == [
        (3, RejectKind.DUPLICATE),
        (5, RejectKind.DUPLICATE),
        (7, RejectKind.DUPLICATE),
    ]


def test_suppression_list(tmp_path: Path) -> None:
    suppression_path = tmp_path / "suppressed.txt"
    suppression_path.write_text("# unsubscribed\n\nJohn@Example.com\nzoe@bücher.example\n")
    suppression = load_suppression(suppression_path)
    path = tmp_path / "r.csv"
    path.write_text(
        "email\njohn@example.com\nJOHN@example.COM\nzoe@XN--BCHER-KVA.example\nkeep@example.com\n"
    )
    addresses, rejects = read(path, suppression=suppression)
    assert addresses == ["keep@example.com"]
    assert {(r.line, r.kind, r.reason) for r in rejects} == {
        (2, RejectKind.SUPPRESSED, "on the suppression list"),
        (3, RejectKind.SUPPRESSED, "on the suppression list"),
        (4, RejectKind.SUPPRESSED, "on the suppression list"),
    }


def test_missing_suppression_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.txt.*recipients\.suppression"):
        load_suppression(tmp_path / "missing.txt")


def test_idn_and_utf8_local_part(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("email\nuser@Bücher.Example\nüser@bücher.example\n", "utf-8")
    idn, utf8 = RecipientReader(path)
    assert idn.address == "user@xn--bcher-kva.example"
    assert idn.display_address == "user@bücher.example"
    assert not idn.needs_smtputf8
    assert utf8.address == "üser@xn--bcher-kva.example"
    assert utf8.needs_smtputf8


def test_csv_without_email_column_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("mail,name\nx@example.com,X\n")
    with pytest.raises(ConfigError, match=r"r\.csv: line 1: no 'email' column.*email_column"):
        list(RecipientReader(path))
    assert [r.address for r in RecipientReader(path, email_column="mail")] == ["x@example.com"]


def test_missing_recipients_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.csv: cannot read the recipients file"):
        list(RecipientReader(tmp_path / "nope.csv"))


def test_jsonl_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [
        json.dumps({"email": "a@example.com", "name": "A", "n": 3, "tags": ["x"]}),
        "{not json",
        json.dumps(["list"]),
        json.dumps({"name": "no email"}),
        json.dumps({"email": 5}),
        "",
        json.dumps({"email": "b@example.com"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    rejects: list[Reject] = []
    got = list(RecipientReader(path, format="jsonl", on_reject=rejects.append))
    assert [r.address for r in got] == ["a@example.com", "b@example.com"]
    assert got[0].fields["tags"] == ["x"]
    assert got[1].line == 7
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [
        (2, "invalid JSON"),
        (3, "a line must be a JSON object"),
        (4, "'email' is missing"),
        (5, "'email' is not a string"),
    ]


def test_test_domain_allowed_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("email\nuser@mx.test\n")
    assert read(path)[0] == []
    assert read(path, allow_test_domain=True)[0] == ["user@mx.test"]


def test_fingerprint_set_grows_and_answers() -> None:
    table = FingerprintSet(capacity=2)
    keys = [f"user{i}@example.com" for i in range(5000)]
    assert all(table.add(k) for k in keys)
    assert not any(table.add(k) for k in keys[::7])
    assert len(table) == 5000
    assert all(k in table for k in keys)
    assert "other@example.com" not in table
    assert 5 not in table


def _peak_bytes(path: Path, rows: int) -> int:
    with path.open("w") as out:
        out.write("email,first_name,city\n")
        for i in range(rows):
            out.write(f"user{i}@domain{i % 97}.example.com,Name{i},City{i % 13}\n")
    tracemalloc.start()
    try:
        count = sum(1 for _ in RecipientReader(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    return peak


def test_reading_is_streamed_with_flat_memory(tmp_path: Path) -> None:
    """Memory grows only by the 8-byte fingerprints, never by the rows themselves.

    (Sizes are small because tracemalloc slows address validation tenfold.)
    """
    small = _peak_bytes(tmp_path / "small.csv", 8_000)
    large = _peak_bytes(tmp_path / "large.csv", 32_000)
    # A kept Recipient (dict + strings) costs several hundred bytes; the fingerprint table
    # costs 16-32 bytes per distinct address, 48 for a moment while it doubles.
    per_extra_row = (large - small) / 24_000
    assert per_extra_row < 64, (small, large)
