"""Every worker of ``send --workers N`` opens the suppression store and the TLS state file as
it starts: the first open of a new file by several processes at once must succeed in each
(SQLite refused the racing WAL switch at once: "database is locked")."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import pytest

from bulksend.suppression.store import SuppressionStore
from bulksend.tlspolicy import TlsState

PROCESSES = 6
ROUNDS = 10


def _open_suppression_store(path: Path) -> None:
    SuppressionStore.open(path).close()


def _open_tls_state(path: Path) -> None:
    TlsState(path).close()


def _opener(
    open_: Callable[[Path], None],
    path: Path,
    start: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[str],
) -> None:
    start.wait()
    try:
        open_(path)
    except Exception as exc:  # the test reports whatever failed
        results.put(f"{type(exc).__name__}: {exc}")
    else:
        results.put("ok")


@pytest.mark.parametrize("open_", [_open_suppression_store, _open_tls_state])
def test_processes_opening_a_new_file_at_once_all_succeed(
    tmp_path: Path, open_: Callable[[Path], None]
) -> None:
    context = multiprocessing.get_context("fork")  # no re-import: the race stays tight
    failures = []
    for round_ in range(ROUNDS):
        start = context.Barrier(PROCESSES)
        results: multiprocessing.Queue[str] = context.Queue()
        path = tmp_path / f"{round_}.sqlite3"
        processes = [
            context.Process(target=_opener, args=(open_, path, start, results))
            for _ in range(PROCESSES)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []
