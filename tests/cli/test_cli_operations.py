"""Operating the CLI: empty lists, repeated sends, pipes, busy journals and ports."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from bulksend.cli import main
from bulksend.cli.progress import snapshot_path
from bulksend.cli.run import campaign_sidecar
from bulksend.delivery.shard import Shard
from bulksend.journal import Journal, JournalInUse
from bulksend.testing.scenario import (
    SiteSpec,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript
from tests.cli.cli_helpers import bulksend, run_bulksend, world_args


def _send(runner: CliRunner, campaign: Path, journal: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        main,
        [
            "send",
            str(campaign),
            "--journal",
            str(journal),
            "-q",
            "--nameserver",
            "127.0.0.1",
            *extra,
        ],
    )
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "rows",
    [None, ["not-an-address", "also bad@", "@nobody.test"]],
    ids=["empty-file", "every-row-rejected"],
)
def test_nothing_to_send_is_an_error_and_leaves_no_journal(
    runner: CliRunner, tmp_path: Path, rows: list[str] | None
) -> None:
    campaign = write_campaign(tmp_path / "c", rows or [])
    if rows is None:
        (tmp_path / "c" / "recipients.csv").write_bytes(b"")
    journal = tmp_path / "j.sqlite3"
    code, output = _send(runner, campaign, journal)
    assert code == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"bulksend: error: {tmp_path / 'c' / 'recipients.csv'}: no recipient"
    )
    assert not journal.exists()
    assert not Path(f"{journal}-wal").exists()
    assert not campaign_sidecar(journal).exists()
    assert not snapshot_path(journal).exists()
    # Nothing to resume into, so a corrected file is sent from scratch.
    resumed = runner.invoke(main, ["resume", str(journal)])
    assert resumed.exit_code == 1
    assert "no journal at" in resumed.output


async def test_a_second_full_send_of_a_campaign_is_refused(
    tmp_path: Path, sent_record: Path
) -> None:
    recipients = addresses(["a1.test", "a2.test"], 12)
    campaign = write_campaign(tmp_path / "c", recipients)
    site = SiteSpec("alpha", ("a1.test", "a2.test"), "127.0.0.2")
    first, second = tmp_path / "first.sqlite3", tmp_path / "second.sqlite3"
    with trio.fail_after(90):
        async with running([site]) as world:
            args = ["send", str(campaign), "--quiet", *world_args(world)]
            done = await run_bulksend(tmp_path, *args, "--journal", str(first), name="first")
            assert done.process.returncode == 0, done
            assert world.delivered == 12
            # A typo in --journal: refused, naming the journal that sent it; nothing sent.
            typo = await run_bulksend(tmp_path, *args, "--journal", str(second), name="typo")
            assert typo.process.returncode == 1, typo
            (line,) = typo.stderr().splitlines()
            assert "campaign 'test-campaign' was already sent" in line
            assert str(first) in line
            assert "--send-again" in line
            assert not second.exists()
            assert world.delivered == 12
            # The same journal again is a resume (nothing left to send), not a second send.
            again = await run_bulksend(tmp_path, *args, "--journal", str(first), name="same")
            assert again.process.returncode == 0, again
            # Asked for explicitly: everyone again.
            forced = await run_bulksend(
                tmp_path, *args, "--journal", str(second), "--send-again", name="forced"
            )
            assert forced.process.returncode == 0, forced
            assert set(world.received().values()) == {2}
    assert stat.S_IMODE(sent_record.stat().st_mode) == 0o600
    assert len(sent_record.read_text().splitlines()) == 2


def test_report_reads_a_journal_a_run_holds_and_the_busy_error_names_the_pid(
    runner: CliRunner, finished_journal: Path, tmp_path: Path
) -> None:
    campaign = write_campaign(tmp_path / "c", ["a@one.test"])
    campaign_sidecar(finished_journal).write_text(f"{campaign}\n")
    with Journal.open(finished_journal, None):  # what a running `send` holds
        report = runner.invoke(main, ["report", str(finished_journal)])
        assert report.exit_code == 0, report.output
        assert re.search(r"^delivered +3 ", report.stdout, re.M), report.stdout
        assert "is in use by a run: reporting its last committed state" in report.stderr
        resumed = runner.invoke(main, ["resume", str(finished_journal), "--force"])
    assert resumed.exit_code == 1
    (line,) = resumed.stderr.splitlines()
    assert f"in use by another bulksend process (pid {os.getpid()})" in line
    assert "bulksend status" in line


def test_metrics_port_in_use_names_the_port_and_the_option(
    runner: CliRunner, tmp_path: Path, sent_record: Path
) -> None:
    campaign = write_campaign(tmp_path / "c", ["a@one.test"])
    journal = tmp_path / "j.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _output = _send(runner, campaign, journal, "--metrics-port", str(port))
        result = runner.invoke(main, ["send", str(campaign), "--metrics-port", str(port)])
    assert code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bulksend: error: --metrics-port {port}: cannot listen on 127.0.0.1:")
    assert "choose another port" in line
    # Nothing was sent, so nothing is left that would refuse the next send.
    assert not journal.exists()
    assert not campaign_sidecar(journal).exists()
    assert "test-campaign" not in (sent_record.read_text() if sent_record.exists() else "")


def test_report_into_a_closed_pipe_ends_quietly_by_sigpipe(tmp_path: Path) -> None:
    journal = tmp_path / "big.sqlite3"
    with Journal.open(journal, "pipe-test") as j:
        j.import_recipients(f"user{i}@example{i % 50}.test" for i in range(20_000))
    reader, writer = os.pipe()
    with open(tmp_path / "err", "wb") as err:
        process = subprocess.Popen(  # `bulksend report --format csv | head -1`
            [sys.executable, "-m", "bulksend", "report", "--format", "csv", str(journal)],
            stdout=writer,
            stderr=err,
        )
        os.close(writer)
        with os.fdopen(reader, "rb") as head:
            header = head.readline()
        assert (
            header
            == b"id,address,status,code,enhanced_code,text,category,attempts,in_doubt,time\r\n"
        )
        returncode = process.wait(timeout=60)
    assert returncode == -signal.SIGPIPE
    assert (tmp_path / "err").read_text() == ""


def _free(journal: Path) -> bool:
    """Whether no process holds ``journal`` any more (its run ended)."""
    try:
        Journal.open(journal, None).close()
    except JournalInUse:
        return False
    return True


async def test_workers_stop_quietly_when_the_parent_is_killed(tmp_path: Path) -> None:
    domains = ("one.test", "two.test", "three.test", "four.test")
    sites = [SiteSpec(d.split(".")[0], (d,), f"127.0.0.{i}") for i, d in enumerate(domains, 2)]
    toml = campaign_toml(policy='[policy.defaults]\nrate = "20/s"\n')
    campaign = write_campaign(tmp_path / "c", addresses(list(domains), 2000), toml=toml)
    with trio.fail_after(90):
        async with running(sites) as world:
            args = ["send", str(campaign), "--workers", "2", "--journal", str(tmp_path / "j")]
            async with bulksend(tmp_path, *args, *world_args(world), name="workers") as proc:
                await proc.wait_for(lambda: world.delivered >= 20, 60, "the workers sending")
                proc.signal(signal.SIGKILL)
                await proc.wait(10)
                # The orphaned workers stop on their own and release their journals.
                for shard in (Shard(0, 2), Shard(1, 2)):
                    while not _free(shard.journal(tmp_path / "j")):
                        await trio.sleep(0.1)
    stderr = proc.stderr()
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def _line(text: str, prefix: str) -> str:
    (line,) = [x.strip() for x in text.splitlines() if x.strip().startswith(prefix)]
    return line


async def test_summary_report_rejects_and_workers_agree_on_every_count(tmp_path: Path) -> None:
    domains = ("one.test", "two.test", "three.test", "four.test")
    bad = "user5@two.test"
    sites = [
        SiteSpec(
            d.split(".")[0],
            (d,),
            f"127.0.0.{i}",
            ServerScript(unknown_mailboxes=frozenset({bad})),
        )
        for i, d in enumerate(domains, 2)
    ]
    good = addresses(list(domains), 40)
    # 3 duplicates (one differs only in the domain's case), 2 invalid rows (one without
    # an address to keep), 40 distinct good rows, one of which bounces.
    rows = [*good[:20], good[0], good[1], "user2@THREE.test", *good[20:]]
    rows += ["not-an-address", "two@@one.test"]
    campaigns = [write_campaign(tmp_path / name, rows) for name in ("single", "workers")]
    with trio.fail_after(120):
        async with running(sites) as world:
            common = ["--quiet", "--send-again", *world_args(world)]
            single = await run_bulksend(
                tmp_path, "send", str(campaigns[0]), *common, name="single", seconds=90
            )
            workers = await run_bulksend(
                tmp_path,
                "send",
                str(campaigns[1]),
                "--workers",
                "2",
                "--exit-zero-when-complete",
                *common,
                name="workers",
                seconds=90,
            )
    assert single.process.returncode == 4, single  # complete, one bounce
    assert workers.process.returncode == 0, workers  # the same, for an orchestrator
    journal = tmp_path / "single" / "test-campaign.journal.sqlite3"
    report = await run_bulksend(tmp_path, "report", str(journal), name="report")
    assert report.process.returncode == 0, report
    summary, table = single.stdout(), report.stdout()

    # The rejects file lists exactly the rejected rows the summary and the report count.
    with (tmp_path / "single" / "rejects.csv").open() as f:
        rejects = list(csv.DictReader(f))
    reasons = Counter(r["reason"] for r in rejects)
    assert reasons["duplicate address"] == 3
    assert len(rejects) == 5
    files_line = "recipients file: 45 rows, 40 to send, 5 rejected"
    assert _line(summary, "recipients file:").startswith(files_line)
    assert _line(table, "recipients file:") == files_line
    campaign_line = _line(summary, "campaign:")
    for state, n in [("delivered", 39), ("bounced", 1), ("invalid", 2), ("duplicate", 3)]:
        assert f"{state} {n}" in campaign_line
        assert re.search(rf"^{state}\s+{n}\s", table, re.M), table
    assert re.search(r"^total\s+45\s", table, re.M), table
    in_doubt = "sends in doubt (possibly duplicated): 0"
    assert _line(summary, "sends in doubt") == _line(table, "sends in doubt") == in_doubt

    # --workers prints the same lines as one process for the same campaign.
    for prefix in ("recipients file:", "this run:", "campaign:", "sends in doubt"):
        assert (
            _line(workers.stdout(), prefix).split(" (listed")[0]
            == _line(summary, prefix).split(" (listed")[0]
        )
    assert _line(summary, "this run:") == (
        "this run:  delivered 39  deferred 0  bounced 1  in doubt 0"
    )


async def test_resume_allows_policy_changes_and_refuses_content_changes_unless_forced(
    tmp_path: Path,
) -> None:
    policy = '[policy.defaults]\nrate = "{rate}/s"\n'
    toml = campaign_toml(policy=policy.format(rate=200))
    campaign = write_campaign(tmp_path / "c", addresses(["one.test"], 30), toml=toml)
    journal = tmp_path / "j.sqlite3"
    site = SiteSpec("one", ("one.test",), "127.0.0.2")
    with trio.fail_after(90):
        async with running([site]) as world:
            first = await run_bulksend(
                tmp_path,
                "send",
                str(campaign),
                "--journal",
                str(journal),
                "--limit",
                "5",
                "--quiet",
                *world_args(world),
                name="first",
            )
            assert first.process.returncode == 3, first
            resume = ["resume", str(journal), "--quiet", *world_args(world)]
            # A content change (the subject) is refused, with the diff and the way on.
            campaign.write_text(toml.replace('subject = "Hello', 'subject = "Hi'))
            refused = await run_bulksend(tmp_path, *resume, "--limit", "5", name="refused")
            assert refused.process.returncode == 1, refused
            (line,) = refused.stderr().splitlines()
            assert 'message.subject ("Hello {{ first_name }}' in line
            assert '-> "Hi {{ first_name }}' in line
            assert "--force" in line
            assert "a new journal would send everyone again" in line
            # A policy change alone (the rate) resumes, and says what changed.
            campaign.write_text(policy.format(rate=100).join(toml.split(policy.format(rate=200))))
            slower = await run_bulksend(tmp_path, *resume, "--limit", "5", name="policy")
            assert slower.process.returncode == 3, slower
            assert (
                'sending policy changed since the last run: policy.defaults.rate ("200/s" -> '
                '"100/s")' in slower.stderr()
            )
            # Forced, the content change goes through, and is named.
            campaign.write_text(campaign.read_text().replace('subject = "Hello', 'subject = "Hi'))
            forced = await run_bulksend(tmp_path, *resume, "--force", name="forced")
            assert forced.process.returncode == 0, forced
            assert "campaign content changed (--force): message.subject" in forced.stderr()
            subjects = [t.data for s in world.servers.values() for t in s.transactions]
    assert len(subjects) == 30
    assert sum(b"Subject: Hi " in d for d in subjects) == 20
