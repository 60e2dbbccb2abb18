"""The records the journal takes and gives: recipients to import, due recipients, a
recipient's row, import statistics and the campaign tally.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from bulksend.journal.outcomes import Category, Status
from bulksend.text import printable


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
            "time": iso_time(self.updated_at),
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


def iso_time(t: float) -> str:
    """``t`` (Unix seconds) as the exports write times: ISO 8601, UTC, to the second."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


_encode_json: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_encode_fast: Final = msgspec.json.Encoder().encode


def _encode_data(data: Mapping[str, Any]) -> str:
    """A recipient's merge data as compact JSON text.

    Text fields only (every CSV row) go through msgspec, 8x faster and byte for byte the
    standard library's output; anything else through the standard library (msgspec would
    write a NaN as ``null``).
    """
    for value in data.values():
        if type(value) is not str:
            return _encode_json(data)
    return _encode_fast(data).decode()


def _decode_data(text: str) -> dict[str, Any]:
    """Merge data back from :func:`_encode_data`'s JSON (msgspec; the standard library for
    what msgspec refuses, such as ``NaN``)."""
    try:
        value: dict[str, Any] = msgspec.json.decode(text)
    except msgspec.MsgspecError:
        value = json.loads(text)
    return value


def shard_placement(raw: str | None, import_position: int) -> dict[str, int] | None:
    """A shard journal's recorded placement of the largest sites (its meta
    ``shard_placement``, JSON): ``{}`` for an import begun by hash before placements were
    recorded; None for an import not begun."""
    if raw is not None:
        return {str(site): int(index) for site, index in json.loads(raw).items()}
    return {} if import_position > 0 else None
