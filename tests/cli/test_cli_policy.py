"""``bulksend policy show``: a destination's effective limits and rules, and where each value
came from (default, defaults, site, domain, shipped, provider)."""

from __future__ import annotations

from pathlib import Path

import trio
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.testing.dns import DNSServer
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign

POLICY = """
[policy.defaults]
rate = "100/s"

[policy.sites."example.com"]
max_connections = 3

[policy.domains."example.com"]
rate = "20/s"
pool = "main"

[[egress.source]]
name = "ip2"
address = "192.0.2.2"
ehlo = "mta2.sender.test"
max_connections = 2
warmup = true
warmup_providers = { microsoft365 = [20, 40] }

[egress.pool.main]
sources = ["ip2"]

[[policy.backoff]]
code = "421"
suspend = "5m"

[policy.providers.microsoft365]
match = ["example.com"]
max_connections = 8
"""


def show(args: list[str]) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["policy", "show", *args])
    return result.exit_code, result.output.splitlines()


def row(lines: list[str], name: str) -> str:
    """The line of a setting, spaces squeezed."""
    found = [" ".join(line.split()) for line in lines if line.strip().startswith(f"{name} =")]
    assert found, lines
    return found[0]


async def test_every_value_says_where_it_came_from(tmp_path: Path, dns_server: DNSServer) -> None:
    toml = write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=POLICY))
    args = ["example.com", str(toml), "--nameserver", "127.0.0.1", "--dns-port"]
    code, lines = await trio.to_thread.run_sync(show, [*args, str(dns_server.port)])
    assert code == 0, lines
    assert lines[:2] == ["destination: example.com", "mx hosts: mx1.example.com, mx2.example.com"]
    assert row(lines, "rate") == 'rate = 20/s (domain "example.com")'
    assert row(lines, "max_connections") == 'max_connections = 3 (site "example.com")'
    assert row(lines, "connection_rate") == "connection_rate = none (default)"
    assert row(lines, "pool") == 'pool = main (domain "example.com")'
    assert "egress: pool main, scope source" in lines
    source = "  source ip2: 192.0.2.2, EHLO mta2.sender.test, weight 1"
    assert f"{source} (source caps: max_connections 2)" in lines
    warmups = (
        "    warm-up: 50, 100, 200, ..., 1000000 a day (20 days); to microsoft365: 20, 40 a day"
    )
    assert (
        lines[lines.index(f"{source} (source caps: max_connections 2)") + 1]
        == f"{warmups} (2 days)"
    )
    # The campaign extends the shipped Microsoft 365 provider: its cap, the shipped rate.
    assert any(
        line.startswith("provider: microsoft365 (shipped+campaign; https://") for line in lines
    )
    provider = lines[lines.index("  limits shared by every site of the provider:") + 1 :]
    assert row(provider, "max_connections") == "max_connections = 8 (provider)"
    assert row(provider, "connection_rate") == "connection_rate = 5/s (shipped)"
    rules = lines[lines.index("backoff rules (first match wins):") + 1 :]
    assert rules[0] == "  1. code 421 -> suspend 300s for 600s  (campaign [[policy.backoff]])"
    assert "(provider microsoft365, shipped: https://learn.microsoft.com/" in rules[1]
    assert rules[-1].endswith("(egress: source blocked)")


def test_without_a_campaign_the_defaults_and_shipped_rules() -> None:
    code, lines = show(["--no-dns", "gmail-smtp-in.l.google.com"])
    assert code == 0, lines
    assert row(lines, "max_connections") == "max_connections = 5 (default)"
    assert lines[lines.index("  limits shared by every site of the provider:") - 2].startswith(
        "provider: google (shipped; https://support.google.com/"
    )
    assert any("enhanced_code 4.7.28" in line for line in lines)


def test_shipped_rules_off_and_no_provider(tmp_path: Path) -> None:
    policy = "[policy]\nshipped_rules = false\n"
    toml = write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=policy))
    code, lines = show(["--no-dns", "aspmx.l.google.com", str(toml)])
    assert code == 0, lines
    assert "provider: none" in lines
    assert lines[-1] == "backoff rules: none"


def test_a_target_that_is_no_name_is_one_line() -> None:
    code, lines = show(["--no-dns", "no such host"])
    assert code == 1
    assert lines == [
        "bulksend: error: 'no such host' is not a domain or host name "
        "(invalid domain label 'no such host')."
    ]


def test_a_provider_that_matches_nothing_is_one_line_naming_the_file(tmp_path: Path) -> None:
    policy = "[policy.providers.mine]\nrate = '5/s'\n"
    toml = write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=policy))
    code, lines = show(["--no-dns", "mx.example.org", str(toml)])
    assert code == 1
    assert lines == [
        f"bulksend: error: {toml}: policy.providers.mine: matches nothing (no shipped provider "
        'of that name to extend). Write match = ["example.com"].'
    ]


def test_a_warmup_for_no_provider_is_one_line_naming_the_file(tmp_path: Path) -> None:
    policy = POLICY.replace("{ microsoft365 = [20, 40] }", "{ microsoft = [20, 40] }")
    toml = write_campaign(tmp_path, addresses(["a.test"], 1), toml=campaign_toml(policy=policy))
    code, lines = show(["--no-dns", "mx.example.org", str(toml)])
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(
        f"bulksend: error: {toml}: egress source 'ip2': warmup_providers.microsoft: no provider "
        "of that name. Use one of: comcast, gmx, google, icloud, microsoft365, "
    )
