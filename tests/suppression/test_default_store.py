"""A campaign that names no store still closes the loop: its hard bounces enter the default
store (``suppression.sqlite3`` beside the journal, or the PostgreSQL journal's database) and
the next campaign skips them; ``store = false`` turns the store off."""

from __future__ import annotations

from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.config import SuppressionReason
from bulksend.delivery.run import run_campaign
from bulksend.journal import Status
from bulksend.journal.backend import open_journal
from bulksend.suppression.backend import campaign_store, open_suppression_store
from bulksend.suppression.store import Source, SuppressionStore
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.helpers.worlds import run_options

BAD = "user2@ok.test"
SITES = [SiteSpec("ok", ("ok.test",), "127.0.0.2", ServerScript(unknown_mailboxes={BAD}))]
RECIPIENTS = addresses(["ok.test"], 5)


async def _send(
    directory: Path, journal: Path | str, campaign_id: str, extra: str = ""
) -> tuple[list[str], dict[str, Status]]:
    """Send a campaign written into ``directory``: what the sink received, the journal rows."""
    path = write_campaign(
        directory, RECIPIENTS, toml=campaign_toml(campaign_id=campaign_id, extra=extra)
    )
    with trio.fail_after(30):
        async with running(SITES) as world:
            options = run_options(directory, world, journal=journal)
            summary = await run_campaign(Campaign.load(path, {}), options)
            received = world.servers["ok"].received()
    assert summary.complete
    with open_journal(journal, None) as rows:
        return received, {s.address: s.status for s in rows.iter_states()}


async def test_without_a_store_named_bounces_go_beside_the_journal(tmp_path: Path) -> None:
    journals = tmp_path / "journals"
    journals.mkdir()
    _, rows = await _send(tmp_path / "a", journals / "first.sqlite3", "first")
    assert rows[BAD] is Status.BOUNCED
    with SuppressionStore.open(journals / "suppression.sqlite3") as store:
        assert [(e.key, e.reason, e.source) for e in store.entries()] == [
            (BAD, SuppressionReason.HARD_BOUNCE, Source.CAMPAIGN)
        ]
    assert not (tmp_path / "a" / "suppression.sqlite3").exists()  # the campaign's is left alone
    # The next campaign whose journal is kept there skips the address; the others are sent.
    received, rows = await _send(tmp_path / "b", journals / "second.sqlite3", "second")
    assert rows[BAD] is Status.SUPPRESSED
    assert sorted(received) == sorted(a for a in RECIPIENTS if a != BAD)
    # `store = false`: no store read, none written.
    _, rows = await _send(
        tmp_path / "c", journals / "off.sqlite3", "off", "[suppression]\nstore = false\n"
    )
    assert rows[BAD] is Status.BOUNCED  # sent to again
    with SuppressionStore.open(journals / "suppression.sqlite3") as store:
        assert [e.count for e in store.entries()] == [1]  # not counted again


async def test_a_postgresql_journal_keeps_the_store_in_its_database(
    tmp_path: Path, postgres_url: str
) -> None:
    _, rows = await _send(tmp_path / "a", f"{postgres_url}?campaign=first", "first")
    assert rows[BAD] is Status.BOUNCED
    assert not (tmp_path / "a" / "suppression.sqlite3").exists()
    with open_suppression_store(postgres_url) as store:
        assert [(e.key, e.reason) for e in store.entries()] == [
            (BAD, SuppressionReason.HARD_BOUNCE)
        ]
    # Another campaign in the database, from another directory (another machine): skipped.
    received, rows = await _send(tmp_path / "b", f"{postgres_url}?campaign=second", "second")
    assert rows[BAD] is Status.SUPPRESSED
    assert BAD not in received


def test_a_journal_url_names_the_database_not_the_campaign(tmp_path: Path) -> None:
    url = "postgresql://bulk@db.test:5432/mail?campaign=spring&sslmode=require&password_file=/p"
    extra = f'[journal]\nurl = "{url}"\n'
    path = write_campaign(tmp_path, [], toml=campaign_toml(extra=extra))
    campaign = Campaign.load(path, {})
    assert campaign_store(campaign.config, None) == (
        "postgresql://bulk@db.test:5432/mail?sslmode=require&password_file=/p"
    )
    # libpq's own parameters pass byte for byte (%20 is not '+' to libpq; /// stays).
    odd = "postgresql:///mail?host=/run/postgresql&campaign=c&options=-c%20search_path%3Dx"
    assert campaign_store(campaign.config, odd) == (
        "postgresql:///mail?host=/run/postgresql&options=-c%20search_path%3Dx"
    )
    journal = tmp_path / "state" / "j.sqlite3"
    assert campaign_store(campaign.config, journal) == tmp_path / "state" / "suppression.sqlite3"
    plain = Campaign.load(write_campaign(tmp_path / "plain", []), {})
    assert campaign_store(plain.config, None) == tmp_path / "plain" / "suppression.sqlite3"
