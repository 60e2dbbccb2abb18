"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, listening on
127.0.0.1 at a free port (and a unix socket in the same directory), stopped at the end.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user
(``runuser``), owning its temporary directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

#: Where Debian's and others' server binaries are, besides PATH and ``pg_config --bindir``.
_BINDIRS = (*sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True),)


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out:
            candidates.append(Path(out))
    candidates += _BINDIRS
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    for d in candidates:
        if all((d / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; :meth:`new_database` gives each test a database of its own."""

    bindir: Path
    root: Path
    port: int
    user: str
    _as: Sequence[str]
    options: str = ""

    @classmethod
    def start(cls, bindir: Path, *, durable: bool = False) -> PostgresServer:
        """Start a server; ``durable`` keeps fsync on (benchmarks), tests run without it."""
        root = Path(tempfile.mkdtemp(prefix="bulksend-pg-"))
        run_as: list[str] = []
        user = pwd.getpwuid(os.getuid()).pw_name
        if os.getuid() == 0:
            user = "postgres"
            info = pwd.getpwnam(user)
            os.chown(root, info.pw_uid, info.pw_gid)
            run_as = ["runuser", "-u", user, "--"]
        server = cls(bindir, root, _free_port(), user, run_as)
        data = root / "data"
        server._run("initdb", "-D", str(data), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c max_connections=50"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        server.options = options
        server.resume()
        return server

    def resume(self) -> None:
        """Start the server (again, after :meth:`halt`): same data, same port."""
        data, log = str(self.root / "data"), str(self.root / "log")
        self._run("pg_ctl", "-D", data, "-l", log, "-o", self.options, "-w", "start")

    def halt(self) -> None:
        """Stop the server as an administrator's restart does (``-m fast``: every session is
        ended, committed work kept); :meth:`resume` starts it again."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def restart(self, down: float = 0.0) -> None:
        """Stop the server, wait ``down`` seconds, start it again."""
        self.halt()
        time.sleep(down)
        self.resume()

    def _run(self, binary: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bindir / binary), *args],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create database ``name`` (from template0) and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        return self.url(name)
