"""Live control of a PostgreSQL journal's workers: the commands go through the journal.

How this works: ``bulksend ctl URL ...`` changes the control state kept in the journal's
``meta`` table (key ``control``: the JSON of
:meth:`~bulksend.control.commands.ControlState.persistent`), in one transaction that locks
that row, so that two commands at once both land. ``cancel`` (``bounce``) also ends the domain's
unclaimed waiting recipients there and then. Every worker (``bulksend worker``, and
``send``/``resume`` on a PostgreSQL journal) reads the state every :data:`POLL` seconds
(:class:`SharedOperator`) and follows it as a single run follows its socket's commands: a
paused site or domain stops within about a second on every worker; a cancelled domain's
recipients a worker holds end cancelled, and the ones released back to the journal since
(a stop, a pause) are ended by the next poll. So every worker obeys, and a worker started
later too. A site's rate or connection change is kept there too (:meth:`ControlState.shared`),
until its ``--for`` runs out or for as long as the journal, and each worker applies it as it
applies the configured limits.

``status``: workers publish their live state only while someone watches. ``ctl status``
(:func:`status`) stamps the ``status-wanted`` key with the database's clock; a worker whose
poll sees a stamp younger than :data:`WATCHED` publishes its
:meth:`~bulksend.control.server.Operator.status` under ``status/<host>:<pid>``, stamped
with the database's clock, every poll; ``ctl status`` merges the snapshots younger than
:data:`FRESH` (:func:`~bulksend.control.fanout.merge_status`; a dead worker's goes stale
and is left out). The first ``status`` waits two polls for them; ``top`` asks every second,
so the next ones read at once. Times come from the database, so the machines' clocks may
differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Final

import psycopg
import trio
from psycopg import sql

from bulksend.control.client import NotRunning
from bulksend.control.commands import ENDINGS, Command, CommandError, ControlState
from bulksend.control.fanout import merge_status
from bulksend.control.server import BOUNCED, CANCELLED, Operator, ending
from bulksend.delivery.ending import hold_domain
from bulksend.errors import JournalError
from bulksend.journal.postgres import connect
from bulksend.journal.postgres_schema import WAITING_IN, Location, parse_url

STATE_KEY: Final = "control"
WANTED_KEY: Final = "status-wanted"
#: The prefix of a worker's published status in ``meta``.
STATUS_KEY: Final = "status/"
#: Seconds between a worker's reads of the state.
POLL: Final = 1.0
#: Seconds workers keep publishing their status after a ``ctl status``.
WATCHED: Final = 10.0
#: Seconds a worker's published status counts (older: a worker gone).
FRESH: Final = 3 * POLL
_DB_NOW: Final = "extract(epoch from clock_timestamp())"


def _connect(location: Location) -> psycopg.Connection[tuple[Any, ...]]:
    db = connect(location, application_name="bulksend ctl")
    db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(location.schema)))
    return db


def _state(found: tuple[Any, ...] | None, now: float) -> ControlState:
    return ControlState() if found is None else ControlState.restore(json.loads(found[0]), now)


def _read(db: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    """The state's row; None when there is none (nor a journal yet: a first ``send``)."""
    exists = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return None
    return db.execute("SELECT value FROM meta WHERE key = %s", (STATE_KEY,)).fetchone()


def read_state(url: str) -> ControlState:
    """The control state of the journal at ``url``.

    Raises:
        JournalError: the database cannot be read.
        CommandError: the state is damaged.
    """
    location = parse_url(url)
    try:
        with _connect(location) as db:
            found = _read(db)
    except psycopg.Error as exc:
        raise JournalError(f"{location}: cannot read the control state: {exc}") from None
    return _state(found, time.time())


_END_SQL: Final = f"""
UPDATE recipients SET status = %s, next_attempt_at = NULL, updated_at = %s,
    code = NULL, enhanced_code = NULL, text = %s, category = NULL
WHERE domain = ANY(%s) AND {WAITING_IN} AND claimed_at IS NULL
"""  # noqa: S608
#: What ``cancel`` and ``bounce`` leave on a recipient: its status and text (no attempt).
_ENDED: Final = {"cancel": ("cancelled", CANCELLED), "bounce": ("bounced", BOUNCED)}


def end_unclaimed(
    db: psycopg.Connection[tuple[Any, ...]], action: str, domains: list[str], now: float
) -> int:
    """End the unclaimed waiting recipients of ``domains`` as ``action`` (``cancel`` or
    ``bounce``) says; returns how many."""
    status, text = _ENDED[action]
    return db.execute(_END_SQL, (status, now, text, domains)).rowcount


def _ended_domains(state: ControlState) -> dict[str, set[str]]:
    """The domains each ending command ended, by command."""
    return {"cancel": state.cancelled, "bounce": state.bounced}


def change(url: str, command: Command) -> str:
    """Carry out ``command`` on the journal at ``url``; what changed, in words.

    Raises:
        CommandError: not a command the workers take, or it changes nothing.
        JournalError: no such journal, or the database cannot be reached.
    """
    location = parse_url(url)
    now = time.time()
    try:
        with _connect(location) as db, db.transaction():
            exists = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if exists is None or not exists[0]:
                raise JournalError(f"there is no journal at {location}")
            db.execute(
                "INSERT INTO meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (STATE_KEY, json.dumps(ControlState().shared())),
            )
            found = db.execute(
                "SELECT value FROM meta WHERE key = %s FOR UPDATE", (STATE_KEY,)
            ).fetchone()
            state = _state(found, now)
            changed = state.apply(command, now)
            if command.action in ENDINGS:
                ended = end_unclaimed(db, command.action, [command.target], now)
                changed += f" ({ended} waiting recipients now; the workers end those they hold)"
            db.execute(
                "UPDATE meta SET value = %s WHERE key = %s",
                (json.dumps(state.shared(), allow_nan=False), STATE_KEY),
            )
    except psycopg.Error as exc:
        raise JournalError(f"{location}: {exc}".splitlines()[0]) from None
    return changed


def status(url: str) -> dict[str, Any]:
    """The live state of the workers of the journal at ``url``, merged (see module).

    Raises:
        NotRunning: no worker published its state in time.
        JournalError: no such journal, or the database cannot be reached.
    """
    location = parse_url(url)
    try:
        with _connect(location) as db:
            exists = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if exists is None or not exists[0]:
                raise JournalError(f"there is no journal at {location}")
            watched = db.execute(
                f"SELECT value::float8 > {_DB_NOW} - %s FROM meta WHERE key = %s",  # noqa: S608
                (WATCHED - POLL, WANTED_KEY),
            ).fetchone()
            db.execute(
                f"INSERT INTO meta VALUES (%s, {_DB_NOW}::text)"  # noqa: S608
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (WANTED_KEY,),
            )
            if watched is None or not watched[0]:
                time.sleep(2 * POLL + 0.5)  # every worker polls, sees it, publishes
            db.execute(
                f"DELETE FROM meta WHERE key LIKE %s AND (value::json->>'at')::float8 < {_DB_NOW} - 60",  # noqa: E501, S608
                (STATUS_KEY + "%",),
            )
            found = db.execute(
                f"SELECT value::json->'status' FROM meta WHERE key LIKE %s"  # noqa: S608
                f" AND (value::json->>'at')::float8 >= {_DB_NOW} - %s ORDER BY key",
                (STATUS_KEY + "%", FRESH),
            ).fetchall()
    except psycopg.Error as exc:
        raise JournalError(f"{location}: {exc}".splitlines()[0]) from None
    if not found:
        raise NotRunning(
            f"no worker of {location} told its state in the last {2 * POLL + 0.5:g}s "
            f"(is one running?); `bulksend status {url}` shows where the campaign stands"
        )
    return merge_status([row[0] for row in found], one_journal=True)


class SharedOperator(Operator):
    """A worker of a PostgreSQL journal, following the state ``ctl`` keeps there."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the state every :data:`POLL` seconds and follow it, and publish this
        worker's status while someone watches, until cancelled."""
        assert isinstance(self.journal, str)
        location = parse_url(self.journal)
        key = f"{STATUS_KEY}{socket.gethostname()}:{os.getpid()}"
        task_status.started()
        failing = False
        db: list[psycopg.Connection[tuple[Any, ...]]] = []  # one, kept between reads
        try:
            while True:
                await trio.sleep(POLL)
                try:
                    if await trio.to_thread.run_sync(self._poll, location, db):
                        snapshot = json.dumps(await self.status(), allow_nan=False)
                        await trio.to_thread.run_sync(self._publish, db, key, snapshot)
                except (psycopg.Error, CommandError) as exc:
                    if not failing:
                        self._say(f"ctl: cannot read the control state ({exc}); trying again")
                    failing = True
                    continue
                failing = False
        finally:
            for connection in db:
                with contextlib.suppress(psycopg.Error):  # its status goes stale otherwise
                    connection.execute("DELETE FROM meta WHERE key = %s", (key,))
                connection.close()

    def _poll(self, location: Location, db: list[psycopg.Connection[tuple[Any, ...]]]) -> bool:
        """One read (in a thread): adopt a changed state, end released cancelled ones;
        returns whether someone watches (``ctl status``)."""
        now = time.time()
        if not db or db[0].closed:
            db[:] = [_connect(location)]
        try:
            state = _state(_read(db[0]), now)
            for action, domains in _ended_domains(state).items():
                if domains:
                    end_unclaimed(db[0], action, sorted(domains), now)
            watched = (
                db[0]
                .execute(
                    f"SELECT value::float8 > {_DB_NOW} - %s FROM meta WHERE key = %s",  # noqa: S608
                    (WATCHED, WANTED_KEY),
                )
                .fetchone()
            )
        except psycopg.Error:
            db.pop().close()
            raise
        if state.shared() != self.state.shared():
            trio.from_thread.run_sync(self._adopt, state)
        return watched is not None and bool(watched[0])

    @staticmethod
    def _publish(db: list[psycopg.Connection[tuple[Any, ...]]], key: str, snapshot: str) -> None:
        db[0].execute(
            "INSERT INTO meta VALUES (%s, json_build_object("  # noqa: S608
            f"'at', {_DB_NOW}, 'status', %s::json)::text)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, snapshot),
        )

    async def waiting(self) -> dict[str, int]:
        """The recipients due now in the journal, by domain (asking for those due at any
        time would take the other workers' leases)."""
        assert self._scheduler is not None
        return await self._scheduler.context.writer.due_domains()

    def _adopt(self, state: ControlState) -> None:
        scheduler = self._scheduler
        assert scheduler is not None
        before = _ended_domains(self.state)
        fresh = {a: d - before[a] for a, d in _ended_domains(state).items()}
        self.state = state
        for action, domains in fresh.items():
            for domain in sorted(domains):
                hold_domain(scheduler, domain, ending(action))
        self._enforce()
        self._commands.labels("shared", "ok").inc()
        self._say(f"ctl: following the journal's control state: {json.dumps(state.shared())}")

    def _save(self) -> str:
        """The state lives in the journal; ``ctl`` writes it."""
        return ""
