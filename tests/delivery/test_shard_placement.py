"""Placing the largest sites over the shards by size (what `send --workers N` plans once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulksend.delivery.shard import (
    PLACED_PER_SHARD,
    Shard,
    place,
    placement_text,
    read_placement,
)
from bulksend.errors import ConfigError


def test_four_big_sites_on_four_shards_get_one_each() -> None:
    sites = {"gmail": 4000, "yahoo": 3000, "outlook": 2500, "icloud": 1000}
    placed = place(sites, [0.0] * 4)
    assert sorted(placed.values()) == [0, 1, 2, 3]
    assert placed["gmail"] == 0  # largest first, ties to the lowest index


def test_largest_first_onto_the_least_loaded_shard() -> None:
    placed = place({"a": 400, "b": 300, "c": 200, "d": 100}, [0.0, 0.0])
    assert placed == {"a": 0, "b": 1, "c": 1, "d": 0}  # 500 rows each


def test_rows_a_shard_holds_already_count() -> None:
    # Shard 0 holds 1000 rows of a site split by egress source: both big sites go to 1 and 2.
    placed = place({"a": 600, "b": 500}, [1000.0, 0.0, 0.0])
    assert placed == {"a": 1, "b": 2}


def test_beyond_the_largest_the_tail_goes_by_hash_and_weighs_in() -> None:
    sites = {f"big{i}": 10_000 - i for i in range(2 * PLACED_PER_SHARD)}
    tail = {f"tail{i}.test": 1 for i in range(200)}
    placed = place(sites | tail, [0.0, 0.0])
    assert set(placed) == set(sites)  # the tail is not in the placement
    on_shard_0 = sum(1 for name in tail if Shard(0, 2).owns(name))
    big_rows = [sum(n for s, n in sites.items() if placed[s] == i) for i in (0, 1)]
    # The big sites even out the tail's uneven hash share: totals differ by < one big site.
    assert abs((big_rows[0] + on_shard_0) - (big_rows[1] + 200 - on_shard_0)) < 10_000


def test_a_placement_file_names_its_shard_count(tmp_path: Path) -> None:
    path = tmp_path / "placement.json"
    path.write_text(placement_text({"mx.a.test": 1, "b.test": 0}, 2))
    assert read_placement(path, 2) == {"mx.a.test": 1, "b.test": 0}
    # Made for two shards: refused for four, though every index would fit.
    with pytest.raises(ConfigError, match=r"placement.json: not a placement of sites over 4"):
        read_placement(path, 4)
    path.write_text('{"sites": {"mx.a.test": 1}}')  # no shard count
    with pytest.raises(ConfigError, match="not a placement of sites over 2 shards"):
        read_placement(path, 2)
    path.write_text('{"shards": 2, "sites": {"mx.a.test": true}}')
    with pytest.raises(ConfigError, match="not a placement of sites over 2 shards"):
        read_placement(path, 2)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the shards' placement"):
        read_placement(path, 2)
