"""A site's lanes, the weighted turn of sources, and which replies block a source."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from bulksend.config import SiteLimits
from bulksend.config.egress import EgressConfig, EgressPool, EgressSource
from bulksend.egress.selection import SOURCE_BLOCKED, Rotation, lanes

A = EgressSource("a", "192.0.2.1", rate=10.0, max_connections=1)
B = EgressSource("b", "192.0.2.2")
EGRESS = EgressConfig(
    MappingProxyType({"a": A, "b": B}),
    MappingProxyType({"main": EgressPool("main", ((A, 3), (B, 1)))}),
)


def test_no_pool_is_one_lane_from_the_default_address() -> None:
    limits = SiteLimits(max_connections=4, rate=50.0)
    (lane,) = lanes(EGRESS, limits)
    assert (lane.source, lane.limits, lane.sources, lane.rules) == ("", limits, (), ())
    assert Rotation(lane.sources).next(0.0) is None


def test_a_lane_per_source_with_its_caps() -> None:
    limits = SiteLimits(max_connections=4, rate=50.0, pool="main")
    a, b = lanes(EGRESS, limits)
    assert (a.source, a.limits.max_connections, a.limits.rate) == ("a", 1, 10.0)
    assert (b.source, b.limits.max_connections, b.limits.rate) == ("b", 4, 50.0)
    assert a.rules == b.rules == (SOURCE_BLOCKED,)


def test_scope_site_is_one_lane_taking_sources_by_weight() -> None:
    (lane,) = lanes(EGRESS, SiteLimits(max_connections=4, pool="main", scope="site"))
    assert lane.source == ""
    assert lane.limits.max_connections == 4
    rotation = Rotation(lane.sources)
    picks = [rotation.next(0.0) for _ in range(8)]
    assert [p.name if p else None for p in picks] == ["a", "a", "b", "a"] * 2


@pytest.mark.parametrize(
    ("code", "enhanced", "text", "blocked"),
    [
        (550, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen", True),
        (554, "5.7.1", "Message rejected because 192.0.2.1 is listed in bl.spamcop.net", True),
        (550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]", True),
        (553, "5.7.1", "[BL21] Connections not accepted from IP 192.0.2.1 (Spamhaus)", True),
        (550, "5.7.1", "Our system has detected that this message is likely spam", False),
        (550, "5.1.1", "The email account that you tried to reach does not exist", False),
        (421, "4.7.0", "Client host [192.0.2.1] blocked using zen", False),
    ],
)
def test_which_replies_block_a_source(code: int, enhanced: str, text: str, blocked: bool) -> None:
    assert SOURCE_BLOCKED.matches(code, enhanced, text) is blocked


def test_a_blocked_source_sits_out_its_turns_until_its_time_is_up() -> None:
    (lane,) = lanes(EGRESS, SiteLimits(max_connections=4, pool="main", scope="site"))
    assert lane.rules == (SOURCE_BLOCKED,)
    rotation = Rotation(lane.sources)
    assert rotation.block("a", 100.0, 0.0) == 0.0  # b may still be taken
    assert [p.name if p else None for p in (rotation.next(50.0) for _ in range(3))] == ["b"] * 3
    assert rotation.blocked("a", 50.0)
    assert not rotation.blocked("a", 100.0)
    assert rotation.block("b", 80.0, 50.0) == 30.0  # every source blocked: b comes back first
    assert {rotation.next(100.0).name for _ in range(4)} == {"a", "b"}  # type: ignore[union-attr]
