"""What a running campaign shows: the progress display, the accounting log, the status file.

How this works: :class:`Tally` is the run's ``on_outcome`` hook. It only increments
counters (it runs once per recipient outcome, on the hot path) and feeds the optional
:class:`AccountingLog`, one JSON line per outcome as an MTA's accounting file has. The
:class:`Progress` task wakes every half second: it turns the tally into a rate over a recent
window, reads ``scheduler.sites()`` for the busiest and the backed-off sites, and draws a few
lines on a terminal (redrawn in place with ANSI cursor-up and erase-line; its numbers packed
on as many lines as the terminal's width needs, :func:`pack`, and each line cut to that width
so that none wraps and the cursor-up count stays true) or, when stderr is
not a terminal, prints one plain line every few seconds; during the recipients import it
shows the rows read so far. Messages during the run (a signal's notice, and the warnings
logged under ``bulksend``, such as backoff and TLS fallback, which the task shows whatever the
root logger's level) go through :meth:`Progress.message`, which prints them above the live
frame and redraws it, so they stay on screen. Every line shown passes through
:func:`bulksend.text.printable` (reply text is a remote server's). Counts that only the journal
knows (recipients still waiting, expired) come from a :class:`~bulksend.journal.JournalPeek`, a
second, read-only SQLite connection that WAL mode lets read while the run writes; it is
asked every few seconds at most, in a worker thread, never per refresh.

Per-site live state exists only in the running process, so once a second the task also
writes a status snapshot (``<journal>.status.json``, mode 0600, replaced atomically by
rename) that ``bulksend status`` reads from another process.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import trio

from bulksend.delivery.scheduler import Scheduler, SiteStatus
from bulksend.errors import JournalError
from bulksend.files import open_private, replace_private
from bulksend.journal import Due, JournalPeek, Kind, Outcome, Status
from bulksend.journal.backend import open_peek
from bulksend.journal.outcomes import WAITING
from bulksend.metrics import Metrics
from bulksend.text import printable

if TYPE_CHECKING:
    from bulksend.journal.postgres import PostgresPeek

__all__ = [
    "AccountingLog",
    "Progress",
    "Tally",
    "fit",
    "format_duration",
    "pack",
    "read_snapshot",
    "site_labels",
    "snapshot_path",
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
            "text": printable(outcome.text),
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
    replace_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


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
    """A site's first MX host and ``+N`` for the others, with its port when not 25.

    ``mx1.a.test +2``, ``127.0.0.1:2525``, ``mx1.b.test:2526 +1``.
    """
    hosts, port = site, ""
    if site.count(":") == 1:
        hosts, _, port = site.partition(":")
    names = hosts.split(",")
    first = names[0] + (f":{port}" if port else "")
    return first if len(names) == 1 else f"{first} +{len(names) - 1}"


def site_labels(sites: Iterable[str]) -> dict[str, str]:
    """A label per site, unique among ``sites``: its short form, or its full name where
    several sites share one (``a,b`` and ``a,c`` are both ``a +1``)."""
    short = {site: short_site(site) for site in sites}
    shared = collections.Counter(short.values())
    return {site: label if shared[label] == 1 else site for site, label in short.items()}


def _columns(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` terminal columns, ending in "…" where it was cut.

    Wide (East Asian) characters count two columns and combining marks none, so a line
    never wraps: a wrapped line would take two rows while the redraw moves up over one.
    """
    if line.isascii() and len(line) <= width:
        return line
    columns = [_columns(c) for c in line]
    if sum(columns) <= width:
        return line
    if width < 1:
        return ""
    cut = next(i for i, end in enumerate(itertools.accumulate(columns)) if end > width - 1)
    return line[:cut] + "…"


def _display_width(text: str) -> int:
    return len(text) if text.isascii() else sum(_columns(c) for c in text)


def pack(fields: Iterable[str], width: int | None, sep: str = "  ") -> list[str]:
    """``fields`` joined by ``sep`` on as few lines as fit in ``width`` columns (None: one
    line), a field never split: a narrow terminal gets more lines, not fewer numbers. A
    field wider than ``width`` has a line of its own (:func:`fit` cuts it)."""
    lines: list[str] = []
    for item in fields:
        joined = f"{lines[-1]}{sep}{item}" if lines else item
        if lines and (width is None or _display_width(joined) <= width):
            lines[-1] = joined
        else:
            lines.append(item)
    return lines


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):  # not a terminal, or no file descriptor
        return shutil.get_terminal_size().columns


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


class _MessageHandler(logging.Handler):
    """Prints log records through :meth:`Progress.message` (above the live frame)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.message(f"bulksend: {record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # logging must never break the run
            self.handleError(record)


class Progress:
    """The progress display and status snapshot of one run.

    Start :meth:`run` with ``nursery.start`` and give it the scheduler with :meth:`attach`
    (``run_campaign``'s ``on_start``); cancel it when the run ends, then call :meth:`finish`.
    While :meth:`run` runs, warnings logged under ``bulksend`` are shown (escaped) above the
    frame, whatever the root logger's level.

    Args:
        tally: the run's outcome counters (its ``on_outcome`` hook).
        stream: where to draw (stderr); ``tty`` whether it is a terminal.
        journal: the journal (a file, or a PostgreSQL URL), for waiting counts and the
            snapshot's path (a PostgreSQL journal's run writes no snapshot).
        campaign: the campaign file, for the snapshot.
        quiet: draw nothing (the snapshot is still written; messages are still shown).
        metrics: its ``queue_depth`` gauge is set from the journal's waiting count.
        width: the terminal's width in columns, asked at every frame; default the
            stream's terminal.
    """

    def __init__(
        self,
        tally: Tally,
        stream: TextIO,
        *,
        tty: bool,
        journal: Path | str,
        campaign: Path | None = None,
        quiet: bool = False,
        metrics: Metrics | None = None,
        width: Callable[[], int] | None = None,
    ) -> None:
        self.tally = tally
        self.metrics = metrics
        self.stream = stream
        self.tty = tty
        self.journal = journal
        self.campaign = campaign
        self.quiet = quiet
        self.width = width or (lambda: _terminal_width(stream))
        self.scheduler: Scheduler | None = None
        self.snapshot = None if isinstance(journal, str) else snapshot_path(journal)
        self.started = time.monotonic()
        self.started_at = time.time()
        self.state = "starting"
        self.imported = 0  # recipients rows read by the import so far
        self.counts: dict[Status, int] | None = None  # from the journal, a few seconds old
        self.waiting: dict[str, int] = {}  # per domain, from the journal
        self._domains_of: dict[str, set[str]] = {}  # site -> domains seen attached to it
        #: Messages per second that got a final reply (delivered or bounced): deferrals do
        #: not bring the end nearer, so they count neither here nor in the ETA.
        self.rate = 0.0
        self._rates = _Rate()
        self._drawn = 0
        self._frame: list[str] = []
        self._lock = threading.Lock()  # log records may come from other threads
        self._peek: JournalPeek | PostgresPeek | None = None
        self._last_plain = -_PLAIN_REFRESH

    def attach(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.state = "running"

    def importing(self, rows: int) -> None:
        """The import has read ``rows`` rows so far (called from the import's thread)."""
        self.imported = rows
        if self.scheduler is None:
            self.state = "importing"

    def sample(self, now: float) -> None:
        """Take the tally's counts at ``now`` (monotonic seconds) for the rate and the state."""
        k = self.tally.kinds
        self.rate = self._rates.add(now, k[Kind.DELIVERED] + k[Kind.BOUNCED])
        if self.scheduler is not None and self.scheduler.stopping:
            self.state = "stopping" if not self.scheduler.complete else "finishing"

    def _eta(self, waiting: int | None) -> float | None:
        if waiting == 0:
            return 0.0
        return waiting / self.rate if waiting is not None and self.rate > 0 else None

    def lines(self, width: int | None = None) -> list[str]:
        """What the display shows now (without colour or cursor codes), escaped; each group
        of numbers on as many lines as ``width`` columns need (None: one line each)."""
        elapsed = format_duration(time.monotonic() - self.started)
        if self.state == "importing":
            fields = [f"importing recipients: {self.imported:,} rows read", f"elapsed {elapsed}"]
            return [printable(line) for line in pack(fields, width)]
        k = self.tally.kinds
        counts = self.counts or {}
        waiting = sum(counts.get(s, 0) for s in WAITING) if counts else None
        outcomes = [
            f"delivered {k[Kind.DELIVERED]:,}",
            f"deferred {k[Kind.DEFERRED]:,}",
            f"bounced {k[Kind.BOUNCED]:,}",
            f"in doubt {k[Kind.IN_DOUBT]:,}",
        ]
        if counts:
            outcomes.append(f"expired {counts.get(Status.EXPIRED, 0):,}")
        pace = [
            f"{self.rate:,.0f} msg/s",
            f"elapsed {elapsed}",
            f"waiting {'-' if waiting is None else f'{waiting:,}'}",
            f"ETA {format_duration(self._eta(waiting))}",
        ]
        if self.state == "stopping":
            pace.append("(stopping)")
        out = pack(outcomes, width) + pack(pace, width)
        sites = self.scheduler.sites() if self.scheduler is not None else []
        labels = site_labels(s.site for s in sites)
        busy = [s for s in sites if s.connections][:3]
        if busy:

            def busiest(s: SiteStatus, lead: str) -> str:
                conn = f" {s.connections} conn"  # kept whole: a long name is cut instead
                room = None if width is None else max(width - len(lead + conn), 8)
                label = labels[s.site] if room is None else fit(labels[s.site], room)
                return lead + label + conn

            out += pack(
                [busiest(s, "busiest: " if i == 0 else "") for i, s in enumerate(busy)],
                width,
                "; ",
            )
        for s in [s for s in sites if s.backed_off][:3]:
            out.append(f"backed off: {labels[s.site]} ({describe_backoff(s)})")
        return [printable(line) for line in out]

    def plain_line(self) -> str:
        if self.state == "importing":
            return f"bulksend: importing recipients: rows={self.imported}"
        k = self.tally.kinds
        counts = self.counts or {}
        waiting = sum(counts.get(s, 0) for s in WAITING) if counts else None
        sites = self.scheduler.sites() if self.scheduler is not None else []
        labels = site_labels(s.site for s in sites)
        backed = [labels[s.site] for s in sites if s.backed_off]
        return printable(
            f"bulksend: delivered={k[Kind.DELIVERED]} deferred={k[Kind.DEFERRED]} "
            f"bounced={k[Kind.BOUNCED]} in_doubt={k[Kind.IN_DOUBT]} "
            f"waiting={'-' if waiting is None else waiting} rate={self.rate:.0f}/s "
            f"eta={format_duration(self._eta(waiting))}"
            + (f" backed_off={','.join(backed)}" if backed else "")
        )

    def draw(self) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                width = self.width()
                self._write_frame([fit(line, width) for line in self.lines(width)])
            else:
                self.stream.write(self.plain_line() + "\n")
            self.stream.flush()

    def _write_frame(self, lines: list[str]) -> None:
        up = f"\x1b[{self._drawn}A" if self._drawn else ""
        body = "".join(f"\r\x1b[2K{line}\n" for line in lines)
        # Erase lines left over from a taller previous frame.
        extra = max(self._drawn - len(lines), 0)
        tail = "\x1b[2K\n" * extra + (f"\x1b[{extra}A" if extra else "")
        self.stream.write(up + body + tail)
        self._drawn = len(lines)
        self._frame = lines

    def message(self, text: str) -> None:
        """Print ``text`` (escaped) above the live frame, which is drawn again below it.

        Anything printed to the display's stream during a run goes through here; printed
        directly, the next frame would be drawn over it.
        """
        line = printable(text)
        with self._lock:
            if self.tty and self._drawn:
                # Up to the frame's first line, erase to the end of the screen, then the
                # message, then the last frame again (not recomputed: this may be a thread).
                self.stream.write(f"\x1b[{self._drawn}A\r\x1b[J{line}\n")
                self._drawn = 0
                self._write_frame(self._frame)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    @contextlib.contextmanager
    def _showing_logs(self) -> Iterator[None]:
        """Show warnings logged under ``bulksend`` as messages (the default level is ERROR)."""
        logger = logging.getLogger("bulksend")
        handler = _MessageHandler(self)
        level, propagate = logger.level, logger.propagate
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        logger.addHandler(handler)
        logger.propagate = False  # shown here, not also raw by the root handler
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

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
                self._peek = open_peek(self.journal)
            peek = self._peek
            self.counts = await trio.to_thread.run_sync(peek.counts)
            self.waiting = await trio.to_thread.run_sync(peek.waiting_by_domain)
            if self.metrics is not None:
                self.metrics.queue_depth.set(sum(self.counts[s] for s in WAITING))
        except JournalError:
            pass  # not there yet (import running) or unreadable: try again later

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the display and the snapshot until cancelled; show warnings meanwhile."""
        with self._showing_logs():
            task_status.started()
            await self._refresh()

    async def _refresh(self) -> None:
        refresh = _TTY_REFRESH if self.tty else _SNAPSHOT_EVERY
        last_peek = last_snapshot = -_PEEK_EVERY
        while True:
            now = time.monotonic()
            self.sample(now)
            if now - last_peek >= _PEEK_EVERY:
                last_peek = now
                await self._refresh_counts()
            if self.tally.accounting is not None:
                self.tally.accounting.flush()
            if self.tty:
                self.draw()
            elif now - self._last_plain >= _PLAIN_REFRESH and (
                self.scheduler is not None or self.state == "importing"
            ):
                self._last_plain = now
                self.draw()
            if now - last_snapshot >= _SNAPSHOT_EVERY and self.snapshot is not None:
                last_snapshot = now
                with contextlib.suppress(OSError):
                    write_snapshot(self.snapshot, self.snapshot_data())
            await trio.sleep(refresh)

    def finish(self, state: str) -> None:
        """Final counts drawn (on a terminal), final snapshot written, peek closed."""
        self.state = state
        with contextlib.suppress(JournalError):
            if self._peek is None:
                self._peek = open_peek(self.journal)
            self.counts = self._peek.counts()
            self.waiting = self._peek.waiting_by_domain()
            if self.metrics is not None:
                self.metrics.queue_depth.set(sum(self.counts[s] for s in WAITING))
        if self.tty and self.scheduler is not None:
            self.draw()
        if self.snapshot is not None:
            with contextlib.suppress(OSError):
                write_snapshot(self.snapshot, self.snapshot_data())
        if self._peek is not None:
            self._peek.close()
            self._peek = None


def iter_site_rows(sites: list[Mapping[str, Any]]) -> Iterator[list[str]]:
    """Rows of the per-site table ``bulksend status`` prints (remote text escaped)."""
    labels = site_labels(str(s["site"]) for s in sites)
    for s in sites:
        yield [
            labels[str(s["site"])],
            str(s["domains"]),
            f"{s.get('queued', 0):,}",
            f"{s['connections']}/{s['max_connections']}",
            _rate(s["rate"]),
            "backed off" if s["backed_off"] else "ok",
            printable(str(s["reason"] or s["last_error"] or "")),
        ]
