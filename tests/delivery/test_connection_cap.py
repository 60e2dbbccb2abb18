"""The global connection cap with many sites: idle connections give way, a stop stops all."""

from __future__ import annotations

import collections
from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.delivery.scheduler import Scheduler
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    campaign_toml,
    running,
    write_campaign,
    write_shared_campaign,
)
from bulksend.testing.smtp import ServerScript, Session
from tests.helpers.worlds import run_options


def _rows(tmp_path: Path) -> dict[str, tuple[Status, int]]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.address: (s.status, s.attempts) for s in journal.iter_states()}


def _tail(count: int, block: int, script: ServerScript | None = None) -> list[SiteSpec]:
    """``count`` sites of one domain each, every site on its own 127.0.<block>+.x address."""
    return [
        SiteSpec(
            f"t{i}",
            (f"d{i}.test",),
            f"127.0.{block + i // 250}.{1 + i % 250}",
            script or ServerScript(),
        )
        for i in range(count)
    ]


def _peak(world: World) -> int:
    """The most connections open at once, all servers together, as the servers saw them."""
    events = [
        (when, step)
        for server in world.servers.values()
        for record in server.connections
        for when, step in ((record.opened_at, 1), (record.closed_at, -1))
        if when is not None
    ]
    peak = current = 0
    for _when, step in sorted(events):  # at one instant a close counts before an open
        current += step
        peak = max(peak, current)
    return peak


async def test_a_long_tail_of_sites_is_not_starved_by_idle_connections(tmp_path: Path) -> None:
    # 200 one-recipient domains, each its own site, behind 10 connections in all, with an
    # idle timeout of an hour: a site with nothing left keeps no connection, so the run
    # ends in seconds (before the fix, each connection sat idle for the whole hour).
    sites = _tail(200, 10)
    policy = """
[policy]
max_total_connections = 10

[policy.defaults]
idle_timeout = "1h"
"""
    recipients = [f"user@d{i}.test" for i in range(200)]
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    with trio.fail_after(60):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2)
            )
    assert summary.complete
    assert set(_rows(tmp_path).values()) == {(Status.DELIVERED, 1)}
    assert len(_rows(tmp_path)) == 200
    # One connection per site, never more than the cap at once.
    assert [world.servers[s.name].stats.connections_opened for s in sites] == [1] * 200
    assert _peak(world) <= 10
    assert world.received() == collections.Counter(recipients)


async def test_a_stop_starts_no_transaction_for_sites_waiting_for_a_connection(
    tmp_path: Path,
) -> None:
    # 20 sites of 2 recipients behind 4 connections in all, a server slow to answer the
    # final dot. Once stopped, no transaction starts: no connection opens and carries a
    # MAIL, and the only MAILs the servers read are those already sent (at most two, the
    # current transaction and one pipelined behind it, on each of the 4 connections).
    mails: list[tuple[float, float]] = []  # when, and when its connection opened

    def note_mail(session: Session, verb: str, _arg: str) -> None:
        if verb == "MAIL":
            mails.append((trio.current_time(), session.record.opened_at))

    script = ServerScript(reply_delays={"DOT": 0.3}, hook=note_mail)
    sites = _tail(20, 20, script)
    policy = """
[policy]
max_total_connections = 4
"""
    recipients = [f"user{j}@d{i}.test" for i in range(20) for j in range(2)]
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=policy))
    seen: list[Scheduler] = []
    stopped_at = 0.0
    with trio.fail_after(60):
        async with running(sites) as world:
            async with trio.open_nursery() as nursery:

                async def stop_after_four() -> None:
                    nonlocal stopped_at
                    while world.delivered < 4:
                        await trio.sleep(0.01)
                    stopped_at = trio.current_time()
                    seen[0].stop()  # what SIGINT/SIGTERM do (bulksend.cli)

                nursery.start_soon(stop_after_four)
                first = await run_campaign(
                    Campaign.load(toml, {}),
                    run_options(tmp_path, world, grace=5),
                    on_start=seen.append,
                )
            assert not first.complete
            assert [m for m in mails if m[1] > stopped_at] == []
            assert len([m for m in mails if m[0] > stopped_at]) <= 2 * 4
            rows = _rows(tmp_path)
            waiting = {a for a, (status, _attempts) in rows.items() if status is Status.PENDING}
            assert waiting and all(rows[a][1] == 0 for a in waiting)  # handed back, untried
            assert first.counts[Status.DELIVERED] + len(waiting) == 40
            second = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=5)
            )
    assert second.complete
    assert set(_rows(tmp_path).values()) == {(Status.DELIVERED, 1)}
    assert world.received() == collections.Counter(recipients)  # each exactly once


async def test_an_idle_connection_gives_its_slot_to_a_waiting_site(tmp_path: Path) -> None:
    # One connection in all, an idle timeout of an hour. Site a takes one recipient per
    # transaction (452 to the second), so its connection rests, idle, waiting for the one
    # handed back; site b greylists its recipient, which comes back a second later and
    # needs the one slot. The idle connection must give way at once (with QUIT), whichever
    # site went first: before, whoever rested held the slot for the hour.
    sites = [
        SiteSpec("a", ("a.test",), "127.0.30.1", ServerScript(max_recipients=1, record_wire=True)),
        SiteSpec("b", ("b.test",), "127.0.30.2", ServerScript(greylist=True, record_wire=True)),
    ]
    policy = """idle_timeout = "1h"

[policy]
max_total_connections = 1

[policy.retry]
initial = "1s"
factor = 1.0
maximum = "1s"
jitter = 0.0
max_age = "1h"
"""
    recipients = ["one@a.test", "two@a.test", "three@b.test"]
    toml = write_shared_campaign(tmp_path, recipients, per_transaction=2, policy=policy)
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=2)
            )
    assert summary.complete
    assert world.received() == collections.Counter(recipients)
    assert _peak(world) == 1
    for server in world.servers.values():
        assert all(c.received.endswith(b"QUIT\r\n") for c in server.connections)
