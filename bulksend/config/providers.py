"""``[policy.providers.NAME]``: limits and backoff shared by every site of one mailbox provider.

A provider hides behind many MX sets (each Microsoft 365 tenant has its own
``*.mail.protection.outlook.com`` host) yet throttles them as one, so a provider's limits hold
over every site that ``match``\\ es it (an MX host suffix or a recipient domain), in addition
to each site's own. The same tables, with a ``source`` URL on each rule, make the rules
bulksend ships (:mod:`bulksend.egress.rules`). Every key is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bulksend.config.schema import BackoffRule, LimitsOverride
from bulksend.config.table import Table
from bulksend.config.values import parse_rate

__all__ = ["ProviderPolicy", "load_provider", "load_providers"]


@dataclass(frozen=True, slots=True)
class ProviderPolicy:
    """One provider: what it matches, its shared limits, its backoff rules.

    ``sources`` holds, per rule, the public page it was written from (shipped rules; "" for a
    campaign's own), and ``samples`` the replies it is tested against; ``origin`` says where
    the provider was declared ("shipped", "campaign", or "shipped+campaign").
    """

    name: str
    match: tuple[str, ...]
    limits: LimitsOverride  # max_connections, rate, connection_rate only
    backoff: tuple[BackoffRule, ...] = ()
    sources: tuple[str, ...] = ()
    samples: tuple[tuple[str, ...], ...] = ()
    origin: str = "campaign"
    documentation: str = ""  # the provider's postmaster page (shipped rules)


def load_providers(policy: Table) -> tuple[Mapping[str, ProviderPolicy], bool]:
    """The ``[policy.providers]`` tables of a campaign, and ``[policy] shipped_rules``."""
    shipped_rules = policy.boolean("shipped_rules", default=True)
    section = policy.sub("providers")
    found: dict[str, ProviderPolicy] = {}
    if section is not None:
        for name, value in section.items():
            if not isinstance(value, dict):
                raise section.error(name, "expected a table", f"Write [policy.providers.{name}].")
            found[name] = load_provider(section.child(value, name), name, origin="campaign")
    return MappingProxyType(found), shipped_rules


def load_provider(t: Table, name: str, *, origin: str) -> ProviderPolicy:
    """One provider table; a shipped one needs ``documentation`` and a ``source`` per rule."""
    # The rule and limits readers live with the rest of [policy].
    from bulksend.config.policy import load_backoff  # noqa: PLC0415 (policy imports us)

    shipped = origin == "shipped"
    match = t.string_list("match")
    if shipped and not match:
        raise t.error("match", "the provider matches nothing", 'Write match = ["example.com"].')
    limits = LimitsOverride(
        max_connections=t.integer("max_connections", minimum=1),
        rate=t.converted("rate", parse_rate, "Write a rate like '50/s' or '3000/h'."),
        connection_rate=t.converted(
            "connection_rate", parse_rate, "Write a rate like '5/s' or '100/m'."
        ),
    )
    documentation = t.string("documentation", required=shipped) or ""
    rules: list[BackoffRule] = []
    sources: list[str] = []
    samples: list[tuple[str, ...]] = []
    raw = t.typed("backoff", list, "an array of tables") or []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise t.error(f"backoff[{index}]", "expected a table", "Write [[...backoff]].")
        rule = t.child(item, "backoff", index)
        sources.append(rule.string("source", required=shipped) or "")
        samples.append(tuple(rule.string_list("samples")) if shipped else ())
        rules.append(load_backoff(rule))
    t.finish()
    return ProviderPolicy(
        name=name,
        match=tuple(match),
        limits=limits,
        backoff=tuple(rules),
        sources=tuple(sources),
        samples=tuple(samples),
        origin=origin,
        documentation=documentation,
    )
