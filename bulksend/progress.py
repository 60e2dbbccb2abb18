"""What a running campaign shows: the progress display, the accounting log, the status file.

How this works: :class:`Tally` is the run's ``on_outcome`` hook. It only increments
counters (it runs once per recipient outcome, on the hot path) and feeds the optional
:class:`AccountingLog`, one JSON line per outcome as an MTA's accounting file has. The
:class:`Progress` task wakes every half second: it turns the tally into a rate over a recent
window, reads ``scheduler.sites()`` for the busiest and the backed-off sites, and draws a few
lines on a terminal (redrawn in place with ANSI cursor-up and erase-line) or, when stderr is
not a terminal, prints one plain line every few seconds. Counts that only the journal knows
(recipients still waiting, expired) come from a :class:`~bulksend.journal.JournalPeek`, a
second, read-only SQLite connection that WAL mode lets read while the run writes; it is
asked every few seconds at most, in a worker thread, never per refresh.

Per-site live state exists only in the running process, so once a second the task also
writes a status snapshot (``<journal>.status.json``, mode 0600, replaced atomically by
rename) that ``bulksend status`` reads from another process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import trio

from bulksend.delivery.scheduler import Scheduler, SiteStatus
from bulksend.errors import JournalError
from bulksend.journal import Due, JournalPeek, Kind, Outcome
from bulksend.metrics import Metrics

__all__ = [
    "AccountingLog",
    "Progress",
    "Tally",
    "format_duration",
    "open_private",
    "read_snapshot",
    "snapshot_path",
    "write_private_bytes",
    "write_snapshot",
]

#: A snapshot older than this is from a process that is no longer running.
SNAPSHOT_STALE: Final = 5.0
_TTY_REFRESH: Final = 0.5
_PLAIN_REFRESH: Final = 5.0
_SNAPSHOT_EVERY: Final = 1.0
_PEEK_EVERY: Final = 3.0
_RATE_WINDOW: Final = 10.0
#: Outcome kinds the display and the accounting log count (throttled ones are our own pacing).
SHOWN_KINDS: Final = (Kind.DELIVERED, Kind.DEFERRED, Kind.BOUNCED, Kind.IN_DOUBT)


def _private_fd(path: Path, *, append: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, *, append: bool = False) -> TextIO:
    """Open ``path`` for writing text, created with mode 0600 (it holds personal data).

    An existing file is made 0600 too, so nothing written here is readable by others.

    Raises:
        OSError: the file cannot be created or opened.
    """
    fd = _private_fd(path, append=append)
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8", newline="")


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, created (or truncated) with mode 0600."""
    with os.fdopen(_private_fd(path, append=False), "wb") as out:
        out.write(data)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AccountingLog:
    """One JSON line per recipient outcome (attempts only), like an MTA's accounting file.

    Fields: ``time`` (ISO 8601 UTC), ``id`` (the recipient's position in the recipients
    file), ``address``, ``domain``, ``site`` (the site's metric label), ``kind`` (delivered,
    deferred, bounced, in_doubt), ``code``, ``enhanced_code``, ``text``, ``category``. The
    file is appended to (a resumed run continues it) and created 0600. Lines are buffered and
    flushed at least once a second by the progress task, and on close.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._stream: TextIO = open_private(path, append=True)
        self._clock = clock
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self.written = 0

    def write(self, due: Due, outcome: Outcome, site: str) -> None:
        if outcome.kind not in SHOWN_KINDS:
            return
        record = {
            "time": _iso(self._clock()),
            "id": due.id,
            "address": due.address,
            "domain": due.domain,
            "site": site,
            "kind": outcome.kind.value,
            "code": outcome.code,
            "enhanced_code": outcome.enhanced_code,
            "text": outcome.text,
            "category": None if outcome.category is None else outcome.category.value,
        }
        self._stream.write(self._encode(record) + "\n")
        self.written += 1

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()


@dataclass
class Tally:
    """The run's outcome counters: the ``on_outcome`` hook (cheap: no I/O but the log)."""

    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHOWN_KINDS, 0))
    accounting: AccountingLog | None = None
    #: Called after counting, with the outcome's domain and kind (the demo watches it).
    listener: Callable[[Due, Outcome], None] | None = None

    def __call__(self, due: Due, outcome: Outcome, site: str) -> None:
        kind = outcome.kind
        if kind in SHOWN_KINDS:
            self.kinds[kind] += 1
        if self.accounting is not None:
            self.accounting.write(due, outcome, site)
        if self.listener is not None:
            self.listener(due, outcome)

    @property
    def done(self) -> int:
        """Outcomes that ended an attempt: delivered, bounced, deferred, in doubt."""
        return sum(self.kinds.values())


# --- status snapshot ---------------------------------------------------------------------


def snapshot_path(journal: Path) -> Path:
    """Where a run on ``journal`` writes its status snapshot."""
    return journal.with_name(journal.name + ".status.json")


def write_snapshot(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (temporary file + rename), 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open_private(tmp) as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)


def read_snapshot(path: Path) -> dict[str, Any] | None:
    """The snapshot at ``path``, or None if there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- display -------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = round(max(seconds, 0.0))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def short_site(site: str) -> str:
    """A site's first MX host, ``+N`` for the others (``mx1.a.test +2``)."""
    hosts = site.rsplit(":", 1)[0] if site.count(":") == 1 else site
    names = hosts.split(",")
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def _rate(rate: float | None) -> str:
    return "no limit" if rate is None else f"{rate:g}/s"


def describe_backoff(s: SiteStatus | Mapping[str, Any]) -> str:
    """One site's backoff state in words."""
    d = asdict(s) if isinstance(s, SiteStatus) else s
    parts = [f"{d['max_connections']} conn max", f"rate {_rate(d['rate'])}"]
    if d["suspended_for"] > 0:
        parts.append(f"suspended {format_duration(d['suspended_for'])}")
    if d["reason"]:
        parts.append(str(d["reason"]))
    return ", ".join(parts)


class _Rate:
    """Messages per second over a recent window, from (time, total) samples."""

    def __init__(self, window: float = _RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> float:
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 2 and samples[0][0] < now - self.window:
            samples.popleft()
        t0, n0 = samples[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


class Progress:
    """The progress display and status snapshot of one run.

    Start :meth:`run` with ``nursery.start`` and give it the scheduler with :meth:`attach`
    (``run_campaign``'s ``on_start``); cancel it when the run ends, then call :meth:`finish`.

    Args:
        tally: the run's outcome counters (its ``on_outcome`` hook).
        stream: where to draw (stderr); ``tty`` whether it is a terminal.
        journal: the journal file, for waiting counts and the snapshot's path.
        campaign: the campaign file, for the snapshot.
        quiet: draw nothing (the snapshot is still written).
        metrics: its ``queue_depth`` gauge is set from the journal's waiting count.
    """

    def __init__(
        self,
        tally: Tally,
        stream: TextIO,
        *,
        tty: bool,
        journal: Path,
        campaign: Path | None = None,
        quiet: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.tally = tally
        self.metrics = metrics
        self.stream = stream
        self.tty = tty
        self.journal = journal
        self.campaign = campaign
        self.quiet = quiet
        self.scheduler: Scheduler | None = None
        self.snapshot = snapshot_path(journal)
        self.started = time.monotonic()
        self.started_at = time.time()
        self.state = "starting"
        self.counts: dict[str, int] | None = None  # from the journal, a few seconds old
        self.waiting: dict[str, int] = {}  # per domain, from the journal
        self._domains_of: dict[str, set[str]] = {}  # site -> domains seen attached to it
        self.rate = 0.0
        self._rates = _Rate()
        self._drawn = 0
        self._peek: JournalPeek | None = None
        self._last_plain = -_PLAIN_REFRESH

    def attach(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.state = "running"

    def lines(self) -> list[str]:
        """What the display shows now (without colour or cursor codes)."""
        k = self.tally.kinds
        counts = self.counts or {}
        waiting = counts.get("pending", 0) + counts.get("in_doubt", 0) if counts else None
        eta = waiting / self.rate if waiting is not None and self.rate > 0.5 else None
        if waiting == 0:
            eta = 0.0
        elapsed = time.monotonic() - self.started
        out = [
            f"delivered {k[Kind.DELIVERED]:,}  deferred {k[Kind.DEFERRED]:,}  "
            f"bounced {k[Kind.BOUNCED]:,}  in doubt {k[Kind.IN_DOUBT]:,}"
            + (f"  expired {counts.get('expired', 0):,}" if counts else ""),
            f"{self.rate:,.0f} msg/s  elapsed {format_duration(elapsed)}  "
            f"waiting {'-' if waiting is None else f'{waiting:,}'}  ETA {format_duration(eta)}"
            + ("  (stopping)" if self.state == "stopping" else ""),
        ]
        sites = self.scheduler.sites() if self.scheduler is not None else []
        busy = [s for s in sites if s.connections][:3]
        if busy:
            out.append(
                "busiest: " + "; ".join(f"{short_site(s.site)} {s.connections} conn" for s in busy)
            )
        for s in [s for s in sites if s.backed_off][:3]:
            out.append(f"backed off: {short_site(s.site)} ({describe_backoff(s)})")
        return out

    def plain_line(self) -> str:
        k = self.tally.kinds
        counts = self.counts or {}
        waiting = counts.get("pending", 0) + counts.get("in_doubt", 0) if counts else None
        eta = waiting / self.rate if waiting is not None and self.rate > 0.5 else None
        backed = (
            [short_site(s.site) for s in self.scheduler.sites() if s.backed_off]
            if (self.scheduler is not None)
            else []
        )
        return (
            f"bulksend: delivered={k[Kind.DELIVERED]} deferred={k[Kind.DEFERRED]} "
            f"bounced={k[Kind.BOUNCED]} in_doubt={k[Kind.IN_DOUBT]} "
            f"waiting={'-' if waiting is None else waiting} rate={self.rate:.0f}/s "
            f"eta={format_duration(eta)}" + (f" backed_off={','.join(backed)}" if backed else "")
        )

    def draw(self) -> None:
        if self.quiet:
            return
        if self.tty:
            lines = self.lines()
            up = f"\x1b[{self._drawn}A" if self._drawn else ""
            body = "".join(f"\r\x1b[2K{line}\n" for line in lines)
            # Erase lines left over from a taller previous frame.
            extra = max(self._drawn - len(lines), 0)
            tail = "\x1b[2K\n" * extra + (f"\x1b[{extra}A" if extra else "")
            self.stream.write(up + body + tail)
            self._drawn = len(lines)
        else:
            self.stream.write(self.plain_line() + "\n")
        self.stream.flush()

    def _queued(self) -> dict[str, int]:
        """Recipients waiting per site: its domains' waiting counts in the journal."""
        if self.scheduler is None:
            return {}
        for site, destination in self.scheduler.destinations.items():
            self._domains_of.setdefault(str(site), set()).update(destination.domains)
        return {
            site: sum(self.waiting.get(d, 0) for d in domains)
            for site, domains in self._domains_of.items()
        }

    def snapshot_data(self) -> dict[str, Any]:
        sites = self.scheduler.sites() if self.scheduler is not None else []
        queued = self._queued()
        return {
            "pid": os.getpid(),
            "state": self.state,
            "updated_at": time.time(),
            "started_at": self.started_at,
            "campaign": None if self.campaign is None else str(self.campaign),
            "journal": str(self.journal),
            "this_run": {str(k): v for k, v in self.tally.kinds.items()},
            "rate": round(self.rate, 1),
            "counts": self.counts,
            "sites": [asdict(s) | {"queued": queued.get(s.site, 0)} for s in sites],
        }

    async def _refresh_counts(self) -> None:
        try:
            if self._peek is None:
                self._peek = JournalPeek(self.journal)
            peek = self._peek
            self.counts = await trio.to_thread.run_sync(peek.counts)
            self.waiting = await trio.to_thread.run_sync(peek.waiting_by_domain)
            if self.metrics is not None:
                self.metrics.queue_depth.set(self.counts["pending"] + self.counts["in_doubt"])
        except JournalError:
            pass  # not there yet (import running) or unreadable: try again later

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the display and the snapshot until cancelled."""
        task_status.started()
        refresh = _TTY_REFRESH if self.tty else _SNAPSHOT_EVERY
        last_peek = last_snapshot = -_PEEK_EVERY
        while True:
            now = time.monotonic()
            self.rate = self._rates.add(now, self.tally.done)
            if self.scheduler is not None and self.scheduler.delivery.stopping.is_set():
                self.state = "stopping" if not self.scheduler.complete else "finishing"
            if now - last_peek >= _PEEK_EVERY:
                last_peek = now
                await self._refresh_counts()
            if self.tally.accounting is not None:
                self.tally.accounting.flush()
            if self.tty:
                self.draw()
            elif now - self._last_plain >= _PLAIN_REFRESH and self.scheduler is not None:
                self._last_plain = now
                self.draw()
            if now - last_snapshot >= _SNAPSHOT_EVERY:
                last_snapshot = now
                with contextlib.suppress(OSError):
                    write_snapshot(self.snapshot, self.snapshot_data())
            await trio.sleep(refresh)

    def finish(self, state: str) -> None:
        """Final counts drawn (on a terminal), final snapshot written, peek closed."""
        self.state = state
        with contextlib.suppress(JournalError):
            if self._peek is None:
                self._peek = JournalPeek(self.journal)
            self.counts = self._peek.counts()
            self.waiting = self._peek.waiting_by_domain()
            if self.metrics is not None:
                self.metrics.queue_depth.set(self.counts["pending"] + self.counts["in_doubt"])
        if self.tty and self.scheduler is not None:
            self.draw()
        with contextlib.suppress(OSError):
            write_snapshot(self.snapshot, self.snapshot_data())
        if self._peek is not None:
            self._peek.close()
            self._peek = None


def iter_site_rows(sites: list[Mapping[str, Any]]) -> Iterator[list[str]]:
    """Rows of the per-site table ``bulksend status`` prints."""
    for s in sites:
        yield [
            short_site(str(s["site"])),
            str(s["domains"]),
            f"{s.get('queued', 0):,}",
            f"{s['connections']}/{s['max_connections']}",
            _rate(s["rate"]),
            "backed off" if s["backed_off"] else "ok",
            str(s["reason"] or s["last_error"] or ""),
        ]
