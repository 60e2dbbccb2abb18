"""The metrics endpoint: loopback unless told otherwise, no personal data, what it exports."""

from __future__ import annotations

import socket
import urllib.request
from importlib.metadata import version
from pathlib import Path

import trio
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from bulksend.campaign.render import Campaign
from bulksend.cli import main
from bulksend.delivery.run import run_campaign
from bulksend.metrics import CONNECTION_FAILURE_REASONS, Metrics
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.helpers.metrics import parse_samples
from tests.helpers.worlds import run_options


def test_default_bind_is_loopback_only() -> None:
    server = Metrics().serve(0)
    try:
        assert server.host == "127.0.0.1"
        # Not reachable through any other local address of this machine.
        others = {
            info[4][0]
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
            if not info[4][0].startswith("127.")
        }
        for address in others:
            with socket.socket() as sock:
                sock.settimeout(1)
                assert sock.connect_ex((address, server.port)) != 0
    finally:
        server.close()


def test_cli_metrics_host_defaults_to_loopback() -> None:
    for command in ("send", "demo"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert "--metrics-host" in result.output
        option = next(p for p in main.commands[command].params if p.name == "metrics_host")
        assert option.default == "127.0.0.1"


def test_metrics_hold_no_addresses() -> None:
    metrics = Metrics()
    server = metrics.serve(0)
    try:
        label = metrics.sites.label("mx1.example.net", 10)
        metrics.site_recipients.labels(label, "delivered").inc()
        metrics.recipients.labels("delivered").inc()
        with urllib.request.urlopen(server.url, timeout=5) as response:  # loopback only
            text = response.read().decode()
    finally:
        server.close()
    assert "bulksend_recipients_total" in text
    assert "@" not in text


def _scrape(metrics: Metrics) -> str:
    server = metrics.serve(0)
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:  # loopback only
            return str(response.read().decode())
    finally:
        server.close()


def test_scrape_has_build_info_and_process_metrics_but_no_created_series() -> None:
    metrics = Metrics()
    metrics.recipients.labels("delivered").inc()
    metrics.transaction_seconds.observe(0.2)
    text = _scrape(metrics)
    samples = parse_samples(text)
    assert "_created" not in text  # a timestamp per series, a third of the scrape
    assert samples[("bulksend_recipients_total", (("outcome", "delivered"),))] == 1
    assert samples[("bulksend_build_info", (("version", version("bulksend")),))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert samples[("process_open_fds", ())] > 0


SHORT_LIVED = """
[policy.timeouts]
connect = "2s"
greeting = "1s"

[policy.retry]
initial = "1s"
maximum = "1s"
max_age = "3s"
"""


async def test_connection_failure_reasons_are_the_documented_values(tmp_path: Path) -> None:
    sites = [
        SiteSpec("dead", ("dead.test",), "127.0.0.2", dead=True),
        SiteSpec(
            "refusing", ("refusing.test",), "127.0.0.3", ServerScript(greeting="554 5.7.1 no")
        ),
        SiteSpec("silent", ("silent.test",), "127.0.0.4", ServerScript(mode="blackhole")),
    ]
    toml = write_campaign(
        tmp_path,
        addresses(["dead.test", "refusing.test", "silent.test"], 3),
        toml=campaign_toml(policy=SHORT_LIVED),
    )
    metrics = Metrics()
    with trio.fail_after(60):
        async with running(sites) as world:
            options = run_options(tmp_path, world)
            await run_campaign(Campaign.load(toml, {}), options, metrics=metrics)
    reasons = {
        s.labels["reason"]
        for family in text_string_to_metric_families(_scrape(metrics))
        for s in family.samples
        if s.name == "bulksend_connections_failed_total"
    }
    assert reasons == {"refused", "rejected", "timeout"}
    assert reasons <= set(CONNECTION_FAILURE_REASONS)
