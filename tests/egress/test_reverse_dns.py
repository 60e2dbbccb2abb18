"""``validate`` checks each egress source's forward-confirmed reverse DNS (PTR of its address
-> its EHLO name -> the same address), against the test DNS server on loopback."""

from __future__ import annotations

from pathlib import Path

import trio
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.testing.dns import open_dns_server
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign

ZONES = {
    "2.0.0.127.in-addr.arpa": {"PTR": ["mta2.sender.test."]},
    "mta2.sender.test": {"A": ["127.0.0.2"]},
    "3.0.0.127.in-addr.arpa": {"PTR": ["dsl-127-0-0-3.isp.test."]},
    "4.0.0.127.in-addr.arpa": {"PTR": ["mta4.sender.test."]},
    "mta4.sender.test": {"A": ["127.0.0.9"]},
}

SOURCES = """
[[egress.source]]
name = "good"
address = "127.0.0.2"
ehlo = "mta2.sender.test"

[[egress.source]]
name = "generic"
address = "127.0.0.3"
ehlo = "mta3.sender.test"

[[egress.source]]
name = "elsewhere"
address = "127.0.0.4"
ehlo = "mta4.sender.test"

[[egress.source]]
name = "none"
address = "127.0.0.5"
"""


async def test_validate_warns_of_sources_without_fcrdns(tmp_path: Path) -> None:
    toml = write_campaign(tmp_path, addresses(["a.test"], 2), toml=campaign_toml(policy=SOURCES))
    async with open_dns_server(ZONES) as dns:
        args = ["validate", str(toml), "--nameserver", "127.0.0.1", "--dns-port", str(dns.port)]
        result = await trio.to_thread.run_sync(CliRunner().invoke, cli, args)
    lines = result.output.splitlines()
    assert result.exit_code == 4, result.output
    assert (
        "ok: egress source good (127.0.0.2, EHLO mta2.sender.test): forward-confirmed reverse DNS"
    ) in lines
    assert (
        "warning: egress source generic (127.0.0.3, EHLO mta3.sender.test): reverse DNS is "
        "dsl-127-0-0-3.isp.test, not the EHLO name: set the PTR record of 127.0.0.3 to "
        "mta3.sender.test (or ehlo to the PTR name)"
    ) in lines
    assert (
        "warning: egress source elsewhere (127.0.0.4, EHLO mta4.sender.test): mta4.sender.test "
        "resolves to 127.0.0.9, not back to 127.0.0.4: add an A record"
    ) in lines
    # No ehlo of its own: the campaign's name, and no PTR at all.
    assert (
        "warning: egress source none (127.0.0.5, EHLO sender.test): reverse DNS is no PTR "
        "record, not the EHLO name: set the PTR record of 127.0.0.5 to sender.test "
        "(or ehlo to the PTR name)"
    ) in lines


async def test_without_sources_nothing_is_said_of_them(tmp_path: Path) -> None:
    toml = write_campaign(tmp_path, addresses(["a.test"], 2))
    async with open_dns_server(ZONES) as dns:
        args = ["validate", str(toml), "--nameserver", "127.0.0.1", "--dns-port", str(dns.port)]
        result = await trio.to_thread.run_sync(CliRunner().invoke, cli, args)
    assert "egress source" not in result.output
