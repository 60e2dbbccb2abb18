"""The peers bulksend is measured against, each run in a process of its own.

    .venv/bin/python benchmarks/peers.py PEER PLAN.json

PEER is one of:

* ``aiosmtplib``: asyncio, one task per connection, each reusing its connection for all its
  messages (``sendmail`` in a loop; aiosmtplib does not pipeline);
* ``smtplib``: the standard library, one thread per connection in a thread pool, connections
  reused;
* ``trio-raw``: a minimal pipelined trio loop with no features: pre-built, pre-stuffed
  messages as raw bytes; each message's MAIL/RCPT/DATA leave in the same write as the
  previous message's data, and replies are only counted (the per-core Python limit);
* ``smtp-source``: Postfix's C load generator, one process per site (``-d``: connections
  reused; it does not pipeline), as a non-Python reference.

PLAN.json: ``{"port": P, "connections": C, "messages": [{"site": address, "sender": ...,
"recipient": ..., "data": latin-1 text}, ...], "per_site": {address: count}}``. Each site
gets ``per_site[address]`` messages over ``connections`` connections, cycling through the
plan's messages for that site. Prints one JSON line: elapsed seconds (first connect to last
reply), messages sent, failures, CPU seconds (this process and its children) and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bulksend.smtp.encoding import encode_data


@dataclass(frozen=True)
class Message:
    sender: str
    recipient: str
    data: bytes


@dataclass(frozen=True)
class Job:
    """What one connection sends."""

    address: str
    port: int
    messages: list[Message]


def jobs(plan: dict[str, Any]) -> list[Job]:
    by_site: dict[str, list[Message]] = {}
    for m in plan["messages"]:
        by_site.setdefault(m["site"], []).append(
            Message(m["sender"], m["recipient"], m["data"].encode("latin-1"))
        )
    result = []
    connections = int(plan["connections"])
    for address, count in plan["per_site"].items():
        pool = by_site[address]
        shares = [
            count // connections + (1 if i < count % connections else 0) for i in range(connections)
        ]
        start = 0
        for share in shares:
            if share:
                chosen = [pool[(start + j) % len(pool)] for j in range(share)]
                result.append(Job(address, int(plan["port"]), chosen))
            start += share
    return result


# -- aiosmtplib ----------------------------------------------------------------------------


def run_aiosmtplib(work: list[Job]) -> tuple[int, int]:
    import aiosmtplib  # noqa: PLC0415  (optional: make bench-tools)

    async def one(job: Job) -> tuple[int, int]:
        client = aiosmtplib.SMTP(hostname=job.address, port=job.port, start_tls=False)
        await client.connect()
        sent = failed = 0
        for m in job.messages:
            try:
                await client.sendmail(m.sender, [m.recipient], m.data)
                sent += 1
            except aiosmtplib.SMTPException:
                failed += 1
        await client.quit()
        return sent, failed

    async def main() -> tuple[int, int]:
        results = await asyncio.gather(*(one(j) for j in work))
        return sum(r[0] for r in results), sum(r[1] for r in results)

    return asyncio.run(main())


# -- smtplib + threads ---------------------------------------------------------------------


def run_smtplib(work: list[Job]) -> tuple[int, int]:
    def one(job: Job) -> tuple[int, int]:
        sent = failed = 0
        with smtplib.SMTP(job.address, job.port) as client:
            for m in job.messages:
                try:
                    client.sendmail(m.sender, [m.recipient], m.data)
                    sent += 1
                except smtplib.SMTPException:
                    failed += 1
        return sent, failed

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        results = list(pool.map(one, work))
    return sum(r[0] for r in results), sum(r[1] for r in results)


# -- the bare pipelined trio loop ----------------------------------------------------------


def run_trio_raw(work: list[Job]) -> tuple[int, int]:
    def wire(m: Message) -> tuple[bytes, bytes]:
        commands = b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (
            m.sender.encode(),
            m.recipient.encode(),
        )
        return commands, encode_data(m.data)

    cache: dict[int, tuple[bytes, bytes]] = {}
    prepared = [
        [cache.get(id(m)) or cache.setdefault(id(m), wire(m)) for m in job.messages] for job in work
    ]

    async def one(job: Job, items: list[tuple[bytes, bytes]], totals: list[int]) -> None:
        stream = await trio.open_tcp_stream(job.address, job.port)
        lines = _LineCounter(stream)
        async with stream:
            await lines.expect(1)  # greeting
            await stream.send_all(b"EHLO client.test\r\n")
            await lines.multiline()
            await stream.send_all(items[0][0])
            for i, (_commands, data) in enumerate(items):
                # Replies owed: the previous message's final dot (none for the first), then
                # MAIL, RCPT and DATA of this one.
                await lines.expect(3 if i == 0 else 4)
                following = items[i + 1][0] if i + 1 < len(items) else b""
                await stream.send_all(data + following)
            await lines.expect(1)
            await stream.send_all(b"QUIT\r\n")
            await lines.expect(1)
        totals[0] += len(items)
        totals[1] += lines.failures

    async def main() -> tuple[int, int]:
        totals = [0, 0]
        async with trio.open_nursery() as nursery:
            for job, items in zip(work, prepared, strict=True):
                nursery.start_soon(one, job, items, totals)
        return totals[0], totals[1]

    return trio.run(main)


class _LineCounter:
    """Reads reply lines; counts 4xx/5xx ones."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""
        self.failures = 0

    async def expect(self, count: int) -> None:
        """Read ``count`` one-line replies."""
        while self.buffer.count(b"\r\n") < count:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        cut = 0
        for _ in range(count):
            if self.buffer[cut : cut + 1] in (b"4", b"5"):
                self.failures += 1
            cut = self.buffer.index(b"\r\n", cut) + 2
        self.buffer = self.buffer[cut:]

    async def multiline(self) -> None:
        """Read one reply of any number of lines (EHLO)."""
        while True:
            line = self.buffer[: self.buffer.find(b"\r\n") + 2] if b"\r\n" in self.buffer else b""
            if line:
                await self.expect(1)
                if line[3:4] != b"-":
                    return
                continue
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk


# -- Postfix smtp-source -------------------------------------------------------------------


def run_smtp_source(work: list[Job], size: int) -> tuple[int, int]:
    binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    by_site: dict[str, list[Job]] = {}
    for job in work:
        by_site.setdefault(job.address, []).append(job)
    processes = []
    total = 0
    for address, site_jobs in by_site.items():
        count = sum(len(j.messages) for j in site_jobs)
        first = site_jobs[0].messages[0]
        total += count
        command = [
            binary, "-d", "-l", str(size), "-m", str(count), "-s", str(len(site_jobs)),
            "-f", first.sender, "-t", first.recipient, f"{address}:{site_jobs[0].port}",
        ]  # fmt: skip
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    failed = sum(1 for p in processes if p.wait() != 0)
    return (total, 0) if not failed else (0, total)


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (smtp-source)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=("aiosmtplib", "smtplib", "trio-raw", "smtp-source"))
    parser.add_argument("plan", type=Path)
    args = parser.parse_args()
    plan = json.loads(args.plan.read_text())
    work = jobs(plan)
    size = sum(len(m.data) for job in work for m in job.messages[:1]) // max(len(work), 1)
    runners: dict[str, Callable[[], tuple[int, int]]] = {
        "aiosmtplib": lambda: run_aiosmtplib(work),
        "smtplib": lambda: run_smtplib(work),
        "trio-raw": lambda: run_trio_raw(work),
        "smtp-source": lambda: run_smtp_source(work, size),
    }
    cpu0 = _cpu()
    started = time.perf_counter()
    sent, failed = runners[args.peer]()
    elapsed = time.perf_counter() - started
    cpu = _cpu() - cpu0
    # smtp-source's own peak, not its Python wrapper's; else this process's peak.
    who = resource.RUSAGE_CHILDREN if args.peer == "smtp-source" else resource.RUSAGE_SELF
    rss = resource.getrusage(who).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "sent": sent,
                "failed": failed,
                "cpu_seconds": cpu,
                "peak_rss_mb": rss,
            }
        )
    )
    sys.exit(0 if not failed else 1)


if __name__ == "__main__":
    main()
