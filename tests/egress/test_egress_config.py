"""The ``[egress]`` section: what loads, and the one-line errors for what does not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bulksend.config import load_campaign
from bulksend.config.egress import DEFAULT_WARMUP
from bulksend.errors import ConfigError
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign

SOURCES = """
[[egress.source]]
name = "ip2"
address = "127.0.0.2"
ehlo = "mta2.sender.test"
rate = "10/s"

[[egress.source]]
name = "ip6"
address = "::1"

[egress.pool.main]
sources = ["ip2", "ip6"]
weights = [3, 1]
"""


def load(tmp_path: Path, policy: str) -> object:
    toml = write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=policy))
    return load_campaign(toml, {})


def test_sources_and_pools_load(tmp_path: Path) -> None:
    config = load_campaign(
        write_campaign(
            tmp_path,
            addresses(["a.test"], 1),
            toml=campaign_toml(policy='[policy.defaults]\npool = "main"\n' + SOURCES),
        ),
        {},
    )
    egress = config.egress
    assert egress.sources["ip2"].rate == 10.0
    assert egress.sources["ip6"].ehlo is None
    assert [(s.name, w) for s, w in egress.pools["main"].sources] == [("ip2", 3), ("ip6", 1)]
    assert config.policy.defaults.pool == "main"
    assert config.policy.defaults.scope == "source"


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            '[policy.sites."p.test"]\npool = "other"\n' + SOURCES,
            "policy.sites.\"p.test\".pool: no pool 'other'. Declare [egress.pool.other] or use one "
            "of: main.",
        ),
        (
            SOURCES.replace('address = "::1"', 'address = "mta.example"'),
            "egress.source[1].address: 'mta.example' is not an IP address.",
        ),
        (
            SOURCES.replace("weights = [3, 1]", "weights = [3]"),
            "egress.pool.main.weights: [3] does not give one positive integer per source.",
        ),
        (
            SOURCES.replace('["ip2", "ip6"]', '["ip2", "ip9"]'),
            "egress.pool.main.sources: no source 'ip9'. Declare it in [[egress.source]]",
        ),
        (
            '[policy.defaults]\nscope = "world"\n',
            'policy.defaults.scope: \'world\' is not a scope. Use "source" or "site".',
        ),
        (
            SOURCES.replace('name = "ip6"', 'name = "ip2"'),
            "egress.source[1].name: 'ip2' is declared twice.",
        ),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, policy: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, policy)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_provider_table_loads(tmp_path: Path) -> None:
    policy = """
[policy.providers.microsoft]
match = ["mail.protection.outlook.com", "outlook.com"]
max_connections = 10
rate = "20/s"

[[policy.providers.microsoft.backoff]]
code = "451"
enhanced_code = "4.7.500"
reduce_connections = 2
"""
    config = load_campaign(
        write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=policy)), {}
    )
    provider = config.policy.providers["microsoft"]
    assert provider.match == ("mail.protection.outlook.com", "outlook.com")
    assert (provider.limits.max_connections, provider.limits.rate) == (10, 20.0)
    assert provider.backoff[0].matches(451, "4.7.500", "Server busy")
    assert config.policy.shipped_rules is True


def test_a_provider_key_it_does_not_know_is_refused(tmp_path: Path) -> None:
    policy = '[policy.providers.x]\nmatch = ["x.test"]\nmessages_per_connection = 5\n'
    with pytest.raises(
        ConfigError, match=r"policy\.providers\.x\.messages_per_connection: unknown"
    ):
        load(tmp_path, policy)


def test_warmup_keys(tmp_path: Path) -> None:
    policy = SOURCES.replace(
        'rate = "10/s"', 'rate = "10/s"\nwarmup = true\nwarmup_start = 2026-12-01'
    ).replace('address = "::1"', 'address = "::1"\nwarmup = [10, 20]')
    config = load_campaign(
        write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=policy)), {}
    )
    ip2, ip6 = config.egress.sources["ip2"], config.egress.sources["ip6"]
    assert ip2.warmup == DEFAULT_WARMUP
    assert ip2.warmup_start == 1796083200.0  # 2026-12-01T00:00:00Z
    assert (ip6.warmup, ip6.warmup_start) == ((10, 20), None)


def test_warmup_per_provider(tmp_path: Path) -> None:
    line = "warmup_providers = { google = [20, 40], microsoft = true, yahoo = false }"
    config = load_campaign(
        write_campaign(
            tmp_path,
            addresses(["a.test"], 1),
            toml=campaign_toml(policy=SOURCES.replace('rate = "10/s"', f'rate = "10/s"\n{line}')),
        ),
        {},
    )
    ip2, ip6 = config.egress.sources["ip2"], config.egress.sources["ip6"]
    assert dict(ip2.warmup_providers) == {"google": (20, 40), "microsoft": DEFAULT_WARMUP}
    assert (ip2.warmup, dict(ip6.warmup_providers)) == ((), {})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("warmup = [0, 10]", "egress.source[0].warmup: [0, 10] is not a warm-up schedule"),
        ('warmup = "fast"', "egress.source[0].warmup: 'fast' is not a warm-up schedule"),
        ('warmup_start = "soon"', "egress.source[0].warmup_start: Invalid isoformat"),
        (
            "warmup_providers = { google = [5, 0] }",
            "egress.source[0].warmup_providers.google: [5, 0] is not a warm-up schedule",
        ),
    ],
)
def test_warmup_mistakes(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, SOURCES.replace('rate = "10/s"', f'rate = "10/s"\n{line}'))
