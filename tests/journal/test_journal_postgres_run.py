"""Whole runs on a PostgreSQL journal: ``run_campaign`` and the ``send``/``resume``/
``status``/``report`` commands given a ``postgresql://`` URL, against the test servers."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.journal import Status
from bulksend.journal.backend import open_journal
from bulksend.testing.scenario import SiteSpec, addresses, running, write_campaign
from tests.cli.cli_helpers import run_bulksend, world_args
from tests.helpers.worlds import run_options

SITES = [SiteSpec("ok", ("ok.test", "ok2.test"), "127.0.0.2")]


def statuses(url: str) -> dict[str, Status]:
    with open_journal(url, None) as journal:
        return {s.address: s.status for s in journal.iter_states()}


async def test_a_run_and_its_resume_on_a_postgres_journal(
    tmp_path: Path, postgres_url: str
) -> None:
    url = f"{postgres_url}?campaign=run"
    recipients = addresses(["ok.test", "ok2.test"], 30)
    campaign = write_campaign(tmp_path, recipients)
    with trio.fail_after(60):
        async with running(SITES) as world:
            first = await run_campaign(
                Campaign.load(campaign, {}), run_options(tmp_path, world, journal=url, limit=10)
            )
            assert not first.complete
            resumed = await run_campaign(
                Campaign.load(campaign, {}), run_options(tmp_path, world, journal=url)
            )
            received = world.servers["ok"].received()
    assert resumed.complete
    assert sorted(received) == sorted(recipients)  # each exactly once over the two runs
    assert set(statuses(url).values()) == {Status.DELIVERED}
    assert not (tmp_path / "journal.sqlite3").exists()


async def test_send_status_report_with_a_postgres_url(tmp_path: Path, postgres_url: str) -> None:
    url = f"{postgres_url}?campaign=cli"
    recipients = addresses(["ok.test"], 12)
    campaign = write_campaign(tmp_path / "c", recipients)
    with trio.fail_after(90):
        async with running(SITES) as world:
            send = await run_bulksend(
                tmp_path,
                "send",
                str(campaign),
                "--journal",
                url,
                *world_args(world),
                name="send",
                seconds=60,
            )
            assert send.process.returncode == 0, send
            received = world.servers["ok"].received()
        assert "complete after" in send.stdout()
        assert sorted(received) == sorted(recipients)
        status = await run_bulksend(tmp_path, "status", url, name="status")
        assert status.process.returncode == 0, status
        assert "recipients: 12" in status.stdout()
        report = await run_bulksend(
            tmp_path, "report", url, "--format", "csv", "-o", str(tmp_path / "r.csv"), name="r"
        )
        assert report.process.returncode == 0, report
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 13
    assert all(",delivered," in line for line in lines[1:])
    # A second send of the same campaign on the same journal is a resume: nothing to do.
    assert statuses(url)[recipients[0]] is Status.DELIVERED


async def test_a_url_with_a_password_is_refused_in_one_line(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", addresses(["ok.test"], 2))
    url = "postgresql://bulksend:hunter2@127.0.0.1:1/db?campaign=c"
    proc = await run_bulksend(tmp_path, "send", str(campaign), "--journal", url, name="pw")
    assert proc.process.returncode == 2  # a usage error
    assert "must not hold a password" in proc.stderr()
    assert "hunter2" not in proc.stderr() + proc.stdout()


async def test_an_unreachable_database_is_one_line_no_traceback(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"postgresql://bulksend@127.0.0.1:{port}/db?campaign=c"
        proc = await run_bulksend(tmp_path, "report", url, name="down")
    assert proc.process.returncode != 0
    err = proc.stderr()
    assert "Traceback" not in err
    assert "cannot connect to the PostgreSQL journal" in err
    assert len(err.strip().splitlines()) == 1, err


async def test_two_runs_share_one_postgres_campaign(tmp_path: Path, postgres_url: str) -> None:
    # Two workers (two run_campaign calls, two connections) on one campaign: between them
    # every recipient is sent exactly once.
    url = f"{postgres_url}?campaign=shared"
    recipients = addresses(["ok.test", "ok2.test"], 80)
    campaign = write_campaign(tmp_path, recipients)
    results = []
    with trio.fail_after(60):
        async with running(SITES) as world:

            async def one() -> None:
                options = run_options(tmp_path, world, journal=url)
                results.append(await run_campaign(Campaign.load(campaign, {}), options))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                nursery.start_soon(one)
            received = world.servers["ok"].received()
    assert [r.complete for r in results] == [True, True]
    assert sum(r.outcomes.get("delivered", 0) for r in results) == len(recipients)
    assert sorted(received) == sorted(recipients)
    assert set(statuses(url).values()) == {Status.DELIVERED}


async def test_shards_need_sqlite_journals(tmp_path: Path) -> None:
    campaign = write_campaign(tmp_path / "c", addresses(["ok.test"], 2))
    url = "postgresql://bulksend@127.0.0.1:1/db?campaign=c"
    proc = await run_bulksend(
        tmp_path, "send", str(campaign), "--journal", url, "--shard", "1/2", name="w"
    )
    assert proc.process.returncode == 2, proc
    assert "--shard needs SQLite journals" in proc.stderr()
