"""Helpers for the command-line tests: bulksend subprocesses, scraping, test worlds."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from bulksend.testing.scenario import World, addresses, campaign_toml, write_campaign
from tests.helpers.metrics import Samples, parse_samples
from tests.helpers.worlds import limits_policy


@dataclass
class Proc:
    """A ``python -m bulksend`` subprocess whose output goes to files."""

    process: trio.Process
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    async def wait(self, seconds: float) -> int:
        with trio.fail_after(seconds):
            return await self.process.wait()

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.process.send_signal(signum)

    async def wait_for(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        """Poll ``predicate`` until true; fail (with the output) after ``seconds``."""
        with trio.move_on_after(seconds):
            while not predicate():
                if self.process.returncode is not None:
                    raise AssertionError(f"bulksend exited while waiting for {what}: {self!r}")
                await trio.sleep(0.05)
            return
        raise AssertionError(f"timed out waiting for {what}: {self!r}")

    def __repr__(self) -> str:
        return f"<rc={self.process.returncode}\nstdout:\n{self.stdout()}\nstderr:\n{self.stderr()}>"


@asynccontextmanager
async def bulksend(
    tmp_path: Path, *args: str, name: str = "run", env: Mapping[str, str] | None = None
) -> AsyncIterator[Proc]:
    """Start ``python -m bulksend ARGS``; it is killed on leaving if still running."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("wb") as fout, err.open("wb") as ferr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bulksend", *args],
            stdin=subprocess.DEVNULL,
            stdout=fout,
            stderr=ferr,
            env=env,
        )
        try:
            yield Proc(process, out, err)
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def run_bulksend(
    tmp_path: Path,
    *args: str,
    name: str,
    seconds: float = 60,
    env: Mapping[str, str] | None = None,
) -> Proc:
    """Run ``python -m bulksend ARGS`` to the end (bounded)."""
    async with bulksend(tmp_path, *args, name=name, env=env) as proc:
        await proc.wait(seconds)
    return proc


def paced_campaign(
    tmp_path: Path, domains: list[str], count: int, rate: int, policy: str = ""
) -> tuple[Path, list[str]]:
    """A campaign in ``tmp_path/c`` to ``count`` recipients over ``domains``, sent at ``rate``
    messages a second per site (two connections), ``policy`` added; its TOML and recipients."""
    recipients = addresses(domains, count)
    toml = campaign_toml(policy=limits_policy(rate) + policy)
    return write_campaign(tmp_path / "c", recipients, toml=toml), recipients


def world_args(world: World) -> list[str]:
    """Options that point a run at a test world's DNS and SMTP servers."""
    return [
        "--nameserver",
        "127.0.0.1",
        "--dns-port",
        str(world.dns_port),
        "--smtp-port",
        str(world.smtp_port),
        "--ehlo-hostname",
        "sender.test",
    ]


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return str(response.read().decode())


async def scrape(url: str) -> Samples:
    """Every sample of a metrics endpoint: (name, sorted labels) -> value."""
    return parse_samples(await trio.to_thread.run_sync(_fetch, url))


def recipients_total(samples: Samples, outcome: str) -> float:
    return samples.get(("bulksend_recipients_total", (("outcome", outcome),)), 0.0)


def reported_in_doubt(report_text: str) -> int:
    """The "sends in doubt (possibly duplicated)" count of a ``report --format table``."""
    tail = report_text.replace(",", "").split("sends in doubt (possibly duplicated):")[1]
    return int(tail.split()[0])
