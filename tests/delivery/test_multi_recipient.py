"""Several recipients per transaction, for a campaign whose message is the same for all."""

from __future__ import annotations

import collections
from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import (
    SiteSpec,
    addresses,
    campaign_toml,
    running,
    write_campaign,
    write_shared_campaign,
)
from bulksend.testing.smtp import ServerScript, Transaction
from tests.helpers.worlds import run_options


async def send(
    toml: Path, recipients: list[str], script: ServerScript
) -> tuple[Campaign, RunSummary, list[Transaction]]:
    tmp_path = toml.parent
    sites = [SiteSpec("mx", ("one.test", "two.test"), "127.0.0.2", script)]
    with trio.fail_after(30):
        async with running(sites) as world:
            campaign = Campaign.load(toml, {})
            options = run_options(tmp_path, world, journal=tmp_path / "j.sqlite3")
            summary = await run_campaign(campaign, options)
            return campaign, summary, list(world.servers["mx"].transactions)


async def test_shared_message_goes_to_several_recipients_per_transaction(tmp_path: Path) -> None:
    recipients = addresses(["one.test", "two.test"], 24)
    script = ServerScript(unknown_mailboxes=frozenset({"user4@one.test"}))
    toml = write_shared_campaign(tmp_path, recipients, per_transaction=5)
    campaign, summary, transactions = await send(toml, recipients, script)
    assert campaign.shared
    assert summary.counts[Status.DELIVERED] == 23
    assert summary.counts[Status.BOUNCED] == 1  # refused alone; its companions delivered
    received = [r for t in transactions for r in t.rcpt_to]
    assert sorted(received) == sorted(a for a in recipients if a != "user4@one.test")
    assert max(len(t.rcpt_to) for t in transactions) == 5
    assert len(transactions) < len(received)
    for t in transactions:
        assert len({r.rpartition("@")[2] for r in t.rcpt_to}) == 1  # one domain per transaction
        assert b"To: undisclosed-recipients:;\r\n" in t.data
        assert b"user" not in t.data  # no recipient sees another


async def test_personalised_message_stays_one_per_transaction(tmp_path: Path) -> None:
    text = campaign_toml(policy="[policy.defaults]\nrecipients_per_transaction = 5\n")
    recipients = addresses(["one.test"], 10)
    toml = write_campaign(tmp_path, recipients, toml=text)
    campaign, summary, transactions = await send(toml, recipients, ServerScript())
    assert not campaign.shared
    assert summary.counts[Status.DELIVERED] == 10
    assert [len(t.rcpt_to) for t in transactions] == [1] * 10


def _journal_rows(path: Path) -> dict[str, tuple[Status, int]]:
    with Journal.open(path, None) as journal:
        return {s.address: (s.status, s.attempts) for s in journal.iter_states()}


async def test_recipients_per_transaction_is_honoured_beyond_the_fetch_batch(
    tmp_path: Path,
) -> None:
    # 200 per transaction is more than one journal fetch (64) and 16 per sender: the server
    # must still see one transaction of 200 recipients, then one of the remaining 100.
    recipients = addresses(["one.test"], 300)
    toml = write_shared_campaign(tmp_path, recipients, per_transaction=200)
    _campaign, summary, transactions = await send(toml, recipients, ServerScript())
    assert summary.counts[Status.DELIVERED] == 300
    assert sorted(len(t.rcpt_to) for t in transactions) == [100, 200]
    received = collections.Counter(r for t in transactions for r in t.rcpt_to)
    assert set(received) == set(recipients) and set(received.values()) == {1}


async def test_a_server_limit_of_recipients_moves_the_rest_to_the_next_transaction(
    tmp_path: Path,
) -> None:
    # The server answers 452 4.5.3 to every RCPT after its 100th: the refused ones go in the
    # next transaction at once (no retry delay, not an attempt) and later transactions hold
    # no more than the server's limit.
    recipients = addresses(["one.test"], 300)
    toml = write_shared_campaign(tmp_path, recipients, per_transaction=200)
    script = ServerScript(max_recipients=100)
    _campaign, summary, transactions = await send(toml, recipients, script)
    assert summary.complete
    assert [len(t.rcpt_to) for t in transactions] == [100, 100, 100]
    received = collections.Counter(r for t in transactions for r in t.rcpt_to)
    assert set(received) == set(recipients) and set(received.values()) == {1}
    rows = _journal_rows(tmp_path / "j.sqlite3")
    assert len(rows) == 300
    assert set(rows.values()) == {(Status.DELIVERED, 1)}  # none lost, none tried twice
