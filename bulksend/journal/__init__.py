"""The journal: the durable recipient queue and outcome log of one campaign run.

How this works
==============

One SQLite file per campaign run (per shard), in WAL mode with ``synchronous=FULL``.

Schema (``PRAGMA application_id`` marks the file as ours, ``PRAGMA user_version`` is the
schema version; anything else is refused with a :class:`JournalError`, never re-created,
except that a run upgrades version 2 in place: :mod:`bulksend.journal.upgrade`):

- ``meta(key, value)``: the campaign identity (JSON of part name -> digest, so a refusal can
  name the part that changed), a stable ``campaign_id`` fixed at creation (Message-IDs are
  derived from it, so it survives a forced resume), the import position and completion flag,
  and one ``warmup:<source>`` row per warming egress source (its day 1 and the day's count,
  JSON: :mod:`bulksend.egress.warmup`).
- ``recipients``: one row per recipient. ``id`` is the recipient's 1-based position in the
  recipients file: its stable identity across resumes. ``address`` (domain lower-cased, local
  part as given, RFC 5321 §2.4), ``domain``, ``data`` (merge data as JSON), ``status``,
  ``attempts``, ``in_doubt`` (how many times it was possibly sent without a reply),
  ``next_attempt_at``, ``claimed_at``, first/last attempt and update times, and the last
  reply: ``code``, ``enhanced_code``, ``text``, ``category``.

States: exactly one ``status`` per recipient, enforced by a CHECK constraint:
``pending`` and ``in_doubt`` are *waiting* (will be sent); ``delivered``, ``bounced``,
``expired``, ``suppressed``, ``invalid`` and ``cancelled`` (an operator's ``bulksend ctl
cancel``) are final and never sent again. ``not_rendered``
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
stopped (a batch is all or nothing). Reading overlaps writing: the caller's thread reads and
turns rows into JSON (merge data with msgspec), a second thread inserts them, 10,000 rows a
statement through ``json_each`` (SQLite runs it without the GIL; a chunk holding a NUL
character, which SQLite's JSON functions would cut, goes row by row), with at most one chunk
waiting in between, so memory stays flat. The secondary indexes (unique address, due,
claimed) are built once, in the last transaction: building them at the end is about twice
as fast as maintaining them per row. An address seen twice keeps its first position;
nothing is sent before the import is complete.

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

Batching: during a run one :class:`JournalWriter` task holds the store (the synchronous
:class:`Journal` methods refuse to run meanwhile; the writer passes itself as ``owner``).
Senders append outcomes to a plain list (``add``: no await); the writer swaps it for an empty
one and commits it in one transaction per batch (``interval`` seconds after the first outcome
of a batch, or ``batch_size`` outcomes, whichever comes first). A batch is applied
set-based: one ``SELECT`` of the batch's rows, the steps planned in order
(:func:`plan_step`, pure), then one ``executemany`` per kind of update; the rows are exactly
those one outcome at a time would leave. Commits and scheduler queries run in a worker
thread (``trio.to_thread``) under one ``trio.Lock``, so a slow ``fsync`` or a large
``GROUP BY`` never stalls the event loop and the connection (``check_same_thread=False``) is
never used by two threads at once. ``await writer.flush()`` returns once every outcome
recorded before it is committed: nothing counts as delivered before that.

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

Layout
======

Imports point one way, from the pure pieces to the store and its users:
:mod:`~bulksend.journal.outcomes` (the state machine and retry schedule, pure) <-
:mod:`~bulksend.journal.records` <- :mod:`~bulksend.journal.protocol` (what a store offers:
:class:`JournalReader` for reports, :class:`JournalStore` for the writer; a PostgreSQL store
implements the same two) and :mod:`~bulksend.journal.schema`,
:mod:`~bulksend.journal.integrity`, :mod:`~bulksend.journal.identity` <-
:mod:`~bulksend.journal.connection` (transactions, the state file) <-
:mod:`~bulksend.journal.opening` (lock, checks, crash recovery) and
:mod:`~bulksend.journal.load` (the import) <- :mod:`~bulksend.journal.store` (the SQLite
:class:`Journal`) <- :mod:`~bulksend.journal.writer` (the async front during a run) and
:mod:`~bulksend.journal.reports` (the tally, exports, the report table, :class:`JournalSet`,
:class:`JournalPeek`).
What came back after sending (later bounces, complaints, unsubscribes) is kept beside the
recipients, one row per recipient and kind: :mod:`~bulksend.journal.feedback` (the kinds,
pure) and :mod:`~bulksend.journal.feedback_log` (written by ``bulksend inbound`` and
``unsubscribe-server`` while a run may hold the journal).

PostgreSQL
==========

A journal may live in PostgreSQL instead (``--journal
postgresql://user@host:port/db?campaign=NAME``; the ``postgres`` extra installs psycopg):
:mod:`~bulksend.journal.postgres` (one schema per campaign, claims as leases that many
workers share with ``SELECT ... FOR UPDATE SKIP LOCKED``, an expired lease back in doubt),
:mod:`~bulksend.journal.postgres_load` (``COPY`` import),
:mod:`~bulksend.journal.postgres_reports` (the report queries) and
:mod:`~bulksend.journal.postgres_schema` (tables, set-based updates, URL). It plans
outcomes with the same :func:`~bulksend.journal.store.plan_updates` and shares
:class:`~bulksend.journal.store.StoreBase` with the SQLite :class:`Journal`;
:func:`bulksend.journal.backend.open_journal` opens either by its path or URL.
"""

from bulksend.journal.identity import campaign_identity, hash_files
from bulksend.journal.opening import JournalInUse
from bulksend.journal.outcomes import Category, Kind, Outcome, Status, Step, plan_step, retry_delay
from bulksend.journal.protocol import JournalReader, JournalStore, OutcomeRecord
from bulksend.journal.records import CampaignTally, Due, ImportStats, NewRecipient, RecipientState
from bulksend.journal.reports import (
    EXPORT_FIELDS,
    JournalPeek,
    JournalSet,
    campaign_tally,
    export_csv,
    export_jsonl,
    write_report,
)
from bulksend.journal.schema import SCHEMA_VERSION
from bulksend.journal.store import Journal
from bulksend.journal.writer import JournalMetrics, JournalWriter

__all__ = [
    "EXPORT_FIELDS",
    "SCHEMA_VERSION",
    "CampaignTally",
    "Category",
    "Due",
    "ImportStats",
    "Journal",
    "JournalInUse",
    "JournalMetrics",
    "JournalPeek",
    "JournalReader",
    "JournalSet",
    "JournalStore",
    "JournalWriter",
    "Kind",
    "NewRecipient",
    "Outcome",
    "OutcomeRecord",
    "RecipientState",
    "Status",
    "Step",
    "campaign_identity",
    "campaign_tally",
    "export_csv",
    "export_jsonl",
    "hash_files",
    "plan_step",
    "retry_delay",
    "write_report",
]
