"""Campaign runs against the test SMTP sink with a suppression store: what is skipped at
import and during the run, and what the run's bounces put in the store."""

from __future__ import annotations

import csv
from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.config import SuppressionReason
from bulksend.delivery.run import run_campaign
from bulksend.journal import Journal, Status
from bulksend.metrics import Metrics
from bulksend.suppression.backend import open_suppression_store
from bulksend.suppression.store import Source
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.helpers.worlds import run_options


def store_toml(spec: Path | str) -> str:
    return f'[suppression]\nstore = "{spec}"\n'


def journal_rows(tmp_path: Path) -> dict[str, tuple[Status, str | None]]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.address: (s.status, s.text) for s in journal.iter_states()}


async def test_a_run_skips_what_the_store_suppresses(
    tmp_path: Path, store_spec: Path | str
) -> None:
    recipients = [*addresses(["ok.test"], 6), "anyone@blocked.test"]
    campaign = write_campaign(
        tmp_path, recipients, toml=campaign_toml(extra=store_toml(store_spec))
    )
    with open_suppression_store(store_spec) as store:
        # Compared as the dedupe rule compares: without case.
        store.add("user3@ok.test", SuppressionReason.UNSUBSCRIBE, Source.HTTP, now=1.0)
        store.add("blocked.test", SuppressionReason.MANUAL, Source.CLI, now=1.0)
        # An expired soft bounce no longer suppresses.
        store.add(
            "user4@ok.test", SuppressionReason.SOFT_BOUNCE, Source.DSN, now=1.0, expires_at=2.0
        )
    sites = [SiteSpec("ok", ("ok.test", "blocked.test"), "127.0.0.2")]
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(Campaign.load(campaign, {}), run_options(tmp_path, world))
            received = world.servers["ok"].received()
    assert summary.complete
    assert sorted(received) == sorted(a for a in addresses(["ok.test"], 6) if a != "user3@ok.test")
    rows = journal_rows(tmp_path)
    assert rows["user3@ok.test"] == (
        Status.SUPPRESSED,
        "suppressed (address): unsubscribe via http",
    )
    assert rows["anyone@blocked.test"] == (
        Status.SUPPRESSED,
        "suppressed (domain blocked.test): manual via cli",
    )
    with (tmp_path / "rejects.csv").open() as f:
        rejects = {row["email"]: row["reason"] for row in csv.DictReader(f)}
    assert rejects["user3@ok.test"] == "suppressed (address): unsubscribe via http"


async def test_inline_hard_bounces_enter_the_store(tmp_path: Path, store_spec: Path | str) -> None:
    metrics = Metrics()
    script = ServerScript(unknown_mailboxes=frozenset({"user2@ok.test"}))
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2", script)]
    campaign = write_campaign(
        tmp_path, addresses(["ok.test"], 5), toml=campaign_toml(extra=store_toml(store_spec))
    )
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(campaign, {}), run_options(tmp_path, world), metrics=metrics
            )
    assert summary.counts[Status.BOUNCED] == 1
    assert (
        metrics.registry.get_sample_value(
            "bulksend_suppressions_total", {"reason": "hard_bounce", "source": "campaign"}
        )
        == 1
    )
    with open_suppression_store(store_spec) as store:
        entries = list(store.entries())
    assert [(e.key, e.reason, e.source, e.count, e.expires_at) for e in entries] == [
        ("user2@ok.test", SuppressionReason.HARD_BOUNCE, Source.CAMPAIGN, 1, None)
    ]
    assert entries[0].detail.startswith("550 5.1.1")
    # The next campaign to the same list skips the address at import.
    second = tmp_path / "second"
    campaign = write_campaign(
        second,
        addresses(["ok.test"], 5),
        toml=campaign_toml(extra=store_toml(store_spec)),
    )
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(Campaign.load(campaign, {}), run_options(second, world))
            received = world.servers["ok"].received()
    assert summary.counts[Status.SUPPRESSED] == 1
    assert "user2@ok.test" not in received
    assert journal_rows(second)["user2@ok.test"][0] is Status.SUPPRESSED


async def test_suppressions_stored_during_a_run_are_never_sent(
    tmp_path: Path, store_spec: Path | str
) -> None:
    # One connection, slow final replies: the first 16 recipients are claimed at once (a
    # sender's buffer), the rest wait in the journal (as in the suppression file's test).
    slow = ServerScript(reply_delays={"DOT": 0.1})
    sites = [SiteSpec("slow", ("slow.test",), "127.0.0.2", slow)]
    toml = campaign_toml(
        policy="[policy.defaults]\nmax_connections = 1\n", extra=store_toml(store_spec)
    )
    campaign = write_campaign(tmp_path, addresses(["slow.test"], 40), toml=toml)
    claimed, waiting = "user14@slow.test", "user38@slow.test"
    with trio.fail_after(60):
        async with running(sites) as world:
            server = world.servers["slow"]
            options = run_options(tmp_path, world, suppression_check=0.05)

            async def unsubscribe() -> None:
                await server.wait_until(lambda: server.stats.messages >= 2)
                with open_suppression_store(store_spec) as store:
                    for address in (claimed, waiting):
                        store.add(address, SuppressionReason.UNSUBSCRIBE, Source.HTTP, now=1.0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(unsubscribe)
                summary = await run_campaign(Campaign.load(campaign, {}), options)
            received = server.received()
    assert summary.complete
    assert claimed not in received
    assert waiting not in received
    assert len(received) == 38
    rows = journal_rows(tmp_path)
    assert rows[claimed][0] is rows[waiting][0] is Status.SUPPRESSED


async def test_resume_applies_what_the_store_suppressed_since(
    tmp_path: Path, store_spec: Path | str
) -> None:
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    campaign = write_campaign(
        tmp_path, addresses(["ok.test"], 10), toml=campaign_toml(extra=store_toml(store_spec))
    )
    with trio.fail_after(30):
        async with running(sites) as world:
            first = await run_campaign(
                Campaign.load(campaign, {}), run_options(tmp_path, world, limit=3)
            )
            assert not first.complete
            with open_suppression_store(store_spec) as store:
                store.add("user7@ok.test", SuppressionReason.COMPLAINT, Source.ARF, now=1.0)
            resumed = await run_campaign(Campaign.load(campaign, {}), run_options(tmp_path, world))
            received = world.servers["ok"].received()
    assert resumed.complete
    assert "user7@ok.test" not in received
    assert len(received) == 9
    assert journal_rows(tmp_path)["user7@ok.test"][0] is Status.SUPPRESSED
