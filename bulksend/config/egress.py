"""The ``[egress]`` section: the local addresses mail leaves from, and pools of them.

``[[egress.source]]`` names one source address (the local address a connection binds, the
EHLO name that goes with it, optional caps of its own); ``[egress.pool.NAME]`` groups sources
with weights. ``pool`` in a ``[policy]`` table (``defaults`` for the whole campaign, a site's
or a domain's) chooses the pool a destination sends from; with none chosen, connections leave
from the machine's default address, as they always did. Every key is documented in
``docs/campaign.md`` ("Egress").
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from bulksend.config.table import Table
from bulksend.config.values import hostname_syntax, parse_rate

if TYPE_CHECKING:  # schema.py imports this module
    from bulksend.config.schema import SendingPolicy

__all__ = ["DEFAULT_WARMUP", "EgressConfig", "EgressPool", "EgressSource", "load_egress"]

#: Messages per day on days 1, 2, ... of a warm-up (``warmup = true``): from 50, roughly
#: doubling, then growing by half, over three weeks; the shape of the IP warm-up schedules
#: ESPs publish (e.g. Twilio SendGrid's "Warming up an IP address"), on the cautious side.
DEFAULT_WARMUP: tuple[int, ...] = (
    50, 100, 200, 400, 800, 1_500, 3_000, 5_000, 8_000, 12_000, 20_000,
    30_000, 50_000, 75_000, 100_000, 150_000, 250_000, 400_000, 600_000, 1_000_000,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EgressSource:
    """One source address: what a connection binds and says in EHLO.

    ``max_connections``, ``rate`` and ``connection_rate`` (per second) cap this source at
    each site (None: the site's own limit). ``warmup``: messages per day on days 1, 2, ... of
    its warm-up (empty: none), day 1 beginning at ``warmup_start`` (wall-clock seconds; None:
    when a run first sends from it); ``warmup_providers``: a schedule of the same kind for
    its messages to each named mailbox provider, besides ``warmup``; see
    :mod:`bulksend.egress.warmup`.
    """

    name: str
    address: str
    ehlo: str | None = None  # None: the campaign's EHLO name
    max_connections: int | None = None
    rate: float | None = None
    connection_rate: float | None = None
    warmup: tuple[int, ...] = ()
    warmup_start: float | None = None
    warmup_providers: Mapping[str, tuple[int, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True, slots=True)
class EgressPool:
    """Sources that share a destination's traffic, each with its weight (> 0)."""

    name: str
    sources: tuple[tuple[EgressSource, int], ...]


@dataclass(frozen=True, slots=True)
class EgressConfig:
    """The whole ``[egress]`` section; empty: the machine's default address."""

    sources: Mapping[str, EgressSource] = field(default_factory=lambda: MappingProxyType({}))
    pools: Mapping[str, EgressPool] = field(default_factory=lambda: MappingProxyType({}))


def load_egress(root: Table, policy: SendingPolicy) -> EgressConfig:
    """Load ``[egress]``; check that every pool a policy table names exists."""
    t = root.sub("egress")
    config = EgressConfig() if t is None else _load(t)
    section = root.child({}, "policy")
    chosen = [(section.child({}, "defaults"), policy.defaults.pool)]
    for name, keyed in (("sites", policy.sites), ("domains", policy.domains)):
        tables = section.child({}, name)
        chosen += [(tables.child({}, key), o.pool) for key, o in keyed.items()]
    for where, pool in chosen:
        if pool is not None and pool not in config.pools:
            known = ", ".join(sorted(config.pools)) or "none"
            raise where.error(
                "pool", f"no pool {pool!r}", f"Declare [egress.pool.{pool}] or use one of: {known}."
            )
    return config


def _load(t: Table) -> EgressConfig:
    sources: dict[str, EgressSource] = {}
    raw = t.typed("source", list, "an array of [[egress.source]] tables") or []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise t.error(f"source[{index}]", "expected a table", "Write [[egress.source]].")
        table = t.child(item, "source", index)
        source = _load_source(table)
        if source.name in sources:
            raise table.error("name", f"{source.name!r} is declared twice", "Rename one.")
        sources[source.name] = source
    pools: dict[str, EgressPool] = {}
    section = t.sub("pool")
    if section is not None:
        for name, value in section.items():
            if not isinstance(value, dict):
                raise section.error(name, "expected a table", f"Write [egress.pool.{name}].")
            pools[name] = _load_pool(section.child(value, name), name, sources)
    t.finish()
    return EgressConfig(MappingProxyType(sources), MappingProxyType(pools))


def _load_source(t: Table) -> EgressSource:
    name = t.req_string("name")
    text = t.req_string("address")
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        raise t.error(
            "address", f"{text!r} is not an IP address", "Write this host's IPv4 or IPv6 address."
        ) from None
    ehlo = t.string("ehlo")
    if ehlo is not None and not hostname_syntax(ehlo):
        raise t.error(
            "ehlo", f"{ehlo!r} is not a host name", "Use the address's PTR name (mta1.example.org)."
        )
    source = EgressSource(
        name=name,
        address=address,
        ehlo=ehlo,
        max_connections=t.integer("max_connections", minimum=1),
        rate=t.converted("rate", parse_rate, "Write a rate like '50/s' or '3000/h'."),
        connection_rate=t.converted(
            "connection_rate", parse_rate, "Write a rate like '5/s' or '100/m'."
        ),
        warmup=_schedule(t, "warmup"),
        warmup_providers=_provider_schedules(t),
        warmup_start=t.converted(
            "warmup_start", _midnight, "Write a date like 2026-12-01 (day 1 of the warm-up)."
        ),
    )
    t.finish()
    return source


def _provider_schedules(t: Table) -> Mapping[str, tuple[int, ...]]:
    """``warmup_providers = { google = [20, 50], microsoft = true }``: provider -> schedule."""
    section = t.sub("warmup_providers")
    if section is None:
        return MappingProxyType({})
    schedules = {name: _schedule(section, name) for name, _value in section.items()}
    return MappingProxyType({name: days for name, days in schedules.items() if days})


def _schedule(t: Table, key: str) -> tuple[int, ...]:
    value = t.raw(key)
    if value is None or value is False:
        return ()
    if value is True:
        return DEFAULT_WARMUP
    if (
        isinstance(value, list)
        and value
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
    ):
        return tuple(value)
    raise t.error(
        key,
        f"{value!r} is not a warm-up schedule",
        "Write true (the default curve) or messages per day, day by day: [50, 100, 200].",
    )


def _midnight(value: object) -> float:
    """Midnight UTC of a TOML date (or "YYYY-MM-DD"), in wall-clock seconds."""
    if isinstance(value, str):
        value = datetime.date.fromisoformat(value)
    if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
        raise ValueError(f"{value!r} is not a date")
    return datetime.datetime.combine(value, datetime.time(), datetime.UTC).timestamp()


def _load_pool(t: Table, name: str, sources: Mapping[str, EgressSource]) -> EgressPool:
    names = t.string_list("sources")
    if not names:
        raise t.error("sources", "the pool has no source", 'Write sources = ["ip1", ...].')
    weights_raw = t.typed("weights", list, "a list of integers")
    weights = [1] * len(names) if weights_raw is None else weights_raw
    if len(weights) != len(names) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in weights
    ):
        raise t.error(
            "weights",
            f"{weights!r} does not give one positive integer per source",
            f"Write {len(names)} integers >= 1, or leave weights out (all equal).",
        )
    members = []
    for source in names:
        if source not in sources:
            known = ", ".join(sorted(sources)) or "none"
            raise t.error(
                "sources", f"no source {source!r}", f"Declare it in [[egress.source]] ({known})."
            )
        members.append(sources[source])
    if len(set(names)) != len(names):
        raise t.error("sources", "a source is listed twice", "List each source once.")
    t.finish()
    return EgressPool(name, tuple(zip(members, weights, strict=True)))
