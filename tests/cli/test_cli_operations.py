"""Operating the CLI: empty lists, repeated sends, pipes, busy journals and ports."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio
from cli_helpers import run_bulksend, world_args
from click.testing import CliRunner

from bulksend.cli import campaign_sidecar, main
from bulksend.progress import snapshot_path
from bulksend.testing.scenario import SiteSpec, addresses, running, write_campaign


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
