"""The bulksend side of a benchmark: one process, as a user runs it (journal + metrics on).

    .venv/bin/python benchmarks/sender.py CAMPAIGN.toml JOURNAL --dns-port P --smtp-port Q
        [--limit N] [--import-only] [--profile FILE]

Imports the recipients into the journal (timed on its own), then ``run_campaign`` with a
``Metrics()`` until the campaign is done (or ``--limit`` recipients have an outcome). Prints
one JSON line: import and send seconds, outcomes, CPU seconds of the send (user + system,
``getrusage`` of this process, all threads), and the process's peak RSS.

``--profile FILE`` writes a cProfile (pstats) of the send covering every thread (the trio
thread and the worker threads the journal runs in), timed in per-thread CPU time
(``time.thread_time``), so that a thread waiting for work counts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunOptions, import_recipients, open_journal, run_campaign
from bulksend.delivery.workers import WorkerPool
from bulksend.metrics import Metrics


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class ThreadProfiles:
    """cProfile of the thread that starts it and of every thread started after that."""

    def __init__(self) -> None:
        self.profiles = [cProfile.Profile(time.thread_time)]

    def start(self) -> None:
        threading.setprofile(self._adopt)
        self.profiles[0].enable()

    def _adopt(self, _frame: FrameType, _event: str, _arg: object) -> None:
        # The first profile event of a new thread: hand the thread to a cProfile of its own.
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        self.profiles.append(profile)
        profile.enable()

    def stop(self, path: Path) -> None:
        threading.setprofile(None)
        self.profiles[0].disable()
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            stats.add(_Snapshot(profile))  # type: ignore[arg-type]  # Stats.add takes what has create_stats and stats
        stats.dump_stats(path)


class _Snapshot:
    """Another thread's profile as it stands, for ``pstats.Stats.add``.

    ``Stats.add(profile)`` would disable it from this thread, which closes the calls still
    open over there (an idle worker waiting on its lock) with *this* thread's CPU clock.
    """

    def __init__(self, profile: cProfile.Profile) -> None:
        profile.snapshot_stats()
        self.stats = profile.stats

    def create_stats(self) -> None:
        """Already made."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("campaign", type=Path)
    parser.add_argument("journal", type=Path)
    parser.add_argument("--dns-port", type=int, default=53)
    parser.add_argument("--smtp-port", type=int, default=25)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--import-only", action="store_true")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the send here")
    parser.add_argument(
        "--workers", type=int, help="import and send with N worker processes (send --workers)"
    )
    args = parser.parse_args()

    result: dict[str, Any] = {}
    campaign = Campaign.load(args.campaign, {})
    options = RunOptions(
        journal=args.journal,
        nameservers=("127.0.0.1",),
        dns_port=args.dns_port,
        smtp_port=args.smtp_port,
        ehlo_hostname="sender.test",
        limit=args.limit,
        grace=10,
    )
    if args.workers is not None:
        print(json.dumps(send_with_workers(args, options)))
        return
    started, cpu0 = time.perf_counter(), cpu()
    journal = open_journal(campaign, options)
    try:
        stats = import_recipients(campaign, journal)
    finally:
        journal.close()
    result["import_seconds"] = time.perf_counter() - started
    result["import_cpu_seconds"] = cpu() - cpu0
    result["imported"] = stats.imported if stats is not None else 0
    result["import_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if not args.import_only:
        metrics = Metrics()
        profiler = ThreadProfiles() if args.profile else None
        started, cpu0, sys0 = time.perf_counter(), cpu(), system_cpu()
        if profiler is not None:
            profiler.start()
        summary = trio.run(lambda: run_campaign(campaign, options, metrics=metrics))
        if profiler is not None:
            profiler.stop(args.profile)
        result["send_seconds"] = time.perf_counter() - started
        result["send_cpu_seconds"] = cpu() - cpu0
        result["send_system_cpu_seconds"] = system_cpu() - sys0
        result["outcomes"] = summary.outcomes
        result["delivered"] = summary.outcomes.get("delivered", 0)
        result["complete"] = summary.complete
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def send_with_workers(args: argparse.Namespace, options: RunOptions) -> dict[str, Any]:
    """The whole run (each worker imports its shard, then sends) with N processes."""
    pool = WorkerPool(args.campaign, {}, options, args.workers)
    started = time.perf_counter()
    states = trio.run(pool.run)
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    delivered = sum(st.outcomes.get("delivered", 0) for st in states)
    return {
        "workers": args.workers,
        "send_seconds": seconds,  # import included: the shards import in parallel
        "send_cpu_seconds": children.ru_utime + children.ru_stime + cpu(),
        "delivered": delivered,
        "complete": all(st.summary is not None and st.summary.complete for st in states),
        "failed_workers": [str(st.shard) for st in states if st.failed],
        "peak_rss_mb": children.ru_maxrss / 1024,  # the largest worker
    }


if __name__ == "__main__":
    main()
