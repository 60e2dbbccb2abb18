"""`resume`, `status` and `report` on a journal that lost its -wal or was damaged: refused
before a single message goes out, with a one-line message that says what happened."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.cli.cli_helpers import bulksend, run_bulksend, world_args
from tests.helpers.files import flip
from tests.helpers.worlds import limits_policy

POLICY = limits_policy(50)
SITE = SiteSpec("alpha", ("a1.test", "a2.test"), "127.0.0.2")


def campaign(tmp_path: Path, count: int) -> Path:
    toml = campaign_toml(policy=POLICY)
    return write_campaign(tmp_path / "c", addresses(["a1.test", "a2.test"], count), toml=toml)


def one_error_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("bulksend: error:")]
    assert len(lines) == 1, stderr
    assert expected in lines[0], stderr
    assert "Traceback" not in stderr
    assert "free disk space" not in stderr


async def test_resume_refuses_a_killed_run_whose_wal_was_lost(tmp_path: Path) -> None:
    path = campaign(tmp_path, 300)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(90):
        async with running([SITE]) as world:
            server = world.servers["alpha"]
            async with bulksend(
                tmp_path, "send", str(path), "--journal", str(journal), *world_args(world)
            ) as proc:
                await proc.wait_for(lambda: server.stats.messages >= 30, 30, "30 messages")
                proc.signal(signal.SIGKILL)
                await proc.wait(10)
            sent = server.stats.messages
            assert sent < 300
            # The outcomes since the import lived in the -wal only.
            for suffix in ("-wal", "-shm"):
                journal.with_name(journal.name + suffix).unlink(missing_ok=True)
            runs = [
                await run_bulksend(tmp_path, *args, *world_args(world), name=args[0])
                for args in (
                    ["resume", str(journal)],
                    ["send", str(path), "--journal", str(journal)],
                )
            ]
            await trio.sleep(0.2)
            assert server.stats.messages == sent  # nobody mailed a second time
    for run in runs:
        assert run.process.returncode == 1, run
        one_error_line(run.stderr(), "lost committed history")


@pytest.mark.parametrize("where", ["pages", "check constraint"])
async def test_a_damaged_journal_is_reported_as_damaged_and_nothing_is_sent(
    tmp_path: Path, where: str
) -> None:
    path = campaign(tmp_path, 400)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(90):
        async with running([SITE]) as world:
            server = world.servers["alpha"]
            send = await run_bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--limit",
                "5",
                *world_args(world),
                name="send",
            )
            assert send.process.returncode == 3, send
            sent = server.stats.messages
            data = journal.read_bytes()
            if where == "pages":
                # Random flips over the recipients' pages (past the schema and meta pages).
                start = 4 * 4096
                for offset in range(start, len(data), 997):
                    flip(journal, offset, 1)
            else:
                # One letter of a state name in the CHECK text: SQLite still parses it.
                flip(journal, data.index(b"status = 'pending'") + 11, 1)
            runs = {
                name: await run_bulksend(tmp_path, *args, name=name)
                for name, args in {
                    "resume": ["resume", str(journal), *world_args(world)],
                    "status": ["status", str(journal)],
                    "report": ["report", str(journal)],
                }.items()
            }
            await trio.sleep(0.2)
            assert server.stats.messages == sent  # resume sent nothing
    for name, run in runs.items():
        assert run.process.returncode == 1, (name, run)
        one_error_line(run.stderr(), f"journal '{journal}' is damaged: ")
        assert "restore it from a backup" in run.stderr()
