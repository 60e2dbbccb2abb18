"""The DNS cache: TTLs under a MockClock, negative caching, one query per key in flight, TCP."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bulksend.routing import PermanentRoutingError, Route, Router, TransientRoutingError
from bulksend.testing.dns import Fault


async def test_thousand_concurrent_routes_send_one_query(dns_server, make_config):
    router = Router(make_config())
    routes = []

    async def one() -> None:
        routes.append(await router.route("example.com"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(one)
    assert len(routes) == 1000
    assert len({r.site for r in routes}) == 1
    assert dns_server.count("example.com", "MX") == 1
    assert dns_server.count("mx1.example.com", "A") == 1
    assert dns_server.count("mx1.example.com", "AAAA") == 1
    assert dns_server.count("mx2.example.com", "A") == 1
    assert dns_server.count() == 5


async def test_concurrent_failures_share_one_query(dns_server, make_config):
    dns_server.inject("example.com", Fault.SERVFAIL)
    router = Router(make_config(failure_ttl=0))
    errors = []

    async def one() -> None:
        try:
            await router.route("example.com")
        except TransientRoutingError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
    assert len(errors) == 100
    assert {e.enhanced_code for e in errors} == {"4.4.3"}
    assert dns_server.count("example.com", "MX") == 1


async def route(router: Router, domain: str) -> Route:
    """One routing call under its own deadline.

    Tests that jump the MockClock keep deadlines off the jumps: a jump past a deadline would
    fire it. Each network step gets its own.
    """
    with trio.fail_after(10):
        return await router.route(domain)


async def test_answer_kept_for_its_ttl(dns_server, make_config, clock):
    router = Router(make_config())
    await route(router, "example.com")
    clock.jump(299)
    await route(router, "example.com")
    assert dns_server.count("example.com", "MX") == 1
    clock.jump(2)  # past the zone's 300 s TTL
    await route(router, "example.com")
    assert dns_server.count("example.com", "MX") == 2


async def test_ttl_clamped_to_the_maximum(dns_server, make_config, clock):
    dns_server.load({"long.test": {"MX": [(10, "mx1.example.com")], "ttl": 86400}})
    router = Router(make_config(ttl_max=60))
    await route(router, "long.test")
    clock.jump(61)
    await route(router, "long.test")
    assert dns_server.count("long.test", "MX") == 2


async def test_ttl_zero_is_not_cached(dns_server, make_config, clock):
    dns_server.load({"zero.test": {"MX": [(10, "mx1.example.com")], "ttl": 0}})
    router = Router(make_config())
    first = await route(router, "zero.test")
    assert first.expires <= trio.current_time()  # expired as soon as it is made
    await route(router, "zero.test")
    assert dns_server.count("zero.test", "MX") == 2


async def test_short_ttl_honoured(dns_server, make_config, clock):
    dns_server.load({"five.test": {"MX": [(10, "mx2.example.com")], "ttl": 5}})
    router = Router(make_config(ipv6=False))
    first = await route(router, "five.test")
    assert first.expires == pytest.approx(trio.current_time() + 5, abs=0.5)
    clock.jump(4)
    await route(router, "five.test")
    assert dns_server.count("five.test", "MX") == 1
    clock.jump(1.5)
    await route(router, "five.test")
    assert dns_server.count("five.test", "MX") == 2


async def test_route_expires_with_its_first_answer(dns_server, make_config, clock):
    # The MX answer lives 300 s, the MX host's address 20 s: the route lives 20 s.
    dns_server.load(
        {
            "mixed.test": {"MX": [(10, "mx.mixed.test")], "ttl": 300},
            "mx.mixed.test": {"A": ["127.0.0.9"], "ttl": 20},
        }
    )
    router = Router(make_config(ipv6=False))
    first = await route(router, "mixed.test")
    assert first.expires == pytest.approx(trio.current_time() + 20, abs=0.5)


async def test_ttl_clamped_to_the_minimum(dns_server, make_config, clock):
    dns_server.load({"short.test": {"MX": [(10, "mx1.example.com")], "ttl": 0}})
    router = Router(make_config(ttl_min=30))
    await route(router, "short.test")
    clock.jump(29)
    await route(router, "short.test")
    assert dns_server.count("short.test", "MX") == 1
    clock.jump(2)
    await route(router, "short.test")
    assert dns_server.count("short.test", "MX") == 2


async def test_changed_records_seen_after_expiry(dns_server, make_config, clock):
    router = Router(make_config())
    before = await route(router, "example.com")
    dns_server.set("example.com", "MX", [(10, "mx2.example.com")], ttl=300)
    assert (await route(router, "example.com")).site == before.site
    clock.jump(301)
    after = await route(router, "example.com")
    assert after.site.mx == ("mx2.example.com",)
    assert after.site != before.site


async def test_nxdomain_cached_for_the_soa_minimum(dns_server, make_config, clock):
    router = Router(make_config())  # the server's negative TTL is 120 s

    async def attempt() -> None:
        with pytest.raises(PermanentRoutingError, match=r"5\.1\.2"):
            await route(router, "nowhere.test")

    await attempt()
    clock.jump(119)
    await attempt()
    assert dns_server.count("nowhere.test", "MX") == 1
    clock.jump(2)
    await attempt()
    assert dns_server.count("nowhere.test", "MX") == 2


async def test_nodata_cached_for_the_soa_minimum(dns_server, make_config, clock):
    dns_server.load({"implicit.test": {"A": ["127.0.2.1"]}})
    router = Router(make_config(ipv6=False))
    await route(router, "implicit.test")
    clock.jump(119)
    await route(router, "implicit.test")
    assert dns_server.count("implicit.test", "MX") == 1
    clock.jump(2)
    await route(router, "implicit.test")
    assert dns_server.count("implicit.test", "MX") == 2
    assert dns_server.count("implicit.test", "A") == 1  # positive, 300 s


async def test_failure_remembered_for_failure_ttl(dns_server, make_config, clock):
    dns_server.inject("example.com", Fault.SERVFAIL)
    router = Router(make_config(failure_ttl=30))
    with pytest.raises(TransientRoutingError):
        await route(router, "example.com")
    dns_server.clear_faults()
    with pytest.raises(TransientRoutingError):
        await route(router, "example.com")
    assert dns_server.count("example.com", "MX") == 1
    clock.jump(31)
    assert (await route(router, "example.com")).hosts
    assert dns_server.count("example.com", "MX") == 2


async def test_waiter_takes_over_when_the_leader_is_cancelled(dns_server, make_config):
    dns_server.inject("example.com", Fault.TIMEOUT, "MX")
    router = Router(make_config(timeout=5.0))
    results = []

    async def leader(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            results.append(("leader", await router.route("example.com")))

    async def follower() -> None:
        results.append(("follower", await router.route("example.com")))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(leader)
            # The leader's query is out (and being ignored by the server).
            while dns_server.count("example.com", "MX") == 0:
                await trio.sleep(0.01)
            nursery.start_soon(follower)
            await trio.testing.wait_all_tasks_blocked()  # the follower waits on the leader
            assert dns_server.count("example.com", "MX") == 1
            dns_server.clear_faults()
            scope.cancel()
    assert [who for who, _ in results] == ["follower"]
    assert results[0][1].hosts
    assert dns_server.count("example.com", "MX") == 2


async def test_truncated_udp_answer_retried_over_tcp(dns_server, make_config):
    dns_server.inject("example.com", Fault.TRUNCATE, "MX")
    with trio.fail_after(10):
        route = await Router(make_config()).route("example.com")
    assert [h.name for h in route.hosts] == ["mx1.example.com", "mx2.example.com"]
    assert dns_server.count("example.com", "MX", "udp") == 1
    assert dns_server.count("example.com", "MX", "tcp") == 1


async def test_answer_too_big_for_udp_comes_over_tcp(dns_server, make_config):
    hosts = [(10, f"mx{i}.a-rather-long-host-name-for-padding.big.test") for i in range(60)]
    dns_server.load({"big.test": {"MX": hosts}})
    dns_server.load({h: {"A": ["127.0.5.1"]} for _, h in hosts})
    with trio.fail_after(10):
        route = await Router(make_config(ipv6=False)).route("big.test")
    assert len(route.site.mx) == 60
    assert dns_server.count("big.test", "MX", "tcp") == 1


async def test_a_route_says_whether_its_mx_answer_was_cached(dns_server, make_config):
    router = Router(make_config())
    first = await route(router, "example.com")
    second = await route(router, "example.com")
    assert (first.cached, second.cached) == (False, True)
    assert first == second  # the flag is not part of a route's identity
    assert dns_server.count("example.com", "MX") == 1
