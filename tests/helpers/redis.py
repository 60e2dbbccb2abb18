"""A real Redis/Valkey server for tests: loopback, a free port, no persistence, a temp dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import trio

from bulksend.config import SiteLimits
from bulksend.delivery.backoff import Backoff
from bulksend.throttles.redis import RedisThrottles


def server_binary() -> str | None:
    """``redis-server`` or ``valkey-server``, whichever is installed (None: neither)."""
    return shutil.which("redis-server") or shutil.which("valkey-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One server process; :meth:`restart` loses its state (as a crash without persistence)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.binary} did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


async def prewarm(url: str, campaign_id: str) -> None:
    """Make a fresh campaign's throttle store trusted: a store that does not know a campaign
    grants nothing for one lease TTL (10 s by default), while leases held elsewhere are
    renewed or lost."""
    store = RedisThrottles(url, campaign_id, lease_ttl=0.1)
    async with store.open():
        site = store.site(
            "warm-up",
            SiteLimits(),
            Backoff("warm-up", (), max_connections=1, rate=None),
            changed=lambda _action: None,
            now=trio.current_time,
        )
        await site.reserve()
    await trio.sleep(0.2)
