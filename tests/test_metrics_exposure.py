"""The metrics endpoint binds loopback unless told otherwise, and carries no personal data."""

from __future__ import annotations

import socket
import urllib.request

from click.testing import CliRunner

from bulksend.cli import main
from bulksend.metrics import Metrics


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
