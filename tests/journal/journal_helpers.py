"""Constants and helpers shared by the journal tests (a unique module name, not conftest)."""

from __future__ import annotations

#: Wall-clock "now" used by tests (2024-01-01T00:00:00Z): time is always passed in.
T0 = 1_704_067_200.0

IDENTITY = {"campaign file": "c1", "templates": "t1", "recipients file": "r1"}


def addresses(n: int, domains: tuple[str, ...] = ("a.example", "b.example")) -> list[str]:
    return [f"user{i}@{domains[i % len(domains)]}" for i in range(n)]
