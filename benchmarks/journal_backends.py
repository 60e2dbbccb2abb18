"""The journal's two backends side by side: import, claims and outcomes per second.

    .venv/bin/python benchmarks/journal_backends.py            # 100k rows, ~1 min
    .venv/bin/python benchmarks/journal_backends.py --rows 1000000 --only import

For each backend (SQLite file in a temporary directory; PostgreSQL on a temporary server
with fsync on, or ``--url``): import ``--rows`` recipients over ``--domains`` domains, claim
them all (``fetch_due``, ``--claim`` at a time, per domain), then apply a delivered outcome
for each (``apply``, ``--batch`` per transaction, as the writer commits). Wall seconds and
CPU seconds: this process's (the SQLite work, the psycopg client) and, for PostgreSQL, the
server backend process serving the connection (from /proc). Peak RSS shows the import
streams (it stays flat as ``--rows`` grows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bulksend.journal import NewRecipient, Outcome
from bulksend.journal.backend import open_journal

IDENTITY = {"campaign": "bench"}


def recipients(n: int, domains: int) -> Iterator[NewRecipient]:
    for i in range(n):
        yield NewRecipient(f"user{i}@d{i % domains}.example", {"name": f"User {i}", "n": str(i)})


def server_cpu(pid: int | None) -> float:
    """CPU seconds of the PostgreSQL backend process ``pid`` (0 when not readable)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(step: Callable[[], int], pid: int | None) -> dict[str, float]:
    cpu0, srv0, t0 = time.process_time(), server_cpu(pid), time.perf_counter()
    n = step()
    wall = time.perf_counter() - t0
    out = {
        "n": n,
        "wall_s": round(wall, 3),
        "per_s": round(n / wall),
        "cpu_s": round(time.process_time() - cpu0, 3),
    }
    if pid is not None:
        out["server_cpu_s"] = round(server_cpu(pid) - srv0, 3)
    return out


def bench(spec: str | Path, args: argparse.Namespace) -> dict[str, Any]:
    journal: Any = open_journal(spec, IDENTITY, now=1.0)
    pid = None
    if isinstance(spec, str):
        with journal._tx("read the backend pid") as cur:
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
    now = 2.0
    result: dict[str, Any] = {}
    try:
        result["import"] = timed(
            lambda: (
                journal.import_recipients(recipients(args.rows, args.domains), now=now).imported
            ),
            pid,
        )
        result["import"]["max_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        if args.only == "import":
            return result
        claimed: list[int] = []

        def claim() -> int:
            for domain in journal.due_domains(now=now):
                while batch := journal.fetch_due(domain, args.claim, now=now):
                    claimed.extend(d.id for d in batch)
            return len(claimed)

        result["claim"] = timed(claim, pid)
        delivered = Outcome.delivered(250, "2.0.0", "queued")

        def apply() -> int:
            applied = 0
            for i in range(0, len(claimed), args.batch):
                part = claimed[i : i + args.batch]
                applied += journal.apply([(rid, delivered, now + 1) for rid in part])[0]
            return applied

        result["apply"] = timed(apply, pid)
    finally:
        if isinstance(spec, str):
            journal.discard()
        else:
            journal.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--claim", type=int, default=100, help="recipients per fetch_due")
    parser.add_argument("--batch", type=int, default=500, help="outcomes per apply")
    parser.add_argument("--only", choices=["import"], help="only the import")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--url", help="an existing server's postgresql:// URL (else a temporary server)"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": args.rows, "domains": args.domains}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = bench(Path(tmp) / "bench.journal", args)
    if args.backend in ("postgres", "both"):
        if args.url:
            results["postgres"] = bench(f"{args.url}?campaign=bench", args)
        else:
            from tests.helpers.postgres import PostgresServer, find_bindir  # noqa: PLC0415

            bindir = find_bindir()
            if bindir is None:
                sys.exit("no PostgreSQL server binaries: give --url")
            server = PostgresServer.start(bindir, durable=True)
            try:
                url = server.new_database("bench")
                results["postgres"] = bench(f"{url}?campaign=bench", args)
            finally:
                server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
