"""Live control of a PostgreSQL journal's workers: the commands go through the journal.

How this works: ``bulksend ctl URL ...`` changes the control state kept in the journal's
``meta`` table (key ``control``: the JSON of
:meth:`~bulksend.control.commands.ControlState.persistent`), in one transaction that locks
that row, so that two commands at once both land. ``cancel`` also ends the domain's
unclaimed waiting recipients there and then. Every worker (``bulksend worker``, and
``send``/``resume`` on a PostgreSQL journal) reads the state every :data:`POLL` seconds
(:class:`SharedOperator`) and follows it as a single run follows its socket's commands: a
paused site or domain stops within about a second on every worker; a cancelled domain's
recipients a worker holds end cancelled, and the ones released back to the journal since
(a stop, a pause) are ended by the next poll. So every worker obeys, and a worker started
later too. Rate and connection changes are not shared yet: with ``--throttle`` the shared
store keeps each site's configured limits.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import psycopg
import trio
from psycopg import sql

from bulksend.control.commands import Command, CommandError, ControlState
from bulksend.control.server import Operator
from bulksend.delivery.ending import hold_domain
from bulksend.errors import JournalError
from bulksend.journal import Outcome
from bulksend.journal.postgres_schema import WAITING_IN, Location, parse_url, read_password

STATE_KEY: Final = "control"
#: Seconds between a worker's reads of the state.
POLL: Final = 1.0
CANCELLED: Final = "cancelled by bulksend ctl"
#: What a PostgreSQL journal's workers take.
SHARED_ACTIONS: Final = ("pause", "resume", "cancel")


def _connect(location: Location) -> psycopg.Connection[tuple[Any, ...]]:
    db = psycopg.connect(
        location.conninfo,
        autocommit=True,
        password=read_password(location),
        connect_timeout=10,
        application_name="bulksend ctl",
    )
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


_CANCEL_SQL: Final = f"""
UPDATE recipients SET status = 'cancelled', next_attempt_at = NULL, updated_at = %s,
    code = NULL, enhanced_code = NULL, text = %s, category = NULL
WHERE domain = ANY(%s) AND {WAITING_IN} AND claimed_at IS NULL
"""  # noqa: S608


def cancel_unclaimed(
    db: psycopg.Connection[tuple[Any, ...]], domains: list[str], now: float
) -> int:
    """End the unclaimed waiting recipients of ``domains`` cancelled; returns how many."""
    return db.execute(_CANCEL_SQL, (now, CANCELLED, domains)).rowcount


def change(url: str, command: Command) -> str:
    """Carry out ``command`` on the journal at ``url``; what changed, in words.

    Raises:
        CommandError: not a command the workers take, or it changes nothing.
        JournalError: no such journal, or the database cannot be reached.
    """
    if command.action not in SHARED_ACTIONS:
        raise CommandError(
            f"{command.action}: not yet for a PostgreSQL journal's workers "
            f"(they take {', '.join(SHARED_ACTIONS)})"
        )
    location = parse_url(url)
    now = time.time()
    try:
        with _connect(location) as db, db.transaction():
            exists = db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if exists is None or not exists[0]:
                raise JournalError(f"there is no journal at {location}")
            db.execute(
                "INSERT INTO meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (STATE_KEY, json.dumps(ControlState().persistent())),
            )
            found = db.execute(
                "SELECT value FROM meta WHERE key = %s FOR UPDATE", (STATE_KEY,)
            ).fetchone()
            state = _state(found, now)
            changed = state.apply(command, now)
            if command.action == "cancel":
                ended = cancel_unclaimed(db, [command.target], now)
                changed += f" ({ended} waiting recipients now; the workers end those they hold)"
            db.execute(
                "UPDATE meta SET value = %s WHERE key = %s",
                (json.dumps(state.persistent(), allow_nan=False), STATE_KEY),
            )
    except psycopg.Error as exc:
        raise JournalError(f"{location}: {exc}".splitlines()[0]) from None
    return changed


class SharedOperator(Operator):
    """A worker of a PostgreSQL journal, following the state ``ctl`` keeps there."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the state every :data:`POLL` seconds and follow it, until cancelled."""
        assert isinstance(self.journal, str)
        location = parse_url(self.journal)
        task_status.started()
        failing = False
        db: list[psycopg.Connection[tuple[Any, ...]]] = []  # one, kept between reads
        try:
            while True:
                await trio.sleep(POLL)
                try:
                    await trio.to_thread.run_sync(self._poll, location, db)
                except (psycopg.Error, CommandError) as exc:
                    if not failing:
                        self._say(f"ctl: cannot read the control state ({exc}); trying again")
                    failing = True
                    continue
                failing = False
        finally:
            for connection in db:
                connection.close()

    def _poll(self, location: Location, db: list[psycopg.Connection[tuple[Any, ...]]]) -> None:
        """One read (in a thread): adopt a changed state, end released cancelled ones."""
        now = time.time()
        if not db or db[0].closed:
            db[:] = [_connect(location)]
        try:
            state = _state(_read(db[0]), now)
            if state.cancelled:
                cancel_unclaimed(db[0], sorted(state.cancelled), now)
        except psycopg.Error:
            db.pop().close()
            raise
        if state.persistent() != self.state.persistent():
            trio.from_thread.run_sync(self._adopt, state)

    def _adopt(self, state: ControlState) -> None:
        scheduler = self._scheduler
        assert scheduler is not None
        fresh = state.cancelled - self.state.cancelled
        self.state = state
        for domain in sorted(fresh):
            hold_domain(scheduler, domain, Outcome.cancelled(CANCELLED))
        self._enforce()
        self._commands.labels("shared", "ok").inc()
        self._say(f"ctl: following the journal's control state: {json.dumps(state.persistent())}")

    def _save(self) -> None:
        """The state lives in the journal; ``ctl`` writes it."""
