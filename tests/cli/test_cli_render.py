"""Render failures through the command line (issue 13.8): a template typo stops `send` and
`validate` before anything happens; systematic failures stop a run (exit 1, nothing bounced);
`resume --retry-unrendered` sends to the set-aside recipients once the template is fixed."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import trio
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.journal import JournalPeek
from bulksend.testing.scenario import (
    TEXT_BODY,
    SiteSpec,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from tests.cli.cli_helpers import run_bulksend, world_args

ONE_SENDER = "[policy.defaults]\nmax_connections = 1\n"
SITE = SiteSpec("alpha", ("a.test",), "127.0.0.2")


async def test_a_template_typo_stops_send_and_validate_before_anything(tmp_path: Path) -> None:
    toml = campaign_toml().replace("your code is {{ code }}", "your code is {{ cdoe }}")
    path = write_campaign(tmp_path / "c", addresses(["a.test"], 50), toml=toml)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(60):
        async with running([SITE]) as world:
            proc = await run_bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "-q",
                *world_args(world),
                name="send",
            )
            server = world.servers["alpha"]
    assert proc.process.returncode == 1, proc
    (line,) = proc.stderr().splitlines()
    assert line.startswith("bulksend: error: ")
    assert "message.subject: the template reads 'cdoe'" in line
    assert "(columns: code, email, first_name)" in line
    assert server.stats.connections_opened == 0
    assert not journal.exists()

    result = CliRunner().invoke(cli, ["validate", str(path), "--no-dns"])
    assert result.exit_code == 1, result.output
    assert "the template reads 'cdoe'" in result.stderr


async def test_a_stopped_run_then_a_fixed_resume_sends_each_once(tmp_path: Path) -> None:
    recipients = addresses(["a.test"], 150)
    # Rows 120 on (beyond the checked sample) make the template divide by zero.
    body = TEXT_BODY + "{{ 1000 // ((code | int) < 120) }}\n"
    path = write_campaign(tmp_path / "c", recipients, toml=campaign_toml(policy=ONE_SENDER))
    (tmp_path / "c" / "body.txt").write_text(body)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running([SITE]) as world:
            args = ["--journal", str(journal), "-q", *world_args(world)]
            stopped = await run_bulksend(tmp_path, "send", str(path), *args, name="send")
            with JournalPeek(journal) as peek:
                after_stop = peek.counts()
            # The fix still fails one row: it is set aside again, the rest are sent.
            fixed = body.replace("< 120", "!= 130")
            (tmp_path / "c" / "body.txt").write_text(fixed)
            resumed = await run_bulksend(
                tmp_path,
                "resume",
                str(journal),
                "--force",
                "--retry-unrendered",
                *args[2:],
                name="resume",
            )
            received = world.received()
    assert stopped.process.returncode == 1, stopped
    assert "renders fail systematically: 20 messages in a row" in stopped.stderr()
    assert "nothing was bounced" in stopped.stderr()
    assert "--retry-unrendered" in stopped.stdout()
    assert after_stop["bounced"] == 0
    assert after_stop["delivered"] == 120
    assert after_stop["not_rendered"] >= 20

    assert resumed.process.returncode == 4, resumed  # complete, one recipient not rendered
    assert f"requeued:  {after_stop['not_rendered']} recipients not rendered" in resumed.stdout()
    assert "1 recipients not rendered" in resumed.stdout()
    assert set(received) == set(recipients) - {"user130@a.test"}
    assert set(received.values()) == {1}

    report = CliRunner().invoke(
        cli, ["report", str(journal), "--format", "csv", "--status", "not_rendered"]
    )
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert [(r["address"], r["status"]) for r in rows] == [("user130@a.test", "not_rendered")]
    assert "ZeroDivisionError" in rows[0]["text"]
    status = CliRunner().invoke(cli, ["status", str(journal)])
    assert "not rendered" in status.stdout


async def test_workers_stopped_by_the_breaker_exit_1_with_the_reason(tmp_path: Path) -> None:
    recipients = addresses(["a.test"], 150)
    path = write_campaign(tmp_path / "c", recipients, toml=campaign_toml(policy=ONE_SENDER))
    (tmp_path / "c" / "body.txt").write_text(TEXT_BODY + "{{ 1000 // ((code | int) < 120) }}\n")
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running([SITE]) as world:
            proc = await run_bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--workers",
                "2",
                "-q",
                *world_args(world),
                name="send",
                seconds=100,
            )
            received = world.received()
    assert proc.process.returncode == 1, proc
    assert "renders fail systematically: 20 messages in a row" in proc.stderr()
    assert len(received) == 120
