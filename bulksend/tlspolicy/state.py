"""The TLS policy state file: cached MTA-STS policies and TLS-RPT session counts (SQLite).

How this works: one small SQLite database, by default in the user's state directory (the
CLI's ``--tls-state``), shared by every campaign and run of the account: a policy fetched
for one campaign serves the next until its ``max_age`` runs out (RFC 8461 §5.1), and the
TLS-RPT counts of a day add up over every run that sent that day. Several processes on one
machine (``send --workers N``) share it safely: SQLite serialises the writers (WAL, a busy
timeout), and counts are added, never overwritten. Calls block (a few milliseconds, once per
domain or once per run): the async side runs them in a thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from bulksend.errors import ConfigError
from bulksend.files import private_fd
from bulksend.shared_sqlite import set_up
from bulksend.tlspolicy.mtasts import StsMode, StsPolicy
from bulksend.tlspolicy.tlsrpt import SessionKey

__all__ = ["TlsState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sts_policy (
    domain TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    mode TEXT NOT NULL,
    mx TEXT NOT NULL,
    max_age INTEGER NOT NULL,
    fetched REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tls_sessions (
    day TEXT NOT NULL,
    domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy TEXT NOT NULL,
    mx_patterns TEXT NOT NULL,
    result TEXT NOT NULL,
    mx_host TEXT NOT NULL,
    address TEXT NOT NULL,
    sessions INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy_type, policy, mx_patterns, result, mx_host, address)
);
"""


class TlsState:
    """The state file at ``path`` (created, mode 0600, on first use).

    Raises:
        ConfigError: the file cannot be opened or is not a state file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(private_fd(path, os.O_RDWR))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            set_up(self._db, lambda: self._db.executescript(_SCHEMA))
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"TLS state file {str(path)!r}: {exc}; give another with --tls-state"
            ) from None

    def close(self) -> None:
        self._db.close()

    def policy(self, domain: str) -> StsPolicy | None:
        """The cached MTA-STS policy of ``domain`` (fresh or not), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, mode, mx, max_age, fetched, text FROM sts_policy WHERE domain = ?",
                (domain,),
            ).fetchone()
        if row is None:
            return None
        policy_id, mode, mx, max_age, fetched, text = row
        return StsPolicy(
            domain, policy_id, StsMode(mode), tuple(json.loads(mx)), max_age, fetched,
            tuple(json.loads(text)),
        )  # fmt: skip

    def save_policy(self, policy: StsPolicy) -> None:
        """Cache ``policy`` (replacing the domain's earlier one)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sts_policy VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    policy.domain,
                    policy.id,
                    policy.mode.value,
                    json.dumps(policy.mx),
                    policy.max_age,
                    policy.fetched,
                    json.dumps(policy.text),
                ),
            )

    def add_sessions(self, counts: Iterable[tuple[SessionKey, int]]) -> None:
        """Add session counts (to those of earlier runs), in one transaction."""
        rows = [
            (
                k.day, k.domain, k.policy_type, json.dumps(k.policy), json.dumps(k.mx_patterns),
                k.result, k.mx_host, k.address, n,
            )
            for k, n in counts
        ]  # fmt: skip
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO tls_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET sessions = sessions + excluded.sessions",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT too: never hold the lock
                    self._db.execute("ROLLBACK")
                raise

    def sessions(self, day: str) -> list[tuple[SessionKey, int]]:
        """Every session count of ``day`` (``YYYY-MM-DD``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT day, domain, policy_type, policy, mx_patterns, result, mx_host, address,"
                " sessions FROM tls_sessions WHERE day = ?",
                (day,),
            ).fetchall()
        return [
            (
                SessionKey(
                    d, domain, ptype, tuple(json.loads(p)), tuple(json.loads(mx)), result,
                    host, address,
                ),
                n,
            )
            for d, domain, ptype, p, mx, result, host, address, n in rows
        ]  # fmt: skip
