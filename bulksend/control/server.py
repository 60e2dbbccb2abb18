"""The control endpoint of a running campaign: a UNIX socket beside its journal.

How this works: the run (``send``/``resume`` with a SQLite journal) listens on
``<journal>.ctl``, created mode 0600 (under umask 0177, so it is never reachable by others,
even for a moment), once the journal is locked: only the journal's owner can reach it, and
nothing listens on the network. Each connection carries one request, a JSON object on one
line (:class:`~bulksend.control.commands.Command`), and gets one answer, a JSON object on
one line: ``{"ok": true, "changed": "..."}``, ``{"ok": true, "status": {...}}`` or
``{"ok": false, "error": "..."}``.

Why a UNIX socket rather than the metrics HTTP server with a token: the file's mode is the
access control (no secret to create, store, pass and rotate), it exists only while a run
holds the journal (so "no run" is "no socket", and ``ctl`` can say so), and it works for
runs that serve no metrics.

The :class:`Operator` keeps the :class:`~bulksend.control.commands.ControlState`, makes
every destination follow it (an operator's pause, rate and connection cap live on the
site's :class:`~bulksend.delivery.backoff.Backoff`, beside any adaptive backoff), holds
paused, cancelled and bounced domains back from the scheduler, and persists them
in ``<journal>.control.json`` (0600) so that they outlive the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry, Counter

from bulksend.control.commands import ENDINGS, Command, CommandError, ControlState
from bulksend.delivery.destination import Destination
from bulksend.delivery.ending import end_waiting, hold_domain
from bulksend.delivery.scheduler import Scheduler
from bulksend.files import replace_private
from bulksend.journal import Outcome
from bulksend.routing import Site

#: Longest request accepted (one command is a few hundred bytes).
MAX_REQUEST: Final = 65_536
#: Seconds a client has to send its request.
_REQUEST_DEADLINE: Final = 10.0
_PAUSED: Final = "paused by bulksend ctl"
CANCELLED: Final = "cancelled by bulksend ctl"
BOUNCED: Final = "bounced by bulksend ctl"


def ending(action: str) -> Outcome:
    """The outcome a domain's waiting recipients get from ``action`` (one of ``ENDINGS``)."""
    return Outcome.cancelled(CANCELLED) if action == "cancel" else Outcome.operator_bounced(BOUNCED)


def socket_path(journal: Path) -> Path:
    """The control socket of the run that holds ``journal``."""
    return journal.with_name(journal.name + ".ctl")


def state_path(journal: Path) -> Path:
    """The pauses and cancellations of ``journal``'s campaign that outlive a run."""
    return journal.with_name(journal.name + ".control.json")


def load_state(journal: Path, now: float) -> ControlState:
    """The persisted control state of ``journal`` (empty when there is none).

    Raises:
        CommandError: the file is damaged (its message names it).
    """
    path = state_path(journal)
    try:
        return ControlState.restore(json.loads(path.read_text(encoding="utf-8")), now)
    except FileNotFoundError:
        return ControlState()
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8 or JSON, not a state
        raise CommandError(f"{path}: {exc}; remove it to forget every pause") from None


def with_ended(changed: str, ended: int) -> str:
    """A cancellation's (a bounce's) answer: what changed and how many recipients it ended."""
    return f"{changed} ({ended} recipients)"


class Operator:
    """Carries out control commands on one running campaign."""

    def __init__(
        self,
        journal: Path | str,
        state: ControlState,
        registry: CollectorRegistry,
        say: Callable[[str], None],
    ) -> None:
        self.journal = journal
        self.state = state
        self._say = say
        self._scheduler: Scheduler | None = None
        self._changed = trio.Event()
        self._commands = Counter(
            "bulksend_control_commands",
            "Control commands received (bulksend ctl), by command and result",
            ["command", "result"],
            registry=registry,
        )

    # ------------------------------------------------------------------ the run

    def attach(self, scheduler: Scheduler) -> None:
        """Follow the state in ``scheduler``'s run (call before it starts)."""
        self._scheduler = scheduler
        scheduler.on_destination = self._enforce_site
        scheduler.held = lambda domain: self.state.held(domain, scheduler.context.now())
        for site, destination in scheduler.destinations.items():
            self._enforce_site(site, destination)

    def _enforce_site(self, site: Site, destination: Destination) -> None:
        """Give one site the pause, rate and connection cap the state says."""
        name, state = str(site), self.state
        backoff = destination.backoff
        backoff.pause(state.site_paused_until(name, site.mx), _PAUSED)
        configured = destination.limits
        rate = state.site_override(state.rates, name, site.mx)
        connections = state.site_override(state.connections, name, site.mx)
        backoff.set_base(
            configured.max_connections if connections is None else int(connections),
            configured.rate if rate is None else rate,
        )
        destination.limits_changed()

    def _enforce(self) -> None:
        scheduler = self._scheduler
        assert scheduler is not None
        for site, destination in scheduler.destinations.items():
            self._enforce_site(site, destination)
        scheduler.due_again(-math.inf)  # the feeder looks again (a domain resumed)

    # ------------------------------------------------------------------ commands

    async def execute(self, command: Command) -> dict[str, Any]:
        """Carry out ``command``; the answer to send back.

        Raises:
            CommandError: it cannot be carried out.
        """
        scheduler = self._scheduler
        if scheduler is None:
            raise CommandError("the campaign has not started sending yet; try again")
        if command.action == "status":
            return {"ok": True, "status": await self.status()}
        changed = self.state.apply(command, scheduler.context.now())
        if command.action not in ("rate", "connections"):  # those end with the run anyway
            changed += self._save()
        elif command.value is None:  # back to the configured value, unless set otherwise
            changed += self.state.also_set(
                command, ((str(s), s.mx) for s in scheduler.destinations)
            )
        answer: dict[str, Any] = {"ok": True}
        if command.action in ENDINGS:
            outcome = ending(command.action)
            answer["ended"] = await end_waiting(scheduler, command.target, outcome)
            changed = with_ended(changed, answer["ended"])
        elif command.scope == "domain" and command.action == "pause":
            hold_domain(scheduler, command.target, Outcome.throttled(0.0, _PAUSED))
        self._enforce()
        self._changed.set()
        self._say(f"ctl: {changed}")
        return answer | {"changed": changed}

    def start(self, scheduler: Scheduler, nursery: trio.Nursery) -> None:
        """Follow the state in ``scheduler``'s run and serve commands, in ``nursery``."""
        self.attach(scheduler)
        nursery.start_soon(self.serve)

    async def status(self) -> dict[str, Any]:
        """Every site's state (``top``'s one data source) and what operators set.

        ``queued`` counts a site's recipients waiting in the journal (``waiting``: one query
        of the journal's due index) and those it has taken and not sent (``buffered``);
        ``outcomes`` this run's outcomes at the site, by kind.
        """
        scheduler = self._scheduler
        assert scheduler is not None
        context = scheduler.context
        waiting = await self.waiting()
        now = context.now()
        extra: dict[str, dict[str, Any]] = {}
        for site, d in scheduler.destinations.items():
            in_journal = sum(waiting.pop(domain, 0) for domain in d.domains)
            extra[str(site)] = {
                "paused_for": max(d.backoff.paused_until - now, 0.0),
                "in_flight": d.in_flight,
                "queued": d.buffered + in_journal,
                "buffered": d.buffered,  # taken from the journal, not sent
                "waiting": in_journal,
                "outcomes": {kind.value: n for kind, n in d.outcomes.items() if n},
            }
        return {
            "time": now,
            "stopping": scheduler.stopping,
            "unrouted": sum(waiting.values()),  # waiting, not attached to a site now
            "sites": [dataclasses.asdict(row) | extra[row.site] for row in scheduler.sites()],
            "control": self.state.shared(),  # what operators set, rates included
        }

    async def waiting(self) -> dict[str, int]:
        """The recipients waiting in the journal (due at any time), by domain."""
        assert self._scheduler is not None
        return await self._scheduler.context.writer.due_domains(now=math.inf)

    def _save(self) -> str:
        """Keep what outlives the run; what to add to the answer when that fails (the
        change holds for this run all the same: a pause is wanted now)."""
        assert isinstance(self.journal, Path)
        path = state_path(self.journal)
        try:
            replace_private(path, json.dumps(self.state.persistent(), allow_nan=False))
        except OSError as exc:
            return f" (for this run only: cannot save it in {path}: {exc.strerror or exc})"
        return ""

    # ------------------------------------------------------------------ serving

    async def serve(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on the journal's control socket until cancelled; the socket is removed then.

        Started with ``nursery.start``: it returns the socket's path, or None (and says why)
        when it cannot listen; the run goes on without live control then.
        """
        assert isinstance(self.journal, Path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire)
            await serve_socket(
                socket_path(self.journal),
                self.execute,
                self._say,
                counted=self._commands,
                task_status=task_status,
            )

    async def _expire(self) -> None:
        """Drop what ran out (a pause, a rate for a while) and make the sites follow."""
        scheduler = self._scheduler
        assert scheduler is not None
        context = scheduler.context
        while True:
            self._changed = trio.Event()
            with trio.move_on_at(self.state.next_expiry() - context.epoch):
                await self._changed.wait()
            ended = self.state.expire(context.now())
            if ended:
                unsaved = self._save()
                self._enforce()
                for what in ended:
                    self._say(f"ctl: {what}{unsaved}")


async def serve_socket(
    path: Path,
    execute: Callable[[Command], Awaitable[dict[str, Any]]],
    say: Callable[[str], None],
    *,
    counted: Counter | None = None,
    task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests on ``path`` (a 0600 UNIX socket) with ``execute`` until
    cancelled; the socket is removed then. ``counted``: the counter of commands by result.

    Started with ``nursery.start``: it returns ``path``, or None (and says why) when it
    cannot listen.
    """
    if await _listened(path):  # another run's (two `send --workers` of one journal)
        say(f"no live control (bulksend ctl): another bulksend run listens on {path}")
        task_status.started(None)
        return
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A socket left there is a killed run's: nobody answers on it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        umask = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(umask)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        say(f"no live control (bulksend ctl): cannot listen on {path}: {exc}")
        task_status.started(None)
        return

    async def answer(stream: trio.abc.Stream) -> None:
        async with stream:
            request = b""
            with trio.move_on_after(_REQUEST_DEADLINE):
                while b"\n" not in request and len(request) < MAX_REQUEST:
                    data = await stream.receive_some(MAX_REQUEST)
                    if not data:
                        break
                    request += data
            reply: dict[str, Any]
            action = "unknown"
            try:
                command = Command.from_json(json.loads(request.partition(b"\n")[0]))
                action = command.action
                reply = await execute(command)
            except ValueError as exc:  # CommandError, or not JSON
                reply = {"ok": False, "error": str(exc)}
            if counted is not None:
                counted.labels(action, "ok" if reply["ok"] else "refused").inc()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            await trio.serve_listeners(answer, [trio.SocketListener(sock)], handler_nursery=nursery)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _listened(path: Path) -> bool:
    """Whether a process listens on the UNIX socket ``path``."""
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            await probe.connect(str(path))
        except OSError:  # none there, or a dead run's: refused
            return False
    return True
