"""Throttle backends side by side: message-slot reservations per second and CPU µs each.

    .venv/bin/python benchmarks/shared_throttle.py [--n 5000] [--url redis://host:port/0]

Reserves ``--n`` message slots through one site's throttle from 4 concurrent tasks (as a
destination's senders do), with the local backend and with the shared Redis/Valkey backend
at batch sizes 1, 8 and 32. The rate is set high enough (1M/s) that no reservation waits for
its slot: what is measured is the cost of the reservation itself. Without ``--url`` a
``redis-server`` (or ``valkey-server``) is started on a free loopback port for the run.
CPU time is this process's (``time.process_time``); the server's is not counted. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bulksend.config import SiteLimits
from bulksend.delivery.backoff import Backoff
from bulksend.throttles import LocalThrottles, SiteThrottle, ThrottleBackend
from bulksend.throttles.redis import RedisThrottles
from tests.helpers.redis import RedisServer, server_binary

RATE = 1_000_000.0
TASKS = 4


async def _measure(backend: ThrottleBackend, n: int) -> dict[str, float]:
    limits = SiteLimits(rate=RATE)
    backoff = Backoff("bench", (), max_connections=5, rate=RATE)
    async with backend.open():
        site: SiteThrottle = backend.site(
            "bench", limits, backoff, changed=lambda _a: None, now=time.time
        )
        await site.reserve()  # connected, past a fresh store's grace
        each = n // TASKS

        async def task() -> None:
            for _ in range(each):
                await site.reserve()

        wall, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(TASKS):
                nursery.start_soon(task)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = each * TASKS
    return {"per_s": round(done / wall), "cpu_us": round(cpu / done * 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="reservations per measurement")
    parser.add_argument("--url", help="a Redis/Valkey server (default: start one)")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        binary = server_binary()
        if binary is None:
            sys.exit("no redis-server or valkey-server; install one or give --url")
        server = RedisServer(binary, Path(tempfile.mkdtemp()))
        server.start()
        url = server.url
    try:
        runs: dict[str, Callable[[], ThrottleBackend]] = {"local": LocalThrottles}
        for batch in (1, 8, 32):
            runs[f"redis_batch_{batch}"] = partial(
                RedisThrottles, url, f"bench-{uuid.uuid4().hex}", batch=batch, lease_ttl=0.2
            )
        out: dict[str, Any] = {"n": args.n, "tasks": TASKS}
        for name, make in runs.items():
            out[name] = trio.run(_measure, make(), args.n)
        print(json.dumps(out))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
