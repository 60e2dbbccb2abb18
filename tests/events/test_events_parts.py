"""The event stream's parts without a run: the schema, the signature, the spool's bound."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from bulksend.events.schema import event
from bulksend.events.spool import Spool
from bulksend.events.stream import sign
from bulksend.journal import Category, Due, Outcome, Status

DUE = Due(7, "a@x.test", "x.test", None, Status.PENDING, 0, 0)


def test_events_of_outcomes() -> None:
    bounced = event("c1", DUE, Outcome.bounced(550, "5.1.1", "no", Category.BAD_MAILBOX), "x", 0.0)
    assert bounced is not None
    assert {k: bounced[k] for k in ("v", "event", "time", "recipient", "category")} == {
        "v": 1,
        "event": "bounced",
        "time": "1970-01-01T00:00:00.000Z",
        "recipient": 7,
        "category": "bad_mailbox",
    }
    expired = event("c1", DUE, Outcome.stopped("stop_at"), "x", 0.0)
    assert expired is not None
    assert (expired["event"], expired["category"]) == ("expired", "schedule")
    assert event("c1", DUE, Outcome.throttled(5.0), "x", 0.0) is None  # our own pacing
    again = event("c1", DUE, Outcome.delivered(), "x", 0.0)
    assert again is not None and again["event_id"] != bounced["event_id"]


def test_signature_is_hmac_sha256_over_time_dot_body() -> None:
    header = sign(b"k", 1700000000, b'{"v":1}')
    expected = hmac.new(b"k", b'1700000000.{"v":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_the_spool_is_bounded_ordered_private_and_outlives_the_process(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=10)
    assert spool.put(b"aaaa") and spool.put(b"bbbb")
    assert not spool.put(b"ccc")  # 11 bytes: refused, the disk never fills
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "s").iterdir())
    again = Spool(tmp_path / "s", max_bytes=10)  # the next run finds the backlog
    assert (len(again), again.size, again.oldest()) == (2, 8, b"aaaa")
    again.drop_oldest()
    assert again.put(b"cc")
    assert [again.oldest(), len(again)] == [b"bbbb", 2]
    again.drop_oldest()
    assert again.oldest() == b"cc"
