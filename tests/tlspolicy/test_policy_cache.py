"""The MTA-STS policy cache of a run (:class:`TlsPolicies`): one fetch per domain however many
ask at once, refreshed when the TXT id changes or max_age runs out, kept across runs in the
state file. Real DNS (the test server) and real HTTPS (a local trustme server)."""

from __future__ import annotations

from pathlib import Path

import trio
import trustme

from bulksend.routing import MXResolver, RoutingConfig
from bulksend.testing.https import Response, policy_response
from bulksend.testing.scenario import SiteSpec
from bulksend.tlspolicy import FetchSettings, StsMode, TlsPolicies, TlsState
from tests.helpers.tls import client_context
from tests.tlspolicy.world import StsWorld, sts_world

DOMAIN = "cached.test"
HOST = f"mta-sts.{DOMAIN}"


class Wall:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def policies(world: StsWorld, wall: Wall, state: TlsState | None = None) -> TlsPolicies:
    config = RoutingConfig(
        nameservers=("127.0.0.1",), dns_port=world.world.dns_port, allow_private=True, ttl_max=0
    )
    fetch = FetchSettings(ssl_context=client_context(world.ca), port=world.policies.port)
    return TlsPolicies(MXResolver(config), fetch=fetch, state=state, allow_private=True, wall=wall)


async def test_concurrent_lookups_of_a_domain_share_one_fetch(ca: trustme.CA) -> None:
    sites = [SiteSpec("site", (DOMAIN,), "127.0.0.2")]
    async with sts_world(ca, sites, [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", ["mx1.site.test"]))
        tls = policies(world, Wall())
        found = []

        async def ask() -> None:
            found.append(await tls.domain_policy(DOMAIN))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(ask)
        assert world.policies.requests[HOST] == 1
    assert len(found) == 20
    assert all(p is not None and p.mode is StsMode.ENFORCE for p in found)


async def test_refetched_when_the_id_changes_or_max_age_runs_out(ca: trustme.CA) -> None:
    sites = [SiteSpec("site", (DOMAIN,), "127.0.0.2")]
    wall = Wall()
    async with sts_world(ca, sites, [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", ["mx1.site.test"], max_age=3600))
        tls = policies(world, wall)
        with trio.fail_after(10):
            await tls.domain_policy(DOMAIN)
            wall.now += 3599
            await tls.domain_policy(DOMAIN)  # same id, fresh: the cached policy
            assert world.policies.requests[HOST] == 1
            world.publish(DOMAIN, "2", policy_response("testing", ["mx1.site.test"]))
            policy = await tls.domain_policy(DOMAIN)  # new id: fetched again
            assert world.policies.requests[HOST] == 2
            assert policy is not None and policy.mode is StsMode.TESTING
            wall.now += 86401  # the new policy's max_age has run out: fetched again
            await tls.domain_policy(DOMAIN)
            assert world.policies.requests[HOST] == 3


async def test_an_expired_policy_is_not_kept_when_the_refresh_fails(
    tmp_path: Path, ca: trustme.CA
) -> None:
    sites = [SiteSpec("site", (DOMAIN,), "127.0.0.2")]
    wall = Wall()
    state = TlsState(tmp_path / "state.sqlite3")
    try:
        async with sts_world(ca, sites, [DOMAIN]) as world:
            world.publish(DOMAIN, "1", policy_response("enforce", ["mx1.site.test"], max_age=60))
            with trio.fail_after(10):
                assert await policies(world, wall, state).domain_policy(DOMAIN) is not None
                # Another run (a new TlsPolicies) reads the cached policy from the state file.
                world.publish(DOMAIN, "2", Response(500))
                assert await policies(world, wall, state).domain_policy(DOMAIN) is not None
                wall.now += 61  # expired: a failing refresh leaves no policy (RFC 8461 §5.1)
                assert await policies(world, wall, state).domain_policy(DOMAIN) is None
    finally:
        state.close()
