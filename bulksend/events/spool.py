"""A bounded on-disk buffer of event batches, for while a webhook receiver is down.

One file per batch (its JSON body), named by a growing sequence number, in a 0700
directory; files 0600 (events hold addresses). The oldest goes first. Past ``max_bytes`` a
new batch is refused (the caller counts its events as dropped): the disk is never filled.
What is left when a run ends is sent by the next run with the same spool.
"""

from __future__ import annotations

import os
from pathlib import Path

from bulksend.files import write_private_bytes


class Spool:
    """Batches waiting on disk (synchronous: call it from a thread)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self._names = sorted(p.name for p in directory.glob("*.json"))
        self.size = sum((directory / name).stat().st_size for name in self._names)
        last = self._names[-1] if self._names else "0.json"
        self._next = int(last.split(".")[0]) + 1

    def __len__(self) -> int:
        return len(self._names)

    def put(self, body: bytes) -> bool:
        """Keep ``body`` (one batch); False when the spool is full."""
        if self.size + len(body) > self.max_bytes:
            return False
        name = f"{self._next:012d}.json"
        write_private_bytes(self.directory / name, body)
        self._next += 1
        self._names.append(name)
        self.size += len(body)
        return True

    def oldest(self) -> bytes | None:
        """The oldest batch, still kept until :meth:`drop_oldest`."""
        return (self.directory / self._names[0]).read_bytes() if self._names else None

    def drop_oldest(self) -> None:
        """Forget the oldest batch (it was delivered)."""
        path = self.directory / self._names.pop(0)
        self.size -= path.stat().st_size
        path.unlink()
