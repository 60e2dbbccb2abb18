"""``send`` (with its ``--dry-run``) and ``resume``; the record of campaigns sent."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio

from bulksend.campaign.render import Campaign
from bulksend.cli.options import (
    JournalParam,
    RunFlags,
    campaign_journal,
    flags_from,
    load_campaign,
    run_options,
)
from bulksend.cli.output import EXIT_OK, EXIT_UNDELIVERED, info, warn
from bulksend.cli.run import campaign_sidecar, run_single, run_workers
from bulksend.cli.state import state_dir
from bulksend.delivery.dry_run import dry_run
from bulksend.delivery.run import routing_config
from bulksend.delivery.shard import Shard
from bulksend.errors import ConfigError, JournalError
from bulksend.files import open_private
from bulksend.journal import Journal
from bulksend.journal.backend import journal_exists
from bulksend.routing import Router
from bulksend.text import printable


@click.command()
@click.argument("campaign_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--journal",
    type=JournalParam(),
    help="The journal file; default the campaign's [journal] url, else <campaign "
    "id>.journal.sqlite3 next to the campaign file. Or a PostgreSQL journal: "
    "postgresql://USER@HOST:PORT/DB?campaign=NAME (the password from PGPASSFILE, "
    "PGPASSWORD or &password_file=PATH, never in the URL).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Render every recipient and route every domain; send nothing, write no journal.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Processes to run, one shard each (sites divided among them, one journal per "
    "shard); with a PostgreSQL journal all share it (and --throttle shares the limits); "
    "0: one per core.",
)
@click.option(
    "--send-again",
    is_flag=True,
    help="Send a campaign id that was already sent with another journal (everyone again).",
)
@click.option(
    "--sent-record",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BULKSEND_SENT_RECORD",
    help="The record of campaigns sent from this account; default "
    "$XDG_STATE_HOME/bulksend/sent.jsonl (~/.local/state/bulksend/sent.jsonl).",
)
@run_options
def send(
    *,
    campaign_file: Path,
    journal: Path | str | None,
    dry_run: bool,
    workers: int,
    send_again: bool,
    sent_record: Path | None,
    **kw: Any,
) -> None:
    """Send a campaign (journaled: resumes where an earlier run on the journal stopped)."""
    flags = flags_from(kw)
    campaign = load_campaign(campaign_file)
    if dry_run:
        raise SystemExit(_dry_run(campaign, flags))
    journal = campaign_journal(journal, campaign.config)
    record = SentRecord(sent_record or _default_sent_record())
    if workers == 0:
        workers = os.cpu_count() or 1
    if workers > 1:
        if flags.shard is not None:
            raise click.UsageError("--workers and --shard do not go together")
        # Each worker would apply these on its own (N times the limit, N logs racing on one
        # file): refuse rather than surprise.
        for given, option in ((flags.limit, "--limit"), (flags.accounting, "--accounting")):
            if given is not None:
                raise click.UsageError(
                    f"--workers and {option} do not go together: run the shards one at a "
                    f"time with --shard I/N and {option}"
                )
    if isinstance(journal, str) and flags.shard is not None:
        raise click.UsageError(
            "--shard needs SQLite journals (one file per shard); a PostgreSQL journal is one "
            "campaign, shared by --workers N or by `bulksend worker` processes"
        )
    shard = "" if flags.shard is None else str(flags.shard)
    own = (
        journal if flags.shard is None or isinstance(journal, str) else flags.shard.journal(journal)
    )
    journals: list[Path | str] = [own]
    if workers > 1 and isinstance(journal, Path):
        journals = [Shard(i, workers).journal(journal) for i in range(workers)]
    if workers > 1:
        campaign.check_recipients()  # once here, not as N failing workers
    record.check_and_add(campaign.config.id, shard, own, journals, send_again=send_again)
    try:
        if workers > 1:
            code = run_workers(campaign, journal, flags, workers)
        else:
            code = run_single(campaign, journal, flags)
    finally:
        if not _any_exists(journals, unknown=True):
            record.remove(campaign.config.id, shard, own)  # it sent nothing
    raise SystemExit(code)


def _any_exists(journals: Sequence[Path | str], *, unknown: bool = False) -> bool:
    """Whether any of ``journals`` exists; ``unknown`` where a database cannot say."""
    try:
        return any(journal_exists(j) for j in journals)
    except JournalError:
        if unknown:
            return True
        raise


def _key(journal: Path | str) -> str:
    """How the record names a journal: a file's absolute path, or the URL."""
    return journal if isinstance(journal, str) else str(journal.resolve())


def _default_sent_record() -> Path:
    return state_dir() / "sent.jsonl"


@dataclass
class SentRecord:
    """Which campaign ids this account has sent, and with which journal (JSON Lines, 0600).

    A second full send of the same campaign id (a new journal: not a resume) would mail
    everyone again; ``send`` refuses it unless ``--send-again``. Shards count separately.
    """

    path: Path

    def entries(self) -> list[dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read the record of sent campaigns ({exc.strerror}); "
                "give another with --sent-record"
            ) from None
        found = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append({str(k): str(v) for k, v in entry.items()})
        return found

    def check_and_add(
        self,
        campaign_id: str,
        shard: str,
        journal: Path | str,
        journals: Sequence[Path | str],
        *,
        send_again: bool,
    ) -> None:
        """Refuse a second full send of ``campaign_id``; record this one.

        ``journals`` are the files this send writes: if one exists, this is a resume.
        """
        if _any_exists(journals):
            return
        for entry in self.entries():
            if send_again or entry.get("campaign") != campaign_id:
                continue
            if entry.get("shard", "") != shard:
                continue
            raise ConfigError(
                f"campaign {campaign_id!r}"
                + (f" (shard {shard})" if shard else "")
                + f" was already sent on {entry.get('at', '?')} with journal "
                f"{entry.get('journal')}: resume that journal (bulksend resume "
                f"{entry.get('journal')}), or give --send-again to mail everyone again "
                f"(recorded in {self.path})"
            )
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        line = {"campaign": campaign_id, "shard": shard, "journal": _key(journal), "at": at}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open_private(self.path, append=True) as out:
                out.write(json.dumps(line) + "\n")
        except OSError as exc:
            warn(
                f"{self.path}: cannot record this send ({exc.strerror}); a second send of "
                "this campaign will not be caught (set --sent-record)"
            )

    def remove(self, campaign_id: str, shard: str, journal: Path | str) -> None:
        """Forget a send that left no journal (it sent nothing)."""
        keep = [
            e
            for e in self.entries()
            if (e.get("campaign"), e.get("shard", ""), e.get("journal"))
            != (campaign_id, shard, _key(journal))
        ]
        with contextlib.suppress(OSError), open_private(self.path) as out:
            out.writelines(json.dumps(e) + "\n" for e in keep)


@click.command()
@click.argument("journal", type=JournalParam())
@click.option(
    "--campaign",
    "campaign_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The campaign file; default the one `send` recorded next to the journal (a "
    "PostgreSQL journal needs it given).",
)
@click.option(
    "--retry-unrendered",
    is_flag=True,
    help="Send again to the recipients whose message could not be made (`not rendered`), "
    "once the template is fixed.",
)
@run_options
def resume(
    journal: Path | str, campaign_file: Path | None, retry_unrendered: bool, **kw: Any
) -> None:
    """Continue an interrupted run from its journal (a file, or a PostgreSQL URL)."""
    flags = replace(flags_from(kw), retry_unrendered=retry_unrendered)
    if isinstance(journal, str):
        if campaign_file is None:
            raise ConfigError(f"resuming {journal} needs its campaign: --campaign CAMPAIGN.toml")
        if not journal_exists(journal):
            raise ConfigError(
                f"no journal at {journal}: nothing to resume; start with "
                "`bulksend send CAMPAIGN --journal URL`"
            )
        raise SystemExit(run_single(load_campaign(campaign_file), journal, flags))
    if not journal.is_file():
        # A run stopped before its journal existed (or that had nothing to send) left none.
        raise ConfigError(
            f"no journal at {journal}: nothing to resume; start with `bulksend send CAMPAIGN`"
        )
    if campaign_file is None:
        sidecar = campaign_sidecar(journal)
        try:
            campaign_file = Path(sidecar.read_text(encoding="utf-8").strip())
        except FileNotFoundError:
            raise ConfigError(
                f"{sidecar} is missing, so the campaign of journal {journal} is unknown: "
                "give it with --campaign CAMPAIGN.toml"
            ) from None
    campaign = load_campaign(campaign_file)
    # A shard's journal knows its shard: resume it as that shard.
    with Journal.open(journal, None) as j:
        recorded = j.identity.get("shard")
    if recorded is not None:
        shard = Shard.parse(recorded)
        if flags.shard is not None and flags.shard != shard:
            raise ConfigError(f"{journal} is the journal of shard {shard}, not {flags.shard}")
        flags = replace(flags, shard=shard)
        journal = shard.base_journal(journal)
    raise SystemExit(run_single(campaign, journal, flags))


def _dry_run(campaign: Campaign, flags: RunFlags) -> int:
    """``send --dry-run``: print what :func:`dry_run` found; 4 if anything will not go."""
    config = campaign.config
    router = Router(routing_config(config, flags.options(Path(os.devnull), campaign)))
    found = trio.run(partial(dry_run, campaign, router, say=info))
    out = sys.stdout
    out.write(f"dry run: campaign {config.id} ({config.source})\n")
    rejected = sum(found.rejected.values())
    reasons = ", ".join(f"{k} {n:,}" for k, n in sorted(found.rejected.items()))
    out.write(
        f"  recipients: {found.read + rejected:,} rows, {found.rendered:,} renderable, "
        f"{found.read - found.rendered:,} render failures, {rejected:,} rejected"
        + (f" ({reasons})" if reasons else "")
        + "\n"
    )
    for failure in found.failures:
        out.write(f"    render failure: {failure}\n")
    domains, unroutable = found.domains, found.unroutable
    out.write(
        f"  domains: {len(domains):,}, {len(domains) - len(unroutable):,} routable over "
        f"{len(found.sites):,} sites, {len(unroutable):,} unroutable ({found.lost:,} recipients)\n"
    )
    for domain, error in sorted(unroutable.items())[:10]:
        why = printable(f"{error.enhanced_code} {error.text}")
        out.write(f"    unroutable: {domain} ({domains[domain]:,} recipients): {why}\n")
    return EXIT_OK if found.clean else EXIT_UNDELIVERED
