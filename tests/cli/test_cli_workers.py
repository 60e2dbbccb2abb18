"""`send --workers N` and `--shard I/N` as real processes; merged `report` and `status`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery import run as delivery_run
from bulksend.delivery.run import run_campaign
from bulksend.delivery.shard import Shard, placement_text
from bulksend.journal import Journal
from bulksend.routing import Site
from bulksend.testing.dns import Fault
from bulksend.testing.scenario import SiteSpec, World, campaign_toml, running, write_campaign
from tests.cli.cli_helpers import (
    Proc,
    bulksend,
    paced_campaign,
    recipients_total,
    reported_in_doubt,
    run_bulksend,
    scrape,
    world_args,
)
from tests.helpers.worlds import limits_policy, run_options, sharded_sites

SITES = sharded_sites(big_domains=3, small_sites=3)
DOMAINS = [d for s in SITES for d in s.domains]


def campaign(tmp_path: Path, count: int, rate: int) -> tuple[Path, list[str]]:
    return paced_campaign(tmp_path, DOMAINS, count, rate)


async def test_send_with_two_workers_one_metrics_endpoint_one_report(tmp_path: Path) -> None:
    path, recipients = campaign(tmp_path, 200, rate=100)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running(SITES) as world:
            async with bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--workers",
                "2",
                "--metrics-port",
                "0",
                "--keep-serving",
                *world_args(world),
                name="workers",
            ) as proc:
                await proc.wait_for(lambda: "until SIGINT" in proc.stderr(), 90, "the run's end")
                url = next(
                    line.split("metrics at ")[1].split()[0]
                    for line in proc.stderr().splitlines()
                    if "metrics at" in line
                )
                samples = await scrape(url)
                proc.signal(signal.SIGTERM)
                assert await proc.wait(20) == 0, proc
            received = world.received()
            peaks = [s.stats.connections_peak for s in world.servers.values()]
    assert received == Counter(recipients)
    assert max(peaks) <= 2  # each site's limit held across both processes
    assert recipients_total(samples, "delivered") == 200  # one endpoint, both workers summed
    shards = [str(Shard(i, 2).journal(journal)) for i in range(2)]
    report = await run_bulksend(tmp_path, "report", *shards, name="report")
    assert report.process.returncode == 0, report
    assert re.search(r"^delivered\s+200\s", report.stdout().replace(",", ""), re.M), report
    status = await run_bulksend(tmp_path, "status", *shards, name="status")
    assert "all 2 journals:" in status.stdout()
    assert "delivered 200" in status.stdout().replace(",", "")


async def test_shards_run_separately_and_a_killed_shard_resumes(tmp_path: Path) -> None:
    path, recipients = campaign(tmp_path, 160, rate=20)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(150):
        async with running(SITES) as world:
            # Kill the shard that owns the big site (which shard that is depends on the
            # site's name, port included): it surely has work left to kill.
            big = SITES[0]
            victim = next(
                Shard(i, 2)
                for i in range(2)
                if Shard(i, 2).owns(f"{','.join(big.mx_names())}:{world.smtp_port}")
            )
            other = Shard(1 - victim.index, 2)
            first = await run_bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--shard",
                str(other),
                "-q",
                *world_args(world),
                name="other",
                seconds=90,
            )
            assert first.process.returncode == 0, first
            async with bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--shard",
                str(victim),
                "-q",
                *world_args(world),
                name="victim",
            ) as second:
                before = world.delivered
                await second.wait_for(lambda: world.delivered > before + 10, 60, "victim sending")
                assert second.process.pid is not None
                os.kill(second.process.pid, signal.SIGKILL)
                await second.wait(10)
            victim_journal = victim.journal(journal)
            resumed = await run_bulksend(
                tmp_path,
                "resume",
                str(victim_journal),
                "-q",
                *world_args(world),
                name="resume",
                seconds=90,
            )
            assert resumed.process.returncode == 0, resumed
            received = world.received()
    assert set(received) == set(recipients)
    report = await run_bulksend(
        tmp_path,
        "report",
        str(Shard(0, 2).journal(journal)),
        str(Shard(1, 2).journal(journal)),
        name="report",
    )
    text = report.stdout().replace(",", "")
    assert re.search(r"^delivered\s+160\s", text, re.M), report
    repeats = sum(n - 1 for n in received.values())
    assert repeats <= reported_in_doubt(text)


async def test_sigint_stops_every_worker_and_each_shard_resumes(tmp_path: Path) -> None:
    path, recipients = campaign(tmp_path, 200, rate=20)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(150):
        async with running(SITES) as world:
            async with bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--workers",
                "2",
                "-q",
                *world_args(world),
                name="workers-int",
            ) as proc:
                await proc.wait_for(lambda: world.delivered >= 30, 60, "sending")
                proc.signal(signal.SIGINT)
                assert await proc.wait(60) == 3, proc
            assert "stopped before completion" in proc.stdout()
            assert world.delivered < 200
            for i in range(2):
                shard = Shard(i, 2).journal(journal)
                resumed = await run_bulksend(
                    tmp_path, "resume", str(shard), "-q", *world_args(world), name=f"r{i}"
                )
                assert resumed.process.returncode == 0, resumed
            received = world.received()
    assert set(received) == set(recipients)
    report = await run_bulksend(
        tmp_path, "report", *(str(Shard(i, 2).journal(journal)) for i in range(2)), name="rep"
    )
    assert sum(n - 1 for n in received.values()) <= reported_in_doubt(report.stdout())


async def test_a_domain_whose_dns_fails_once_is_sent_by_exactly_one_worker(
    tmp_path: Path,
) -> None:
    # A SERVFAIL answered to whoever asks first about one domain: had each worker planned
    # its shard itself, one would have put the domain by its own name, the other by its
    # site, and both (or neither) would have sent its recipients.
    sites = sharded_sites(big_domains=12, small_sites=1)
    domains = [d for s in sites for d in s.domains]
    path, recipients = paced_campaign(tmp_path, domains, 130, rate=500)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running(sites) as world:
            # Unrouted in the plan, it is a unit of its own (10 rows), placed on the other
            # worker than its site (110 rows).
            flaky = sites[0].domains[0]
            world.dns.inject(flaky, Fault.SERVFAIL, "MX", times=1)
            proc = await _send_with_two_workers(tmp_path, path, journal, world)
            received = world.received()
    assert proc.process.returncode == 0, proc
    assert world.dns.count(flaky, "MX") >= 2  # it failed once, then answered
    held = _shard_domains(journal)
    assert flaky in held[1] and set(sites[0].domains) - {flaky} == held[0]
    assert sorted(received) == sorted(recipients)
    assert set(received.values()) == {1}


async def _send_with_two_workers(tmp_path: Path, path: Path, journal: Path, world: World) -> Proc:
    """``send --workers 2`` of the campaign ``path`` against ``world``, to its end."""
    return await run_bulksend(
        tmp_path,
        "send",
        str(path),
        "--journal",
        str(journal),
        "--workers",
        "2",
        *world_args(world),
        name="workers",
        seconds=100,
    )


# Four sites of 400, 300, 200 and 100 recipients.
SIZED = [SiteSpec(name, (f"{name}.test",), f"127.0.0.{i + 2}") for i, name in enumerate("abcd")]
SIZES = {"a": 400, "b": 300, "c": 200, "d": 100}


def _site_names(world: World) -> dict[str, str]:
    """Each of the SIZED sites' name as the plan keys it (MX host and the world's port)."""
    return {name: str(Site.of([f"mx1.{name}.test"], world.smtp_port)) for name in SIZES}


def _shard_domains(journal: Path) -> list[set[str]]:
    """The domains each of two shard journals holds."""
    held = []
    for i in range(2):
        with Journal.open_readonly(Shard(i, 2).journal(journal)) as j:
            held.append({s.domain for s in j.iter_states()})
    return held


async def _send_sized(tmp_path: Path, prepare: Callable[[World, Path], None]) -> Proc:
    path, recipients = _sized_campaign(tmp_path)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running(SIZED) as world:
            prepare(world, journal)
            proc = await _send_with_two_workers(tmp_path, path, journal, world)
            received = world.received()
    assert sorted(received) == sorted(recipients) and set(received.values()) == {1}, proc
    return proc


async def test_workers_place_the_largest_sites_by_size_not_by_hash(tmp_path: Path) -> None:
    proc = await _send_sized(tmp_path, lambda _world, _journal: None)
    assert proc.process.returncode == 0, proc
    journal = tmp_path / "j.sqlite3"
    # Largest first onto the least loaded worker: 400 + 100 and 300 + 200.
    assert _shard_domains(journal) == [{"a.test", "d.test"}, {"b.test", "c.test"}]
    # Each shard's journal keeps the placement its import began with: the same one.
    recorded = []
    for i in range(2):
        with Journal.open(Shard(i, 2).journal(journal), None) as j:
            recorded.append(j.placement() or {})
    assert recorded[0] == recorded[1]
    assert {site.split(":")[0]: index for site, index in recorded[0].items()} == {
        "mx1.a.test": 0,
        "mx1.b.test": 1,
        "mx1.c.test": 1,
        "mx1.d.test": 0,
    }


class _Interrupted(Exception):
    pass


def _stop(_rows: int) -> None:
    raise _Interrupted


@pytest.mark.parametrize("again", ["send --workers 2", "resume the shard"])
async def test_an_interrupted_import_resumes_with_the_placement_it_began_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again: str
) -> None:
    # Shard 0 of two began its import with a placement other than the sizes' would give and
    # stopped part-way; `send --workers 2` keeps that placement for both shards, `resume` of
    # the shard's journal (what a run prints for a failed worker) for that shard (a placement
    # made again would have both keep some recipients, and none keep others). The first run
    # commits every 100 rows and stops at its 250th (50,000 and 10,000 in a real run).
    original = Journal.import_recipients
    monkeypatch.setattr(
        Journal,
        "import_recipients",
        lambda journal, rows, **kw: original(journal, rows, batch_size=100, **kw),
    )
    monkeypatch.setattr(delivery_run, "IMPORT_PROGRESS_EVERY", 250)
    path, recipients = _sized_campaign(tmp_path)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(150):
        async with running(SIZED) as world:
            site = _site_names(world)
            began = {site["a"]: 1, site["b"]: 1, site["c"]: 0, site["d"]: 0}
            first = run_options(tmp_path, world, journal=journal, shard=Shard(0, 2))
            first = dataclasses.replace(first, placement=began)
            with pytest.raises((_Interrupted, BaseExceptionGroup)):
                await run_campaign(Campaign.load(path, {}), first, on_import=_stop)
            with Journal.open(Shard(0, 2).journal(journal), None) as j:
                assert not j.import_complete and j.placement() == began
                assert 0 < sum(j.counts().values()) < len(recipients) // 2
            if again == "resume the shard":
                proc = await run_bulksend(
                    tmp_path,
                    "resume",
                    str(Shard(0, 2).journal(journal)),
                    "--campaign",
                    str(path),
                    *world_args(world),
                    name="resume",
                )
                recipients = [r for r in recipients if r.endswith(("@c.test", "@d.test"))]
            else:
                proc = await _send_with_two_workers(tmp_path, path, journal, world)
            received = world.received()
    assert proc.process.returncode == 0, proc
    assert sorted(received) == sorted(recipients) and set(received.values()) == {1}
    if again == "resume the shard":
        with Journal.open_readonly(Shard(0, 2).journal(journal)) as j:
            assert {s.domain for s in j.iter_states()} == {"c.test", "d.test"}
    else:
        assert _shard_domains(journal) == [{"c.test", "d.test"}, {"a.test", "b.test"}]


def _sized_campaign(tmp_path: Path) -> tuple[Path, list[str]]:
    """The four sites' recipients (SIZES), the domains interleaved."""
    top = max(SIZES.values())
    recipients = [
        f"u{n}@{name}.test" for n in range(top) for name, size in SIZES.items() if n < size
    ]
    toml = campaign_toml(policy=limits_policy(500))
    return write_campaign(tmp_path / "c", recipients, toml=toml), recipients


async def test_plan_places_the_largest_sites_for_shards_on_separate_machines(
    tmp_path: Path,
) -> None:
    # `plan` once, then each machine's `send --shard I/2 --placement FILE`: the same placement
    # as `send --workers 2` (400 + 100 and 300 + 200), every recipient once.
    path, recipients = _sized_campaign(tmp_path)
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with running(SIZED) as world:
            planned = await run_bulksend(
                tmp_path,
                "plan",
                str(path),
                "--shards",
                "2",
                *world_args(world)[:4],
                "--smtp-port",
                str(world.smtp_port),
                name="plan",
            )
            assert planned.process.returncode == 0, planned
            site = _site_names(world)
            assert json.loads(planned.stdout()) == {
                "shards": 2,
                "sites": {site["a"]: 0, site["b"]: 1, site["c"]: 1, site["d"]: 0},
            }
            assert planned.stderr().splitlines() == [
                f"bulksend: shard 0/2: 2 of the largest sites: {site['a']}, {site['d']}",
                f"bulksend: shard 1/2: 2 of the largest sites: {site['b']}, {site['c']}",
            ]
            placement = tmp_path / "placement.json"
            placement.write_text(planned.stdout())
            for i in range(2):
                shard = await run_bulksend(
                    tmp_path,
                    "send",
                    str(path),
                    "--journal",
                    str(journal),
                    "--shard",
                    f"{i}/2",
                    "--placement",
                    str(placement),
                    *world_args(world),
                    name=f"shard{i}",
                )
                assert shard.process.returncode == 0, shard
            received = world.received()
    assert sorted(received) == sorted(recipients) and set(received.values()) == {1}
    assert _shard_domains(journal) == [{"a.test", "d.test"}, {"b.test", "c.test"}]


async def test_a_placement_needs_a_shard_of_its_count(tmp_path: Path) -> None:
    path, _ = _sized_campaign(tmp_path)
    placement = tmp_path / "placement.json"
    placement.write_text(placement_text({"mx1.a.test": 1}, 2))
    alone = await run_bulksend(tmp_path, "send", str(path), "--placement", str(placement), name="a")
    assert alone.process.returncode == 2, alone
    assert "--placement goes with --shard I/N" in alone.stderr()
    other = await run_bulksend(
        tmp_path, "send", str(path), "--shard", "0/3", "--placement", str(placement), name="o"
    )
    assert other.process.returncode == 1, other
    assert other.stderr() == (
        f"bulksend: error: {placement}: not a placement of sites over 3 shards "
        "(`bulksend plan --shards 3` makes one)\n"
    )
