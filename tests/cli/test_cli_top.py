"""`bulksend top`: rows from two status answers, rich at 60 and 120 columns, plain text when
piped, and in tmux panes of 60 and 120 columns against a real run."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console

from bulksend.cli.top import plain_table, rich_table, site_rows, sort_rows
from tests.cli.cli_helpers import run_bulksend
from tests.cli.test_cli_ctl import ctl, sending

LONG_ERROR = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail " * 2


def _site(name: str, outcomes: dict[str, int], **changes: Any) -> dict[str, Any]:
    site: dict[str, Any] = {
        "site": name,
        "label": name,
        "domains": 1,
        "connections": 2,
        "senders": 2,
        "backed_off": False,
        "max_connections": 4,
        "rate": 20.0,
        "suspended_for": 0.0,
        "reason": "",
        "last_error": "",
        "paused_for": 0.0,
        "in_flight": 1,
        "queued": 1200,
        "outcomes": outcomes,
    }
    site.update(changes)
    return site


def _status(time: float, sites: list[dict[str, Any]]) -> dict[str, Any]:
    return {"time": time, "stopping": False, "unrouted": 0, "sites": sites, "control": {}}


BEFORE = _status(
    100.0,
    [
        _site("mx1.big.test,mx2.big.test", {"delivered": 100, "deferred": 10}),
        _site("mx.small.test", {"delivered": 5}),
    ],
)
NOW = _status(
    102.0,
    [
        _site(
            "mx1.big.test,mx2.big.test",
            {"delivered": 140, "deferred": 14, "bounced": 3},
            backed_off=True,
            suspended_for=20.0,
            reason="421 4.7.0 Try again later",
            last_error=LONG_ERROR,
            queued=50_000,
        ),
        _site("mx.small.test", {"delivered": 9}, paused_for=math.inf, queued=10),
    ],
)


def test_rows_rates_and_states() -> None:
    big, small = site_rows(NOW, BEFORE)
    assert (big.delivered_per_s, big.deferred_per_s, big.bounced) == (20.0, 2.0, 3)
    assert big.rate_used == (40 + 4 + 3) / 2
    assert (big.state, big.reason) == ("suspended 0:20", "421 4.7.0 Try again later")
    assert (small.state, small.reason, small.delivered_per_s) == (
        "paused",
        "paused by bulksend ctl",
        2.0,
    )
    assert [r.site for r in site_rows(NOW, None)] == [big.site, small.site]
    assert site_rows(NOW, None)[0].delivered_per_s == 0.0  # no rate from one answer
    assert [r.site for r in sort_rows([small, big], "queued")] == [big.site, small.site]
    assert [r.site for r in sort_rows([big, small], "site")] == [small.site, big.site]


def _render(width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(rich_table(sort_rows(site_rows(NOW, BEFORE), "queued"), width, "top"))
    return console.export_text().splitlines()


def test_rich_fits_60_columns_and_shows_more_at_120() -> None:
    narrow = _render(60)
    assert all(len(line) <= 60 for line in narrow)
    assert narrow[1].split() == ["site", "queued", "dlv/s", "conn", "state"]
    assert "last error" not in "\n".join(narrow)
    assert any("mx1.big.test" in line and "50,000" in line for line in narrow)
    wide = _render(120)
    assert all(len(line) <= 120 for line in wide)
    text = "\n".join(wide)
    assert "last error" in text and "421 4.7.28" in text
    assert "…" in text  # the long error is cut, not wrapped
    assert len(wide) == len(narrow)  # one line per site, header and title, at both widths


def test_plain_has_every_column_and_no_escapes() -> None:
    text = plain_table(site_rows(NOW, BEFORE), "title")
    assert "\x1b" not in text
    header = text.splitlines()[1].split()
    assert header[:3] == ["site", "queued", "flight"]
    assert "mx1.big.test +1" in text and "paused" in text


async def test_top_against_a_run_plain_when_piped(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with sending(tmp_path, 600, rate=20) as (_world, proc, journal):
            await ctl(tmp_path, journal, "pause", "--site", "beta.test")
            top = await run_bulksend(
                tmp_path, "top", str(journal), "--once", "--interval", "1s", name="top"
            )
            assert top.process.returncode == 0, top
            out = top.stdout()
            assert "\x1b" not in out
            lines = out.splitlines()
            assert lines[0].startswith("j.sqlite3 ") and lines[0].endswith(": sending, 2 sites")
            assert lines[1].split()[:2] == ["site", "queued"]
            alpha = next(line for line in lines if line.startswith("mx1.alpha.test"))
            beta = next(line for line in lines if line.startswith("mx1.beta.test"))
            assert " ok " in alpha and "/20 " in alpha  # rate/cap
            assert float(alpha.split()[3]) > 5  # delivered a second
            assert " paused " in beta
            proc.signal()
            await proc.wait(30)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_top_in_tmux_at_60_and_120_columns(tmp_path: Path) -> None:
    server = f"bulksend-test-{tmp_path.name}"
    with trio.fail_after(90):
        async with sending(tmp_path, 900, rate=20) as (_world, proc, journal):
            try:
                panes = {}
                for width in (60, 120):
                    session = f"top{width}"
                    # The pane's width, not one inherited from the test's environment.
                    command = (
                        f"env -u COLUMNS -u LINES {sys.executable} -m bulksend top {journal}"
                        " --interval 0.5s"
                    )
                    subprocess.run(
                        [
                            "tmux",
                            "-L",
                            server,
                            "new-session",
                            "-d",
                            "-s",
                            session,
                            "-x",
                            str(width),
                            "-y",
                            "12",
                            command,
                        ],
                        check=True,
                    )
                for width in (60, 120):
                    text = ""
                    with trio.move_on_after(20):
                        while "mx1.alpha.test" not in text or "mx1.beta.test" not in text:
                            await trio.sleep(0.3)
                            text = subprocess.run(
                                ["tmux", "-L", server, "capture-pane", "-p", "-t", f"top{width}"],
                                check=True,
                                capture_output=True,
                                text=True,
                            ).stdout
                    panes[width] = text
            finally:
                subprocess.run(["tmux", "-L", server, "kill-server"], check=False)
            proc.signal()
            await proc.wait(30)
    for width, text in panes.items():
        lines = [line for line in text.splitlines() if line.strip()]
        assert any(line.lstrip().startswith("site") for line in lines), text
        assert any("mx1.alpha.test" in line for line in lines), text
        assert all(len(line) <= width for line in lines), text
    assert "last error" in panes[120] and "last error" not in panes[60]
