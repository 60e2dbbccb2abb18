"""``bulksend suppress``: what a user sees, the exit statuses, and the CSV round trip."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.config import SuppressionReason
from bulksend.suppression.backend import open_suppression_store
from bulksend.suppression.store import Source, SuppressionStore
from bulksend.testing.scenario import campaign_toml, write_campaign


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, store: Path | str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(cli, ["suppress", *args, "--store", str(store)])
    return result.exit_code, result.stdout, result.stderr


def test_add_check_remove(runner: CliRunner, store_spec: Path | str) -> None:
    store = store_spec
    code, out, _ = invoke(runner, store, "add", "John@Example.COM", "@blocked.test")
    assert code == 0
    assert out.startswith("john@example.com: manual via cli, 1x, last ")
    assert "\nblocked.test: manual via cli" in out
    if isinstance(store, Path):
        assert stat.S_IMODE(store.stat().st_mode) == 0o600

    code, out, _ = invoke(runner, store, "check", "JOHN@example.com", "x@Blocked.test")
    assert code == 0
    assert "JOHN@example.com: suppressed: manual via cli" in out
    assert "x@Blocked.test: suppressed (domain blocked.test): manual via cli" in out

    code, out, _ = invoke(runner, store, "check", "other@example.com", "john@example.com")
    assert code == 4
    assert "other@example.com: not suppressed" in out

    code, out, _ = invoke(runner, store, "remove", "john@EXAMPLE.com", "nobody@example.com")
    assert code == 0
    assert out == "john@example.com: removed\nnobody@example.com: was not suppressed\n"
    assert invoke(runner, store, "check", "john@example.com")[0] == 4


def test_add_refuses_what_is_no_address(runner: CliRunner, tmp_path: Path) -> None:
    code, _, err = invoke(runner, tmp_path / "s.sqlite3", "add", "user@")
    assert code == 2
    assert "neither an address nor a domain" in err


def test_soft_bounces_added_by_hand_expire(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite3"
    code, out, _ = invoke(runner, store, "add", "--reason", "soft_bounce", "a@x.test")
    assert code == 0
    assert ", expires " in out
    code, out, _ = invoke(runner, store, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["key", "reason", "source", "count", "last", "seen", "expires"]
    assert lines[1].split()[:4] == ["a@x.test", "soft_bounce", "cli", "1"]


def test_list_hides_expired_entries_unless_all(runner: CliRunner, store_spec: Path | str) -> None:
    store = store_spec
    with open_suppression_store(store) as opened:
        opened.add("old@x.test", SuppressionReason.SOFT_BOUNCE, Source.DSN, now=1.0, expires_at=2.0)
        opened.add("new@x.test", SuppressionReason.COMPLAINT, Source.ARF, now=1.0)
    _, out, err = invoke(runner, store, "list")
    assert "new@x.test" in out
    assert "old@x.test" not in out
    assert "1 entries" in err
    _, out, _ = invoke(runner, store, "list", "--all", "--reason", "soft_bounce")
    assert "old@x.test" in out
    assert "never" not in out
    assert "new@x.test" not in out


def test_export_import_round_trip(
    runner: CliRunner, tmp_path: Path, store_spec: Path | str
) -> None:
    # From either backend into a SQLite file, and out again: the same CSV.
    first = store_spec
    with open_suppression_store(first) as opened:
        opened.add(
            "a@x.test",
            SuppressionReason.HARD_BOUNCE,
            Source.DSN,
            now=1_700_000_000.0,
            detail="=cmd|' /C calc'!A0 550 5.1.1\x1b[31m",
        )
        opened.add("a@x.test", SuppressionReason.HARD_BOUNCE, Source.DSN, now=1_700_000_100.0)
        opened.add(
            "b@x.test",
            SuppressionReason.SOFT_BOUNCE,
            Source.CAMPAIGN,
            now=1_700_000_000.0,
            expires_at=1_900_000_000.0,
        )
        opened.add("x.test", SuppressionReason.MANUAL, Source.CLI, now=1_700_000_000.0)
    exported = tmp_path / "out.csv"
    assert invoke(runner, first, "export", "--all", "-o", str(exported))[0] == 0
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    text = exported.read_text()
    assert text.splitlines() == [
        "address,reason,source,first_seen,last_seen,count,expires,detail",
        "a@x.test,hard_bounce,dsn,2023-11-14T22:13:20Z,2023-11-14T22:15:00Z,2,,"
        "'=cmd|' /C calc'!A0 550 5.1.1\\x1b[31m",
        "b@x.test,soft_bounce,campaign,2023-11-14T22:13:20Z,2023-11-14T22:13:20Z,1,"
        "2030-03-17T17:46:40Z,",
        "x.test,manual,cli,2023-11-14T22:13:20Z,2023-11-14T22:13:20Z,1,,",
    ]
    second = tmp_path / "second.sqlite3"
    code, _, err = invoke(runner, second, "import", str(exported))
    assert code == 0
    assert "imported 3 entries, skipped 0" in err
    again = tmp_path / "again.csv"
    assert invoke(runner, second, "export", "--all", "-o", str(again))[0] == 0
    assert again.read_text() == text


def test_import_names_bad_rows_and_takes_an_email_column(runner: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "list.csv"
    source.write_text(
        "Email,first_name\nSomeone@X.test,Ann\nnot-an-address@,Bob\n\nother@x.test,Cy\n"
    )
    store = tmp_path / "s.sqlite3"
    code, _, err = invoke(runner, store, "import", "--reason", "unsubscribe", str(source))
    assert code == 0
    assert "line 3: 'not-an-address@' is neither an address nor a domain; skipped" in err
    assert "imported 2 entries, skipped 1" in err
    with SuppressionStore.open(store) as opened:
        keys = [(e.key, e.reason, e.source, e.expires_at) for e in opened.entries()]
    assert keys == [
        ("other@x.test", SuppressionReason.UNSUBSCRIBE, Source.CLI, None),
        ("someone@x.test", SuppressionReason.UNSUBSCRIBE, Source.CLI, None),
    ]


def test_import_without_an_address_column_is_one_error_line(
    runner: CliRunner, tmp_path: Path
) -> None:
    source = tmp_path / "list.csv"
    source.write_text("name\nAnn\n")
    code, _, err = invoke(runner, tmp_path / "s.sqlite3", "import", str(source))
    assert code == 1
    assert err == f"bulksend: error: {source}: line 1: no 'address' (or 'email') column\n"


def test_the_store_can_come_from_the_campaign(runner: CliRunner, tmp_path: Path) -> None:
    extra = '[suppression]\nstore = "s.sqlite3"\n'
    campaign = write_campaign(tmp_path, ["a@x.test"], toml=campaign_toml(extra=extra))
    result = runner.invoke(cli, ["suppress", "add", "a@x.test", "--campaign", str(campaign)])
    assert result.exit_code == 0
    with SuppressionStore.open(tmp_path / "s.sqlite3") as opened:
        assert opened.check("a@x.test") is not None
    # A campaign that names no store has the default one beside it.
    plain = write_campaign(tmp_path / "plain", [])
    result = runner.invoke(cli, ["suppress", "add", "b@x.test", "--campaign", str(plain)])
    assert result.exit_code == 0, result.stderr
    with SuppressionStore.open(plain.parent / "suppression.sqlite3") as opened:
        assert opened.check("b@x.test") is not None
    assert result.stderr == (
        f"bulksend: warning: {plain} names no store: this is {plain.parent}/suppression.sqlite3,"
        " beside its default journal; a run given --journal elsewhere keeps its store beside"
        " that journal (give --store, or --journal where the command has it)\n"
    )
    (plain.parent / "test-campaign.journal.sqlite3").touch()  # a run used the default journal
    result = runner.invoke(cli, ["suppress", "check", "b@x.test", "--campaign", str(plain)])
    assert "warning" not in result.stderr
    none = write_campaign(
        tmp_path / "none", [], toml=campaign_toml(extra="[suppression]\nstore = false\n")
    )
    result = runner.invoke(cli, ["suppress", "list", "--campaign", str(none)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"bulksend: error: {none}: the campaign uses no suppression store (store = false)\n"
    )
    result = runner.invoke(cli, ["suppress", "list"], env={"BULKSEND_SUPPRESSION_STORE": ""})
    assert result.exit_code == 2
    assert "--store PATH or --campaign FILE" in result.stderr


def test_import_skips_an_unreadable_row(runner: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "list.csv"
    huge = "x" * 200_000  # over the csv module's field size limit
    source.write_text(f"address,detail\na@x.test,\nb@x.test,{huge}\nc@x.test,\n")
    store = tmp_path / "s.sqlite3"
    code, _, err = invoke(runner, store, "import", str(source))
    assert code == 0
    assert "line 3: unreadable CSV (field larger than field limit (131072)); skipped" in err
    assert "imported 2 entries, skipped 1" in err
