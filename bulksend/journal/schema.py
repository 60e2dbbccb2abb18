"""The journal's SQLite schema (``PRAGMA application_id`` and ``user_version`` mark it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from bulksend.journal.feedback import FeedbackKind
from bulksend.journal.outcomes import WAITING, Category, Status

SCHEMA_VERSION: Final = 3  # 2: the not_rendered status; 3: cancelled, schedule (journal.upgrade)
#: ``PRAGMA application_id`` of a bulksend journal ("bksn").
APPLICATION_ID: Final = 0x626B736E
#: Longest reply text kept per recipient; a multi-line reply can be long.


def _one_of(column: str, values: Iterable[str]) -> str:
    # An OR chain, not IN (...): SQLite rebuilds an IN list's lookup table for every row a
    # CHECK runs on, which made the import 50% slower.
    return "(" + " OR ".join(f"{column} = '{v}'" for v in values) + ")"


#: What came back after sending (:mod:`bulksend.journal.feedback`): one row per recipient and
#: kind. Added without a version change: a journal from before gets it when next opened for
#: writing (:func:`~bulksend.journal.opening.add_feedback_table`), or by ``bulksend inbound``.
FEEDBACK_TABLE: Final = f"""CREATE TABLE feedback (
    recipient_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK {_one_of("kind", FeedbackKind)},
    category TEXT CHECK (category IS NULL OR {_one_of("category", Category)}),
    status TEXT,
    code INTEGER,
    source TEXT NOT NULL,
    detail TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    count INTEGER NOT NULL CHECK (count > 0),
    PRIMARY KEY (recipient_id, kind)
) WITHOUT ROWID"""

#: The migration step (an existing journal, perhaps while a run holds it).
ADD_FEEDBACK_TABLE: Final = FEEDBACK_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)

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

{FEEDBACK_TABLE};

PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


#: ``status`` is one of :data:`WAITING`, for queries (the CHECK above keeps its own text:
#: an existing journal's schema must match it byte for byte).
WAITING_SQL: Final = "status IN (" + ", ".join(f"'{s}'" for s in WAITING) + ")"


# Built when the import completes (see Journal.import_recipients).
_ADDRESS_INDEX: Final = "CREATE UNIQUE INDEX recipients_address ON recipients (address)"
_INDEXES: Final = (
    "CREATE INDEX recipients_due ON recipients (status, domain, next_attempt_at)",
    "CREATE INDEX recipients_claimed ON recipients (claimed_at) WHERE claimed_at IS NOT NULL",
)
