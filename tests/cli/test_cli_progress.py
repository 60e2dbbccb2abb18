"""The progress display, accounting log and `sink`, piece by piece."""

from __future__ import annotations

import io
import json
import re
import signal
import smtplib
import stat
from pathlib import Path
from typing import Any, cast

import trio
from cli_helpers import bulksend

from bulksend.delivery.scheduler import Scheduler, SiteStatus
from bulksend.journal import Category, Due, Outcome, Status
from bulksend.progress import AccountingLog, Progress, Tally, format_duration


class _Stopping:
    def is_set(self) -> bool:
        return False


class _Delivery:
    stopping = _Stopping()


class _Scheduler:
    delivery = _Delivery()
    complete = False
    destinations: dict[Any, Any] = {}  # noqa: RUF012

    def sites(self) -> list[SiteStatus]:
        return [
            SiteStatus(
                "mx1.big.test,mx2.big.test",
                "big",
                4,
                8,
                8,
                True,
                5,
                25.0,
                0.0,
                "421 4.7.0 Rate limited",
                "",
            ),
            SiteStatus("mx.small.test", "small", 1, 2, 2, False, 5, None, 0.0, "", ""),
        ]


def _due(n: int) -> Due:
    return Due(n, f"u{n}@big.test", "big.test", None, Status.PENDING, 0, 0)


def test_tty_display_redraws_in_place(tmp_path: Path) -> None:
    stream = io.StringIO()
    tally = Tally()
    progress = Progress(tally, stream, tty=True, journal=tmp_path / "j.sqlite3")
    progress.attach(cast(Scheduler, _Scheduler()))
    for i in range(5):
        tally(_due(i), Outcome.delivered(), "big")
    tally(_due(9), Outcome.bounced(550, "5.1.1", "no", Category.BAD_MAILBOX), "big")
    tally(_due(10), Outcome.throttled(1.0), "big")  # our own pacing: not shown
    progress.counts = {"pending": 90, "in_doubt": 0, "expired": 2}
    progress.rate = 30.0
    progress.draw()
    first = stream.getvalue()
    assert "delivered 5  deferred 0  bounced 1  in doubt 0  expired 2" in first
    assert "waiting 90  ETA 0:03" in first
    assert "busiest: mx1.big.test +1 8 conn; mx.small.test 2 conn" in first
    assert "backed off: mx1.big.test +1 (5 conn max, rate 25/s, 421 4.7.0 Rate limited)" in first
    assert "\x1b[" not in first.split("\r")[0]  # nothing to move up over the first time
    progress.draw()
    second = stream.getvalue()[len(first) :]
    assert second.startswith("\x1b[4A")  # back up over the four lines drawn
    assert second.count("\x1b[2K") == 4


def test_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = Progress(Tally(), stream, tty=False, journal=tmp_path / "j.sqlite3")
    progress.attach(cast(Scheduler, _Scheduler()))
    progress.draw()
    line = stream.getvalue()
    assert "\x1b" not in line
    assert line.startswith("bulksend: delivered=0 deferred=0 bounced=0 in_doubt=0 waiting=-")
    assert "backed_off=mx1.big.test +1" in line


def test_format_duration() -> None:
    assert format_duration(None) == "-"
    assert format_duration(float("inf")) == "-"
    assert format_duration(65) == "1:05"
    assert format_duration(3725) == "1:02:05"


def test_accounting_log_is_private_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "acct.jsonl"
    log = AccountingLog(path, clock=lambda: 1_700_000_000.5)
    log.write(_due(1), Outcome.delivered(250, "2.0.0", "OK"), "big")
    log.write(_due(2), Outcome.throttled(3.0), "big")  # not an attempt: not logged
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AccountingLog(path)
    again.write(_due(3), Outcome.deferred(451, "4.7.1", "Greylisted"), "big")
    again.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["delivered", "deferred"]
    assert records[0] == {
        "time": "2023-11-14T22:13:20.500Z",
        "id": 1,
        "address": "u1@big.test",
        "domain": "big.test",
        "site": "big",
        "kind": "delivered",
        "code": 250,
        "enhanced_code": "2.0.0",
        "text": "OK",
        "category": None,
    }


def _send_one(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("a@sender.test", ["b@rcpt.test"], b"Subject: hi\r\n\r\nhello\r\n")


async def test_sink_counts_messages_and_stops_on_sigint(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with bulksend(tmp_path, "sink", "--port", "0", "--every", "1", name="sink") as proc:
            await proc.wait_for(lambda: "listening on" in proc.stdout(), 20, "the sink")
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout())
            assert found
            await trio.to_thread.run_sync(_send_one, int(found.group(1)))
            await proc.wait_for(lambda: "1 messages" in proc.stdout(), 10, "the count")
            proc.signal(signal.SIGINT)
            assert await proc.wait(10) == 0
    assert "sink stopped after 1 messages" in proc.stdout()
