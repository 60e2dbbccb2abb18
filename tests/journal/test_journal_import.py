"""The import: rows exactly as given (merge data, NUL characters), batches all or nothing."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bulksend.journal import Journal, NewRecipient, Status, load
from tests.journal.journal_helpers import T0, addresses

Opener = Callable[..., Journal]


def test_merge_data_comes_back_as_it_went_in(open_journal: Opener) -> None:
    data: list[dict[str, Any]] = [
        {"first_name": "Zoë", "quote": 'say "hi"\\\n', "nul": "a\x00b", "emoji": "🙂"},
        {"n": 3, "x": 1.5, "big": 2**70, "nan": math.nan, "list": [1, "a", None], "ok": True},
        {},
    ]
    j = open_journal()
    j.import_recipients([NewRecipient(f"u{i}@a.example", d) for i, d in enumerate(data)], now=T0)
    got = [d.data for d in j.fetch_due("a.example", 10, now=T0)]
    assert got[0] == data[0]
    assert got[2] == data[2]
    assert {k: v for k, v in got[1].items() if k != "nan"} == {  # type: ignore[union-attr]
        k: v for k, v in data[1].items() if k != "nan"
    }
    assert math.isnan(got[1]["nan"])  # type: ignore[index]


@pytest.mark.sqlite_only
def test_text_with_nul_characters_is_kept_whole(open_journal: Opener) -> None:
    # SQLite's JSON functions end a string at a NUL: such rows must still arrive whole.
    j = open_journal()
    j.import_recipients(
        [
            NewRecipient("plain@a.example"),
            NewRecipient("bad\x00address@a.example", None, Status.INVALID, "odd\x00reason"),
        ],
        now=T0,
    )
    rows = sqlite3.connect(j.path).execute("SELECT address, text FROM recipients").fetchall()
    assert rows == [("plain@a.example", None), ("bad\x00address@a.example", "odd\x00reason")]


def test_an_import_stopped_inside_a_batch_keeps_only_whole_batches(
    open_journal: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "CHUNK", 3)  # a batch of 7 crosses the threads in 3 chunks
    items = addresses(25)

    def stopping() -> Iterator[str]:
        for i, a in enumerate(items):
            if i == 12:
                raise KeyboardInterrupt  # as a cancelled run's progress callback raises
            yield a

    j = open_journal()
    with pytest.raises(KeyboardInterrupt):
        j.import_recipients(stopping(), now=T0, batch_size=7)
    assert not j.import_complete
    assert [s.id for s in j.iter_states()] == list(range(1, 8))
    stats = j.import_recipients(items, now=T0, batch_size=7)
    assert (stats.skipped, stats.imported) == (7, 18)
    assert [s.address for s in j.iter_states()] == items
