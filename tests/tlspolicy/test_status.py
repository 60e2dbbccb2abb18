"""``bulksend status`` shows each site's TLS policy in force and its last TLS failure, from the
status snapshot a run writes (MTA-STS over real sockets, as in test_mta_sts_delivery)."""

from __future__ import annotations

import io
from pathlib import Path

import trio
import trustme
from click.testing import CliRunner

from bulksend.campaign import Campaign
from bulksend.cli.app import main
from bulksend.cli.progress import Progress, Tally
from bulksend.delivery.run import run_campaign
from bulksend.testing.https import policy_response
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign
from tests.tlspolicy.test_mta_sts_delivery import DOMAIN, MX, site
from tests.tlspolicy.world import StsWorld, sts_world


async def status_after_sending(tmp_path: Path, world: StsWorld) -> str:
    """Send 2 recipients of strict.test with a progress display attached (its final snapshot
    written as a run's is), then what ``bulksend status`` prints."""
    journal = tmp_path / "journal.sqlite3"
    progress = Progress(Tally(), io.StringIO(), tty=False, journal=journal, quiet=True)
    toml = write_campaign(tmp_path, addresses([DOMAIN], 2), toml=campaign_toml())
    with trio.fail_after(30):
        await run_campaign(
            Campaign.load(toml, {}), world.options(tmp_path, limit=2), on_start=progress.attach
        )
    progress.finish("finished")
    result = CliRunner().invoke(main, ["status", str(journal)])
    assert result.exit_code == 0, result.output
    return result.stdout


def tls_rows(out: str) -> list[str]:
    """The lines of the status's TLS table, header included."""
    _before, found, after = out.partition("TLS:\n")
    assert found, out
    return [line for line in after.splitlines() if line.startswith("  ")]


async def test_status_shows_the_sts_policy_in_force(tmp_path: Path, ca: trustme.CA) -> None:
    async with sts_world(ca, [site(ca)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", [MX]))
        out = await status_after_sending(tmp_path, world)
    header, row = tls_rows(out)
    assert header.split() == ["site", "policy", "last", "TLS", "failure"]
    label, *policy = row.split()
    assert label.startswith(f"{DOMAIN}@{MX}")  # an MTA-STS domain's own site
    assert policy == ["MTA-STS", "enforce"]  # and no failure


async def test_status_shows_the_last_tls_failure(tmp_path: Path, ca: trustme.CA) -> None:
    async with sts_world(ca, [site(ca, cert_for="other.test")], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", [MX]))
        out = await status_after_sending(tmp_path, world)
    _header, row = tls_rows(out)
    assert row.split()[1:4] == ["MTA-STS", "enforce", f"{MX}:"]
    assert "certificate" in row.lower()


async def test_status_shows_an_mta_sts_refusal(tmp_path: Path, ca: trustme.CA) -> None:
    async with sts_world(ca, [site(ca)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", ["*.elsewhere.test"]))
        out = await status_after_sending(tmp_path, world)
    _header, row = tls_rows(out)
    assert f"MX host {MX} is not in the MTA-STS policy of {DOMAIN}" in row


async def test_status_shows_a_testing_mode_failure(tmp_path: Path, ca: trustme.CA) -> None:
    async with sts_world(ca, [site(ca)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("testing", ["*.elsewhere.test"]))
        out = await status_after_sending(tmp_path, world)
        assert world.world.servers["site"].stats.messages == 2  # delivered as without a policy
    _header, row = tls_rows(out)
    assert row.split()[1] == "opportunistic"
    assert f"MX host {MX} is not in the MTA-STS policy of {DOMAIN}" in row
    assert row.endswith("(testing)")


async def test_status_has_no_tls_table_without_a_policy(tmp_path: Path, ca: trustme.CA) -> None:
    async with sts_world(ca, [site(ca)], [DOMAIN]) as world:  # publishes no policy
        out = await status_after_sending(tmp_path, world)
    assert "sites (at the last snapshot):" in out
    assert "TLS:" not in out
