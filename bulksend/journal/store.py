"""The journal: the durable recipient queue and outcome log of one campaign run.

How this works
==============

One SQLite file per campaign run (per shard), in WAL mode with ``synchronous=FULL``.

Schema (``PRAGMA application_id`` marks the file as ours, ``PRAGMA user_version`` is the
schema version; anything else is refused with a :class:`JournalError`, never re-created):

- ``meta(key, value)``: the campaign identity (JSON of part name -> digest, so a refusal can
  name the part that changed), a stable ``campaign_id`` fixed at creation (Message-IDs are
  derived from it, so it survives a forced resume), the import position and completion flag.
- ``recipients``: one row per recipient. ``id`` is the recipient's 1-based position in the
  recipients file: its stable identity across resumes. ``address`` (domain lower-cased, local
  part as given, RFC 5321 §2.4), ``domain``, ``data`` (merge data as JSON), ``status``,
  ``attempts``, ``in_doubt`` (how many times it was possibly sent without a reply),
  ``next_attempt_at``, ``claimed_at``, first/last attempt and update times, and the last
  reply: ``code``, ``enhanced_code``, ``text``, ``category``.

States: exactly one ``status`` per recipient, enforced by a CHECK constraint:
``pending`` and ``in_doubt`` are *waiting* (will be sent); ``delivered``, ``bounced``,
``expired``, ``suppressed`` and ``invalid`` are final and never sent again. ``not_rendered``
(its message could not be made: the sender's fault, never sent, no attempt) is neither: it
is set aside until :meth:`Journal.retry_unrendered` makes it pending again, once the
campaign is fixed. A waiting row is
either due at ``next_attempt_at`` or *claimed* (``claimed_at`` set, handed to a sender);
a CHECK keeps exactly one of the two set, and final rows have neither. The index
``(status, domain, next_attempt_at)`` answers "due recipients for a domain" with a range
scan; claimed rows have no ``next_attempt_at`` and so are never fetched twice (nor counted
by ``due_domains``/``next_due_at``: the scheduler knows what it has in flight).

Import: recipients arrive from an iterator and are written 50,000 to a transaction, with
the import position in the same transaction, so an interrupted import resumes where it
stopped. The secondary indexes (unique address, due, claimed) are built once, in the last
transaction: building them at the end is about twice as fast as maintaining them per row
(1M recipients import in about 7 s, ``benchmarks/journal_import.py``). An address seen
twice keeps its first position; nothing is sent before the import is complete.

Outcomes (RFC 5321 §4.2, §4.5.4.1): delivered -> ``delivered``; permanent -> ``bounced``;
transient -> back to ``pending`` at now + an exponential, jittered delay
(:func:`retry_delay`), or ``expired`` with its last reply once ``max_age`` has passed since
the first attempt; in doubt (the final-dot reply never came) -> ``in_doubt``, retried like a
deferral and counted. A *throttled* deferral (our own rate limit or backoff) is not an
attempt: it only sets ``next_attempt_at`` to when the throttle lifts, and never lengthens
the retry interval. A final row ignores any later outcome, so delivered is never undone.
Suppressions added after the import: :meth:`Journal.suppress_waiting` marks the unclaimed
waiting rows on the list ``suppressed``; a claimed one is the sender's to drop, with a
``suppressed`` outcome (not an attempt).

Batching: during a run one :class:`JournalWriter` task owns the connection (the
synchronous :class:`Journal` methods refuse to run meanwhile). Outcomes arrive over a
bounded memory channel and are committed in one transaction per batch (``interval`` seconds
after the first outcome of a batch, or ``batch_size`` outcomes, whichever comes first).
Commits and scheduler queries run in a worker thread (``trio.to_thread``) under one
``trio.Lock``, so a slow ``fsync`` or a large ``GROUP BY`` never stalls the event loop and
the connection (``check_same_thread=False``) is never used by two threads at once.
``await writer.flush()`` returns once every outcome recorded before it is committed: nothing
counts as delivered before that.

Durability and crash semantics: ``synchronous=FULL`` makes every commit durable against a
power loss, not only against a process crash; batching means that costs one ``fsync`` per
batch (about a millisecond), a price worth paying because a delivered outcome lost after
commit would mean mailing that recipient twice. After a crash (kill -9) SQLite rolls back an
uncommitted batch; its recipients are still claimed. :meth:`Journal.open` turns every
claimed row into ``in_doubt`` (counted, due at once): a recipient handed to a sender without
a committed outcome may have been sent. Claims are written per fetched batch, not per
message: persisting "attempt started" before every final dot would cost one durable commit
per message and would only tighten the count; the claim is an upper bound (a claimed
recipient still queued at the crash is counted though never sent), never an undercount.
The scheduler can hand back unsent claims on a graceful stop with :meth:`Outcome.released`.
Claims are committed without their own ``fsync`` (``synchronous=NORMAL`` for that
transaction): a process crash keeps them, and the next outcome commit syncs them with it;
only a power loss in between could lose a claim (the count of in-doubt resends could then
miss one), a trade worth the thousands of fsyncs per second it saves.

Disk faults: any SQLite error during a write (``SQLITE_FULL``, ``SQLITE_IOERR``, ...) rolls
the transaction back, raises :class:`JournalError` and stops the journal: every later write
raises too, and the writer task's error propagates so the run exits non-zero. Corruption
(``SQLITE_CORRUPT``, ``SQLITE_NOTADB``) is reported as damage, not as a full disk.

Damage and lost history: before anything is written (or sent), opening compares the schema
text in ``sqlite_schema`` with the one this module creates (a flipped byte in a CHECK can
still parse) and runs ``PRAGMA integrity_check`` (``quick_check`` for reports). The import
ends with a checkpoint, so the recipients live in the main file, not only in the ``-wal``.
``meta.commits`` counts durable commits, in the same transactions; after each one the count
is written to ``<journal>.state`` (one fixed-size record, rewritten in place). A journal
holding fewer commits than its state file records has lost the end of its ``-wal`` (deleted,
torn, or the main file copied alone): SQLite would silently fall back to the last commit it
can read and the run would resend everything committed after it, so it is refused. The
state file is written after the commit it records and without an fsync: it may lag the
journal after a power loss (no false alarm), so a loss it has not recorded goes unseen.

Files are created 0600 (they hold personal data) and the process keeps an exclusive
``flock`` on the journal while it is open, so two runs never send from the same journal.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import datetime
import enum
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import random
import sqlite3
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TextIO, TypeVar
from urllib.parse import quote

import trio

from bulksend.config import RetryPolicy
from bulksend.errors import JournalError
from bulksend.text import printable

__all__ = [
    "SCHEMA_VERSION",
    "CampaignTally",
    "Category",
    "Due",
    "ImportStats",
    "Journal",
    "JournalInUse",
    "JournalMetrics",
    "JournalPeek",
    "JournalSet",
    "JournalWriter",
    "Kind",
    "NewRecipient",
    "Outcome",
    "RecipientState",
    "Status",
    "Step",
    "campaign_identity",
    "hash_files",
    "plan_step",
    "retry_delay",
]

SCHEMA_VERSION: Final = 2  # 2: the not_rendered status
#: ``PRAGMA application_id`` of a bulksend journal ("bksn").
APPLICATION_ID: Final = 0x626B736E
#: Longest reply text kept per recipient; a multi-line reply can be long.
MAX_TEXT: Final = 2000

_T = TypeVar("_T")


class Status(enum.StrEnum):
    """A recipient's one state."""

    PENDING = "pending"
    IN_DOUBT = "in_doubt"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    INVALID = "invalid"
    NOT_RENDERED = "not_rendered"  # set aside: the message could not be made

    @property
    def waiting(self) -> bool:
        """True for states that will still be sent (pending, in_doubt)."""
        return self in (Status.PENDING, Status.IN_DOUBT)


WAITING: Final = (Status.PENDING, Status.IN_DOUBT)


class Kind(enum.StrEnum):
    """What one delivery attempt (or non-attempt) came to."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"  # transient: retry later
    BOUNCED = "bounced"  # permanent
    IN_DOUBT = "in_doubt"  # the final-dot reply never came
    THROTTLED = "throttled"  # our own throttle/backoff: not an attempt
    SUPPRESSED = "suppressed"  # suppressed during the run, before it was sent: not an attempt
    NOT_RENDERED = "not_rendered"  # the message could not be made: not an attempt


class Category(enum.StrEnum):
    """Why a recipient was not delivered, for reports and metrics."""

    BAD_MAILBOX = "bad_mailbox"
    MAILBOX_FULL = "mailbox_full"
    POLICY = "policy"
    MESSAGE_TOO_BIG = "message_too_big"
    DNS = "dns"
    TLS = "tls"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, as the journal records it.

    Build these with the constructors below, or from replies and errors with
    :mod:`bulksend.delivery.outcome`.
    """

    kind: Kind
    code: int | None = None
    enhanced_code: str | None = None
    text: str = ""
    category: Category | None = None
    #: THROTTLED only: seconds until the throttle lifts.
    retry_after: float | None = None
    #: THROTTLED only: a transaction was really tried (the receiver pushed back), so the
    #: recipient's age counts from now even though this is not an attempt.
    tried: bool = False

    def __post_init__(self) -> None:
        if self.kind is Kind.THROTTLED:
            if self.retry_after is None or not math.isfinite(self.retry_after):
                raise ValueError("a throttled outcome needs a finite retry_after")
            if self.retry_after < 0:
                raise ValueError("retry_after must not be negative")
        elif self.retry_after is not None:
            raise ValueError("retry_after is only for throttled outcomes")

    @property
    def is_attempt(self) -> bool:
        """False for throttles, suppressions and messages not rendered: nothing was sent."""
        return self.kind not in (Kind.THROTTLED, Kind.SUPPRESSED, Kind.NOT_RENDERED)

    @classmethod
    def delivered(
        cls, code: int = 250, enhanced_code: str | None = None, text: str = ""
    ) -> Outcome:
        return cls(Kind.DELIVERED, code, enhanced_code, text)

    @classmethod
    def deferred(
        cls,
        code: int | None = None,
        enhanced_code: str | None = None,
        text: str = "",
        category: Category = Category.OTHER,
    ) -> Outcome:
        return cls(Kind.DEFERRED, code, enhanced_code, text, category)

    @classmethod
    def bounced(
        cls,
        code: int | None = None,
        enhanced_code: str | None = None,
        text: str = "",
        category: Category = Category.OTHER,
    ) -> Outcome:
        return cls(Kind.BOUNCED, code, enhanced_code, text, category)

    @classmethod
    def in_doubt(cls, text: str = "no reply to the end of data") -> Outcome:
        return cls(Kind.IN_DOUBT, None, None, text, Category.OTHER)

    @classmethod
    def throttled(cls, retry_after: float, text: str = "", *, tried: bool = False) -> Outcome:
        """A deferral by our own throttle or backoff: due again in ``retry_after`` seconds.

        ``tried``: the receiver pushed back on a real transaction (a backoff rule matched its
        reply): still not an attempt, but the recipient's ``max_age`` starts counting.
        """
        return cls(Kind.THROTTLED, None, None, text, None, float(retry_after), tried)

    @classmethod
    def suppressed(cls) -> Outcome:
        """The address went on the suppression list after it was claimed: never sent."""
        return cls(Kind.SUPPRESSED)

    @classmethod
    def not_rendered(cls, text: str) -> Outcome:
        """The recipient's message could not be made (``text`` says why): set it aside."""
        return cls(Kind.NOT_RENDERED, None, None, text)

    @classmethod
    def released(cls) -> Outcome:
        """Hand an unsent claimed recipient back (graceful stop): due at once, not in doubt."""
        return cls.throttled(0.0, "released")


# --- retry schedule (pure) -----------------------------------------------------------------


def retry_delay(policy: RetryPolicy, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (``attempts >= 1``).

    ``min(initial * factor**(attempts-1), maximum)``, spread by +/- ``jitter``.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    delay = policy.initial
    for _ in range(attempts - 1):
        if delay >= policy.maximum:
            break
        delay *= policy.factor
    delay = min(delay, policy.maximum)
    if policy.jitter:
        delay *= 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    return max(delay, 0.0)


@dataclass(frozen=True, slots=True)
class Step:
    """What an outcome does to a recipient's row."""

    status: Status
    attempts: int
    first_attempt_at: float | None
    next_attempt_at: float | None
    in_doubt_added: int
    #: False for throttled deferrals: the row's last reply is left as it was.
    keeps_reply: bool


def plan_step(
    outcome: Outcome,
    *,
    status: Status,
    attempts: int,
    first_attempt_at: float | None,
    now: float,
    policy: RetryPolicy,
    rng: random.Random,
) -> Step:
    """Decide a waiting recipient's next state from an outcome (pure).

    A transient outcome schedules the next try no later than ``first_attempt_at + max_age``
    (so the last try happens at the deadline), and expires the recipient once that age has
    been reached.
    """
    if not status.waiting:
        raise ValueError(f"recipient is already final ({status})")
    if outcome.kind is Kind.SUPPRESSED:
        return Step(Status.SUPPRESSED, attempts, first_attempt_at, None, 0, True)
    if outcome.kind is Kind.NOT_RENDERED:
        # The sender's fault, not the recipient's: no attempt, no bounce; set aside.
        return Step(Status.NOT_RENDERED, attempts, first_attempt_at, None, 0, False)
    if not outcome.is_attempt:
        assert outcome.retry_after is not None
        first = now if first_attempt_at is None and outcome.tried else first_attempt_at
        if first is not None and now >= first + policy.max_age:
            # Throttled for longer than max_age: give up, with the last real reply kept.
            return Step(Status.EXPIRED, attempts, first, None, 0, True)
        return Step(status, attempts, first, now + outcome.retry_after, 0, True)
    done = attempts + 1
    first = now if first_attempt_at is None else first_attempt_at
    if outcome.kind is Kind.DELIVERED:
        return Step(Status.DELIVERED, done, first, None, 0, False)
    if outcome.kind is Kind.BOUNCED:
        return Step(Status.BOUNCED, done, first, None, 0, False)
    doubt = 1 if outcome.kind is Kind.IN_DOUBT else 0
    deadline = first + policy.max_age
    if now >= deadline:
        return Step(Status.EXPIRED, done, first, None, doubt, False)
    at = min(now + retry_delay(policy, done, rng), deadline)
    new_status = Status.IN_DOUBT if doubt else Status.PENDING
    return Step(new_status, done, first, at, doubt, False)


# --- campaign identity ---------------------------------------------------------------------


def hash_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over the contents of ``paths`` in order (names do not matter), as hex.

    Raises:
        JournalError: a file cannot be read.
    """
    total = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").digest()
        except OSError as e:
            raise JournalError(
                f"cannot read {os.fspath(path)!r} to identify the campaign: {e}"
            ) from e
        total.update(digest)
    return total.hexdigest()


#: Sections of the campaign file that say how to send, not what (rates, connections,
#: timeouts, retries, routes): a change to them is allowed on resume, and reported.
POLICY_SECTIONS: Final = ("policy", "routing")
_FILE_PART: Final = "campaign file: "


def _campaign_file_parts(campaign: str | os.PathLike[str]) -> dict[str, str]:
    """One identity part per setting of the campaign file, holding its value (JSON).

    Parts are named ``campaign file: <section.key>``, so a refusal can show what changed
    from what to what; comments and layout are not part of the identity.

    Raises:
        JournalError: the file cannot be read or is not TOML.
    """
    try:
        with open(campaign, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise JournalError(
            f"cannot read {os.fspath(campaign)!r} to identify the campaign: {e}"
        ) from e
    parts: dict[str, str] = {}

    def walk(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                parts[f"{_FILE_PART}{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)

    walk("", data)
    return parts


def _is_policy_part(part: str) -> bool:
    """Whether an identity part is a sending-policy setting (may change on resume)."""
    return part.startswith(_FILE_PART) and (
        part.removeprefix(_FILE_PART).split(".", 1)[0] in POLICY_SECTIONS
    )


def _describe_changes(
    stored: Mapping[str, str], given: Mapping[str, str], parts: Sequence[str]
) -> str:
    """``a.b ("old" -> "new"), templates`` for the changed ``parts`` (at most 8 named)."""
    shown = []
    for part in parts[:8]:
        name = part.removeprefix(_FILE_PART)
        if part.startswith(_FILE_PART):
            name += f" ({stored.get(part, 'unset')} -> {given.get(part, 'unset')})"
        shown.append(name)
    more = f" and {len(parts) - 8} more" if len(parts) > 8 else ""
    return ", ".join(shown) + more


def campaign_identity(
    campaign: str | os.PathLike[str],
    templates: Iterable[str | os.PathLike[str]],
    recipients: str | os.PathLike[str],
    attachments: Iterable[str | os.PathLike[str]] = (),
) -> dict[str, str]:
    """The identity of a campaign run: one part per setting or file, so a change can be named.

    Content parts (what is sent: the campaign file's settings outside
    :data:`POLICY_SECTIONS`, the templates, the recipients file, each attachment's bytes as
    a part of its own, "attachment <path>") refuse a resume when they change, unless forced;
    policy parts (how it is sent) may change (see :func:`_is_policy_part`).
    """
    identity = {
        **_campaign_file_parts(campaign),
        "templates": hash_files(templates),
        "recipients file": hash_files([recipients]),
    }
    for path in attachments:
        identity[f"attachment {os.fspath(path)}"] = hash_files([path])
    return identity


def _normalise_identity(identity: str | bytes | Mapping[str, str | bytes]) -> dict[str, str]:
    if isinstance(identity, bytes):
        return {"campaign": identity.hex()}
    if isinstance(identity, str):
        return {"campaign": identity}
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in identity.items()}


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRecipient:
    """A recipient to import. ``status`` may be pending, suppressed or invalid."""

    address: str
    data: Mapping[str, Any] | None = None
    status: Status = Status.PENDING
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ImportStats:
    imported: int
    duplicates: int
    skipped: int  # already imported before a resume


@dataclass(frozen=True, slots=True)
class CampaignTally:
    """Where a campaign stands, counted in one place.

    The run summary, the ``--workers`` summary and ``report`` all print this, so their
    numbers agree with each other and with the rejects file.

    Attributes:
        statuses: recipients in the journal per status (every status).
        not_imported: rows of the recipients file that have no journal row: ``duplicate``
            (a repeat of an earlier address) and ``invalid`` (no address to keep).
        in_doubt_sends: sends that may have been duplicated (in-doubt events, all recipients).
    """

    statuses: Mapping[Status, int]
    not_imported: Mapping[str, int]
    in_doubt_sends: int

    @property
    def rows(self) -> int:
        """Rows of the recipients file (every recipient and every rejected row)."""
        return sum(self.statuses.values()) + sum(self.not_imported.values())

    @property
    def rejected(self) -> int:
        """Rows that are not sent: the rows of the rejects file."""
        return (
            self.statuses[Status.INVALID]
            + self.statuses[Status.SUPPRESSED]
            + sum(self.not_imported.values())
        )

    def by_state(self) -> dict[str, int]:
        """Every row of the file in one state: the statuses, every invalid row, duplicates."""
        states = {str(s): n for s, n in self.statuses.items()}
        states[Status.INVALID.value] += self.not_imported.get("invalid", 0)
        states["duplicate"] = self.not_imported.get("duplicate", 0)
        return states


@dataclass(frozen=True, slots=True)
class Due:
    """A recipient handed to a sender (claimed until its outcome is recorded)."""

    id: int
    address: str
    domain: str
    data: dict[str, Any] | None
    status: Status
    attempts: int
    in_doubt: int


@dataclass(frozen=True, slots=True)
class RecipientState:
    """One recipient's row, for reports and exports."""

    id: int
    address: str
    domain: str
    status: Status
    attempts: int
    in_doubt: int
    code: int | None
    enhanced_code: str | None
    text: str | None
    category: Category | None
    next_attempt_at: float | None
    first_attempt_at: float | None
    updated_at: float

    def as_export(self) -> dict[str, Any]:
        """The exported fields; the reply text, a remote server's, escaped."""
        return {
            "id": self.id,
            "address": self.address,
            "status": str(self.status),
            "code": self.code,
            "enhanced_code": self.enhanced_code,
            "text": None if self.text is None else printable(self.text),
            "category": None if self.category is None else str(self.category),
            "attempts": self.attempts,
            "in_doubt": self.in_doubt,
            "time": _iso(self.updated_at),
        }


_STATE_COLUMNS = (
    "id, address, domain, status, attempts, in_doubt, code, enhanced_code, text, category,"
    " next_attempt_at, first_attempt_at, updated_at"
)


def _state(row: tuple[Any, ...]) -> RecipientState:
    return RecipientState(
        row[0],
        row[1],
        row[2],
        Status(row[3]),
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        None if row[9] is None else Category(row[9]),
        row[10],
        row[11],
        row[12],
    )


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def _csv_safe(value: object) -> object:
    # Reply text comes from remote servers: keep a spreadsheet from reading it as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _one_of(column: str, values: Iterable[str]) -> str:
    # An OR chain, not IN (...): SQLite rebuilds an IN list's lookup table for every row a
    # CHECK runs on, which made the import 50% slower.
    return "(" + " OR ".join(f"{column} = '{v}'" for v in values) + ")"


_SCHEMA = f"""
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE recipients (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    data TEXT,
    status TEXT NOT NULL CHECK {_one_of("status", Status)},
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    in_doubt INTEGER NOT NULL DEFAULT 0 CHECK (in_doubt >= 0),
    next_attempt_at REAL,
    claimed_at REAL,
    first_attempt_at REAL,
    last_attempt_at REAL,
    updated_at REAL NOT NULL,
    code INTEGER,
    enhanced_code TEXT,
    text TEXT,
    category TEXT CHECK (category IS NULL OR {_one_of("category", Category)}),
    CHECK (CASE WHEN {_one_of("status", WAITING)}
                THEN (next_attempt_at IS NULL) <> (claimed_at IS NULL)
                ELSE next_attempt_at IS NULL AND claimed_at IS NULL END)
);

PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


# Built when the import completes (see Journal.import_recipients).
_ADDRESS_INDEX: Final = "CREATE UNIQUE INDEX recipients_address ON recipients (address)"
_INDEXES: Final = (
    "CREATE INDEX recipients_due ON recipients (status, domain, next_attempt_at)",
    "CREATE INDEX recipients_claimed ON recipients (claimed_at) WHERE claimed_at IS NOT NULL",
)


# --- damage and lost history --------------------------------------------------------------

#: The state file's size: one JSON record, padded, rewritten in place with one write.
_STATE_SIZE: Final = 256
#: SQLite's result codes for a file whose content is not what SQLite wrote.
_DAMAGE_CODES: Final = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_TABLES: Final = frozenset({"meta", "recipients"})


def _state_path(path: Path) -> Path:
    """The file beside a journal that records how much history the journal must hold."""
    return path.with_name(path.name + ".state")


@dataclass(frozen=True, slots=True)
class _State:
    campaign_id: str
    imported: int
    commits: int


def _read_state(path: Path) -> _State | None:
    """The journal's state file; None if there is none (or it was never written)."""
    where = f"journal {str(path)!r}"
    try:
        data = _state_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JournalError(f"{where}: cannot read its state file: {e}") from e
    if not data.strip():
        return _State("", 0, 0)  # created, no commit recorded yet
    try:
        record = json.loads(data)
        return _State(str(record["campaign_id"]), int(record["imported"]), int(record["commits"]))
    except (ValueError, KeyError, TypeError) as e:
        raise _damaged(where, f"its state file {str(_state_path(path))!r} is unreadable") from e


def _check_history(
    where: str, path: Path, state: _State | None, meta: Callable[[str], str | None], fresh: bool
) -> None:
    """Refuse a journal holding less history than its state file says it committed.

    ``meta`` reads the journal's meta table. Its ``commits`` is None for a journal from
    before commits were counted (which has no state file either).
    """
    state_file = str(_state_path(path))
    raw = None if fresh else meta("commits")
    commits = None if raw is None else int(raw)
    campaign_id = None if fresh else meta("campaign_id")
    if state is not None and state.campaign_id and campaign_id not in (None, state.campaign_id):
        raise JournalError(
            f"{where}: its state file {state_file!r} belongs to another journal (campaign id "
            f"{state.campaign_id}); put this journal's own state file beside it"
        )
    if state is None:
        if commits is not None:
            raise JournalError(
                f"{where} has no state file {state_file!r} beside it (moved or copied "
                "without it?); put it back, with the journal's -wal file if there is one"
            )
        return
    held = 0 if fresh or commits is None else commits
    if held >= state.commits:
        return
    what = (
        f"it is empty, yet its state file records {state.imported:,} recipients imported"
        if fresh
        else f"it holds {held:,} of the {state.commits:,} commits its state file records"
    )
    raise JournalError(
        f"{where} lost committed history: {what} (its -wal file was lost or torn, or the "
        "journal file was copied without it); sending now would mail recipients again without "
        "counting them in doubt. Restore it with its -wal file from a backup, or delete it "
        f"and {state_file!r} to start the campaign over"
    )


def _is_damage(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorname", "") in _DAMAGE_CODES


def _damaged(where: str, detail: str) -> JournalError:
    return JournalError(f"{where} is damaged: {detail}; restore it from a backup")


def _write_error(path: str, what: str, error: sqlite3.Error) -> JournalError:
    where = f"journal {path!r}"
    if _is_damage(error):
        return _damaged(where, f"could not {what}: {error}")
    if getattr(error, "sqlite_errorname", "") == "SQLITE_FULL":
        advice = "free disk space, then resume"
    else:
        advice = "check the disk and its free space, then resume"
    return JournalError(
        f"{where}: could not {what}: {error}. The journal is stopped; outcomes not yet "
        f"committed are not recorded ({advice})"
    )


@functools.cache
def _expected_schema() -> dict[str, str | None]:
    """Every schema object bulksend creates (tables and indexes), name -> SQL text."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        for statement in (_ADDRESS_INDEX, *_INDEXES):
            db.execute(statement)
        return dict(db.execute("SELECT name, sql FROM sqlite_schema"))
    finally:
        db.close()


def _check_damage(db: sqlite3.Connection, where: str, *, thorough: bool) -> None:
    """Refuse a journal whose schema text differs from ours or whose pages are damaged.

    ``thorough`` runs ``integrity_check`` (every index against its table: about 4 s per
    million recipients) instead of ``quick_check`` (the pages and records: about 0.4 s).
    """
    expected = _expected_schema()
    try:
        found = dict(db.execute("SELECT name, sql FROM sqlite_schema"))
        # An object altered or not ours, or a table missing (indexes come with the import).
        changed = sorted(
            name
            for name in expected.keys() | found.keys()
            if (name in found and found[name] != expected.get(name))
            or (name not in found and name in _TABLES)
        )
        if changed:
            raise _damaged(where, f"the definition of {', '.join(changed)} is not bulksend's")
        check = "integrity_check" if thorough else "quick_check"
        problems = [str(row[0]) for row in db.execute(f"PRAGMA {check}(3)")]
    except sqlite3.Error as e:
        raise _damaged(where, str(e)) from e
    if problems != ["ok"]:
        # One line: SQLite heads its report with "*** in database main ***" lines.
        lines = [line for p in problems for line in p.splitlines() if not line.startswith("***")]
        raise _damaged(where, "; ".join(lines))


class _Reports(abc.ABC):
    """Exports shared by one journal and a set of shard journals (built on ``iter_states``)."""

    EXPORT_FIELDS: Final = (
        "id",
        "address",
        "status",
        "code",
        "enhanced_code",
        "text",
        "category",
        "attempts",
        "in_doubt",
        "time",
    )

    @abc.abstractmethod
    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        """Every recipient's row, optionally only those in ``statuses``."""

    @abc.abstractmethod
    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""

    @abc.abstractmethod
    def not_imported(self) -> dict[str, int]:
        """Rows of the recipients file left out of the journal, by reason."""

    @abc.abstractmethod
    def in_doubt_total(self) -> int:
        """How many sends may have been duplicated."""

    def tally(self) -> CampaignTally:
        """Where the campaign stands (see :class:`CampaignTally`)."""
        return CampaignTally(self.counts(), self.not_imported(), self.in_doubt_total())

    def export_csv(self, stream: TextIO, statuses: Iterable[Status] | None = None) -> int:
        """Write outcomes as CSV (header first) to a text stream; returns the row count.

        Open the stream with ``newline=""``. Fields starting with ``= + - @`` get a ``'``
        prefix so that spreadsheets do not run remote reply text as formulas.
        """
        writer = csv.writer(stream)
        writer.writerow(self.EXPORT_FIELDS)
        n = 0
        for state in self.iter_states(statuses):
            row = state.as_export()
            writer.writerow([_csv_safe(row[k]) for k in self.EXPORT_FIELDS])
            n += 1
        return n

    def export_jsonl(self, stream: TextIO, statuses: Iterable[Status] | None = None) -> int:
        """Write outcomes as JSON Lines to a text stream; returns the row count."""
        n = 0
        for state in self.iter_states(statuses):
            stream.write(json.dumps(state.as_export(), ensure_ascii=False) + "\n")
            n += 1
        return n


class Journal(_Reports):
    """The durable recipient queue of one campaign run (synchronous core).

    Open with :meth:`open`. While a :class:`JournalWriter` runs, use the writer's async
    methods; the synchronous methods here raise ``RuntimeError`` then.
    """

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        lock_fd: int,
        policy: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        self.policy = policy
        self._rng = rng
        self._failed: BaseException | None = None
        self._owner: object | None = None
        self.identity: dict[str, str] = {}
        self.campaign_id = ""
        #: Recipients found claimed without an outcome when opened (crash): now in_doubt.
        self.recovered_in_doubt = 0
        self.forced = False
        #: What changed since the journal was last opened: "policy" (allowed) and "content"
        #: (forced) mapped to a description.
        self.changes: dict[str, str] = {}
        self._import_done = False
        #: Durable commits made (``meta.commits``) and rows imported, mirrored in the state
        #: file after every durable commit (see "Damage and lost history").
        self._commits = 0
        self._imported = 0
        self._state_fd = -1

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        identity: str | bytes | Mapping[str, str | bytes] | None,
        *,
        force: bool = False,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        now: float | None = None,
    ) -> Journal:
        """Open (resume) or create the journal at ``path``.

        Args:
            identity: the campaign identity (see :func:`campaign_identity`); ``None`` opens an
                existing journal without checking it (reports).
            force: resume even though the identity changed.
            now: wall-clock time (epoch seconds) for crash recovery.

        Raises:
            JournalError: not a journal, a different schema version, a changed campaign
                (unless ``force``), in use by another process, or an I/O error.
        """
        p = Path(path)
        now = time.time() if now is None else now
        if identity is None and not p.exists():
            raise JournalError(f"there is no journal at {str(p)!r}")
        try:
            # 0600 before SQLite sees it; O_CREAT leaves an existing file's mode alone.
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise JournalError(f"cannot open journal {str(p)!r}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd)
            os.close(fd)
            raise JournalInUse(
                f"journal {str(p)!r} is in use by another bulksend process"
                + ("" if holder is None else f" (pid {holder})")
                + "; `bulksend status` shows its progress"
            ) from e
        db: sqlite3.Connection | None = None
        old_umask = os.umask(0o077)  # -wal and -shm: 0600 too
        try:
            db = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
            journal = cls(p, db, fd, policy or RetryPolicy(), rng or random.Random())
            journal._setup(identity, force=force, now=now)
        except BaseException:
            if db is not None:
                db.close()
            os.close(fd)
            raise
        finally:
            os.umask(old_umask)
        return journal

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> Journal:
        """Open an existing journal for reading only, without its lock (reports).

        WAL mode lets this read the last committed state while a run holds the journal. No
        crash recovery runs: recipients a running (or killed) run has claimed still count as
        waiting, and their possible sends are not yet counted in doubt.

        Raises:
            JournalError: no journal there, not a journal, another schema version.
        """
        p = Path(path)
        if not p.is_file():
            raise JournalError(f"there is no journal at {str(p)!r}")
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise JournalError(f"cannot open journal {str(p)!r}: {e}") from e
        try:
            uri = f"file:{quote(str(p.resolve()))}?mode=ro"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as e:
            os.close(fd)
            raise JournalError(f"cannot read journal {str(p)!r}: {e}") from None
        journal = cls(p, db, fd, RetryPolicy(), random.Random())
        try:
            if journal._check_format():
                raise JournalError(f"journal {str(p)!r} is empty: its run never imported")
            journal._check_intact(fresh=False, thorough=False)
            journal._check_identity(None, force=False, now=0.0)
            journal._import_done = (
                journal._read("read meta", lambda: journal._meta("import_complete")) == "1"
            )
        except BaseException:
            journal.close()
            raise
        return journal

    def _check_format(self) -> bool:
        """Check the file is a journal of our schema version; True if it is still empty."""
        where = f"journal {str(self.path)!r}"
        try:
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{where} is not a bulksend journal ({e})") from e
        fresh = app_id == 0 and tables == 0
        if not fresh and app_id != APPLICATION_ID:
            raise JournalError(f"{where} is not a bulksend journal (another SQLite database)")
        if not fresh and version != SCHEMA_VERSION:
            raise JournalError(
                f"{where} has schema version {version}; this bulksend reads version "
                f"{SCHEMA_VERSION}. Use the bulksend version that wrote it."
            )
        return bool(fresh)

    def _check_intact(self, *, fresh: bool, thorough: bool) -> str | None:
        """Refuse a damaged journal or one that lost history; returns its commit count.

        Before anything is written or sent: a damaged journal would resend (or lose) work.
        A run gets the thorough check (it also compares every index with its table).
        """
        where = f"journal {str(self.path)!r}"
        state = _read_state(self.path)  # before the journal: a commit may land meanwhile
        if not fresh:
            _check_damage(self._db, where, thorough=thorough)
        _check_history(
            where,
            self.path,
            state,
            lambda key: self._read("read meta", lambda: self._meta_or_none(key)),
            fresh,
        )
        return None if fresh else self._meta_or_none("commits")

    def _setup(
        self, identity: str | bytes | Mapping[str, str | bytes] | None, *, force: bool, now: float
    ) -> None:
        where = f"journal {str(self.path)!r}"
        fresh = self._check_format()
        commits = self._check_intact(fresh=fresh, thorough=identity is not None)
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{where}: cannot switch to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA cache_size = -32768")
        except sqlite3.Error as e:
            raise JournalError(f"{where}: {e}") from e
        if fresh and identity is None:
            raise JournalError(f"{where} does not exist yet; a campaign identity is needed")
        try:
            self._state_fd = os.open(
                _state_path(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise JournalError(f"{where}: cannot open its state file: {e}") from e
        if fresh:
            assert identity is not None
            self._create(_normalise_identity(identity), now)
        else:
            if commits is None:
                # Written before journals counted their commits: start counting now.
                with self._write("start counting commits"):
                    self._db.execute("INSERT INTO meta VALUES ('commits', '0')")
            else:
                self._commits = int(commits)
            self._check_identity(identity, force=force, now=now)
        self._import_done = self._read("read meta", lambda: self._meta("import_complete")) == "1"
        self._imported = int(self._read("read meta", lambda: self._meta("import_position")))
        self._recover(now)

    def _create(self, identity: dict[str, str], now: float) -> None:
        campaign_id = hashlib.sha256(
            json.dumps(identity, sort_keys=True).encode() + repr(now).encode()
        ).hexdigest()[:32]
        meta = {
            "identity": json.dumps(identity, sort_keys=True),
            "campaign_id": campaign_id,
            "created_at": repr(now),
            "import_position": "0",
            "import_complete": "0",
            "commits": "0",
        }
        self.campaign_id = campaign_id
        with self._write("create the journal"):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        self.identity = identity

    def _check_identity(
        self, identity: str | bytes | Mapping[str, str | bytes] | None, *, force: bool, now: float
    ) -> None:
        stored = json.loads(self._read("read meta", lambda: self._meta("identity")))
        self.campaign_id = self._read("read meta", lambda: self._meta("campaign_id"))
        self.identity = stored
        if identity is None:
            return
        given = _normalise_identity(identity)
        changed = sorted(k for k in stored.keys() | given.keys() if stored.get(k) != given.get(k))
        if not changed:
            return
        content = [k for k in changed if not _is_policy_part(k)]
        if content and not force:
            raise JournalError(
                f"journal {str(self.path)!r} was written for other campaign content: "
                f"{_describe_changes(stored, given, content)} changed since. Resuming would "
                "send the remaining recipients the changed message: resume with --force to do "
                "that (a new journal would send everyone again)."
            )
        policy = [k for k in changed if _is_policy_part(k)]
        for kind, group in (("policy", policy), ("content", content)):
            if group:
                self.changes[kind] = _describe_changes(stored, given, group)
        with self._write("record a changed campaign"):
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'identity'",
                (json.dumps(given, sort_keys=True),),
            )
            if content:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('forced_at', ?)",
                    (repr(now),),
                )
        self.identity = given
        self.forced = bool(content)

    def _recover(self, now: float) -> None:
        with self._write("recover claimed recipients"):
            cur = self._db.execute(
                "UPDATE recipients SET status = 'in_doubt', in_doubt = in_doubt + 1,"
                " claimed_at = NULL, next_attempt_at = ?, updated_at = ?"
                " WHERE claimed_at IS NOT NULL",
                (now, now),
            )
            self.recovered_in_doubt = cur.rowcount

    def _meta(self, key: str) -> str:
        value = self._meta_or_none(key)
        if value is None:
            raise JournalError(
                f"journal {str(self.path)!r} is damaged: meta {key!r} missing; "
                "restore it from a backup"
            )
        return value

    def _meta_or_none(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _save_state(self) -> None:
        # After the commit it describes: the state file may lag the journal (a crash in
        # between), never lead it.
        record = json.dumps(
            {"campaign_id": self.campaign_id, "imported": self._imported, "commits": self._commits}
        )
        data = record.encode().ljust(_STATE_SIZE - 1) + b"\n"
        assert len(data) == _STATE_SIZE
        try:
            os.pwrite(self._state_fd, data, 0)  # one small write in place: never torn
        except OSError as e:
            raise JournalError(
                f"journal {str(self.path)!r}: cannot write its state file: {e}"
            ) from e

    def close(self) -> None:
        """Close the connection and release the lock (idempotent)."""
        if self._lock_fd < 0:
            return
        try:
            self._db.close()
        finally:
            if self._state_fd >= 0:
                os.close(self._state_fd)
                self._state_fd = -1
            # Only after SQLite closed: closing another fd of the file drops its POSIX locks.
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions ----------------------------------------------------------------------

    def _check_imported(self) -> None:
        if not self._import_done:
            raise JournalError(
                f"journal {str(self.path)!r}: the recipients import has not finished; "
                "import them (again: a partial import resumes) before sending"
            )

    def _check_free(self) -> None:
        if self._owner is not None:
            raise RuntimeError("the journal is owned by a running JournalWriter; use its methods")

    @contextlib.contextmanager
    def _write(self, what: str, *, durable: bool = True) -> Iterator[None]:
        """One write transaction; any SQLite error stops the journal.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL``): such a commit
        survives a process crash (the WAL is in the OS's cache) and becomes durable with the
        next durable commit, which syncs the WAL up to there (a WAL loses only a suffix).
        """
        if self._failed is not None:
            raise JournalError(
                f"journal {str(self.path)!r} stopped after a write failure ({self._failed}); "
                "nothing more is recorded"
            )
        if self._lock_fd < 0:
            raise JournalError(f"journal {str(self.path)!r} is closed")
        try:
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                if durable:
                    self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'commits'")
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    # Whatever happened, the next commit must sync again.
                    self._rollback()
                    self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            self._failed = e
            self._rollback()
            raise _write_error(str(self.path), what, e) from e
        except BaseException:
            self._rollback()
            raise
        if durable:
            self._commits += 1
            self._save_state()

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _read(self, what: str, fn: Callable[[], _T]) -> _T:
        if self._lock_fd < 0:
            raise JournalError(f"journal {str(self.path)!r} is closed")
        try:
            return fn()
        except sqlite3.Error as e:
            if _is_damage(e):
                raise _damaged(f"journal {str(self.path)!r}", str(e)) from e
            raise JournalError(f"journal {str(self.path)!r}: could not {what}: {e}") from e

    # --- import ----------------------------------------------------------------------------

    @property
    def import_complete(self) -> bool:
        """True once every recipient is imported (and the indexes are built)."""
        return self._import_done

    def import_recipients(
        self,
        recipients: Iterable[NewRecipient | str],
        *,
        now: float | None = None,
        batch_size: int = 50_000,
        not_imported: Mapping[str, int] | None = None,
    ) -> ImportStats:
        """Write recipients in large transactions, resuming a partial import.

        Items already imported (by position) before a crash are skipped, so pass the same
        recipients again on resume. The secondary indexes are built once, when the last
        batch is in (much faster than maintaining them row by row); an address seen twice is
        then kept only at its first position. Pending recipients are due at ``now``.
        ``not_imported`` (read once ``recipients`` is exhausted) counts the rows the caller
        left out, by reason; it is kept, with the duplicates found here, for :meth:`tally`.
        """
        self._check_free()
        now = time.time() if now is None else now
        if self._import_done:
            return ImportStats(0, 0, 0)
        position = int(self._read("read meta", lambda: self._meta("import_position")))
        it = iter(recipients)
        skipped = sum(1 for _ in zip(range(position), it, strict=False))
        insert = (
            "INSERT INTO recipients (id, address, domain, data, status,"
            " next_attempt_at, updated_at, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        written = duplicates = 0
        while True:
            items = list(itertools.islice(it, batch_size))
            last = len(items) < batch_size
            with self._write("import recipients"):
                if items:
                    self._db.executemany(insert, _import_rows(items, position + 1, now))
                    position += len(items)
                    written += len(items)
                    self._imported = position
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'import_position'", (str(position),)
                    )
                if last:
                    duplicates = self._build_indexes()
                    left_out = dict(not_imported or {})
                    left_out["duplicate"] = left_out.get("duplicate", 0) + duplicates
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('not_imported', ?)",
                        (json.dumps(left_out, sort_keys=True),),
                    )
                    self._db.execute("UPDATE meta SET value = '1' WHERE key = 'import_complete'")
            if last:
                self._import_done = True
                # Into the main file: a journal copied without its -wal (a backup, a move)
                # or one whose -wal is lost keeps its recipients.
                self._read(
                    "checkpoint the import",
                    lambda: self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
                )
                return ImportStats(written - duplicates, duplicates, skipped)

    def _build_indexes(self) -> int:
        """Create the secondary indexes (inside the import's last transaction).

        Returns how many duplicate addresses were removed to make the address unique.
        """
        db = self._db
        removed = 0
        db.execute("SAVEPOINT address_index")
        try:
            db.execute(_ADDRESS_INDEX)
        except sqlite3.IntegrityError:
            # Duplicates are rare: only then pay for finding them.
            db.execute("ROLLBACK TO address_index")
            db.execute("CREATE INDEX recipients_address_dups ON recipients (address, id)")
            removed = db.execute(
                "DELETE FROM recipients WHERE id NOT IN"
                " (SELECT min(id) FROM recipients GROUP BY address)"
            ).rowcount
            db.execute("DROP INDEX recipients_address_dups")
            db.execute(_ADDRESS_INDEX)
        db.execute("RELEASE address_index")
        for statement in _INDEXES:
            db.execute(statement)
        return removed

    # --- scheduler API ---------------------------------------------------------------------

    def fetch_due(self, domain: str, limit: int, *, now: float | None = None) -> list[Due]:
        """Claim up to ``limit`` recipients of ``domain`` due at ``now`` (in-doubt first).

        Claimed recipients are not fetched again until an outcome is recorded for them.
        """
        self._check_free()
        return self._fetch_due(domain, limit, now)

    def _fetch_due(self, domain: str, limit: int, now: float | None) -> list[Due]:
        self._check_imported()
        now = time.time() if now is None else now
        domain = domain.lower()
        query = (
            "SELECT id, address, domain, data, status, attempts, in_doubt FROM recipients"
            " WHERE status = ? AND domain = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, id LIMIT ?"
        )
        found: list[tuple[Any, ...]] = []
        # Claims need no fsync of their own: a kill -9 keeps them (the WAL is in the OS's
        # cache), and the next outcome commit makes them durable along with it.
        with self._write("claim due recipients", durable=False):
            for status in (Status.IN_DOUBT, Status.PENDING):
                if len(found) < limit:
                    found += self._db.execute(
                        query, (str(status), domain, now, limit - len(found))
                    ).fetchall()
            self._db.executemany(
                "UPDATE recipients SET claimed_at = ?, next_attempt_at = NULL WHERE id = ?",
                [(now, r[0]) for r in found],
            )
        return [
            Due(
                r[0],
                r[1],
                r[2],
                None if r[3] is None else json.loads(r[3]),
                Status(r[4]),
                r[5],
                r[6],
            )
            for r in found
        ]

    def due_domains(self, *, now: float | None = None) -> dict[str, int]:
        """Domains with recipients due at ``now``, with how many are due."""
        self._check_free()
        return self._due_domains(now)

    def _due_domains(self, now: float | None) -> dict[str, int]:
        self._check_imported()
        now = time.time() if now is None else now

        def q() -> dict[str, int]:
            counts: dict[str, int] = {}
            for status in (Status.IN_DOUBT, Status.PENDING):
                for domain, n in self._db.execute(
                    "SELECT domain, count(*) FROM recipients"
                    " WHERE status = ? AND next_attempt_at <= ? GROUP BY domain",
                    (str(status), now),
                ):
                    counts[domain] = counts.get(domain, 0) + n
            return counts

        return self._read("list due domains", q)

    def next_due_at(self) -> float | None:
        """The earliest time any unclaimed waiting recipient is due, or None."""
        self._check_free()
        return self._next_due_at()

    def _next_due_at(self) -> float | None:
        def q() -> float | None:
            row = self._db.execute(
                "SELECT min(next_attempt_at) FROM recipients"
                " WHERE status IN ('pending', 'in_doubt')"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return self._read("find the next due time", q)

    def waiting(self) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""
        self._check_free()
        return self._waiting()

    def _waiting(self) -> bool:
        return self._read(
            "look for waiting recipients",
            lambda: bool(
                self._db.execute(
                    "SELECT EXISTS (SELECT 1 FROM recipients"
                    " WHERE status = 'pending' OR status = 'in_doubt')"
                ).fetchone()[0]
            ),
        )

    def suppress_waiting(
        self, suppressed: Callable[[str], bool], *, now: float | None = None
    ) -> int:
        """Mark every unclaimed waiting recipient whose address is ``suppressed`` as such.

        For a suppression list that changed since the import (resume, or during a run).
        Claimed recipients are a sender's to check. Returns how many were marked.
        """
        self._check_free()
        return self._suppress_waiting(suppressed, now)

    def _suppress_waiting(self, suppressed: Callable[[str], bool], now: float | None) -> int:
        self._check_imported()
        now = time.time() if now is None else now
        cursor = self._read(
            "read waiting recipients",
            lambda: self._db.execute(
                "SELECT id, address FROM recipients"
                " WHERE (status = 'pending' OR status = 'in_doubt') AND claimed_at IS NULL"
            ),
        )
        ids: list[tuple[float, int]] = []
        try:
            while rows := self._read("read waiting recipients", lambda: cursor.fetchmany(10_000)):
                ids += [(now, rid) for rid, address in rows if suppressed(address)]
        finally:
            cursor.close()
        if ids:
            with self._write("mark suppressed recipients"):
                self._db.executemany(
                    "UPDATE recipients SET status = 'suppressed', next_attempt_at = NULL,"
                    " updated_at = ? WHERE id = ? AND claimed_at IS NULL"
                    " AND (status = 'pending' OR status = 'in_doubt')",
                    ids,
                )
        return len(ids)

    def record(self, recipient_id: int, outcome: Outcome, *, now: float | None = None) -> bool:
        """Record one outcome and commit it (outside a run; the writer batches during one).

        Returns whether it applied (False: unknown recipient or already final).
        """
        self._check_free()
        now = time.time() if now is None else now
        return self._apply([(recipient_id, outcome, now)])[0] == 1

    def retry_unrendered(self, *, now: float | None = None) -> int:
        """Make every ``not_rendered`` recipient pending again, due at ``now``.

        For a campaign fixed after its messages could not be made: they were never sent,
        so sending them now sends each once. Returns how many.
        """
        self._check_free()
        now = time.time() if now is None else now
        with self._write("requeue recipients not rendered"):
            return self._db.execute(
                "UPDATE recipients SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE status = 'not_rendered'",
                (now, now),
            ).rowcount

    def _apply(self, records: Sequence[tuple[int, Outcome, float]]) -> tuple[int, int]:
        """Apply outcomes in one transaction; returns how many applied, and expired."""
        applied = expired = 0
        select = "SELECT status, attempts, first_attempt_at FROM recipients WHERE id = ?"
        with self._write("record outcomes"):
            for rid, outcome, now in records:
                row = self._db.execute(select, (rid,)).fetchone()
                if row is None or not Status(row[0]).waiting:
                    continue  # a final recipient never changes again
                step = plan_step(
                    outcome,
                    status=Status(row[0]),
                    attempts=row[1],
                    first_attempt_at=row[2],
                    now=now,
                    policy=self.policy,
                    rng=self._rng,
                )
                if step.keeps_reply:
                    # Not an attempt: the last real reply stays (an expiry keeps it too).
                    self._db.execute(
                        "UPDATE recipients SET status = ?, first_attempt_at = ?,"
                        " next_attempt_at = ?, claimed_at = NULL, updated_at = ? WHERE id = ?",
                        (str(step.status), step.first_attempt_at, step.next_attempt_at, now, rid),
                    )
                else:
                    self._db.execute(
                        "UPDATE recipients SET status = ?, attempts = ?, first_attempt_at = ?,"
                        " last_attempt_at = ?, next_attempt_at = ?, claimed_at = NULL,"
                        " in_doubt = in_doubt + ?, code = ?, enhanced_code = ?, text = ?,"
                        " category = ?, updated_at = ? WHERE id = ?",
                        (
                            str(step.status),
                            step.attempts,
                            step.first_attempt_at,
                            now,
                            step.next_attempt_at,
                            step.in_doubt_added,
                            outcome.code,
                            outcome.enhanced_code,
                            outcome.text[:MAX_TEXT],
                            None if outcome.category is None else str(outcome.category),
                            now,
                            rid,
                        ),
                    )
                applied += 1
                expired += step.status is Status.EXPIRED
        return applied, expired

    # --- reports ---------------------------------------------------------------------------

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""
        self._check_free()

        def q() -> dict[Status, int]:
            counts = dict.fromkeys(Status, 0)
            for status, n in self._db.execute(
                "SELECT status, count(*) FROM recipients GROUP BY status"
            ):
                counts[Status(status)] = n
            return counts

        return self._read("count recipients", q)

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        """Recipients per domain and status (only non-zero statuses)."""
        self._check_free()

        def q() -> dict[str, dict[Status, int]]:
            out: dict[str, dict[Status, int]] = {}
            for domain, status, n in self._db.execute(
                "SELECT domain, status, count(*) FROM recipients GROUP BY domain, status"
            ):
                out.setdefault(domain, {})[Status(status)] = n
            return out

        return self._read("count recipients per domain", q)

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        """Recipients in ``statuses`` (default: bounced) per category of their last reply."""
        self._check_free()
        wanted = [str(s) for s in statuses]

        def q() -> dict[Category, int]:
            out: dict[Category, int] = {}
            marks = ", ".join("?" * len(wanted))
            for category, n in self._db.execute(
                f"SELECT coalesce(category, 'other'), count(*) FROM recipients"  # noqa: S608
                f" WHERE status IN ({marks}) GROUP BY 1",
                wanted,
            ):
                out[Category(category)] = n
            return out

        return self._read("count bounce categories", q)

    def in_doubt_total(self) -> int:
        """How many sends may have been duplicated (in-doubt events, all recipients)."""
        self._check_free()
        return self._read(
            "count in-doubt sends",
            lambda: int(self._db.execute("SELECT total(in_doubt) FROM recipients").fetchone()[0]),
        )

    def not_imported(self) -> dict[str, int]:
        """Rows of the recipients file left out of the journal, by reason (see import)."""
        self._check_free()

        def q() -> dict[str, int]:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'not_imported'").fetchone()
            return {} if row is None else {str(k): int(n) for k, n in json.loads(row[0]).items()}

        return self._read("read meta", q)

    def get(self, recipient_id: int) -> RecipientState | None:
        """One recipient's row."""
        self._check_free()

        def q() -> RecipientState | None:
            row = self._db.execute(
                f"SELECT {_STATE_COLUMNS} FROM recipients WHERE id = ?",  # noqa: S608
                (recipient_id,),
            ).fetchone()
            return None if row is None else _state(row)

        return self._read("read a recipient", q)

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        """Every recipient's row in id order (streamed), optionally only some statuses."""
        self._check_free()
        sql = f"SELECT {_STATE_COLUMNS} FROM recipients"  # noqa: S608
        args: list[str] = []
        if statuses is not None:
            args = [str(s) for s in statuses]
            sql += f" WHERE status IN ({', '.join('?' * len(args))})"
        sql += " ORDER BY id"
        cursor = self._read("export outcomes", lambda: self._db.execute(sql, args))
        try:
            while True:
                rows = self._read("export outcomes", lambda: cursor.fetchmany(1000))
                if not rows:
                    return
                yield from map(_state, rows)
        finally:
            cursor.close()


class JournalSet(_Reports):
    """Several shards' journals read as one campaign (``report`` and ``status`` merge them).

    Every journal is opened for reading; counts add up, exports concatenate (ids are per
    shard: a recipient's position in its shard).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise ValueError("no journal given")
        self.journals: list[Journal] = []
        #: Journals read without their lock because a run holds them (a moment's snapshot).
        self.live: list[Path] = []
        try:
            for path in paths:
                try:
                    self.journals.append(Journal.open(path, None))
                except JournalInUse:
                    self.journals.append(Journal.open_readonly(path))
                    self.live.append(Path(path))
        except BaseException:
            self.close()
            raise
        self.path = ", ".join(str(j.path) for j in self.journals)

    def close(self) -> None:
        for journal in self.journals:
            journal.close()

    def __enter__(self) -> JournalSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> dict[Status, int]:
        total = dict.fromkeys(Status, 0)
        for journal in self.journals:
            for status, n in journal.counts().items():
                total[status] += n
        return total

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        # A domain lives in one shard, but merging keeps this right if it did not.
        total: dict[str, dict[Status, int]] = {}
        for journal in self.journals:
            for domain, counts in journal.counts_by_domain().items():
                merged = total.setdefault(domain, {})
                for status, n in counts.items():
                    merged[status] = merged.get(status, 0) + n
        return total

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        wanted = tuple(statuses)
        total: dict[Category, int] = {}
        for journal in self.journals:
            for category, n in journal.counts_by_category(wanted).items():
                total[category] = total.get(category, 0) + n
        return total

    def in_doubt_total(self) -> int:
        return sum(j.in_doubt_total() for j in self.journals)

    def not_imported(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for journal in self.journals:
            for reason, n in journal.not_imported().items():
                total[reason] = total.get(reason, 0) + n
        return total

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        wanted = None if statuses is None else tuple(statuses)
        for journal in self.journals:
            yield from journal.iter_states(wanted)


class JournalInUse(JournalError):
    """Another process holds the journal (a run is going)."""


def _lock_holder(fd: int) -> int | None:
    """The pid holding an flock on ``fd``'s file, from Linux's /proc/locks (None elsewhere)."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


class JournalPeek:
    """A read-only look into a journal, usable while another connection writes to it.

    WAL mode lets a reader see the last committed state without blocking the writer, and it
    takes no lock that a run would notice. ``bulksend status`` uses it too, since the running
    process holds the journal's lock.

    ``check`` refuses a damaged journal, or one that lost history, as :meth:`Journal.open`
    does (``quick_check``: a fraction of a second per million recipients); a run's own
    progress display leaves it off, since the run checked the journal when it opened it.
    """

    def __init__(self, path: Path, *, check: bool = False) -> None:
        self.path = path
        if not path.is_file():
            raise JournalError(f"there is no journal at {str(path)!r}")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        where = f"journal {str(path)!r}"
        # The state file first: the run commits, then records, so the journal read after it
        # holds at least what it records.
        state = _read_state(path) if check else None
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read journal {str(path)!r}: {exc}") from None
        try:
            if app_id != APPLICATION_ID:
                raise JournalError(f"{str(path)!r} is not a bulksend journal")
            if check:
                _check_damage(self._db, where, thorough=False)
                _check_history(where, path, state, self._meta, fresh=False)
        except BaseException:
            self._db.close()
            raise

    def _query(self, sql: str, args: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            if _is_damage(exc):
                raise _damaged(f"journal {str(self.path)!r}", str(exc)) from None
            raise JournalError(f"cannot read journal {str(self.path)!r}: {exc}") from None

    def counts(self) -> dict[str, int]:
        """Recipients per status (every status present)."""
        counts = {s.value: 0 for s in Status}
        for status, n in self._query("SELECT status, count(*) FROM recipients GROUP BY status"):
            counts[str(status)] = int(n)
        return counts

    def import_complete(self) -> bool:
        """Whether the recipients import finished (a stopped one resumes on the next run)."""
        rows = self._query("SELECT value FROM meta WHERE key = 'import_complete'")
        return bool(rows) and rows[0][0] == "1"

    def waiting_by_domain(self) -> dict[str, int]:
        """Recipients still waiting (pending or in doubt) per domain."""
        rows = self._query(
            "SELECT domain, count(*) FROM recipients"
            " WHERE status IN ('pending', 'in_doubt') GROUP BY domain"
        )
        return {str(d): int(n) for d, n in rows}

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalPeek:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_encode_json: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _import_rows(
    items: Sequence[NewRecipient | str], first_id: int, now: float
) -> Iterator[tuple[Any, ...]]:
    # The import's inner loop: kept lean (1M rows must import in seconds).
    pending = Status.PENDING
    encode = _encode_json
    for rid, item in enumerate(items, first_id):
        r = NewRecipient(item) if type(item) is str else item
        assert isinstance(r, NewRecipient)
        address = r.address
        local, _, given_domain = address.rpartition("@")
        domain = given_domain.lower()
        if domain != given_domain:
            address = f"{local}@{domain}"
        data = None if r.data is None else encode(r.data)
        if r.status is pending:
            if not local or not domain:
                raise ValueError(
                    f"recipient {rid}: {r.address!r} has no domain; import it as invalid"
                )
            yield (rid, address, domain, data, "pending", now, now, r.reason or None)
        elif r.status in (Status.SUPPRESSED, Status.INVALID):
            yield (rid, r.address, domain, data, r.status.value, None, now, r.reason or None)
        else:
            raise ValueError(f"recipient {rid}: cannot import with status {r.status}")


# --- the writer task -----------------------------------------------------------------------


@dataclass(slots=True)
class _Record:
    recipient_id: int
    outcome: Outcome
    now: float


@dataclass(slots=True)
class _Flush:
    done: trio.Event = field(default_factory=trio.Event)
    error: JournalError | None = None


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Outcomes(Protocol):
    def labels(self, *values: str) -> _Counter: ...


class JournalMetrics(Protocol):
    """What the writer reports to (``bulksend.metrics.Metrics`` fits; duck-typed, so the
    journal does not depend on prometheus)."""

    @property
    def journal_commit_seconds(self) -> _Observer: ...

    @property
    def recipients(self) -> _Outcomes:
        """Recipient outcomes by ``outcome``: the writer counts "expired" (it decides expiry
        from ``max_age``; no attempt does) once the expiry is committed."""


class JournalWriter:
    """The one task that writes outcomes during a run, in batched transactions.

    Start ``run`` with ``nursery.start``; record with :meth:`record`, make durable with
    :meth:`flush`, and end with :meth:`aclose` (commits what is queued, then ``run`` returns).
    A write failure makes ``run`` raise :class:`JournalError`, and every later call too.

    ``offload`` (default) runs database work in a worker thread so that an ``fsync`` or a
    large query never stalls the event loop; ``offload=False`` runs it inline (a 500-row
    commit takes milliseconds), which keeps tests under trio's autojump ``MockClock``
    deterministic: autojump treats a task waiting for a thread as idle and jumps the clock.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        batch_size: int = 500,
        interval: float = 0.2,
        buffer: int = 4096,
        offload: bool = True,
        metrics: JournalMetrics | None = None,
    ) -> None:
        self.journal = journal
        self.offload = offload
        self.metrics = metrics
        self.batch_size = batch_size
        self.interval = interval
        self._send, self._recv = trio.open_memory_channel[_Record | _Flush](buffer)
        self._lock = trio.Lock()
        self._failure: JournalError | None = None
        self._started = False
        #: Outcomes committed, commits made, and outcomes ignored (unknown or final recipient).
        self.committed = 0
        self.batches = 0
        self.ignored = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit outcomes in batches until :meth:`aclose`; raise JournalError on failure."""
        if self._started:
            raise RuntimeError("JournalWriter.run called twice")
        self._started = True
        self._check_failed()
        self.journal._check_free()
        self.journal._owner = self
        task_status.started()
        try:
            await self._loop()
        except JournalError as e:
            self._failure = e
            raise
        finally:
            self._stop()
            self.journal._owner = None

    async def _loop(self) -> None:
        batch: list[_Record] = []
        flushes: list[_Flush] = []
        closed = False
        while not closed:
            try:
                try:
                    item = await self._recv.receive()
                except trio.EndOfChannel:
                    return
                _add(item, batch, flushes)
                with trio.move_on_after(self.interval):
                    while len(batch) < self.batch_size and not flushes:
                        try:
                            item = await self._recv.receive()
                        except trio.EndOfChannel:
                            closed = True
                            break
                        _add(item, batch, flushes)
            except trio.Cancelled:
                # Aborting: still commit what is in hand (a few ms, shielded).
                await self._commit(batch, flushes)
                raise
            await self._commit(batch, flushes)
            batch, flushes = [], []

    async def _commit(self, batch: list[_Record], flushes: list[_Flush]) -> None:
        with trio.CancelScope(shield=True):
            try:
                if batch:
                    records = [(r.recipient_id, r.outcome, r.now) for r in batch]
                    applied, expired, seconds = await self._call(self._timed_apply, records)
                    if self.metrics is not None:
                        self.metrics.journal_commit_seconds.observe(seconds)
                        if expired:
                            self.metrics.recipients.labels("expired").inc(expired)
                    self.committed += applied
                    self.ignored += len(batch) - applied
                    self.batches += 1
            except JournalError as e:
                for f in flushes:
                    f.error = e
                    f.done.set()
                raise
            for f in flushes:
                f.done.set()

    def _timed_apply(self, records: Sequence[tuple[int, Outcome, float]]) -> tuple[int, int, float]:
        start = time.perf_counter()
        applied, expired = self.journal._apply(records)
        return applied, expired, time.perf_counter() - start

    def _stop(self) -> None:
        # Fail the flushes still queued, then close: later sends see a closed channel.
        error = self._failure or JournalError("the journal writer stopped")
        while True:
            try:
                item = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, _Flush):
                item.error = error
                item.done.set()
        self._recv.close()

    def _check_failed(self) -> None:
        if self._failure is not None:
            raise JournalError(f"the journal writer failed: {self._failure}") from self._failure

    def _stopped(self) -> JournalError:
        if self._failure is not None:
            return JournalError(f"the journal writer failed: {self._failure}")
        return JournalError("the journal writer is closed; nothing more is recorded")

    async def record(
        self, recipient_id: int, outcome: Outcome, *, now: float | None = None
    ) -> None:
        """Queue an outcome for the next batch (durable only after :meth:`flush`)."""
        self._check_failed()
        item = _Record(recipient_id, outcome, time.time() if now is None else now)
        try:
            await self._send.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._stopped() from None

    async def flush(self) -> None:
        """Return once every outcome recorded before this call is committed.

        Raises:
            JournalError: the commit failed or the writer stopped.
        """
        self._check_failed()
        marker = _Flush()
        try:
            await self._send.send(marker)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._stopped() from None
        await marker.done.wait()
        if marker.error is not None:
            raise marker.error

    async def aclose(self) -> None:
        """Stop taking outcomes; ``run`` commits those queued and returns."""
        await self._send.aclose()

    async def fetch_due(self, domain: str, limit: int, *, now: float | None = None) -> list[Due]:
        """Claim due recipients of ``domain`` (see :meth:`Journal.fetch_due`)."""
        self._check_failed()
        return await self._call(self.journal._fetch_due, domain, limit, now)

    async def due_domains(self, *, now: float | None = None) -> dict[str, int]:
        """Domains with due recipients and their counts (see :meth:`Journal.due_domains`)."""
        self._check_failed()
        return await self._call(self.journal._due_domains, now)

    async def next_due_at(self) -> float | None:
        """The earliest due time of any unclaimed waiting recipient."""
        self._check_failed()
        return await self._call(self.journal._next_due_at)

    async def waiting(self) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""
        self._check_failed()
        return await self._call(self.journal._waiting)

    async def suppress_waiting(self, suppressed: Callable[[str], bool]) -> int:
        """See :meth:`Journal.suppress_waiting`."""
        self._check_failed()
        return await self._call(self.journal._suppress_waiting, suppressed, None)

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        async with self._lock:
            if self.offload:
                return await trio.to_thread.run_sync(fn, *args)
            return fn(*args)


def _add(item: _Record | _Flush, batch: list[_Record], flushes: list[_Flush]) -> None:
    if isinstance(item, _Flush):
        flushes.append(item)
    else:
        batch.append(item)
