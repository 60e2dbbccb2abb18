"""`bulksend send` / `resume` / `status` / `demo` as real processes against test servers."""

from __future__ import annotations

import json
import re
import signal
import stat
from collections import Counter
from pathlib import Path

import pytest
import trio

from bulksend.cli.progress import read_snapshot
from bulksend.journal import Journal, JournalPeek, Status
from bulksend.testing.scenario import SiteSpec, running
from bulksend.testing.smtp import ServerScript
from tests.cli.cli_helpers import (
    bulksend,
    paced_campaign,
    recipients_total,
    run_bulksend,
    scrape,
    world_args,
)

RETRY_SOON = """
[policy.retry]
initial = "1s"
"""

DOMAINS = ["a1.test", "a2.test"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _campaign(tmp_path: Path, count: int, rate: int) -> tuple[Path, list[str]]:
    return paced_campaign(tmp_path, DOMAINS, count, rate, policy=RETRY_SOON)


async def test_send_metrics_accounting_status_match_the_journal(tmp_path: Path) -> None:
    path, _recipients = _campaign(tmp_path, 120, rate=40)
    bad = "user3@a2.test"
    site = SiteSpec(
        "alpha", tuple(DOMAINS), "127.0.0.2", ServerScript(unknown_mailboxes=frozenset({bad}))
    )
    journal = tmp_path / "j.sqlite3"
    accounting = tmp_path / "accounting.jsonl"
    snapshot = tmp_path / "j.sqlite3.status.json"
    with trio.fail_after(90):
        async with (
            running([site]) as world,
            bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--metrics-port",
                "0",
                "--accounting",
                str(accounting),
                "--keep-serving",
                "--grace",
                "2",
                *world_args(world),
                name="send",
            ) as proc,
        ):
            server = world.servers["alpha"]
            await proc.wait_for(lambda: "metrics at http" in proc.stderr(), 20, "the metrics URL")
            found = re.search(r"metrics at (http://\S+)", proc.stderr())
            assert found
            url = found.group(1)
            assert url.startswith("http://127.0.0.1:")  # loopback by default
            await proc.wait_for(lambda: server.stats.messages >= 20, 30, "20 messages")

            # Mid-run: the endpoint, the status snapshot and `bulksend status` agree it runs.
            mid = recipients_total(await scrape(url), "delivered")
            assert 0 < mid < 119

            def snapshot_has_sites() -> bool:
                snap = read_snapshot(snapshot)
                return bool(snap and snap["state"] == "running" and snap["sites"])

            await proc.wait_for(snapshot_has_sites, 10, "the status snapshot")
            assert _mode(snapshot) == 0o600
            assert _mode(accounting) == 0o600
            status = await run_bulksend(tmp_path, "status", str(journal), name="status", seconds=30)
            assert status.process.returncode == 0, status
            assert "running: pid" in status.stdout()
            assert "mx1.alpha.test" in status.stdout()

            def finished() -> bool:
                snap = read_snapshot(snapshot)
                return snap is not None and snap.get("state") == "finished"

            await proc.wait_for(finished, 60, "the run to finish")
            await proc.wait_for(lambda: "serving metrics" in proc.stderr(), 10, "keep-serving")
            end = await scrape(url)
            assert recipients_total(end, "delivered") >= mid
            proc.signal(signal.SIGTERM)
            rc = await proc.wait(20)
        received = [r for t in server.transactions for r in t.rcpt_to]
    assert rc == 4, proc  # complete, but one recipient bounced
    assert "complete after" in proc.stdout()
    with JournalPeek(journal) as peek:
        counts = peek.counts()
    assert counts["delivered"] == 119
    assert counts["bounced"] == 1
    assert recipients_total(end, "delivered") == counts["delivered"] == len(received)
    assert recipients_total(end, "bounced") == 1
    assert end[("bulksend_queue_depth", ())] == 0
    lines = [json.loads(line) for line in accounting.read_text().splitlines()]
    kinds = Counter(r["kind"] for r in lines)
    assert kinds["delivered"] == 119
    assert kinds["bounced"] == 1
    (bounce,) = [r for r in lines if r["kind"] == "bounced"]
    assert (bounce["address"], bounce["code"], bounce["enhanced_code"]) == (bad, 550, "5.1.1")
    assert set(lines[0]) == {
        "time",
        "id",
        "address",
        "domain",
        "site",
        "kind",
        "code",
        "enhanced_code",
        "text",
        "category",
    }
    snap = read_snapshot(snapshot)
    assert snap is not None and snap["state"] == "finished"
    status = await run_bulksend(tmp_path, "status", str(journal), name="status2", seconds=30)
    assert "not running" in status.stdout()


@pytest.mark.parametrize("signals", [1, 2], ids=["graceful", "abort"])
async def test_sigint_stops_and_resume_finishes_exactly_once(tmp_path: Path, signals: int) -> None:
    path, recipients = _campaign(tmp_path, 300, rate=60)
    site = SiteSpec("alpha", tuple(DOMAINS), "127.0.0.2")
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running([site]) as world:
            server = world.servers["alpha"]
            async with bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--grace",
                "5",
                *world_args(world),
                name="send",
            ) as proc:
                await proc.wait_for(lambda: server.stats.messages >= 30, 30, "30 messages")
                for _ in range(signals):
                    proc.signal(signal.SIGINT)
                    await trio.sleep(0.02)
                rc = await proc.wait(30)
            assert rc == 3, proc
            assert "SIGINT: stopping" in proc.stderr()
            if signals == 2:
                assert "SIGINT: aborting" in proc.stderr()
                assert "aborted" in proc.stdout()
            else:
                assert "stopped before completion" in proc.stdout()
            assert "Traceback" not in proc.stderr()
            assert f"bulksend resume {journal}" in proc.stdout()
            sent_before = server.stats.messages
            assert sent_before < 300
            resumed = await run_bulksend(
                tmp_path, "resume", str(journal), *world_args(world), name="resume", seconds=60
            )
            assert resumed.process.returncode == 0, resumed
            received = server.received()
    with Journal.open(journal, None) as j:
        counts = j.counts()
        in_doubt = j.in_doubt_total()
    assert counts[Status.DELIVERED] == 300
    assert set(received) == set(recipients)  # none lost
    repeats = sum(n - 1 for n in received.values())
    assert repeats <= in_doubt  # only a recipient in doubt may have been sent twice


async def test_demo_runs_to_its_report(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    with trio.fail_after(120):
        proc = await run_bulksend(
            tmp_path,
            "demo",
            "--recipients",
            "300",
            "--directory",
            str(directory),
            "--quiet",
            name="demo",
            seconds=110,
        )
    assert proc.process.returncode == 0, proc
    out = proc.stdout()
    assert "bounces by category" in out
    assert "bad_mailbox" in out
    assert "expired" in out
    assert "metrics at http://127.0.0.1:" in proc.stderr()
    # The MTA-STS domain: policy fetched over HTTPS, every recipient over verified STARTTLS.
    sts = re.search(
        r"^example-sts\.test: MTA-STS enforce, (\d+) delivered over verified TLS "
        r"\((\d+) sessions, 0 TLS failures\)$",
        out,
        re.MULTILINE,
    )
    assert sts is not None, out
    assert int(sts[1]) == 3
    assert int(sts[2]) >= 1
    with JournalPeek(directory / "bulksend-demo.journal.sqlite3") as peek:
        counts = peek.counts()
    assert counts["delivered"] > 250
    assert counts["bounced"] >= 1
    assert counts["expired"] >= 1
    waiting = counts["pending"] + counts["in_doubt"]
    assert waiting <= 6  # only the dead site's recipients (2%)
    for name in ("accounting.jsonl", "report.txt", "bulksend-demo.journal.sqlite3.status.json"):
        assert _mode(directory / name) == 0o600
    # The feedback loop: three readers bounce later, one unsubscribes with one click, and the
    # follow-up campaign to the first readers of the list skips them.
    loop = out.split("\nthe feedback loop\n")[1]
    later = loop.split("readers bounced later (a DSN each, read as bulksend inbound reads it): ")
    bounced_later = later[1].split("\n")[0].split(", ")
    unsubscribed = loop.split("and ")[1].split(" unsubscribed with one click")[0]
    assert len(bounced_later) == 3
    assert "unsubscribed with one click (HTTP POST to the endpoint: 200)" in loop
    assert re.search(r"bounced later \(DSN after delivery\) +3\n", out)
    assert re.search(r"\nunsubscribes +1\n", out)
    with Journal.open(directory / "follow-up" / "journal.sqlite3", None) as follow_up:
        suppressed = {s.address: s.text for s in follow_up.iter_states([Status.SUPPRESSED])}
    for address in bounced_later:
        assert suppressed[address] == "suppressed (address): hard_bounce via dsn"
    assert suppressed[unsubscribed] == "suppressed (address): unsubscribe via http"
    # The return paths are signed: a DSN to an untagged one suppresses nobody.
    forged = re.search(
        r"^a forged DSN naming (\S+) \(its return path without the signed tag\) was dropped: "
        r"unsigned$",
        loop,
        re.MULTILINE,
    )
    assert forged is not None, loop
    assert forged[1] not in suppressed
    assert forged[1] not in [*bounced_later, unsubscribed]


async def test_limit_stops_the_run_with_status_3(tmp_path: Path) -> None:
    path, _recipients = _campaign(tmp_path, 60, rate=200)
    site = SiteSpec("alpha", tuple(DOMAINS), "127.0.0.2")
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(60):
        async with running([site]) as world:
            proc = await run_bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--limit",
                "20",
                "--quiet",
                *world_args(world),
                name="limit",
                seconds=50,
            )
            sent = world.delivered
    assert proc.process.returncode == 3, proc
    assert "stopped before completion" in proc.stdout()
    assert proc.stderr() == ""  # --quiet, and no warning for a limit
    with JournalPeek(journal) as peek:
        delivered = peek.counts()["delivered"]
    assert 20 <= delivered == sent < 60
