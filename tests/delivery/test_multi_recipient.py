"""Several recipients per transaction, for a campaign whose message is the same for all."""

from __future__ import annotations

from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunOptions, RunSummary, run_campaign
from bulksend.journal import Status
from bulksend.testing.scenario import (
    SiteSpec,
    addresses,
    campaign_toml,
    running,
    write_campaign,
    write_shared_campaign,
)
from bulksend.testing.smtp import ServerScript, Transaction


async def send(
    toml: Path, recipients: list[str], script: ServerScript
) -> tuple[Campaign, RunSummary, list[Transaction]]:
    tmp_path = toml.parent
    sites = [SiteSpec("mx", ("one.test", "two.test"), "127.0.0.2", script)]
    with trio.fail_after(30):
        async with running(sites) as world:
            campaign = Campaign.load(toml, {})
            options = RunOptions(
                journal=tmp_path / "j.sqlite3",
                nameservers=("127.0.0.1",),
                dns_port=world.dns_port,
                smtp_port=world.smtp_port,
                ehlo_hostname="sender.test",
                grace=1,
            )
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
