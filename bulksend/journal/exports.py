"""Reports shared by one journal and a set of shard journals: the tally and the CSV and
JSON Lines exports, all built on ``iter_states``.
"""

from __future__ import annotations

import abc
import csv
import json
from collections.abc import Iterable, Iterator
from typing import Final, TextIO

from bulksend.journal.outcomes import Status
from bulksend.journal.records import CampaignTally, RecipientState


def _csv_safe(value: object) -> object:
    # Reply text comes from remote servers: keep a spreadsheet from reading it as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


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
