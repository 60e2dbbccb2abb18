"""The journal in whole runs against the test DNS and SMTP servers: what it exports, what it
refuses, what it re-reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunOptions, run_campaign
from bulksend.errors import JournalError
from bulksend.journal import Status
from bulksend.metrics import Metrics
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript

QUICK_EXPIRY = """
[policy.retry]
initial = "1s"
factor = 1.0
maximum = "1s"
jitter = 0.0
max_age = "1s"
"""


def run_options(tmp_path: Path, world: World) -> RunOptions:
    return RunOptions(
        journal=tmp_path / "journal.sqlite3",
        nameservers=("127.0.0.1",),
        dns_port=world.dns_port,
        smtp_port=world.smtp_port,
        ehlo_hostname="sender.test",
        grace=1,
    )


def exposition(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, parsed from the text the metrics endpoint serves."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_an_expiry_is_exported(tmp_path: Path) -> None:
    # Expiry is decided by the journal writer (max_age), not by an attempt: the bounce-rate
    # alert and the dashboard divide by outcome="expired", so it must be there.
    greylisted = ServerScript(greylist=True, greylist_seconds=3600.0)
    sites = [
        SiteSpec("grey", ("grey.test",), "127.0.0.2", greylisted),
        SiteSpec("ok", ("ok.test",), "127.0.0.3"),
    ]
    toml = write_campaign(
        tmp_path, addresses(["grey.test", "ok.test"], 2), toml=campaign_toml(policy=QUICK_EXPIRY)
    )
    metrics = Metrics()
    with trio.fail_after(30):
        async with running(sites) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world), metrics=metrics
            )
    samples = exposition(metrics)
    assert summary.counts[Status.EXPIRED] == 1
    assert samples[("bulksend_recipients_total", (("outcome", "expired"),))] == 1
    assert samples[("bulksend_recipients_total", (("outcome", "delivered"),))] == 1


def with_recipients_keys(toml: str, keys: str) -> str:
    """A test campaign's TOML with more keys in its [recipients] table."""
    anchor = 'rejects = "rejects.csv"\n'
    assert anchor in toml
    return toml.replace(anchor, anchor + keys)


async def test_resume_refuses_a_changed_attachment(tmp_path: Path) -> None:
    # An attachment is content, like a template: resuming with other bytes would send some
    # recipients the old file and the rest the new one.
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    toml = campaign_toml().replace(
        'html = "body.html"\n', 'html = "body.html"\nattachments = ["terms.txt"]\n'
    )
    campaign = write_campaign(tmp_path, addresses(["ok.test"], 5), toml=toml)
    attachment = tmp_path / "terms.txt"
    attachment.write_text("Terms, version 1\n")
    with trio.fail_after(30):
        async with running(sites) as world:
            options = run_options(tmp_path, world)
            options.limit = 2
            first = await run_campaign(Campaign.load(campaign, {}), options)
            assert not first.complete
            attachment.write_text("Terms, version 2\n")
            with pytest.raises(JournalError, match=r"attachment \S*terms\.txt changed"):
                await run_campaign(Campaign.load(campaign, {}), options)
            received = world.servers["ok"].received()
    assert sum(received.values()) == 2
