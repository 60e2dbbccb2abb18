"""A message that cannot be rendered is the sender's fault: never a bounce (issue 13.8).

Row-specific failures are set aside as ``not_rendered``; failures that are systematic stop
the run; a fixed campaign sends to the set-aside recipients once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.errors import ConfigError
from bulksend.journal import Journal, Status
from bulksend.metrics import Metrics
from bulksend.testing.scenario import SiteSpec, running
from tests.helpers.worlds import run_options

TOML = """\
[campaign]
id = "render-test"

[message]
from = "news@sender.test"
subject = "Hello {{ first_name }}"
text = "body.txt"

[envelope]
sender = "bounces@sender.test"

[recipients]
file = "recipients.jsonl"
rejects = "rejects.csv"
allow_test_domain = true

[routing]
allow_private_addresses = true

[policy.defaults]
max_connections = 1
"""
BODY = "Your code is {{ code }}; {{ 1000 // (share | default(1) | int) }} points each.\n"
SITE = SiteSpec("alpha", ("a.test",), "127.0.0.2")


def _campaign(directory: Path, rows: list[dict[str, Any]], body: str = BODY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "body.txt").write_text(body)
    (directory / "recipients.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = directory / "campaign.toml"
    path.write_text(TOML)
    return path


def _rows(count: int) -> list[dict[str, Any]]:
    return [
        {"email": f"user{i}@a.test", "first_name": f"Reader{i}", "code": f"{i:04d}"}
        for i in range(count)
    ]


def _states(tmp_path: Path, status: Status) -> dict[str, str | None]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return {s.address: s.text for s in journal.iter_states([status])}


async def test_a_template_typo_is_refused_before_a_journal_or_a_connection(
    tmp_path: Path,
) -> None:
    toml = _campaign(tmp_path / "c", _rows(50), body="Your code is {{ cdoe }}.\n")
    with trio.fail_after(30):
        async with running([SITE]) as world:
            with pytest.raises(ConfigError, match=r"body\.txt: the template reads 'cdoe'"):
                await run_campaign(Campaign.load(toml, {}), run_options(tmp_path, world, grace=5))
            server = world.servers["alpha"]
    assert server.stats.connections_opened == 0
    assert not (tmp_path / "journal.sqlite3").exists()


async def test_row_specific_failures_are_set_aside_and_the_rest_delivered(
    tmp_path: Path,
) -> None:
    rows = _rows(30)
    del rows[5]["code"]  # a field the list has, that this row lacks
    rows[12]["share"] = "0"  # a value that makes the template raise
    toml = _campaign(tmp_path / "c", rows)
    metrics = Metrics()
    with trio.fail_after(30):
        async with running([SITE]) as world:
            summary = await run_campaign(
                Campaign.load(toml, {}),
                run_options(tmp_path, world, grace=5),
                metrics=metrics,
            )
            received = world.received()
    assert summary.complete
    assert not summary.halted
    assert summary.counts[Status.BOUNCED] == 0
    assert summary.counts[Status.DELIVERED] == 28
    assert summary.counts[Status.NOT_RENDERED] == 2
    assert summary.outcomes.get("not_rendered") == 2
    sample = metrics.registry.get_sample_value
    assert sample("bulksend_recipients_total", {"outcome": "not_rendered"}) == 2
    assert sample("bulksend_recipients_total", {"outcome": "bounced"}) is None
    not_rendered = _states(tmp_path, Status.NOT_RENDERED)
    assert set(not_rendered) == {"user5@a.test", "user12@a.test"}
    assert "'code' is undefined" in str(not_rendered["user5@a.test"])
    assert "ZeroDivisionError" in str(not_rendered["user12@a.test"])
    assert set(received) == {f"user{i}@a.test" for i in range(30)} - set(not_rendered)
    assert set(received.values()) == {1}


async def test_systematic_failures_stop_the_run_and_a_fixed_campaign_sends_them_once(
    tmp_path: Path,
) -> None:
    rows = _rows(150)
    for row in rows[120:]:
        del row["code"]  # the list changes shape after the sampled rows
    toml = _campaign(tmp_path / "c", rows)
    everyone = {f"user{i}@a.test" for i in range(150)}
    with trio.fail_after(60):
        async with running([SITE]) as world:
            stopped = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=5)
            )

            # Fixed; a forced resume alone leaves the set-aside recipients alone...
            (tmp_path / "c" / "body.txt").write_text(BODY.replace("code }}", "code | d('-') }}"))
            resumed = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world, grace=5, force=True)
            )
            # ... and --retry-unrendered sends to them.
            retried = await run_campaign(
                Campaign.load(toml, {}),
                run_options(tmp_path, world, grace=5, force=True, retry_unrendered=True),
            )
            received = world.received()

    assert "20 messages in a row could not be rendered" in stopped.halted
    assert "'code' is undefined" in stopped.halted
    assert not stopped.complete
    assert stopped.counts[Status.BOUNCED] == 0
    assert stopped.counts[Status.DELIVERED] == 120
    set_aside = stopped.counts[Status.NOT_RENDERED]
    assert 20 <= set_aside < 30
    assert stopped.counts[Status.PENDING] == 30 - set_aside

    assert resumed.complete
    assert resumed.requeued == 0
    assert resumed.counts[Status.NOT_RENDERED] == set_aside
    assert resumed.counts[Status.DELIVERED] == 150 - set_aside

    assert retried.complete
    assert retried.requeued == set_aside
    assert retried.counts[Status.DELIVERED] == 150
    assert retried.counts[Status.BOUNCED] == retried.counts[Status.NOT_RENDERED] == 0
    assert set(received) == everyone
    assert set(received.values()) == {1}  # each exactly once
