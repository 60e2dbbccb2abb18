"""``validate`` against a resolver that cannot help: it names the resolver and the reason, and
does not wait for every lookup in turn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.testing.dns import DNSServer, Fault
from bulksend.testing.scenario import addresses, write_campaign


@pytest.fixture
def silent_resolver() -> Iterator[int]:
    """A bound UDP port on loopback where queries arrive and are never answered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def validate(tmp_path: Path, port: int) -> tuple[int, str, float]:
    path = write_campaign(tmp_path, addresses(["a.test"], 3))
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["validate", str(path), "--nameserver", "127.0.0.1", "--dns-port", str(port)]
    )
    return result.exit_code, result.stdout, time.monotonic() - started


def test_silent_resolver_named_with_timeout_and_bounded(
    tmp_path: Path, silent_resolver: int
) -> None:
    code, out, elapsed = validate(tmp_path, silent_resolver)
    assert code == 4, out
    assert f"warning: DNS: resolver 127.0.0.1:{silent_resolver}: TXT sender.test: " in out
    assert "no answer within 5s (timeout)" in out
    assert f"resolver 127.0.0.1:{silent_resolver}: not asked after the timeout: _dmarc" in out
    # One lookup's lifetime, not one per record checked (SPF, DKIM, DMARC).
    assert elapsed < 8, out
    assert "SPF: could not look up TXT sender.test" in out
    assert "DMARC: could not look up TXT _dmarc.sender.test" in out


@contextmanager
def refusing_resolver(names: list[str]) -> Iterator[int]:
    """The test DNS server, in a thread of its own, answering REFUSED for ``names``."""
    ready = threading.Event()
    running: dict[str, Any] = {}

    async def serve() -> None:
        server = DNSServer()
        for name in names:
            server.inject(name, Fault.REFUSED)
        async with trio.open_nursery() as nursery:
            running["port"] = await nursery.start(server.serve)
            running["token"] = trio.lowlevel.current_trio_token()
            running["scope"] = nursery.cancel_scope
            ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    try:
        assert ready.wait(10)
        yield running["port"]
    finally:
        if "scope" in running:
            trio.from_thread.run_sync(running["scope"].cancel, trio_token=running["token"])
        thread.join(10)


def test_refusing_resolver_named_with_the_reason(tmp_path: Path) -> None:
    with refusing_resolver(["sender.test", "_dmarc.sender.test"]) as port:
        code, out, elapsed = validate(tmp_path, port)
    assert code == 4, out
    for name in ("sender.test", "_dmarc.sender.test"):
        line = f"warning: DNS: resolver 127.0.0.1:{port}: TXT {name}: "
        assert line in out
        assert "answered REFUSED" in out.split(line)[1].splitlines()[0]
    assert elapsed < 8, out


def test_help_says_where_nameservers_come_from() -> None:
    result = CliRunner().invoke(cli, ["validate", "--help"])
    text = " ".join(result.stdout.split())
    assert "default the campaign's [routing] nameservers, else the system's" in text
