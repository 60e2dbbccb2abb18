"""The command line through click's runner: usage, errors, report, status, validate."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bulksend.campaign.authcheck import judge_dkim, judge_dmarc, judge_spf
from bulksend.campaign.render import Campaign
from bulksend.cli import main as cli
from bulksend.cli.progress import snapshot_path, write_snapshot
from bulksend.testing.dns import DNSServer
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.cli.cli_helpers import run_bulksend, world_args


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bulksend: error: "), stderr
    return lines[0]


# --- usage and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["frobnicate"], ["send"], ["send", "missing.toml"], ["report", "x", "--format", "xml"]],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output


def test_limit_must_be_positive(runner: CliRunner, tmp_path: Path) -> None:
    path = write_campaign(tmp_path, addresses(["a.test"], 3))
    result = runner.invoke(cli, ["send", str(path), "--limit", "0"])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["send", "validate"])
def test_a_nameserver_flag_that_is_no_address_is_a_usage_error(
    runner: CliRunner, tmp_path: Path, command: str
) -> None:
    # The same rule as [routing] nameservers; validate crashed on it with "unexpected ValueError".
    path = write_campaign(tmp_path, addresses(["a.test"], 3))
    result = runner.invoke(cli, [command, str(path), "--nameserver", "dns.example"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--nameserver': 'dns.example' is not an IP address" in result.output
    assert not list(tmp_path.glob("*.sqlite3"))  # nothing started


@pytest.mark.parametrize(
    "extra", [["--limit", "5"], ["--accounting", "a.jsonl"], ["--shard", "0/2"]]
)
def test_options_that_workers_cannot_honour_are_refused(
    runner: CliRunner, tmp_path: Path, extra: list[str]
) -> None:
    path = write_campaign(tmp_path, addresses(["a.test"], 3))
    result = runner.invoke(cli, ["send", str(path), "--workers", "2", *extra])
    assert result.exit_code == 2
    assert f"--workers and {extra[0]} do not go together" in result.output
    assert not list(tmp_path.glob("*.sqlite3"))  # nothing started


def test_config_error_is_one_line_and_debug_shows_the_traceback(
    runner: CliRunner, tmp_path: Path
) -> None:
    toml = campaign_toml(extra="[policy.defaults]\nmax_conections = 3\n")
    path = write_campaign(tmp_path, addresses(["a.test"], 3), toml=toml)
    result = runner.invoke(cli, ["send", str(path)])
    assert result.exit_code == 1
    line = _error_line(result.stderr)
    assert "max_conections" in line
    assert "Traceback" not in result.output
    assert not (tmp_path / "test-campaign.journal.sqlite3").exists()

    debug = runner.invoke(cli, ["send", str(path), "--debug"])
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert "ConfigError" in debug.stderr


def test_report_on_something_else_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.sqlite3"
    bogus.write_text("not a database at all, just text " * 100)
    result = runner.invoke(cli, ["report", str(bogus)])
    assert result.exit_code == 1
    assert "not a bulksend journal" in _error_line(result.stderr)
    status = runner.invoke(cli, ["status", str(tmp_path / "none.sqlite3")])
    assert status.exit_code == 1
    assert "no journal" in _error_line(status.stderr)


def test_resume_needs_to_know_the_campaign(runner: CliRunner, finished_journal: Path) -> None:
    result = runner.invoke(cli, ["resume", str(finished_journal)])
    assert result.exit_code == 1
    assert "--campaign" in _error_line(result.stderr)


# --- report --------------------------------------------------------------------------------


def test_report_table(runner: CliRunner, finished_journal: Path) -> None:
    result = runner.invoke(cli, ["report", str(finished_journal)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    # Column widths follow the longest status name ("not rendered"): match the row, not the gap.
    assert re.search(r"^delivered +3 +60\.0%$", out, re.MULTILINE), out
    assert "bounces by category" in out
    assert "bad_mailbox" in out
    assert "one.test" in out
    assert re.search(r"^total +5 *$", out, re.MULTILINE), out


def test_report_csv_and_jsonl_to_private_files(
    runner: CliRunner, finished_journal: Path, tmp_path: Path
) -> None:
    csv_out = tmp_path / "out.csv"
    result = runner.invoke(
        cli, ["report", str(finished_journal), "--format", "csv", "--output", str(csv_out)]
    )
    assert result.exit_code == 0, result.output
    assert _mode(csv_out) == 0o600
    rows = csv_out.read_text().splitlines()
    assert rows[0].startswith("id,address,status")
    assert len(rows) == 6
    assert "'=cmd@two.test" in rows[4]  # spreadsheet formulas defused

    jsonl_out = tmp_path / "out.jsonl"
    jsonl_out.write_text("old")
    jsonl_out.chmod(0o644)
    result = runner.invoke(
        cli,
        [
            "report",
            str(finished_journal),
            "--format",
            "jsonl",
            "-o",
            str(jsonl_out),
            "--status",
            "bounced",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _mode(jsonl_out) == 0o600
    (record,) = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert (record["address"], record["code"], record["status"]) == (
        "=cmd@two.test",
        550,
        "bounced",
    )


# --- status --------------------------------------------------------------------------------


def _site(**kw: object) -> dict[str, object]:
    site: dict[str, object] = {
        "site": "mx1.big.test,mx2.big.test",
        "label": "mx1.big.test,mx2.big.test",
        "domains": 3,
        "connections": 4,
        "senders": 4,
        "backed_off": True,
        "max_connections": 10,
        "rate": 50.0,
        "suspended_for": 0.0,
        "reason": "421 4.7.0 Rate limited",
        "last_error": "",
        "queued": 1234,
    }
    site.update(kw)
    return site


def test_status_without_a_snapshot(runner: CliRunner, finished_journal: Path) -> None:
    result = runner.invoke(cli, ["status", str(finished_journal)])
    assert result.exit_code == 0, result.output
    assert "recipients: 5" in result.stdout
    assert "not running (no status snapshot)" in result.stdout


def test_status_with_a_fresh_and_a_stale_snapshot(
    runner: CliRunner, finished_journal: Path
) -> None:
    snap = {
        "pid": 4242,
        "state": "running",
        "updated_at": time.time(),
        "this_run": {"delivered": 3, "deferred": 0, "bounced": 1, "in_doubt": 0},
        "rate": 12.5,
        "sites": [_site()],
    }
    write_snapshot(snapshot_path(finished_journal), snap)
    assert _mode(snapshot_path(finished_journal)) == 0o600
    result = runner.invoke(cli, ["status", str(finished_journal)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "running: pid 4242" in out
    assert "mx1.big.test +1" in out
    assert "1,234" in out
    assert "4/10" in out
    assert "backed off" in out
    assert "421 4.7.0 Rate limited" in out

    write_snapshot(snapshot_path(finished_journal), snap | {"updated_at": time.time() - 60})
    stale = runner.invoke(cli, ["status", str(finished_journal), "--json"])
    data = json.loads(stale.stdout)
    assert data["running"] is False
    assert data["counts"]["delivered"] == 3


# --- validate ------------------------------------------------------------------------------


def test_validate_without_dns_writes_private_previews(runner: CliRunner, tmp_path: Path) -> None:
    path = write_campaign(tmp_path, [*addresses(["a.test"], 5), "broken"])
    previews = tmp_path / "p"
    result = runner.invoke(
        cli,
        ["validate", str(path), "--no-dns", "--previews", "2", "--preview-dir", str(previews)],
    )
    assert "recipients: 5 of the first 5 rendered" in result.stdout, result.output
    assert "rejected row" in result.stdout
    assert result.exit_code == 4  # a rejected row is a warning
    files = sorted(previews.iterdir())
    assert [f.name for f in files] == ["preview-001.eml", "preview-002.eml"]
    assert all(_mode(f) == 0o600 for f in files)
    assert b"Subject: Hello Reader0" in files[0].read_bytes()


def test_judge_spf() -> None:
    assert judge_spf("s.test", ["v=spf1 ip4:192.0.2.1 -all"])[0].level == "ok"
    assert "no v=spf1" in judge_spf("s.test", ["other"])[0].text
    assert "+all" in judge_spf("s.test", ["v=spf1 +all"])[0].text
    assert "neutral" in judge_spf("s.test", ["v=spf1 ?all"])[0].text
    assert "2 v=spf1" in judge_spf("s.test", ["v=spf1 -all", "v=spf1 ~all"])[0].text
    assert judge_spf("s.test", None)[0].level == "warning"


def test_judge_dkim() -> None:
    mine = "v=DKIM1; k=ed25519; p=AAAA"
    assert judge_dkim("s._domainkey.d.test", ["v=DKIM1; k=ed25519; p=AAAA"], mine)[0].level == "ok"
    assert "not the configured" in judge_dkim("n", ["v=DKIM1; p=BBBB"], mine)[0].text
    assert "revoked" in judge_dkim("n", ["v=DKIM1; p="], mine)[0].text
    assert "no key record" in judge_dkim("n", [], mine)[0].text


def test_judge_dmarc() -> None:
    ok = judge_dmarc("d.test", ["v=DMARC1; p=reject"], dkim_domains=["d.test"], spf_domain="x.t")
    assert [f.level for f in ok] == ["ok"]
    weak = judge_dmarc("d.test", ["v=DMARC1; p=none"], dkim_domains=[], spf_domain="m.d.test")
    assert [f.level for f in weak] == ["warning"]
    assert "p=none" in weak[0].text
    lost = judge_dmarc("d.test", [], dkim_domains=["other.test"], spf_domain="x.test")
    assert len(lost) == 2
    assert "no v=DMARC1" in lost[0].text
    assert "aligns" in lost[1].text


async def test_validate_judges_published_records(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "dkim.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "dkim.pem").chmod(0o600)
    dkim = '[dkim]\ndomain = "sender.test"\nselector = "s1"\nalgorithm = "ed25519-sha256"\n'
    dkim += 'key_file = "dkim.pem"\n'
    path = write_campaign(tmp_path, addresses(["a.test"], 3), toml=campaign_toml(extra=dkim))
    record = Campaign.load(path, {}).signers[0].public_txt_record()
    zones = {
        "sender.test": {"TXT": ['"v=spf1 ip4:192.0.2.10 -all"']},
        "s1._domainkey.sender.test": {"TXT": [f'"{record}"']},
        "_dmarc.sender.test": {"TXT": ['"v=DMARC1; p=none; rua=mailto:d@sender.test"']},
    }
    dns = DNSServer(zones)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(dns.serve)
            proc = await run_bulksend(
                tmp_path,
                "validate",
                str(path),
                "--nameserver",
                "127.0.0.1",
                "--dns-port",
                str(port),
                name="validate",
                seconds=50,
            )
            nursery.cancel_scope.cancel()
    out = proc.stdout()
    assert "ok: SPF: sender.test: v=spf1 ip4:192.0.2.10 -all" in out, proc
    assert "ok: DKIM: s1._domainkey.sender.test publishes the configured key" in out
    assert "warning: DMARC: _dmarc.sender.test policy p=none only monitors (weak)" in out
    assert "1 warning(s)" in out
    assert proc.process.returncode == 4


async def test_dry_run_renders_and_routes_without_a_journal(tmp_path: Path) -> None:
    recipients = [*addresses(["a1.test", "a2.test"], 10), "user@nowhere.test"]
    path = write_campaign(tmp_path, recipients)
    site = SiteSpec("alpha", ("a1.test", "a2.test"), "127.0.0.2")
    with trio.fail_after(60):
        async with running([site]) as world:
            proc = await run_bulksend(
                tmp_path,
                "send",
                str(path),
                "--dry-run",
                *world_args(world),
                name="dry",
                seconds=50,
            )
            assert world.delivered == 0
    out = proc.stdout()
    assert proc.process.returncode == 4, proc
    assert "11 renderable" in out
    assert "domains: 3, 2 routable over 1 sites, 1 unroutable (1 recipients)" in out
    assert "unroutable: nowhere.test" in out
    assert not list(tmp_path.glob("*.sqlite3"))
