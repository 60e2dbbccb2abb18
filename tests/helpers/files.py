"""Damage done to files on purpose, to test that it is noticed."""

from __future__ import annotations

from pathlib import Path


def flip(path: Path, offset: int, length: int) -> None:
    """XOR ``length`` bytes at ``offset`` with 0x55, in place: damage that a reader must notice."""
    with path.open("r+b") as f:
        f.seek(offset)
        data = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0x55 for b in data))
