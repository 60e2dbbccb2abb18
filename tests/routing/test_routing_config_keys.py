"""Domain keys of the campaign file ([routing.overrides], [policy.domains], [policy.sites]):
U-labels are accepted and converted to A-labels, like every other domain bulksend reads.
And the hosts they route to: the one host:port parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulksend.config import RouteOverride, load_campaign
from bulksend.config.values import parse_host_port
from bulksend.errors import ConfigError
from bulksend.routing import Relay, RoutingConfig, normalize_domain
from bulksend.testing.scenario import campaign_toml, write_campaign

IDN_KEYS = """
[routing.overrides]
"müller.de" = "127.0.0.2:2525"

[policy.domains."Müller.DE."]
max_connections = 2

[policy.sites.".bücher.example"]
rate = "5/s"
"""


def write(tmp_path: Path, extra: str) -> Path:
    return write_campaign(tmp_path, ["a@example.com"], toml=campaign_toml(extra=extra))


def test_u_label_keys_become_a_labels(tmp_path: Path) -> None:
    config = load_campaign(write(tmp_path, IDN_KEYS), {})
    assert dict(config.routing.overrides) == {"xn--mller-kva.de": RouteOverride("127.0.0.2", 2525)}
    assert list(config.policy.domains) == ["xn--mller-kva.de"]
    assert config.policy.domains["xn--mller-kva.de"].max_connections == 2
    assert list(config.policy.sites) == ["xn--bcher-kva.example"]
    # The same conversion as routing's, which recipients' domains go through.
    assert normalize_domain("müller.de") == "xn--mller-kva.de"


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        (
            '[routing.overrides]\n"bad_key.example" = "127.0.0.2"\n',
            'routing.overrides."bad_key.example"',
            "not a domain (invalid domain label 'bad_key')",
        ),
        (
            '[policy.domains."a..b"]\nrate = "1/s"\n',
            'policy.domains."a..b"',
            "not a domain (invalid domain",
        ),
        (
            '[routing.overrides]\n"müller.de" = "127.0.0.2"\n"xn--mller-kva.de" = "127.0.0.3"\n',
            'routing.overrides."xn--mller-kva.de"',
            "names the same domain as 'müller.de' (xn--mller-kva.de). Keep one of them.",
        ),
        (
            '[policy.domains."müller.de"]\nrate = "1/s"\n[policy.domains."MÜLLER.de"]\n'
            'rate = "2/s"\n',
            'policy.domains."MÜLLER.de"',
            "names the same domain as 'müller.de'",
        ),
    ],
)
def test_bad_or_repeated_domain_keys_named(
    tmp_path: Path, extra: str, key: str, expected: str
) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relay.example", ("relay.example", 25)),
        ("relay.example:587", ("relay.example", 587)),
        ("[relay.example]:2525", ("relay.example", 2525)),
        ("[relay.example]", ("relay.example", 25)),
        ("192.0.2.1:26", ("192.0.2.1", 26)),
        ("[2001:db8::1]:27", ("2001:db8::1", 27)),
    ],
)
def test_host_port_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, 25) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "relay:port",
        "2001:db8::1",
        "::1:2525",
        "[2001:db8::1",
        "[a]x",
        "h:0",
        "h:70000",
        "h:",
        "h:+25",
        "h:2_5",
        "bad host",
    ],
)
def test_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each form fails in its own words
        parse_host_port(text, 25)


def test_an_ipv6_route_needs_brackets(tmp_path: Path) -> None:
    # "::1:2525" is itself an IPv6 address: read whole, mail meant for port 2525 of ::1 went to
    # host ::1:2525 on port 25. Brackets say where the address ends.
    path = write(tmp_path, '[routing.overrides]\n"example.com" = "::1:2525"\n')
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    assert str(caught.value) == (
        f"{path}: routing.overrides.\"example.com\": '::1:2525': write an IPv6 address in "
        "brackets, '[2001:db8::1]:25'. Write 'host', 'host:port' or '[ip]:port'."
    )
    path = write(tmp_path, '[routing.overrides]\n"example.com" = "[::1]:2525"\n')
    config = load_campaign(path, {})
    assert dict(config.routing.overrides) == {"example.com": RouteOverride("::1", 2525)}


# ---- one port rule and one nameserver rule, in the file, in routing and for the CLI ----------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[routing.overrides]\n"example.com" = "mx.example:70000"\n', 'overrides."example.com"'),
        ('[routing.smarthost]\nhost = "relay.example:70000"\n', "smarthost.host"),
        ('[routing.smarthost]\nhost = "relay.example"\nport = 70000\n', "smarthost.port"),
    ],
)
def test_a_port_out_of_range_is_named_the_same_everywhere(
    tmp_path: Path, extra: str, key: str
) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    assert str(caught.value).startswith(f"{path}: routing.{key}: port 70000 is not in 1..65535.")
    with pytest.raises(ConfigError, match=r"^relay mx\.example: port 70000 is not in 1\.\.65535$"):
        Relay("mx.example", 70000)


def test_a_nameserver_that_is_no_address_is_named_the_same_everywhere(tmp_path: Path) -> None:
    toml = campaign_toml().replace("[routing]\n", '[routing]\nnameservers = ["dns.example"]\n')
    path = write_campaign(tmp_path, ["a@example.com"], toml=toml)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    assert str(caught.value) == (
        f"{path}: routing.nameservers: 'dns.example' is not an IP address. "
        "List resolver IP addresses."
    )
    with pytest.raises(ConfigError) as caught:
        RoutingConfig(nameservers=("dns.example",))
    assert str(caught.value) == "nameserver 'dns.example' is not an IP address"
