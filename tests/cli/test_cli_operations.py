"""Operating the CLI: empty lists, repeated sends, pipes, busy journals and ports."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksend.cli import campaign_sidecar, main
from bulksend.progress import snapshot_path
from bulksend.testing.scenario import write_campaign


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
