"""The PostgreSQL journal's schema, its set-based outcome updates and its URL (see
:mod:`bulksend.journal.postgres`).

One schema per campaign, ``bulksend_<campaign>``, holding the same two tables as a SQLite
journal plus the lease columns of ``recipients``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bulksend.errors import JournalError
from bulksend.journal.feedback import FeedbackKind
from bulksend.journal.outcomes import WAITING, Category, Status
from bulksend.store_urls import read_password_file, split_store_url, without_query

#: The version of this schema, in ``meta.schema_version``; another is refused.
PG_SCHEMA_VERSION: Final = 2  # 2: cancelled, schedule (UPGRADE_1_TO_2)

#: Seconds a claim is leased for (renewed while its worker runs; ``worker --lease``).
DEFAULT_LEASE: Final = 300.0


class NoJournal(JournalError):
    """There is no journal of that campaign (opened for reading)."""


_CAMPAIGN: Final = re.compile(r"[a-z0-9_]{1,48}")
#: Campaign names whose schema is another's: ``bulksend_suppression`` is the suppression
#: store's (:mod:`bulksend.suppression.postgres`), which discarding a campaign would drop.
_RESERVED: Final = frozenset({"suppression"})


def _in(values: object) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"  # type: ignore[attr-defined]


WAITING_IN: Final = "status IN " + _in(WAITING)

#: ``meta`` and ``recipients`` as in the SQLite journal, plus the lease: who holds a claimed
#: row (``lease_holder``, a worker id) and until when (``lease_expires_at``, epoch s).
TABLES: Final = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    f"""CREATE TABLE recipients (
    id bigint PRIMARY KEY,
    address text NOT NULL,
    domain text NOT NULL,
    data text,
    status text NOT NULL CHECK (status IN {_in(Status)}),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    in_doubt integer NOT NULL DEFAULT 0 CHECK (in_doubt >= 0),
    next_attempt_at double precision,
    claimed_at double precision,
    lease_holder text,
    lease_expires_at double precision,
    first_attempt_at double precision,
    last_attempt_at double precision,
    updated_at double precision NOT NULL,
    code integer,
    enhanced_code text,
    text text,
    category text CHECK (category IS NULL OR category IN {_in(Category)}),
    CHECK (CASE WHEN {WAITING_IN}
                THEN (next_attempt_at IS NULL) <> (claimed_at IS NULL)
                ELSE next_attempt_at IS NULL AND claimed_at IS NULL END),
    CHECK ((claimed_at IS NULL) = (lease_holder IS NULL)
           AND (claimed_at IS NULL) = (lease_expires_at IS NULL))
)""",
)

#: What came back after sending, as in the SQLite journal; created by a writer (a run or
#: ``bulksend inbound``) when missing: the migration step of journals from before it.
FEEDBACK_TABLE: Final = f"""CREATE TABLE IF NOT EXISTS feedback (
    recipient_id bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN {_in(FeedbackKind)}),
    category text CHECK (category IS NULL OR category IN {_in(Category)}),
    status text,
    code integer,
    source text NOT NULL,
    detail text NOT NULL,
    first_at double precision NOT NULL,
    last_at double precision NOT NULL,
    count integer NOT NULL CHECK (count > 0),
    PRIMARY KEY (recipient_id, kind)
)"""

#: Built when the import completes, as in the SQLite journal.
#: Version 1 -> 2, when a run opens the journal: ``status`` may be ``cancelled`` too, and
#: ``category`` ``schedule``.
UPGRADE_1_TO_2: Final = (
    "ALTER TABLE recipients DROP CONSTRAINT recipients_status_check,"
    f" ADD CONSTRAINT recipients_status_check CHECK (status IN {_in(Status)}),"
    " DROP CONSTRAINT recipients_category_check,"
    " ADD CONSTRAINT recipients_category_check"
    f" CHECK (category IS NULL OR category IN {_in(Category)})",
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
)

ADDRESS_INDEX: Final = "CREATE UNIQUE INDEX recipients_address ON recipients (address)"
INDEXES: Final = (
    "CREATE INDEX recipients_due ON recipients (status, domain, next_attempt_at)",
    "CREATE INDEX recipients_lease ON recipients (lease_expires_at)"
    " WHERE lease_expires_at IS NOT NULL",
    "CREATE INDEX recipients_holder ON recipients (lease_holder) WHERE lease_holder IS NOT NULL",
)


#: What a claimed row's release sets (an outcome, an expired lease).
RELEASE_SET: Final = "claimed_at = NULL, lease_holder = NULL, lease_expires_at = NULL"

#: ``plan_updates``' rows, one array a column.
KEPT_SQL: Final = f"""
UPDATE recipients r SET status = u.status, first_attempt_at = u.first_attempt_at,
    next_attempt_at = u.next_attempt_at, {RELEASE_SET}, updated_at = u.updated_at
FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[], %s::bigint[])
    AS u(status, first_attempt_at, next_attempt_at, updated_at, id)
WHERE r.id = u.id
"""  # noqa: S608
REPLIED_SQL: Final = f"""
UPDATE recipients r SET status = u.status, attempts = u.attempts,
    first_attempt_at = u.first_attempt_at, last_attempt_at = u.last_attempt_at,
    next_attempt_at = u.next_attempt_at, {RELEASE_SET}, in_doubt = r.in_doubt + u.in_doubt,
    code = u.code, enhanced_code = u.enhanced_code, text = u.text, category = u.category,
    updated_at = u.updated_at
FROM unnest(%s::text[], %s::int[], %s::float8[], %s::float8[], %s::float8[], %s::int[],
            %s::int[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::bigint[])
    AS u(status, attempts, first_attempt_at, last_attempt_at, next_attempt_at, in_doubt,
         code, enhanced_code, text, category, updated_at, id)
WHERE r.id = u.id
"""  # noqa: S608


@dataclass(frozen=True, slots=True)
class Location:
    """Where a PostgreSQL journal is: the server (a libpq URL without our parameters), the
    campaign (its schema) and, optionally, a file holding the password."""

    conninfo: str
    campaign: str
    password_file: Path | None

    @property
    def schema(self) -> str:
        return f"bulksend_{self.campaign}"

    def __str__(self) -> str:
        return f"{self.conninfo}{'&' if '?' in self.conninfo else '?'}campaign={self.campaign}"


def parse_url(url: str) -> Location:
    """``postgresql://user@host:port/db?campaign=NAME[&password_file=PATH]``.

    Other query parameters (``sslmode``, ...) go to libpq as they are. The password comes
    from ``password_file``, or from libpq's own ``PGPASSWORD``/``PGPASSFILE``: never from the
    URL, which shows up in process lists, shell history and logs.

    Raises:
        JournalError: a password in the URL, no or a bad campaign name.
    """
    try:
        parts, query, password_file = split_store_url(url)
    except ValueError:
        raise JournalError(
            "a PostgreSQL journal URL must not hold a password (it would show in process "
            "lists and logs): use password_file=PATH, PGPASSFILE or PGPASSWORD"
        ) from None
    campaigns = [v for k, v in query if k == "campaign"]
    host = parts.hostname or "?"
    if len(campaigns) != 1 or not _CAMPAIGN.fullmatch(campaigns[0]):
        raise JournalError(
            f"PostgreSQL journal on {host}: give the campaign once, as ?campaign=NAME "
            "(1 to 48 of a-z, 0-9 and _)"
        )
    if campaigns[0] in _RESERVED:
        raise JournalError(
            f"PostgreSQL journal on {host}: ?campaign={campaigns[0]} is taken (its schema "
            f"bulksend_{campaigns[0]} is the suppression store's); choose another name"
        )
    return Location(without_query(url, "campaign", "password_file"), campaigns[0], password_file)


def read_password(location: Location) -> str | None:
    """The password from ``password_file`` (first line), or None: libpq finds its own.

    Raises:
        JournalError: the file cannot be read.
    """
    if location.password_file is None:
        return None
    try:
        return read_password_file(location.password_file)
    except OSError as e:
        raise JournalError(
            f"cannot read the PostgreSQL password file {str(location.password_file)!r}: "
            f"{e.strerror}"
        ) from None
