"""Sites (MX rollup), policy lookup, route overrides, smarthost mode and configuration."""

from __future__ import annotations

import pickle

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bulksend.config import Secret
from bulksend.errors import ConfigError
from bulksend.routing import (
    Credentials,
    MXResolver,
    PermanentRoutingError,
    PolicyTable,
    Relay,
    Route,
    Router,
    RoutingConfig,
    Site,
    route_all,
)

GOOGLE = ["aspmx.l.google.com", "alt1.aspmx.l.google.com", "alt2.aspmx.l.google.com"]


# ---- sites ---------------------------------------------------------------------------------


async def test_domains_sharing_mx_hosts_share_a_site(dns_server, make_config):
    dns_server.load(
        {
            "one.test": {"MX": [(1, GOOGLE[0]), (5, GOOGLE[1]), (10, GOOGLE[2])]},
            "two.test": {"MX": [(10, GOOGLE[2].upper()), (10, GOOGLE[0]), (20, GOOGLE[1])]},
            "three.test": {"MX": [(5, GOOGLE[1] + "."), (5, GOOGLE[2]), (5, GOOGLE[0])]},
            "other.test": {"MX": [(1, GOOGLE[0]), (5, GOOGLE[1])]},
        }
    )
    dns_server.load({name: {"A": ["127.0.6.1"]} for name in GOOGLE})
    router = Router(make_config())
    with trio.fail_after(10):
        one, two, three, other = [
            await router.route(d) for d in ("one.test", "two.test", "three.test", "other.test")
        ]
    assert one.site == two.site == three.site
    assert hash(one.site) == hash(two.site)
    assert one.site.mx == tuple(sorted(GOOGLE))
    assert other.site != one.site
    sites = {r.site: r.domain for r in (one, two, three, other)}
    assert len(sites) == 2
    # Each domain keeps its own route even though the site is shared.
    assert one.domain == "one.test"
    assert [h.preference for h in one.hosts] == [1, 5, 10]


async def test_route_all_gives_each_domain_its_route_or_its_error(dns_server, make_config):
    dns_server.load({"one.test": {"MX": [(1, GOOGLE[0])]}, "two.test": {"MX": [(1, GOOGLE[0])]}})
    dns_server.load({GOOGLE[0]: {"A": ["127.0.6.1"]}})
    router = Router(make_config())
    with trio.fail_after(10):
        routes = await route_all(router, ["one.test", "two.test", "nowhere.test"], at_once=1)
    assert sorted(routes) == ["nowhere.test", "one.test", "two.test"]
    one, two, nowhere = routes["one.test"], routes["two.test"], routes["nowhere.test"]
    assert isinstance(one, Route)
    assert isinstance(two, Route)
    assert one.site == two.site
    assert isinstance(nowhere, PermanentRoutingError)


async def test_site_stable_across_shuffles(dns_server, make_config):
    dns_server.load({"eq.test": {"MX": [(5, n) for n in GOOGLE]}})
    dns_server.load({name: {"A": ["127.0.6.1"]} for name in GOOGLE})
    router = Router(make_config())
    with trio.fail_after(10):
        routes = [await router.route("eq.test") for _ in range(50)]
    assert len({r.site for r in routes}) == 1
    assert len({tuple(h.name for h in r.hosts) for r in routes}) > 1


async def test_site_port_follows_smtp_port(dns_server, make_config):
    with trio.fail_after(10):
        route = await Router(make_config(smtp_port=2525)).route("example.com")
    assert route.site == Site.of(["mx1.example.com", "mx2.example.com"], 2525)
    assert str(route.site) == "mx1.example.com,mx2.example.com:2525"


@given(
    names=st.lists(
        st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z]{1,5}){1,2}", fullmatch=True), min_size=1
    ),
    data=st.data(),
)
def test_site_ignores_order_case_duplicates_and_final_dots(names, data):
    shuffled = data.draw(st.permutations(names))
    variants = [
        n.upper() if data.draw(st.booleans()) else n + ("." if data.draw(st.booleans()) else "")
        for n in shuffled + shuffled[:1]
    ]
    assert Site.of(variants) == Site.of(names)
    assert hash(Site.of(variants)) == hash(Site.of(names))


def test_site_and_route_pickle_with_a_fresh_hash():
    site = Site.of(GOOGLE)
    route = Route("one.test", site, ())
    assert pickle.loads(pickle.dumps(site)) == site
    again = pickle.loads(pickle.dumps(route))
    assert again == route
    assert hash(again) == hash(route)


# ---- policy table --------------------------------------------------------------------------


def test_policy_by_domain_then_mx_suffix_then_default():
    table = PolicyTable(
        "default",
        domains={"Special.Example": "domain", "bücher.example": "idn"},
        mx_suffixes={"google.com": "google", ".l.google.com": "google-l", "outlook.com": "ms"},
    )
    google = Site.of(GOOGLE)
    assert table.lookup("special.example", google) == "domain"
    assert table.lookup("xn--bcher-kva.example", Site.of(["mx.example"])) == "idn"
    # Longest matching suffix wins: every GOOGLE host is under l.google.com.
    assert table.lookup("workspace.example", google) == "google-l"
    assert table.lookup("x.example", Site.of(["smtp.google.com"])) == "google"
    assert table.lookup("x.example", Site.of(["google.com"])) == "google"
    # Whole labels only.
    assert table.lookup("x.example", Site.of(["mx.notgoogle.com"])) == "default"
    assert table.lookup("x.example", Site.of(["mx.example.net"])) == "default"
    # A site with hosts under two rules takes the longest suffix.
    mixed = Site.of(["backup.example.net", "eur.mail.protection.outlook.com", "aspmx.l.google.com"])
    assert table.lookup("x.example", mixed) == "google-l"
    route = Route("special.example", google, ())
    assert table.for_route(route) == "domain"


def test_policy_table_rejects_bad_keys():
    with pytest.raises(ConfigError, match="bad_key"):
        PolicyTable(0, domains={"bad_key.example": 1})
    with pytest.raises(ConfigError, match="policy MX suffix"):
        PolicyTable(0, mx_suffixes={"a..b": 1})


# ---- overrides and smarthost -----------------------------------------------------------------


async def test_override_to_an_address_sends_no_query(dns_server, make_config):
    config = make_config(
        overrides={
            "Partner.Example": Relay("127.0.0.5", 2525),
            "bücher.example": Relay("::1", 26),
        }
    )
    router = Router(config)
    with trio.fail_after(10):
        route = await router.route("partner.example")
        idn = await router.route("BÜCHER.example")
    assert route.domain == "partner.example"
    assert route.hosts == (route.hosts[0],)
    assert (route.hosts[0].addresses, route.hosts[0].port) == (("127.0.0.5",), 2525)
    assert route.site == Site(("127.0.0.5",), 2525)
    assert idn.hosts[0].addresses == ("::1",)
    assert idn.hosts[0].port == 26
    assert dns_server.count() == 0


async def test_override_to_a_host_name_skips_mx(dns_server, make_config):
    router = Router(make_config(overrides={"partner.example": Relay("MX2.example.com", 2526)}))
    with trio.fail_after(10):
        route = await router.route("partner.example")
    assert route.hosts[0].name == "mx2.example.com"
    assert route.hosts[0].addresses == ("127.0.0.12",)
    assert route.site == Site(("mx2.example.com",), 2526)
    assert dns_server.count(rdtype="MX") == 0


async def test_override_applies_to_that_domain_only(dns_server, make_config):
    router = Router(make_config(overrides={"partner.example": Relay("127.0.0.5")}))
    with trio.fail_after(10):
        route = await router.route("example.com")
    assert [h.name for h in route.hosts] == ["mx1.example.com", "mx2.example.com"]


async def test_override_relay_may_be_private_even_when_mx_may_not(dns_server, make_config):
    router = Router(
        make_config(allow_private=False, overrides={"p.example": Relay("mx2.example.com")})
    )
    with trio.fail_after(10):
        route = await router.route("p.example")
    assert route.hosts[0].addresses == ("127.0.0.12",)


async def test_smarthost_takes_every_domain_without_dns(dns_server, make_config):
    auth = Credentials("user", Secret("secret"))
    config = make_config(
        smarthost=Relay("127.0.0.9", 587, auth=auth),
        overrides={"partner.example": Relay("127.0.0.5")},
    )
    router = Router(config)
    with trio.fail_after(10):
        routes = [
            await router.route(d)
            for d in ("example.com", "nowhere.test", "partner.example", "Bücher.example")
        ]
    assert {r.site for r in routes} == {Site(("127.0.0.9",), 587)}
    assert {r.auth for r in routes} == {auth}
    assert [r.domain for r in routes][-1] == "xn--bcher-kva.example"
    assert dns_server.count() == 0


async def test_smarthost_by_address_needs_no_nameserver():
    router = Router(RoutingConfig(smarthost=Relay("127.0.0.9", 2525)))
    with trio.fail_after(10):
        route = await router.route("anything.example")
    assert route.hosts[0].addresses == ("127.0.0.9",)


async def test_invalid_domain_refused_in_smarthost_mode_too():
    router = Router(RoutingConfig(smarthost=Relay("127.0.0.9")))
    with trio.fail_after(10), pytest.raises(PermanentRoutingError) as info:
        await router.route("bad..example")
    assert info.value.enhanced_code == "5.1.3"


async def test_shared_resolver_shares_the_cache(dns_server, make_config):
    config = make_config()
    resolver = MXResolver(config)
    with trio.fail_after(10):
        await Router(config, resolver=resolver).route("example.com")
        await Router(config, resolver=resolver).route("example.com")
    assert dns_server.count("example.com", "MX") == 1


# ---- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"nameservers": ("dns.example",)},
        {"dns_port": 0},
        {"smtp_port": 65536},
        {"timeout": 0},
        {"ttl_min": 10, "ttl_max": 5},
        {"failure_ttl": 301},
        {"cache_size": 0},
        {"max_mx_hosts": 0},
    ],
)
def test_config_rejects(changes):
    with pytest.raises(ConfigError):
        RoutingConfig(**changes)


def test_router_needs_nameservers_for_mx():
    with pytest.raises(ConfigError, match="nameserver"):
        Router(RoutingConfig())
    with pytest.raises(ConfigError, match="nameserver"):
        Router(RoutingConfig(smarthost=Relay("relay.example")))


def test_router_rejects_bad_override_domain():
    with pytest.raises(ConfigError, match="route override"):
        Router(
            RoutingConfig(nameservers=("127.0.0.1",), overrides={"bad domain": Relay("127.0.0.1")})
        )
