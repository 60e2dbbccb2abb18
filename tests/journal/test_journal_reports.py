"""Reports over the JournalReader protocol: the peek's counts, the report table, shards as one,
and the one ownership guard."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bulksend.journal import (
    Journal,
    JournalPeek,
    JournalSet,
    JournalWriter,
    NewRecipient,
    Outcome,
    Status,
    write_report,
)
from tests.journal.journal_helpers import IDENTITY, T0, addresses

Opener = Callable[..., Journal]


@pytest.mark.sqlite_only
def test_the_peek_counts_by_status_like_the_journal(journal: Journal) -> None:
    journal.record(1, Outcome.delivered(), now=T0)
    with JournalPeek(journal.path) as peek:
        counts = peek.counts()
    assert counts == journal.counts()
    assert all(type(status) is Status for status in counts)
    assert counts[Status.DELIVERED] == 1


def shard(path: Path, domain: str, n: int) -> None:
    with Journal.open(path, IDENTITY, now=T0) as j:
        j.import_recipients(
            [NewRecipient(a) for a in addresses(n, (domain,))] + [NewRecipient("x@y")], now=T0
        )
        j.record(1, Outcome.bounced(550, "5.1.1", "no such user"), now=T0)


def test_the_report_table_of_shards_is_their_sum(tmp_path: Path) -> None:
    shard(tmp_path / "one", "a.example", 3)
    shard(tmp_path / "two", "b.example", 5)
    out = io.StringIO()
    with JournalSet([tmp_path / "one", tmp_path / "two"]) as both:
        write_report(both, out, top_domains=1)
    text = out.getvalue()
    assert "bounced                2  20.0%" in text.splitlines()
    assert "recipients file: 10 rows, 10 to send, 0 rejected" in text
    assert "domains (3; the largest 1)" in text
    assert "b.example           5          0        1        0        4      0" in text
    assert "... and 2 more domains" in text


async def test_only_the_writer_holding_the_journal_uses_it(journal: Journal) -> None:
    first, second = JournalWriter(journal, offload=False), JournalWriter(journal, offload=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            with pytest.raises(RuntimeError, match="JournalWriter"):
                await second.run()
            with pytest.raises(RuntimeError, match="JournalWriter"):
                journal.apply([(1, Outcome.delivered(), T0)], owner=second)
            with pytest.raises(RuntimeError, match="JournalWriter"):
                journal.counts()
            assert journal.apply([(1, Outcome.delivered(), T0)], owner=first) == (1, 0)
            await first.aclose()
    assert journal.counts()[Status.DELIVERED] == 1
