"""``status`` (where a campaign stands) and ``report`` (its outcomes) from journals."""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import click

from bulksend.cli.options import JournalParam, debug_option
from bulksend.cli.output import counts_line, info, open_output, resume_command
from bulksend.cli.progress import (
    SNAPSHOT_STALE,
    format_duration,
    iter_site_rows,
    read_snapshot,
    snapshot_path,
)
from bulksend.cli.tls_report import write_tls_sites
from bulksend.journal import JournalSet, Status
from bulksend.journal.backend import open_peek
from bulksend.journal.reports import (
    EXPORT_FIELDS,
    FEEDBACK_EXPORT_FIELDS,
    export_csv,
    export_jsonl,
    write_report,
)
from bulksend.text import write_table


@click.command()
@click.argument("journals", nargs=-1, required=True, type=JournalParam())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per journal.")
@debug_option
def status(journals: tuple[Path | str, ...], as_json: bool) -> None:
    """Where a campaign stands: journal counts, and per site state while it runs.

    Several journals (the shards of one campaign) are shown one after the other, then their
    total.
    """
    total: collections.Counter[Status] = collections.Counter()
    for journal in journals:
        total.update(_status_of(journal, as_json))
    if len(journals) > 1 and not as_json:
        sys.stdout.write(f"all {len(journals)} journals: {counts_line(dict(total))}\n")


def _status_of(journal: Path | str, as_json: bool) -> dict[Status, int]:
    peek = open_peek(journal, check=True)
    with peek:
        counts = peek.counts()
        imported = peek.import_complete()
    # A PostgreSQL journal's runs write no snapshot file.
    snap = None if isinstance(journal, str) else read_snapshot(snapshot_path(journal))
    age = time.time() - float(snap.get("updated_at", 0)) if snap else None
    running = bool(
        snap
        and snap.get("state") in ("running", "stopping", "starting")
        and age is not None
        and age < SNAPSHOT_STALE
    )
    if as_json:
        json.dump(
            {
                "journal": str(journal),
                "import_complete": imported,
                "counts": counts,
                "running": running,
                "snapshot": snap,
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
        return counts
    out = sys.stdout
    total = sum(counts.values())
    out.write(f"journal: {journal}\n")
    out.write(f"recipients: {total:,}\n")
    if not imported:
        out.write(f"import: not finished; `{resume_command(journal)}` continues it\n")
    write_table([[s.replace("_", " "), f"{n:,}"] for s, n in counts.items()], out)
    if snap is None:
        out.write("not running (no status snapshot)\n")
        return counts
    assert age is not None
    if running:
        out.write(
            f"running: pid {snap.get('pid')}, {snap.get('state')}, snapshot "
            f"{age:.1f}s old, {snap.get('rate', 0):,.0f} outcomes/s\n"
        )
    else:
        out.write(f"not running: last run {snap.get('state')} {format_duration(age)} ago\n")
    this_run = snap.get("this_run") or {}
    out.write(f"this run: {counts_line(this_run)}\n")
    sites = snap.get("sites") or []
    if sites:
        out.write("sites:" if running else "sites (at the last snapshot):")
        out.write("\n")
        header = ["site", "domains", "queued", "conn", "rate", "state", "last error"]
        write_table([header, *iter_site_rows(sites)], out)
        write_tls_sites(sites, out)
    return counts


@click.command()
@click.argument("journals", nargs=-1, required=True, type=JournalParam(exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "jsonl"]),
    default="table",
    show_default=True,
    help="table: counts per status, bounce category and domain; csv/jsonl: every outcome.",
)
@click.option(
    "--feedback",
    is_flag=True,
    help="csv/jsonl: what came back after sending instead of the outcomes, one row per"
    " recipient and kind (later bounce, complaint, unsubscribe).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (created 0600) instead of stdout.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="csv/jsonl: only recipients in this status (repeatable); with --feedback, the"
    " feedback of recipients in it.",
)
@click.option(
    "--domains",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="table: how many domains to list (the largest).",
)
@debug_option
def report(
    *,
    journals: tuple[Path | str, ...],
    fmt: str,
    feedback: bool,
    output: Path | None,
    statuses: tuple[str, ...],
    domains: int,
) -> None:
    """Report a campaign's outcomes from its journal, or its shards' journals merged.

    While a run holds a journal, its last committed state is read (`status` shows the run).
    """
    if feedback and fmt == "table":
        raise click.UsageError("--feedback exports rows: add --format csv or --format jsonl")
    with JournalSet(journals) as j, open_output(output) as out:
        for path in j.live:
            info(f"{path} is in use by a run: reporting its last committed state")
        wanted = [Status(s) for s in statuses] or None
        rows = j.iter_feedback(wanted) if feedback else j.iter_states(wanted)
        if fmt == "csv":
            export_csv(rows, out, FEEDBACK_EXPORT_FIELDS if feedback else EXPORT_FIELDS)
        elif fmt == "jsonl":
            export_jsonl(rows, out)
        else:
            write_report(j, out, top_domains=domains)
