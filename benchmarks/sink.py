"""The benchmark sink: DNS plus SMTP servers on 127.0.0.x, in a process of its own.

    .venv/bin/python benchmarks/sink.py SPEC.json [--kind bulksend|postfix]

SPEC.json is a list of sites, ``[{"name": "s0", "address": "127.0.0.10", "domains": [...]}]``.
The sink starts the test DNS server (MX and A records for every site, as
:func:`bulksend.testing.scenario.running` publishes them) and one SMTP server per site, all
on one port, then prints ``{"dns_port": ..., "smtp_port": ...}`` as one JSON line on stdout.

* ``--kind bulksend``: bulksend's own test server, ``ServerScript(record=False)`` (counters
  only), started through ``running(...)``.
* ``--kind postfix``: Postfix's ``smtp-sink`` (C), one process per site address, with the
  same test DNS server in this process.

Each line read on stdin is answered with ``{"messages": N}`` (messages accepted so far, all
sites); the sink exits when stdin closes (or on SIGTERM).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from bulksend.testing.dns import DNSServer
from bulksend.testing.scenario import SiteSpec, running, zones
from bulksend.testing.smtp import ServerScript

_MESG = re.compile(rb"mesg=(\d+)")


def load_sites(path: Path) -> list[SiteSpec]:
    """The sites of SPEC.json; a site may say ``"mode": "blackhole"`` (accept, never answer)."""
    return [
        SiteSpec(
            s["name"],
            tuple(s["domains"]),
            s["address"],
            ServerScript(record=False, mode=s.get("mode", "normal")),
        )
        for s in json.loads(path.read_text())
    ]


async def _control(count: Any) -> None:
    """Answer each stdin line with the message count; return at EOF."""
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    buffer = b""
    while True:
        chunk = await stdin.receive_some(4096)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            _line, buffer = buffer.split(b"\n", 1)
            sys.stdout.write(json.dumps({"messages": count()}) + "\n")
            sys.stdout.flush()


def _announce(dns_port: int, smtp_port: int) -> None:
    sys.stdout.write(json.dumps({"dns_port": dns_port, "smtp_port": smtp_port}) + "\n")
    sys.stdout.flush()


async def serve_bulksend(sites: list[SiteSpec]) -> None:
    async with running(sites) as world:
        _announce(world.dns_port, world.smtp_port)
        await _control(lambda: world.delivered)


def _free_port(addresses: list[str]) -> int:
    """A port free on every address (tried, not guaranteed: the sinks bind it next)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise OSError("no common free port")


async def serve_postfix(sites: list[SiteSpec]) -> None:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    addresses = sorted({s.address for s in sites})
    port = _free_port(addresses)
    counts = dict.fromkeys(addresses, 0)
    dns = DNSServer(zones(sites))

    async def one_sink(address: str, task_status: trio.TaskStatus[None]) -> None:
        # -c prints "sess=.. quit=.. mesg=N\r" as messages complete; -u: we may be root.
        command = [binary, "-u", "nobody", "-c", "-m", "5000", f"{address}:{port}", "1024"]
        async with trio.open_nursery() as inner:
            process = await inner.start(
                functools.partial(trio.run_process, command, stdout=-1, check=False)
            )
            assert process.stdout is not None
            await trio.sleep(0.2)  # let it bind before we announce the port
            task_status.started()
            tail = b""
            async for chunk in process.stdout:
                tail = (tail + chunk)[-256:]
                found = _MESG.findall(tail)
                if found:
                    counts[address] = int(found[-1])

    async with trio.open_nursery() as nursery:
        dns_port = await nursery.start(dns.serve)
        for address in addresses:
            await nursery.start(one_sink, address)
        _announce(dns_port, port)
        await _control(lambda: sum(counts.values()))
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--kind", choices=("bulksend", "postfix"), default="bulksend")
    args = parser.parse_args()
    sites = load_sites(args.spec)
    serve = serve_bulksend if args.kind == "bulksend" else serve_postfix
    trio.run(serve, sites)


if __name__ == "__main__":
    main()
