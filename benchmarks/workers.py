"""One big site: the embedded SQLite path beside 1, 2 and 4 workers on the shared backends.

    .venv/bin/python benchmarks/workers.py --n 20000 --reps 3      # issue 17, ~2-3 min
    make bench-workers BENCH_ARGS="--n 20000 --reps 3"

One site (one domain, one MX on 127.0.10.1) served by the benchmark sink
(``benchmarks/sink.py``, bulksend's own test server), limits that do not throttle (no rate,
``--connections`` connections per site in total, a connection reused for the whole run).
Per round, in this order (interleaved rounds, each run a fresh campaign id and journal):

* ``embedded``: ``bulksend import`` into a SQLite file, then ``bulksend send`` on it
  (1 process, no ``--throttle``): today's default path;
* ``shared-K`` for K in ``--workers`` (1,2,4): ``bulksend import`` into PostgreSQL, then K
  ``bulksend worker --journal postgresql://... --throttle redis://...`` processes at once.

The servers are the test suite's own (``tests/helpers``): a temporary PostgreSQL cluster
(fsync on, as ``journal_backends.py`` runs it) and a ``redis-server``/``valkey-server``, both
on 127.0.0.1 at free ports, started once for the whole run. The import is timed apart and not
counted. A fresh campaign's throttle store grants nothing for one lease TTL (10 s): the store
is **pre-warmed** after the import (one reservation with a 0.1 s lease TTL, as
``tests/throttles/test_shared_campaign.py`` does, then 0.2 s), so the window holds no such
wait; ``first_msg_s`` in the JSON shows it.

Measured per run: msgs/s = N / (start of the processes -> the sink's counter reaching N,
polled every 25 ms); ``exit_s`` (-> the last process exited, which includes each worker's
end-of-campaign detection); CPU µs per message of the bulksend processes (user + system,
``os.wait4`` of each, summed over the workers; Python start-up included); the PostgreSQL
server's (postmaster + every backend, ``/proc/<pid>/stat`` with the children it reaped),
Redis's and the sink's CPU over the same window, per message. Besides, each round runs one
``worker`` and one ``send`` on the finished campaign (nothing to send): the fixed CPU a
process costs. A run counts only if the sink counted exactly N messages and every process
exited 0. Ratios are computed within a round and given as median and range (min-max).

Writes ``--out`` (``benchmarks/out/workers.json``) and the markdown beside it; prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from run import Sink, machine, policy, site_layout  # noqa: E402

from bulksend.testing.scenario import addresses, campaign_toml, write_campaign  # noqa: E402
from tests.helpers.postgres import PostgresServer, find_bindir  # noqa: E402
from tests.helpers.redis import RedisServer, prewarm, server_binary  # noqa: E402

BULKSEND = [sys.executable, "-m", "bulksend"]
TICK = os.sysconf("SC_CLK_TCK")
_DELIVERED = re.compile(r"this run:\s+delivered ([\d,]+)")


# -- CPU of other processes (/proc) -------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int, children: bool = False) -> float:
    """user + system seconds of ``pid`` (and of the children it reaped, if asked)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICK


def tree_cpu(pid: int) -> float:
    """A server and its live children (PostgreSQL: postmaster + backends + background)."""
    total = process_cpu(pid, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# -- running bulksend ---------------------------------------------------------------------


def _run(command: Sequence[str], seconds: float, log: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=seconds, check=False
        )
    return {"rc": done.returncode, "seconds": time.perf_counter() - started}


def run_processes(
    commands: list[list[str]], s: Sink, n: int, seconds: float, logs: Path, servers: dict[str, int]
) -> dict[str, Any]:
    """Start ``commands`` at once; wait (bounded) for all to exit; CPU and timings."""
    before = s.count()
    cpu0 = {name: _server_cpu(name, pid) for name, pid in servers.items()}
    sink0 = process_cpu(s.process.pid)
    load = load1()
    start = time.perf_counter()
    procs = {}
    for i, command in enumerate(commands):
        out = (logs / f"process{i}.log").open("w")
        procs[subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT).pid] = out
    deadline = start + seconds
    first = full = None
    cpu = 0.0
    rcs: list[int] = []
    running = set(procs)
    count = 0
    while running and time.perf_counter() < deadline:
        for pid in list(running):
            reaped, status, usage = os.wait4(pid, os.WNOHANG)
            if reaped:
                running.discard(pid)
                procs[pid].close()
                cpu += usage.ru_utime + usage.ru_stime
                rcs.append(os.waitstatus_to_exitcode(status))
        if full is None:
            count = s.count() - before
            now = time.perf_counter() - start
            if first is None and count > 0:
                first = now
            if count >= n:
                full = now
        if running:
            time.sleep(0.025)
    exit_s = time.perf_counter() - start
    error = None
    for pid in running:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        procs[pid].close()
        error = f"timed out after {seconds:.0f}s"
    time.sleep(0.3)  # the backends of the exited workers end and are reaped
    count = s.count() - before
    delivered = []
    for i in range(len(commands)):
        found = _DELIVERED.search((logs / f"process{i}.log").read_text())
        delivered.append(int(found[1].replace(",", "")) if found else None)
    result: dict[str, Any] = {
        "delivered_per_process": delivered,
        "processes": len(commands),
        "load1_before": load,
        "sink_count": count,
        "first_msg_s": first,
        "full_s": full,
        "exit_s": exit_s,
        "rcs": sorted(rcs),
        "cpu_s": cpu,
        "sink_cpu_s": process_cpu(s.process.pid) - sink0,
    }
    for name, pid in servers.items():
        result[f"{name}_cpu_s"] = _server_cpu(name, pid) - cpu0[name]
    if error is None and count != n:
        error = f"sink counted {count} of {n}"
    if error is None and any(rcs):
        error = f"exit codes {sorted(rcs)} (see {logs})"
    if error is not None:
        result["error"] = error
    elif full and n:
        result["msgs_per_s"] = n / full
        for key in ("cpu", "sink_cpu", *(f"{name}_cpu" for name in servers)):
            result[f"{key}_us_per_msg"] = result[f"{key}_s"] / n * 1e6
    return result


def _server_cpu(name: str, pid: int) -> float:
    return tree_cpu(pid) if name == "postgres" else process_cpu(pid)


# -- the section --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.layout = site_layout(1, 1)
        self.domain = self.layout[0]["domains"][0]
        os.environ["BULKSEND_SENT_RECORD"] = str(work / "sent.jsonl")
        self.policy = policy(args.connections).replace(
            "messages_per_connection = 1000000",
            f"messages_per_connection = {args.messages_per_connection}",
        )

    def common(self, s: Sink) -> list[str]:
        return [
            "--quiet", "--nameserver", "127.0.0.1", "--dns-port", str(s.dns_port),
            "--smtp-port", str(s.smtp_port), "--ehlo-hostname", "sender.test",
            "--grace", "5", "--exit-zero-when-complete",
        ]  # fmt: skip

    def campaign(self, name: str) -> tuple[str, Path, Path]:
        directory = self.work / name
        toml = write_campaign(
            directory,
            addresses([self.domain], self.args.n),
            toml=campaign_toml(campaign_id=name, policy=self.policy),
        )
        return name, toml, directory

    def one(self, config: str, round_: int, s: Sink, pg: str, redis: str) -> dict[str, Any]:
        servers = self.servers
        name, toml, directory = self.campaign(f"{config.replace('-', '_')}_r{round_}")
        args = self.args
        if config == "embedded":
            journal = str(directory / "journal.sqlite3")
        else:
            journal = f"{pg}?campaign={name}"
        imported = _run(
            [*BULKSEND, "import", str(toml), "--journal", journal],
            args.timeout,
            directory / "import.log",
        )
        if imported["rc"]:
            return {"error": f"import exit {imported['rc']} (see {directory / 'import.log'})"}
        if config == "embedded":
            commands = [[*BULKSEND, "send", str(toml), "--journal", journal, *self.common(s)]]
        else:
            command = [
                *BULKSEND, "worker", "--campaign", str(toml), "--journal", journal,
                *self.common(s),
            ]  # fmt: skip
            if not args.no_throttle:
                trio.run(prewarm, redis, name)
                command += ["--throttle", redis]
            commands = [command] * int(config.split("-")[1])
        result = run_processes(commands, s, args.n, args.timeout, directory, servers)
        result["import_s"] = imported["seconds"]
        # The same again on the finished campaign: what a process costs with nothing to send.
        (directory / "idle").mkdir()
        idle = run_processes(commands[:1], s, 0, args.timeout, directory / "idle", {})
        result["idle_process_cpu_s"] = idle["cpu_s"]
        if "error" in idle:
            result["idle_error"] = idle["error"]
        if "error" not in result:
            net = result["cpu_s"] - len(commands) * idle["cpu_s"]
            result["cpu_net_us_per_msg"] = net / args.n * 1e6
        return result

    def run(self) -> dict[str, Any]:
        args = self.args
        bindir, binary = find_bindir(), server_binary()
        if bindir is None or binary is None:
            sys.exit("workers: needs PostgreSQL server binaries and redis-server/valkey-server")
        configs = ["embedded", *(f"shared-{k}" for k in args.workers)]
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
        postgres = PostgresServer.start(bindir, durable=not args.pg_no_fsync)
        redis = RedisServer(binary, self.work)
        redis.start()
        s = Sink("bulksend", self.layout, self.work)
        try:
            pg = postgres.new_database("bench")
            postmaster = int((postgres.root / "data" / "postmaster.pid").read_text().split()[0])
            assert redis.process is not None
            self.servers = {"postgres": postmaster, "redis": redis.process.pid}
            for round_ in range(args.reps):
                for config in configs:
                    result = self.one(config, round_, s, pg, redis.url)
                    runs[config].append(result)
                    _progress(f"round {round_ + 1}/{args.reps} {config}", result)
        finally:
            s.close()
            redis.stop()
            postgres.stop()
        return runs


def _progress(label: str, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{label}: ERROR {r['error']}", file=sys.stderr, flush=True)
        return
    print(
        f"{label}: {r['msgs_per_s']:.0f} msgs/s, {r['cpu_us_per_msg']:.0f} µs/msg bulksend, "
        f"pg {r.get('postgres_cpu_us_per_msg', 0):.0f}, "
        f"redis {r.get('redis_cpu_us_per_msg', 0):.0f}, "
        f"sink {r['sink_cpu_us_per_msg']:.0f}; first msg {r['first_msg_s']:.2f}s, "
        f"exit {r['exit_s']:.2f}s, load {r['load1_before']:.2f}",
        file=sys.stderr,
        flush=True,
    )


# -- analysis and tables ------------------------------------------------------------------


def spread(values: list[float | None]) -> dict[str, Any] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {
        "median": statistics.median(got),
        "min": min(got),
        "max": max(got),
        "count": len(got),
    }


def _get(run: dict[str, Any], key: str) -> float | None:
    return None if "error" in run else run.get(key)


def analyse(runs: dict[str, list[dict[str, Any]]], reps: int) -> dict[str, Any]:
    keys = (
        "msgs_per_s",
        "cpu_us_per_msg",
        "cpu_net_us_per_msg",
        "postgres_cpu_us_per_msg",
        "redis_cpu_us_per_msg",
        "sink_cpu_us_per_msg",
        "exit_s",
        "first_msg_s",
        "import_s",
        "idle_process_cpu_s",
        "load1_before",
    )
    summaries = {
        config: {key: spread([_get(r, key) for r in rs]) for key in keys}
        for config, rs in runs.items()
    }

    def per_round(a: str, b: str, key_a: str, key_b: str, total: bool = False) -> Any:
        values = []
        for i in range(reps):
            ra, rb = runs[a][i], runs[b][i]
            va, vb = _get(ra, key_a), _get(rb, key_b)
            if total and va is not None:
                va += (_get(ra, "postgres_cpu_us_per_msg") or 0) + (
                    _get(ra, "redis_cpu_us_per_msg") or 0
                )
            values.append(va / vb if va is not None and vb else None)
        out = spread(values)
        if out is not None:
            out["rounds"] = values
        return out

    ratios: dict[str, Any] = {}
    shared = [c for c in runs if c.startswith("shared-")]
    if "shared-1" in runs:
        ratios["shared-1 / embedded: bulksend CPU per msg"] = per_round(
            "shared-1", "embedded", "cpu_us_per_msg", "cpu_us_per_msg"
        )
        ratios["shared-1 / embedded: bulksend CPU per msg, start-up removed"] = per_round(
            "shared-1", "embedded", "cpu_net_us_per_msg", "cpu_net_us_per_msg"
        )
        ratios["shared-1 / embedded: CPU per msg incl. PostgreSQL + Redis"] = per_round(
            "shared-1", "embedded", "cpu_us_per_msg", "cpu_us_per_msg", total=True
        )
        ratios["shared-1 / embedded: msgs/s"] = per_round(
            "shared-1", "embedded", "msgs_per_s", "msgs_per_s"
        )
        for c in shared:
            if c != "shared-1":
                ratios[f"{c} / embedded: msgs/s"] = per_round(
                    c, "embedded", "msgs_per_s", "msgs_per_s"
                )
                ratios[f"{c} / shared-1: msgs/s"] = per_round(
                    c, "shared-1", "msgs_per_s", "msgs_per_s"
                )
                ratios[f"{c} / shared-1: bulksend CPU per msg"] = per_round(
                    c, "shared-1", "cpu_us_per_msg", "cpu_us_per_msg"
                )
                ratios[f"{c} / shared-1: bulksend CPU per msg, start-up removed"] = per_round(
                    c, "shared-1", "cpu_net_us_per_msg", "cpu_net_us_per_msg"
                )
    return {"summaries": summaries, "ratios": ratios}


def _fmt(s: dict[str, Any] | None, digits: int = 0) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _splits(runs: list[dict[str, Any]]) -> str:
    return "; ".join(
        "/".join("-" if d is None else str(d) for d in r.get("delivered_per_process", []))
        for r in runs
    )


def tables(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"### one site, {c['n']} messages per run, {c['connections']} connections in total, "
        f"{c['messages_per_connection']} messages per connection, PostgreSQL fsync "
        f"{'on' if c['postgres_fsync'] else 'off'}, workers' throttle "
        f"{c.get('throttle', 'redis')}, {c['reps']} interleaved rounds",
        "",
        "median (min-max) over the rounds; CPU in µs per message; import not counted; "
        "messages per process: each round's split",
        "",
        "| configuration | msgs/s | bulksend CPU | start-up removed | PostgreSQL CPU "
        "| Redis CPU | sink CPU "
        "| first msg s | exit s | idle process CPU s | load1 before | messages per process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for config, s in results["analysis"]["summaries"].items():
        lines.append(
            f"| {config} | {_fmt(s['msgs_per_s'])} | {_fmt(s['cpu_us_per_msg'])} "
            f"| {_fmt(s['cpu_net_us_per_msg'])} "
            f"| {_fmt(s['postgres_cpu_us_per_msg'])} | {_fmt(s['redis_cpu_us_per_msg'])} "
            f"| {_fmt(s['sink_cpu_us_per_msg'])} | {_fmt(s['first_msg_s'], 2)} "
            f"| {_fmt(s['exit_s'], 2)} | {_fmt(s['idle_process_cpu_s'], 2)} "
            f"| {_fmt(s['load1_before'], 2)} | {_splits(results['runs'][config])} |"
        )
    lines += ["", "| ratio (per round) | median (min-max) | rounds |", "| --- | --- | --- |"]
    for name, r in results["analysis"]["ratios"].items():
        rounds = ", ".join("-" if v is None else f"{v:.2f}" for v in (r or {}).get("rounds", []))
        lines.append(f"| {name} | {_fmt(r, 2)} | {rounds} |")
    errors = [
        f"- {config} round {i + 1}: {r['error']}"
        for config, rs in results["runs"].items()
        for i, r in enumerate(rs)
        if "error" in r
    ]
    if errors:
        lines += ["", "Runs that did not count:", *errors]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="messages per run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 4],
        help="worker counts on the shared backends (comma separated)",
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="the site's connection cap (in total)"
    )
    parser.add_argument(
        "--messages-per-connection",
        type=int,
        default=1_000_000,
        help="the site's messages_per_connection (default: a connection lasts the whole run); "
        "lower, connections close and their leases pass between the workers",
    )
    parser.add_argument(
        "--pg-no-fsync", action="store_true", help="the PostgreSQL server without fsync"
    )
    parser.add_argument(
        "--no-throttle",
        action="store_true",
        help="workers without --throttle (the PostgreSQL journal alone; a diagnostic: N "
        "workers then keep N times the site's limits)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "workers.json")
    parser.add_argument("--report", type=Path, help="print the tables of a results file")
    parser.add_argument("--keep", type=Path, help="work here and keep it (campaigns, logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.report is not None:  # the tables again, from a results file (same analysis)
        results = json.loads(args.report.read_text())
        results["analysis"] = analyse(results["runs"], results["config"]["reps"])
        print(tables(results))
        return results
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        runs = Bench(args, args.keep.resolve()).run()
    else:
        with tempfile.TemporaryDirectory(prefix="bulksend-workers-") as tmp:
            runs = Bench(args, Path(tmp)).run()
    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "config": {
            "n": args.n,
            "reps": args.reps,
            "workers": args.workers,
            "connections": args.connections,
            "messages_per_connection": args.messages_per_connection,
            "postgres_fsync": not args.pg_no_fsync,
            "throttle": "none" if args.no_throttle else "redis",
        },
        "runs": runs,
        "analysis": analyse(runs, args.reps),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    text = tables(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
