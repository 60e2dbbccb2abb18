"""The scheduler's use of routing: a domain with its own policy on a shared site, and routes
that expire mid-run (the MX records change)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from bulksend.campaign import Campaign
from bulksend.delivery.run import run_campaign
from bulksend.delivery.scheduler import Scheduler
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running
from bulksend.testing.scenario import write_campaign as write
from bulksend.testing.smtp import ServerScript
from tests.helpers.worlds import run_options

SHARED_SITE_POLICY = """
[policy.sites."shared.test"]
max_connections = 2
rate = "100/s"

[policy.domains."strict.test"]
tls = "required"
"""


async def test_domain_override_applies_to_that_domain_only(tmp_path: Path) -> None:
    # Two domains on one MX site (no STARTTLS there); only strict.test requires TLS.
    script = ServerScript(record_wire=True)
    sites = [SiteSpec("shared", ("strict.test", "lax.test"), "127.0.0.2", script, mx_hosts=2)]
    recipients = addresses(["strict.test", "lax.test"], 12)
    toml = write(tmp_path, recipients, toml=campaign_toml(policy=SHARED_SITE_POLICY))
    seen: list[Scheduler] = []
    with trio.fail_after(30):
        async with running(sites) as world:
            with trio.move_on_after(4):
                await run_campaign(
                    Campaign.load(toml, {}), run_options(tmp_path, world), on_start=seen.append
                )
            server = world.servers["shared"]
            wire = b"".join(bytes(c.received) for c in server.connections)
    # The strict domain's recipients never went out in plaintext...
    assert b"strict.test" not in wire
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        states = {s.address: s for s in journal.iter_states()}
    for address in recipients[::2]:
        assert states[address].status is Status.PENDING
        assert "TLS is required" in (states[address].text or "")
    # ...while its neighbour's still flowed.
    assert sorted(server.received()) == sorted(recipients[1::2])
    # Each has a site of its own, and the site override's limits hold for both (layered
    # under the domain's override, not replaced by it), as `bulksend status` shows.
    status = {s.site: s for s in seen[0].sites()}
    hosts = f"mx1.shared.test,mx2.shared.test:{world.smtp_port}"
    assert set(status) == {hosts, f"strict.test@{hosts}"}
    for site in status.values():
        assert (site.max_connections, site.rate) == (2, 100.0)


async def test_mx_change_followed_after_the_ttl(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    sites = [SiteSpec("old", ("moving.test",), "127.0.0.2"), SiteSpec("new", (), "127.0.0.3")]
    policy = '[policy.defaults]\nmax_connections = 1\nrate = "20/s"\n'
    recipients = addresses(["moving.test"], 80)
    toml = write(tmp_path, recipients, toml=campaign_toml(policy=policy))
    with trio.fail_after(200):  # real seconds plus the jump
        async with running(sites) as world:
            world.dns.set("moving.test", "MX", [(10, "mx1.old.test")], ttl=60)
            old, new = world.servers["old"], world.servers["new"]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    run_campaign, Campaign.load(toml, {}), run_options(tmp_path, world)
                )
                await old.wait_until(lambda: old.stats.messages >= 3)
                # The domain moves; the route the run holds says so only once it expires.
                world.dns.set("moving.test", "MX", [(10, "mx1.new.test")], ttl=60)
                clock.jump(61)
    assert old.stats.messages + new.stats.messages == 80
    assert old.stats.messages < 80 - 40  # at most a fetched batch more went to the old host
    assert new.stats.bytes_received > 0
    assert sorted(world.received()) == sorted(recipients)


async def test_idn_keys_route_an_idn_recipient(tmp_path: Path) -> None:
    sites = [SiteSpec("idn", (), "127.0.0.2")]
    with trio.fail_after(30):
        async with running(sites) as world:
            extra = f"""
[routing.overrides]
"müller.de" = "127.0.0.2:{world.smtp_port}"

[policy.domains."müller.de"]
max_connections = 1
"""
            recipients = ["anna@müller.de", "bert@MÜLLER.de"]
            toml = write(tmp_path, recipients, toml=campaign_toml(extra=extra))
            seen: list[Scheduler] = []
            summary = await run_campaign(
                Campaign.load(toml, {}), run_options(tmp_path, world), on_start=seen.append
            )
    assert summary.counts[Status.DELIVERED] == 2
    assert sorted(world.received()) == ["anna@xn--mller-kva.de", "bert@xn--mller-kva.de"]
    # The domain's own policy applied: its own site, one connection at most.
    [site] = seen[0].sites()
    assert (site.site, site.max_connections) == (
        f"xn--mller-kva.de@127.0.0.2:{world.smtp_port}",
        1,
    )
    assert world.servers["idn"].stats.connections_peak == 1
