"""MX resolution against the loopback DNS server: order, implicit and null MX, failures."""

from __future__ import annotations

import pytest
import trio

from bulksend.routing import (
    PermanentRoutingError,
    Router,
    RoutingError,
    TransientRoutingError,
    is_acceptable_address,
    normalize_domain,
)
from bulksend.testing.dns import Fault

PUBLIC_V4 = "93.184.215.14"  # only ever DNS data: nothing connects in these tests
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


async def route_error(router: Router, domain: str) -> RoutingError:
    with pytest.raises(RoutingError) as info:
        await router.route(domain)
    return info.value


async def test_hosts_in_preference_order_with_addresses(dns_server, make_config):
    with trio.fail_after(10):
        route = await Router(make_config(smtp_port=2525)).route("Example.COM.")
    assert route.domain == "example.com"
    assert [(h.name, h.preference) for h in route.hosts] == [
        ("mx1.example.com", 10),
        ("mx2.example.com", 20),
    ]
    assert route.hosts[0].addresses == ("127.0.0.11", "::1")  # IPv4 first
    assert route.hosts[1].addresses == ("127.0.0.12",)
    assert {h.port for h in route.hosts} == {2525}
    assert route.auth is None


async def test_equal_preferences_are_shuffled(dns_server, make_config):
    dns_server.load(
        {
            "shuffle.test": {
                "MX": [
                    (5, "a.shuffle.test"),
                    (5, "b.shuffle.test"),
                    (1, "c.shuffle.test"),
                    (5, "d.shuffle.test"),
                ]
            },
            "a.shuffle.test": {"A": ["127.0.1.1"]},
            "b.shuffle.test": {"A": ["127.0.1.2"]},
            "c.shuffle.test": {"A": ["127.0.1.3"]},
            "d.shuffle.test": {"A": ["127.0.1.4"]},
        }
    )
    router = Router(make_config())
    seen = set()
    with trio.fail_after(10):
        for _ in range(200):
            route = await router.route("shuffle.test")
            names = [h.name for h in route.hosts]
            assert names[0] == "c.shuffle.test"  # lowest preference always first
            assert sorted(names[1:]) == ["a.shuffle.test", "b.shuffle.test", "d.shuffle.test"]
            seen.add(tuple(names))
    # 3! orders of the equal-preference hosts; 200 draws miss one with negligible odds.
    assert len(seen) == 6
    assert dns_server.count("shuffle.test", "MX") == 1


async def test_same_host_listed_twice_is_tried_once(dns_server, make_config):
    dns_server.load({"twice.test": {"MX": [(20, "mx1.example.com"), (10, "MX1.example.com.")]}})
    with trio.fail_after(10):
        route = await Router(make_config()).route("twice.test")
    assert [(h.name, h.preference) for h in route.hosts] == [("mx1.example.com", 10)]


async def test_implicit_mx_uses_the_domain_itself(dns_server, make_config):
    dns_server.load({"implicit.test": {"A": ["127.0.2.1"], "AAAA": ["::1"]}})
    with trio.fail_after(10):
        route = await Router(make_config()).route("implicit.test")
    assert [(h.name, h.preference, h.addresses) for h in route.hosts] == [
        ("implicit.test", 0, ("127.0.2.1", "::1"))
    ]
    assert route.site.mx == ("implicit.test",)


async def test_no_mx_and_no_address_is_permanent(dns_server, make_config):
    dns_server.load({"bare.test": {"TXT": ['"v=spf1 -all"']}})
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), "bare.test")
    assert isinstance(error, PermanentRoutingError)
    assert error.enhanced_code == "5.1.2"


async def test_null_mx_is_permanent_without_address_lookup(dns_server, make_config):
    dns_server.load({"nomail.test": {"MX": [(0, ".")], "A": ["127.0.3.1"]}})
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), "nomail.test")
    assert isinstance(error, PermanentRoutingError)
    assert not error.transient
    assert error.enhanced_code == "5.1.10"
    assert "null MX" in error.text
    # RFC 7505: no fallback to the domain's A record.
    assert dns_server.count("nomail.test", "A") == 0
    assert dns_server.count("nomail.test", "AAAA") == 0


async def test_null_mx_mixed_with_real_hosts_uses_the_real_ones(dns_server, make_config):
    dns_server.load({"mixed.test": {"MX": [(0, "."), (10, "mx1.example.com")]}})
    with trio.fail_after(10):
        route = await Router(make_config()).route("mixed.test")
    assert [h.name for h in route.hosts] == ["mx1.example.com"]


async def test_nxdomain_is_permanent(dns_server, make_config):
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), "nowhere.test")
    assert isinstance(error, PermanentRoutingError)
    assert error.enhanced_code == "5.1.2"
    assert error.domain == "nowhere.test"


@pytest.mark.parametrize("fault", [Fault.SERVFAIL, Fault.REFUSED])
async def test_server_failure_is_transient(dns_server, make_config, fault):
    dns_server.inject("example.com", fault, "MX")
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), "example.com")
    assert isinstance(error, TransientRoutingError)
    assert error.transient
    assert error.enhanced_code == "4.4.3"


async def test_timeout_is_transient(dns_server, make_config):
    dns_server.inject("example.com", Fault.TIMEOUT)
    with trio.fail_after(10):
        error = await route_error(Router(make_config(timeout=0.5)), "example.com")
    assert isinstance(error, TransientRoutingError)
    assert error.enhanced_code == "4.4.3"
    assert "timed out" in error.text
    assert dns_server.count("example.com", "MX") >= 1


async def test_unresolvable_mx_host_is_skipped(dns_server, make_config):
    dns_server.load({"partial.test": {"MX": [(10, "gone.partial.test"), (20, "mx2.example.com")]}})
    with trio.fail_after(10):
        route = await Router(make_config()).route("partial.test")
    assert [h.name for h in route.hosts] == ["mx2.example.com"]
    # The site still names every published MX host.
    assert route.site.mx == ("gone.partial.test", "mx2.example.com")


async def test_no_mx_host_resolves_is_transient(dns_server, make_config):
    dns_server.load({"dangling.test": {"MX": [(10, "a.dangling.test"), (20, "b.dangling.test")]}})
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), "dangling.test")
    assert isinstance(error, TransientRoutingError)
    assert error.enhanced_code == "4.4.4"
    assert "a.dangling.test" in error.text


async def test_mx_host_lookup_failure_is_transient(dns_server, make_config):
    dns_server.inject("mx1.example.com", Fault.SERVFAIL)
    dns_server.inject("mx2.example.com", Fault.SERVFAIL)
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), "example.com")
    assert isinstance(error, TransientRoutingError)
    assert error.enhanced_code == "4.4.3"


async def test_failing_host_next_to_a_good_one_is_skipped(dns_server, make_config):
    dns_server.inject("mx1.example.com", Fault.SERVFAIL)
    with trio.fail_after(10):
        route = await Router(make_config()).route("example.com")
    assert [h.name for h in route.hosts] == ["mx2.example.com"]


async def test_mx_host_through_cname(dns_server, make_config):
    dns_server.load(
        {
            "alias.test": {"MX": [(10, "mail.alias.test")]},
            "mail.alias.test": {"CNAME": "mx2.example.com"},
        }
    )
    with trio.fail_after(10):
        route = await Router(make_config()).route("alias.test")
    assert route.hosts[0].name == "mail.alias.test"
    assert route.hosts[0].addresses == ("127.0.0.12",)


async def test_ipv6_off_sends_no_aaaa_query(dns_server, make_config):
    with trio.fail_after(10):
        route = await Router(make_config(ipv6=False)).route("example.com")
    assert route.hosts[0].addresses == ("127.0.0.11",)
    assert dns_server.count(rdtype="AAAA") == 0


async def test_max_mx_hosts_limits_lookups_not_the_site(dns_server, make_config):
    hosts = [(i, f"mx{i}.many.test") for i in range(30)]
    dns_server.load({"many.test": {"MX": hosts}})
    dns_server.load({f"mx{i}.many.test": {"A": [f"127.0.4.{i + 1}"]} for i in range(30)})
    with trio.fail_after(10):
        route = await Router(make_config(max_mx_hosts=3, ipv6=False)).route("many.test")
    assert [h.name for h in route.hosts] == ["mx0.many.test", "mx1.many.test", "mx2.many.test"]
    assert len(route.site.mx) == 30
    assert dns_server.count(rdtype="A") == 3


# ---- private and other non-global addresses ------------------------------------------------


PRIVATE_ZONES = {
    "internal.test": {"MX": [(10, "mx.internal.test")]},
    "mx.internal.test": {
        "A": ["127.0.0.1", "10.1.2.3", "192.168.0.7", "169.254.1.1", "100.64.0.1"],
        "AAAA": ["::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1"],
    },
}


async def test_private_addresses_refused_by_default(dns_server, make_config):
    dns_server.load(PRIVATE_ZONES)
    with trio.fail_after(10):
        error = await route_error(Router(make_config(allow_private=False)), "internal.test")
    assert isinstance(error, PermanentRoutingError)
    assert error.enhanced_code == "5.4.4"
    assert "10.1.2.3" in error.text
    assert "refused" in error.text


async def test_private_addresses_allowed_with_the_switch(dns_server, make_config):
    dns_server.load(PRIVATE_ZONES)
    with trio.fail_after(10):
        route = await Router(make_config(allow_private=True)).route("internal.test")
    assert set(route.hosts[0].addresses) == {
        *PRIVATE_ZONES["mx.internal.test"]["A"],
        *PRIVATE_ZONES["mx.internal.test"]["AAAA"],
    }


async def test_only_the_refused_addresses_are_dropped(dns_server, make_config):
    dns_server.load(
        {
            "half.test": {"MX": [(10, "inside.half.test"), (20, "outside.half.test")]},
            "inside.half.test": {"A": ["10.0.0.1"]},
            "outside.half.test": {"A": ["10.0.0.2", PUBLIC_V4], "AAAA": [PUBLIC_V6, "fe80::2"]},
        }
    )
    with trio.fail_after(10):
        route = await Router(make_config(allow_private=False)).route("half.test")
    assert [(h.name, h.addresses) for h in route.hosts] == [
        ("outside.half.test", (PUBLIC_V4, PUBLIC_V6))
    ]


async def test_refused_and_unresolved_hosts_together_are_transient(dns_server, make_config):
    # One host may still appear in DNS: this is not yet the domain's settled answer.
    dns_server.load(
        {
            "unsettled.test": {"MX": [(10, "inside.unsettled.test"), (20, "new.unsettled.test")]},
            "inside.unsettled.test": {"A": ["192.168.1.1"]},
        }
    )
    with trio.fail_after(10):
        error = await route_error(Router(make_config(allow_private=False)), "unsettled.test")
    assert isinstance(error, TransientRoutingError)
    assert error.enhanced_code == "4.4.4"


async def test_refused_addresses_with_a_failed_lookup_are_transient(dns_server, make_config):
    dns_server.load(PRIVATE_ZONES)
    dns_server.inject("mx.internal.test", Fault.SERVFAIL, "AAAA")
    with trio.fail_after(10):
        error = await route_error(Router(make_config(allow_private=False)), "internal.test")
    assert isinstance(error, TransientRoutingError)
    assert error.enhanced_code == "4.4.3"


# IPv6 forms that carry IPv4, and the special-purpose blocks (IANA registries, RFC 6890).
ADDRESS_TABLE = [
    # (address, acceptable by default)
    (PUBLIC_V4, True),
    (PUBLIC_V6, True),
    ("8.8.8.8", True),
    ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ("::ffff:8.8.8.8", True),
    ("64:ff9b::7f00:1", False),  # NAT64 (RFC 6052) of 127.0.0.1
    ("64:ff9b::10.1.2.3", False),  # NAT64 of RFC 1918
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of link-local 169.254.169.254 (cloud metadata)
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("64:ff9b:1::808:808", False),  # local-use NAT64 prefix (RFC 8215)
    ("2002:7f00:1::1", False),  # 6to4 (RFC 3056) of 127.0.0.1
    ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
    ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo, client 192.0.2.45 (RFC 4380)
    ("2001:0:808:808:0:0:80ff:fefe", False),  # Teredo, client ~0x80fffefe = 127.0.1.1
    ("2001:0:808:808::f7f7:f7f7", True),  # Teredo, server and client 8.8.8.8
    ("2001:0:a00:1::f7f7:f7f7", False),  # Teredo, server 10.0.0.1
    ("::1", False),
    ("::", False),
    ("::127.0.0.1", False),  # deprecated IPv4-compatible form (::/96)
    ("::ffff:0:7f00:1", False),  # IPv4-translated (RFC 2765)
    ("fe80::1", False),
    ("fd00::1", False),
    ("fec0::1", False),  # deprecated site-local
    ("100::1", False),  # discard-only
    ("2001:2::1", False),  # benchmarking
    ("2001:10::1", False),  # deprecated ORCHID
    ("2001:db8::1", False),  # documentation
    ("3fff::1", False),  # documentation (RFC 9637)
    ("5f00::1", False),  # SRv6 SIDs (RFC 9602)
    ("4000::1", False),  # unallocated, outside 2000::/3
    ("ff02::1", False),
    ("0.1.2.3", False),
    ("10.0.0.1", False),
    ("100.64.0.1", False),  # CGNAT
    ("127.0.0.1", False),
    ("169.254.169.254", False),
    ("172.16.0.1", False),
    ("192.0.0.8", False),  # IETF protocol assignments
    ("192.0.0.170", False),  # NAT64 discovery
    ("192.0.2.1", False),
    ("192.88.99.1", False),  # deprecated 6to4 relay anycast
    ("192.168.0.1", False),
    ("198.18.0.1", False),  # benchmarking
    ("198.51.100.1", False),
    ("203.0.113.1", False),
    ("224.0.0.1", False),
    ("240.0.0.1", False),
    ("255.255.255.255", False),
    ("not an address", False),
]


@pytest.mark.parametrize(("address", "acceptable"), ADDRESS_TABLE)
def test_address_acceptable_by_default(address, acceptable):
    assert is_acceptable_address(address) is acceptable


@pytest.mark.parametrize(
    ("address", "acceptable"),
    [
        ("127.0.0.1", True),
        ("64:ff9b::7f00:1", True),
        ("::", False),
        ("0.0.0.0", False),
        ("::ffff:0.0.0.0", False),
        ("64:ff9b::e000:1", False),  # NAT64 of multicast 224.0.0.1
        ("2002:e000:1::1", False),  # 6to4 of multicast
        ("ff02::1", False),
    ],
)
def test_address_acceptable_with_private_allowed(address, acceptable):
    assert is_acceptable_address(address, allow_private=True) is acceptable


async def test_embedded_private_ipv4_refused_through_dns(dns_server, make_config):
    dns_server.load(
        {
            "tunnel.test": {"MX": [(10, "mx.tunnel.test")]},
            "mx.tunnel.test": {"AAAA": ["64:ff9b::7f00:1", "2002:7f00:1::1"]},
        }
    )
    with trio.fail_after(10):
        error = await route_error(Router(make_config(allow_private=False)), "tunnel.test")
    assert isinstance(error, PermanentRoutingError)
    assert error.enhanced_code == "5.4.4"
    assert "64:ff9b::7f00:1" in error.text


# ---- domain names --------------------------------------------------------------------------


async def test_idn_domain_is_resolved_by_its_a_label(dns_server, make_config):
    dns_server.load({"xn--bcher-kva.example": {"MX": [(10, "mx1.example.com")]}})
    router = Router(make_config())
    with trio.fail_after(10):
        route = await router.route("Bücher.example")
        again = await router.route("xn--bcher-kva.EXAMPLE")
    assert route.domain == again.domain == "xn--bcher-kva.example"
    assert route.site == again.site
    assert dns_server.count("xn--bcher-kva.example", "MX") == 1
    assert dns_server.count(rdtype="MX") == 1


@pytest.mark.parametrize(
    "domain",
    [
        "",
        ".",
        "a..example",
        "-bad.example",
        "bad-.example",
        "under_score.example",
        "sp ace.example",
        "[127.0.0.1]",
        "x" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "example",
        "ü" * 10_000 + ".example",  # refused before the IDNA codec sees it
        "☃\u200d.example",  # ZWJ is not allowed in IDNA 2008 here
    ],
)
async def test_invalid_domains_are_permanent_without_queries(dns_server, make_config, domain):
    with trio.fail_after(10):
        error = await route_error(Router(make_config()), domain)
    assert isinstance(error, PermanentRoutingError)
    assert error.enhanced_code == "5.1.3"
    assert dns_server.count() == 0


def test_normalize_domain_forms():
    assert normalize_domain("EXAMPLE.com.") == "example.com"
    assert normalize_domain("BÜCHER.example") == "xn--bcher-kva.example"
    fullwidth = "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\u3002\uff43\uff4f\uff4d"
    assert normalize_domain(fullwidth) == "example.com"  # UTS #46 maps full-width forms
    assert normalize_domain("münchen.de") == "xn--mnchen-3ya.de"
