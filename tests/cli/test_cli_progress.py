"""The progress display, accounting log and `sink`, piece by piece."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import stat
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from bulksend.cli.progress import AccountingLog, Progress, Tally, format_duration, site_labels
from bulksend.delivery.scheduler import Scheduler, SiteStatus
from bulksend.journal import Category, Due, Journal, Kind, Outcome, Status
from bulksend.testing.dns import DNSServer
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.cli.cli_helpers import bulksend, run_bulksend, world_args


class _Scheduler:
    stopping = False
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


# --- the live display on a real terminal's terms ----------------------------------------------

_CSI = re.compile(r"\x1b\[(\d*)([AJK])")


class Screen:
    """Just enough of a terminal for the display: auto-wrap at ``width``, CR, LF (as a tty
    with ONLCR prints it), and the three sequences the display uses: CSI n A, CSI 2 K, CSI J.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0

    def _line(self) -> list[str]:
        while len(self.rows) <= self.row:
            self.rows.append([])
        return self.rows[self.row]

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            seq = _CSI.match(text, i)
            if seq:
                n, op = int(seq.group(1) or 1), seq.group(2)
                if op == "A":
                    self.row = max(self.row - n, 0)
                elif op == "K":
                    self._line().clear()
                else:  # J: erase from the cursor to the end of the screen
                    del self._line()[self.col :]
                    del self.rows[self.row + 1 :]
                i = seq.end()
                continue
            char = text[i]
            i += 1
            assert char != "\x1b", f"unexpected escape sequence at {text[i - 1 : i + 8]!r}"
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.row, self.col = self.row + 1, 0
            else:
                if self.col >= self.width:  # wrap
                    self.row, self.col = self.row + 1, 0
                line = self._line()
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = char
                self.col += 1

    def text(self) -> list[str]:
        """The screen's non-empty rows, top to bottom."""
        return [r for r in ("".join(row).rstrip() for row in self.rows) if r]


class _WideScheduler(_Scheduler):
    """Sites whose names and backoff reasons are far wider than a terminal."""

    def sites(self) -> list[SiteStatus]:
        long_reason = "421 4.7.28 " + "Our system has detected an unusual rate of mail " * 3
        return [
            SiteStatus(
                ",".join(f"mx{i}.a-rather-long-provider-name.example" for i in range(3)),
                "big",
                4,
                8,
                8,
                True,
                5,
                25.0,
                0.0,
                long_reason,
                "",
            ),
            SiteStatus("127.0.0.1:2525", "relay-a", 1, 2, 2, False, 5, None, 0.0, "", ""),
            SiteStatus("127.0.0.1:2526", "relay-b", 1, 3, 3, True, 5, None, 0.0, "451 4.3.0", ""),
        ]


def _wide_progress(tmp_path: Path, stream: io.StringIO, width: int) -> Progress:
    progress = Progress(
        Tally(), stream, tty=True, journal=tmp_path / "j.sqlite3", width=lambda: width
    )
    progress.attach(cast(Scheduler, _WideScheduler()))
    progress.counts = {"pending": 12_345_678, "in_doubt": 0, "expired": 0}
    return progress


@pytest.mark.parametrize("width", [40, 80])
def test_frames_fit_the_terminal_and_leave_no_stale_lines(tmp_path: Path, width: int) -> None:
    stream = io.StringIO()
    progress = _wide_progress(tmp_path, stream, width)
    for _ in range(5):
        progress.draw()
    screen = Screen(width)
    screen.feed(stream.getvalue())
    frame = progress.lines(width)
    shown = screen.text()
    # Exactly one frame on screen: no wrapped remains of earlier frames piled up above it.
    assert len(shown) == len(frame)
    for line, full in zip(shown, frame, strict=True):
        assert len(line) <= width
        assert line == full or (line.endswith("…") and full.startswith(line[:-1]))


@pytest.mark.parametrize("width", [40, 60, 120])
def test_narrow_terminals_get_more_lines_not_fewer_numbers(tmp_path: Path, width: int) -> None:
    stream = io.StringIO()
    progress = _wide_progress(tmp_path, stream, width)
    progress.tally.kinds.update(
        {Kind.DELIVERED: 1_234_567, Kind.DEFERRED: 8_910, Kind.BOUNCED: 1_112, Kind.IN_DOUBT: 13}
    )
    progress.counts = {"pending": 12_345_678, "in_doubt": 0, "expired": 1_415}
    progress.sample(0.0)
    progress.draw()
    progress.draw()
    screen = Screen(width)
    screen.feed(stream.getvalue())
    shown = screen.text()
    assert all(len(line) <= width for line in shown), shown
    assert len(shown) == len(progress.lines(width))  # nothing wrapped: one frame, exactly
    text = "\n".join(shown)
    for number in (
        "delivered 1,234,567",
        "deferred 8,910",
        "bounced 1,112",
        "in doubt 13",
        "expired 1,415",
        "0 msg/s",
        "waiting 12,345,678",
        "ETA -",
        "elapsed 0:0",
        "8 conn",
        "busiest: mx0.a",
    ):
        assert any(number in line for line in shown), (number, text)
    if width >= 120:  # wide: one line per group, as before
        assert (
            shown[0]
            == "delivered 1,234,567  deferred 8,910  bounced 1,112  in doubt 13  expired 1,415"
        )


def test_messages_stay_above_the_live_frame(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = _wide_progress(tmp_path, stream, 80)
    progress.draw()
    notice = "bulksend: SIGINT: stopping; in-flight messages get up to 30s"
    progress.message(notice)
    progress.draw()
    progress.draw()
    screen = Screen(80)
    screen.feed(stream.getvalue())
    shown = screen.text()
    assert shown[0] == notice
    assert len(shown) == 1 + len(progress.lines(80))  # the notice, then one frame


def test_sites_on_one_host_get_distinct_labels_with_their_ports(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = _wide_progress(tmp_path, stream, 200)
    progress.draw()
    text = stream.getvalue()
    assert "127.0.0.1:2525 2 conn; 127.0.0.1:2526 3 conn" in text
    assert "backed off: 127.0.0.1:2526 (" in text
    assert site_labels(["a,b", "a,c", "mx.x.test", "mx.y.test:2525"]) == {
        "a,b": "a,b",  # both would be "a +1": the full names tell them apart
        "a,c": "a,c",
        "mx.x.test": "mx.x.test",
        "mx.y.test:2525": "mx.y.test:2525",
    }
    assert site_labels(["m1.t,m2.t,m3.t:26"]) == {"m1.t,m2.t,m3.t:26": "m1.t:26 +2"}


def test_no_eta_while_nothing_is_delivered(tmp_path: Path) -> None:
    tally = Tally()
    progress = Progress(tally, io.StringIO(), tty=True, journal=tmp_path / "j.sqlite3")
    progress.attach(cast(Scheduler, _Scheduler()))
    progress.counts = {"pending": 100, "in_doubt": 0, "expired": 0}
    progress.sample(0.0)
    for i in range(50):  # the receiver is down: every attempt is deferred
        tally(_due(i), Outcome.deferred(421, "4.4.2", "connection refused"), "big")
        progress.sample(0.1 * (i + 1))
    assert "0 msg/s" in progress.lines()[1]
    assert "ETA -" in progress.lines()[1]
    for i in range(150):  # it is back: 10 delivered per second, for longer than the window
        tally(_due(i), Outcome.delivered(), "big")
        progress.sample(20.0 + 0.1 * (i + 1))
    progress.counts = {"pending": 50, "in_doubt": 0, "expired": 0}
    assert "ETA 0:05" in progress.lines()[1]


# --- a hostile server's reply text, end to end ---------------------------------------------------

#: Window title (OSC ... BEL), clear screen (CSI 2J), a C1 CSI (U+009B), DEL, a bidi override.
HOSTILE = b"\x1b]0;pwned\x07\x1b[2J\xc2\x9b31m\x7f\xe2\x80\xaeevil"
RAW_CONTROLS = (b"\x07", b"\x1b]", b"\x1b[2J", b"\xc2\x9b", b"\x7f", b"\xe2\x80\xae")
#: How the hostile text reads once escaped.
ESCAPED = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\u202eevil"

HOSTILE_POLICY = """
[policy.retry]
initial = "1s"
maximum = "1s"
max_age = "4s"

[[policy.backoff]]
code = 451
text = "(?i)slow down"
suspend = "1s"
duration = "2s"
"""


def _without_display_codes(data: bytes) -> bytes:
    """The pty's bytes less the display's own cursor movements and erasures."""
    return re.sub(rb"\x1b\[(?:\d+A|2K|J)", b"", data)


def _read_pty(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_hostile_reply_text_is_escaped_everywhere_it_is_shown(tmp_path: Path) -> None:
    no_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no certificate: fails
    sites = [
        SiteSpec(
            "hostile",
            ("hostile.test",),
            "127.0.0.2",
            ServerScript(replies={"RCPT": b"451 4.7.0 slow down " + HOSTILE + b"\r\n"}),
        ),
        SiteSpec(
            "bouncer",
            ("bouncer.test",),
            "127.0.0.4",
            ServerScript(replies={"RCPT": b"550 5.7.1 go away " + HOSTILE + b"\r\n"}),
        ),
        SiteSpec("notls", ("notls.test",), "127.0.0.3", ServerScript(tls_context=no_tls)),
    ]
    toml = write_campaign(
        tmp_path / "c",
        addresses(["hostile.test", "bouncer.test", "notls.test"], 6),
        toml=campaign_toml(policy=HOSTILE_POLICY),
    )
    journal = tmp_path / "j.sqlite3"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with trio.fail_after(90):
            async with running(sites) as world:
                process = await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-m",
                        "bulksend",
                        "send",
                        str(toml),
                        "--journal",
                        str(journal),
                        *world_args(world),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=slave,
                )
                os.close(slave)
                slave = -1
                async with trio.open_nursery() as nursery:
                    shown: list[bytes] = []

                    async def read() -> None:
                        shown.append(await trio.to_thread.run_sync(_read_pty, master))

                    nursery.start_soon(read)
                    code = await process.wait()
                delivered = world.servers["notls"].stats.messages
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    display = shown[0]
    assert code == 4, display.decode(errors="replace")  # bounced and expired recipients
    assert delivered == 2  # in plaintext, after the failed STARTTLS
    # Warnings are shown by default: the backoff and the STARTTLS fallback.
    assert b"warning: site " in display
    assert b"backing off" in display
    assert b"STARTTLS failed" in display
    status = await run_bulksend(tmp_path, "status", str(journal), name="status")
    status_json = await run_bulksend(tmp_path, "status", "--json", str(journal), name="json")
    csv_out = await run_bulksend(tmp_path, "report", str(journal), "--format", "csv", name="csv")
    jsonl = await run_bulksend(tmp_path, "report", str(journal), "--format", "jsonl", name="jsonl")
    outputs = {
        "progress": _without_display_codes(display),
        "status": status.out.read_bytes(),
        "status --json": status_json.out.read_bytes(),
        "csv": csv_out.out.read_bytes(),
        "jsonl": jsonl.out.read_bytes(),
    }
    for name, data in outputs.items():
        for raw in RAW_CONTROLS:
            assert raw not in data, f"{name} shows {raw!r} raw"
        assert b"\x1b" not in data, f"{name} has an escape sequence"
    assert ESCAPED.encode() in outputs["progress"]
    assert ESCAPED.encode() in outputs["status"]
    assert ESCAPED.encode() in outputs["csv"]
    texts = [json.loads(line)["text"] for line in jsonl.stdout().splitlines()]
    assert any(text and ESCAPED in text for text in texts)


# --- a large import: progress shown, Ctrl-C obeyed at once ---------------------------------------


async def test_sigint_during_a_large_import_stops_it_at_once(tmp_path: Path) -> None:
    toml = write_campaign(tmp_path / "c", addresses(["big.test", "small.test"], 200_000))
    journal = tmp_path / "j.sqlite3"
    with socket.socket() as sock:  # a resolver port where nothing answers: no DNS is needed
        sock.bind(("127.0.0.1", 0))
        dns_port = sock.getsockname()[1]
    args = ["--nameserver", "127.0.0.1", "--dns-port", str(dns_port)]
    with trio.fail_after(120):
        async with bulksend(
            tmp_path, "send", str(toml), "--journal", str(journal), *args, name="send"
        ) as proc:
            await proc.wait_for(
                lambda: "importing recipients: rows=" in proc.stderr(), 60, "import progress"
            )
            proc.signal(signal.SIGINT)
            signalled = trio.current_time()
            code = await proc.wait(30)
            stopped_after = trio.current_time() - signalled
    assert code == 3, proc  # stopped, resumable
    assert stopped_after < 10, proc
    assert "SIGINT: stopping before sending began" in proc.stderr()
    assert "Traceback" not in proc.stderr()
    assert (
        proc.stdout() == f"stopped before sending began: continue with: bulksend resume {journal}\n"
    )
    # The journal is clearly not imported (a later run resumes the import), never taken
    # for a complete campaign.
    with Journal.open(journal, None) as j:
        assert not j.import_complete
    status = await run_bulksend(tmp_path, "status", str(journal), name="status")
    assert f"import: not finished; `bulksend resume {journal}` continues it\n" in status.stdout()


async def test_dry_run_reports_its_phases(tmp_path: Path) -> None:
    # Rows are reported every few seconds while they render (too slow to wait for here);
    # the routing phase is announced with its size.
    path = write_campaign(tmp_path, addresses(["a1.test", "a2.test"], 10))
    site = SiteSpec("alpha", ("a1.test", "a2.test"), "127.0.0.2")
    with trio.fail_after(60):
        async with running([site]) as world:
            proc = await run_bulksend(
                tmp_path, "send", str(path), "--dry-run", *world_args(world), name="dry"
            )
    assert proc.process.returncode == 0, proc
    assert "bulksend: dry run: 10 recipients read; routing 2 domains\n" in proc.stderr()


async def test_workers_show_warnings_with_reply_text_escaped(tmp_path: Path) -> None:
    site = SiteSpec(
        "hostile",
        ("hostile.test", "hostile2.test"),
        "127.0.0.2",
        ServerScript(replies={"RCPT": b"451 4.7.0 slow down " + HOSTILE + b"\r\n"}),
    )
    toml = write_campaign(
        tmp_path / "c",
        addresses(["hostile.test", "hostile2.test"], 4),
        toml=campaign_toml(policy=HOSTILE_POLICY),
    )
    with trio.fail_after(90):
        async with running([site]) as world:
            proc = await run_bulksend(
                tmp_path,
                "send",
                str(toml),
                "--journal",
                str(tmp_path / "j.sqlite3"),
                "--workers",
                "2",
                *world_args(world),
                name="workers",
                seconds=80,
            )
    shown = proc.err.read_bytes()
    assert proc.process.returncode == 4, proc
    assert b"backing off" in shown
    assert ESCAPED.encode() in shown
    for raw in (*RAW_CONTROLS, b"\x1b"):
        assert raw not in shown, f"{raw!r} raw on stderr"


async def test_validate_escapes_the_dns_text_it_prints(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, addresses(["a.test"], 3))
    # The HOSTILE bytes in a TXT record's presentation format (\DDD: decimal octets).
    hostile = "".join(chr(b) if 0x20 < b < 0x7F and b != 0x5C else f"\\{b:03d}" for b in HOSTILE)
    zones = {"sender.test": {"TXT": [f'"v=spf1 ip4:192.0.2.10 {hostile} -all"']}}
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
            )
            nursery.cancel_scope.cancel()
    shown = proc.out.read_bytes()
    assert f"ok: SPF: sender.test: v=spf1 ip4:192.0.2.10 {ESCAPED} -all\n".encode() in shown, proc
    for raw in (*RAW_CONTROLS, b"\x1b"):
        assert raw not in shown, f"{raw!r} raw in validate's output"


def test_accounting_log_escapes_reply_text(tmp_path: Path) -> None:
    path = tmp_path / "acct.jsonl"
    log = AccountingLog(path)
    text = "slow down " + HOSTILE.decode()
    log.write(_due(1), Outcome.deferred(451, "4.7.0", text), "big")
    log.close()
    data = path.read_bytes()
    for raw in (*RAW_CONTROLS, b"\x1b"):
        assert raw not in data, f"{raw!r} raw in the accounting log"
    assert json.loads(data)["text"] == "slow down " + ESCAPED
