"""What the commands print, and the exit statuses.

Exit statuses (:data:`EXIT_OK` ...): 0 done; 1 error; 2 usage (click's); 3 stopped before
the campaign completed (a signal, ``--limit``): resumable; 4 done, but some recipients were
not delivered (bounced or expired; 0 with ``--exit-zero-when-complete``, for orchestrators),
or a dry run / validation found problems, or ``suppress check`` found an address that is not
suppressed.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import click

from bulksend.cli.progress import SHOWN_KINDS, format_duration
from bulksend.delivery.run import RunSummary
from bulksend.files import open_private
from bulksend.journal import CampaignTally, Status
from bulksend.journal.reports import rows_line
from bulksend.metrics import MetricsServer

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_STOPPED: Final = 3
EXIT_UNDELIVERED: Final = 4


def warn(text: str) -> None:
    click.echo(f"bulksend: warning: {text}", err=True)


def info(text: str) -> None:
    click.echo(f"bulksend: {text}", err=True)


@contextlib.contextmanager
def open_output(path: Path | None) -> Iterator[TextIO]:
    """Where a command writes its data: ``path`` (created 0600: it holds addresses), or stdout."""
    if path is None:
        yield sys.stdout
        return
    with open_private(path) as out:
        yield out


@dataclass
class RunResult:
    """How a run ended: its summary, or None when aborted by a second signal."""

    summary: RunSummary | None
    signalled: bool = False
    sending: bool = True  # False: stopped before sending began (during the import)
    metrics_server: MetricsServer | None = None


def exit_code(
    *, halted: bool, complete: bool, counts: Mapping[Status, int], exit_zero_when_complete: bool
) -> int:
    """A run's exit status, one process or N workers.

    1 a run halted itself (renders failing systematically); 3 stopped; 4 complete with
    recipients undelivered (0 with ``--exit-zero-when-complete``); 0 complete.
    """
    if halted:
        return EXIT_ERROR
    if not complete:
        return EXIT_STOPPED
    if _undelivered(counts) and not exit_zero_when_complete:
        return EXIT_UNDELIVERED
    return EXIT_OK


def _undelivered(counts: Mapping[Status, int]) -> int:
    """Recipients that will not get the message (unless a fixed campaign retries them)."""
    return counts[Status.BOUNCED] + counts[Status.EXPIRED] + counts[Status.NOT_RENDERED]


def say_halted(summaries: Iterable[RunSummary | None]) -> bool:
    """Print why a run stopped itself (renders failing systematically), if one did."""
    for summary in summaries:
        if summary is not None and summary.halted:
            click.echo(f"bulksend: error: {summary.halted}; nothing was bounced", err=True)
            return True
    return False


def counts_line(counts: Mapping[Status, int] | Mapping[str, int]) -> str:
    return "  ".join(f"{str(s).replace('_', ' ')} {n:,}" for s, n in counts.items())


def resume_command(journal: Path | str) -> str:
    """``bulksend resume JOURNAL``, quoted for a shell (a URL also needs its campaign file)."""
    if isinstance(journal, str):
        return f"bulksend resume {shlex.quote(journal)} --campaign CAMPAIGN.toml"
    return f"bulksend resume {journal}"


def print_summary(
    result: RunResult, journal: Path | str, out: TextIO, *, rejects: Path | None = None
) -> None:
    """The lines a run ends with (stdout)."""
    resume = resume_command(journal)
    summary = result.summary
    if summary is None and not result.sending:
        out.write(f"stopped before sending began: continue with: {resume}\n")
        return
    if summary is None:
        out.write(f"aborted: the journal is consistent; continue with: {resume}\n")
        return
    write_tally(
        out,
        state="complete" if summary.complete else "stopped before completion",
        elapsed=summary.elapsed,
        outcomes=summary.outcomes,
        tally=summary.tally,
        rejects=[] if rejects is None else [rejects],
    )
    if summary.requeued:
        out.write(f"  requeued:  {summary.requeued:,} recipients not rendered before\n")
    if summary.in_doubt_recovered:
        out.write(
            f"  recovered: {summary.in_doubt_recovered:,} recipients in doubt from an "
            "interrupted run\n"
        )
    if not summary.complete:
        waiting = summary.counts[Status.PENDING] + summary.counts[Status.IN_DOUBT]
        out.write(f"  {waiting:,} recipients still waiting; continue with: {resume}\n")
    if summary.counts[Status.NOT_RENDERED]:
        out.write(
            f"  {summary.counts[Status.NOT_RENDERED]:,} recipients not rendered (nothing was "
            f"sent to them); once the template is fixed: {resume} --force "
            "--retry-unrendered\n"
        )


def attempts_by_kind(outcomes: Mapping[str, int]) -> dict[str, int]:
    """A run's delivery attempts by kind (our own throttle's deferrals are not attempts)."""
    return {str(kind): outcomes.get(kind.value, 0) for kind in SHOWN_KINDS}


def write_tally(
    out: TextIO,
    *,
    state: str,
    elapsed: float,
    outcomes: Mapping[str, int],
    tally: CampaignTally,
    rejects: Sequence[Path],
    how: str = "",
) -> None:
    """The summary's lines: this run's attempts and the campaign's tally (one or N workers)."""
    attempts = attempts_by_kind(outcomes)
    done = sum(attempts.values())
    rate = done / elapsed if elapsed > 0 else 0.0
    out.write(
        f"{state} after {format_duration(elapsed)}{how} "
        f"({done:,} delivery attempts, {rate:,.0f}/s)\n"
    )
    listed = [str(p) for p in rejects if p.is_file() and p.stat().st_size]
    out.write(
        f"  {rows_line(tally)}"
        + (f" (listed in {', '.join(listed)})" if tally.rejected and listed else "")
        + "\n"
    )
    out.write(f"  this run:  {counts_line(attempts)}\n")
    out.write(f"  campaign:  {counts_line(tally.by_state())}\n")
    out.write(f"  sends in doubt (possibly duplicated): {tally.in_doubt_sends:,}\n")
