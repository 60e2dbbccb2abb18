"""The control socket and the merge of several workers' answers, without a run."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import trio

from bulksend.control.commands import Command, ControlState
from bulksend.control.fanout import merge_status
from bulksend.control.server import serve_socket

T0 = 1_704_067_200.0


async def test_a_socket_another_run_listens_on_is_left_to_it(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3.ctl"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)
    said: list[str] = []

    async def refuse(_command: Command) -> dict[str, Any]:
        raise AssertionError("not this one")

    with other, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            started = await nursery.start(serve_socket, path, refuse, said.append)
        assert started is None
        assert said == [f"no live control (bulksend ctl): another bulksend run listens on {path}"]
        assert path.exists()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # still the other's


async def test_a_dead_runs_socket_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3.ctl"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: a killed run's leftover

    async def status(_command: Command) -> dict[str, Any]:
        return {"ok": True, "status": {}}

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve_socket, path, status, print) == path
            client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with client:
                await client.connect(str(path))
                await client.send(b'{"action": "status", "scope": "campaign"}\n')
                assert await client.recv(1000) == b'{"ok": true, "status": {}}\n'
            nursery.cancel_scope.cancel()
    assert not path.exists()


def _site(name: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "site": name,
        "label": name,
        "domains": 1,
        "connections": 0,
        "senders": 0,
        "backed_off": False,
        "max_connections": 2,
        "rate": 10.0,
        "suspended_for": 0.0,
        "reason": "",
        "last_error": "",
        "paused_for": 0.0,
        "in_flight": 0,
        "buffered": 0,
        "waiting": 0,
        "outcomes": {},
    } | values
    return row | {"queued": row["buffered"] + row["waiting"]}  # as a worker answers


def _status(*sites: dict[str, Any], unrouted: int = 0) -> dict[str, Any]:
    return {
        "time": T0,
        "stopping": False,
        "unrouted": unrouted,
        "sites": list(sites),
        "control": {},
    }


def test_one_site_of_two_workers_is_one_row_the_shared_journal_counted_once() -> None:
    first = _status(
        _site("mx.a", connections=2, in_flight=3, buffered=5, waiting=100, outcomes={"x": 1}),
        unrouted=7,
    )
    second = _status(
        _site("mx.a", connections=1, in_flight=1, buffered=2, waiting=98, last_error="451"),
        _site("mx.b", connections=1, buffered=1, waiting=10),
        unrouted=7,
    )
    merged = merge_status([first, second], one_journal=True)
    a, b = merged["sites"]
    assert (a["site"], a["connections"], a["in_flight"]) == ("mx.a", 3, 4)
    assert a["queued"] == 5 + 2 + 100  # held by each worker, plus the journal's once
    assert a["last_error"] == "451"
    assert a["outcomes"] == {"x": 1}
    assert (b["site"], b["queued"]) == ("mx.b", 11)
    assert merged["unrouted"] == 7
    assert merged["workers"] == 2
    # Shards: each worker's journal is its own.
    assert merge_status([first, second], one_journal=False)["unrouted"] == 14


def test_the_shared_state_keeps_rates_until_they_run_out() -> None:
    state = ControlState()
    state.apply(Command("rate", "site", "mx.a", 5.0, 60.0), T0)
    state.apply(Command("connections", "site", "mx.a", 1.0), T0)
    state.apply(Command("pause", "domain", "x.test"), T0)
    kept = state.shared()
    assert kept["rates"] == {"mx.a": {"value": 5.0, "until": T0 + 60}}
    assert kept["connections"] == {"mx.a": {"value": 1.0, "until": None}}
    assert ControlState.restore(kept, T0 + 1).shared() == kept
    later = ControlState.restore(kept, T0 + 61)
    assert later.rates == {}
    assert later.connections == state.connections
    assert "rates" not in state.persistent()  # a SQLite run's rate lasts for the run only
