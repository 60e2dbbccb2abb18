"""One control socket for a run of several workers (``send --workers N``), and one status.

How this works: with SQLite journals each worker holds its shard's journal and answers on
that journal's socket (``x.0of2.sqlite3.ctl``). The parent process listens on the run's
``JOURNAL.ctl`` (:class:`Fanout`), passes each command to every worker still sending, all at
once, and merges their answers: a change is reported once (a cancellation with the
recipients ended summed over the workers), ``status`` is one status over every worker
(:func:`merge_status`), so ``ctl`` and ``top`` see one run, as with a single process. A
worker that could not be reached is named in the answer.

Why the parent fans out rather than the client finding every worker's socket: ``ctl
JOURNAL`` keeps one address per run; the parent knows which workers are its own and still
sending (a finished shard's socket is gone; another run's shard files may lie beside), so
a worker it cannot reach is reported, never silently skipped; and each worker's socket still
serves ``ctl JOURNAL.0of2.sqlite3`` on its own.

:func:`merge_status` also merges the workers of a PostgreSQL journal
(:mod:`bulksend.control.shared`), where one site may be sent to by several workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from bulksend.control.client import exchange
from bulksend.control.commands import ENDINGS, Command, CommandError, ControlState
from bulksend.control.server import serve_socket, socket_path, with_ended
from bulksend.errors import BulksendError

#: Per-site counts that add up over the workers sending to a site.
_SUMMED: Final = ("connections", "senders", "in_flight", "buffered")


class Fanout:
    """The parent of ``send --workers N`` on SQLite journals: one control socket for all."""

    def __init__(
        self,
        journal: Path,
        workers: Callable[[], Sequence[tuple[str, Path]]],
        say: Callable[[str], None],
    ) -> None:
        """``workers()``: the name and journal of each worker still sending, now."""
        self.journal = journal
        self._workers = workers
        self._say = say

    async def serve(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the run's control socket until cancelled (see :func:`serve_socket`)."""
        await serve_socket(
            socket_path(self.journal), self.execute, self._say, task_status=task_status
        )

    async def execute(self, command: Command) -> dict[str, Any]:
        """Pass ``command`` to every worker; their answers as one.

        Raises:
            CommandError: every worker refused it (their reason), or none could be reached.
        """
        answers: dict[str, dict[str, Any] | str] = {}

        async def ask(name: str, journal: Path) -> None:
            try:
                answers[name] = await trio.to_thread.run_sync(exchange, journal, command)
            except BulksendError as exc:  # not listening (yet, or any more), or no answer
                answers[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for name, journal in self._workers():
                nursery.start_soon(ask, name, journal)
        accepted = [a for a in answers.values() if isinstance(a, dict) and a.get("ok")]
        refused = {
            name: a if isinstance(a, str) else str(a.get("error", a))
            for name, a in sorted(answers.items())
            if not (isinstance(a, dict) and a.get("ok"))
        }
        if not accepted:
            if not refused:
                raise CommandError("no worker is sending any more")
            reasons = set(refused.values())
            raise CommandError(
                reasons.pop()
                if len(reasons) == 1
                else "; ".join(f"{name}: {why}" for name, why in refused.items())
            )
        missed = "".join(f"; {name}: {why}" for name, why in refused.items())
        if command.action == "status":
            merged = merge_status([a["status"] for a in accepted], one_journal=False)
            return {"ok": True, "status": merged | {"unreached": refused}}
        changed = accepted[0]["changed"]
        if command.action in ENDINGS:
            changed = with_ended(
                ControlState().apply(command, 0.0), sum(int(a["ended"]) for a in accepted)
            )
        return {"ok": True, "changed": changed + missed}


def merge_status(statuses: Sequence[Mapping[str, Any]], *, one_journal: bool) -> dict[str, Any]:
    """One status from several workers' (each as
    :meth:`~bulksend.control.server.Operator.status` answers).

    A site several workers send to (a shared journal) becomes one row: its connections,
    senders, in-flight and taken recipients and its outcomes summed; its caps, pause and
    other numbers the largest one seen; its texts the first worker's that has one.
    ``queued`` is the recipients the workers hold plus those waiting in the journal (counted
    once when the workers share ``one_journal``, else summed over their journals).
    """
    rows: dict[str, dict[str, Any]] = {}
    for status in statuses:
        for site in status["sites"]:
            row = rows.get(site["site"])
            if row is None:
                rows[site["site"]] = dict(site) | {"outcomes": dict(site["outcomes"])}
                continue
            for key, value in site.items():
                if key == "outcomes":
                    for kind, n in value.items():
                        row[key][kind] = row[key].get(kind, 0) + n
                elif key in _SUMMED:
                    row[key] += value
                elif isinstance(value, bool):
                    row[key] = row[key] or value
                elif isinstance(value, int | float):
                    row[key] = value if row[key] is None else max(row[key], value)
                elif not row[key]:
                    row[key] = value
            row["queued"] = row["buffered"] + row["waiting"]
    unrouted = [status["unrouted"] for status in statuses]
    return {
        "time": max(status["time"] for status in statuses),
        "stopping": any(status["stopping"] for status in statuses),
        "unrouted": max(unrouted) if one_journal else sum(unrouted),
        "sites": sorted(rows.values(), key=lambda s: (-s["connections"], -s["domains"], s["site"])),
        "control": statuses[0]["control"],
        "workers": len(statuses),
    }
