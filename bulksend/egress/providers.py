"""Which mailbox provider a destination belongs to, and the providers in force for a campaign.

How this works: a provider (``[policy.providers.NAME]``, or one of the rules bulksend ships,
:mod:`bulksend.egress.rules`) ``match``\\ es recipient domains exactly and MX hosts by
suffix, the way ``[policy.sites]`` does (:class:`~bulksend.routing.PolicyTable`: the domain
first, then the longest MX suffix). The campaign's own provider tables override the shipped
ones of the same name key by key: their ``match`` entries are added, their limits replace
the shipped ones they set, their backoff rules come first. ``[policy] shipped_rules = false``
leaves only the campaign's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

from bulksend.config import SendingPolicy
from bulksend.config.egress import EgressSource
from bulksend.config.providers import ProviderPolicy
from bulksend.config.schema import pick
from bulksend.errors import ConfigError
from bulksend.routing import PolicyTable, Site

__all__ = ["ProviderTable", "check_warmup_providers", "effective_providers"]


def effective_providers(
    policy: SendingPolicy, shipped: Mapping[str, ProviderPolicy], *, source: Path | None = None
) -> dict[str, ProviderPolicy]:
    """The providers of a campaign: ``shipped`` (unless turned off) under the campaign's own;
    ``source`` is the campaign file, for messages.

    Raises:
        ConfigError: a campaign provider matches nothing (no ``match`` and no shipped
            provider of its name to extend).
    """
    found = dict(shipped) if policy.shipped_rules else {}
    for name, own in policy.providers.items():
        base = found.get(name)
        if base is None:
            if not own.match:
                where = "" if source is None else f"{source}: "
                raise ConfigError(
                    f"{where}policy.providers.{name}: matches nothing (no shipped provider of "
                    f'that name to extend). Write match = ["example.com"].'
                )
            found[name] = own
            continue
        found[name] = dataclasses.replace(
            base,
            match=base.match + tuple(m for m in own.match if m not in base.match),
            limits=dataclasses.replace(
                own.limits,
                max_connections=pick(own.limits.max_connections, base.limits.max_connections),
                rate=pick(own.limits.rate, base.limits.rate),
                connection_rate=pick(own.limits.connection_rate, base.limits.connection_rate),
            ),
            backoff=own.backoff + base.backoff,
            sources=own.sources + base.sources,
            samples=own.samples + base.samples,
            origin="shipped+campaign",
        )
    return found


def check_warmup_providers(
    sources: Iterable[EgressSource], providers: Mapping[str, ProviderPolicy], campaign: Path | None
) -> None:
    """Every provider a source's ``warmup_providers`` names exists (a typo is never ignored).

    Raises:
        ConfigError: one does not: the message names the source, the key and the fix.
    """
    for source in sources:
        for name in source.warmup_providers:
            if name not in providers:
                known = ", ".join(sorted(providers)) or "none"
                raise ConfigError(
                    f"{campaign or 'the campaign'}: egress source {source.name!r}: "
                    f"warmup_providers.{name}: no provider of that name. Use one of: {known}."
                )


class ProviderTable:
    """Finds the provider of a (domain, site), if any."""

    def __init__(self, providers: Iterable[ProviderPolicy]) -> None:
        keyed: dict[str, ProviderPolicy] = {}
        for provider in providers:
            for entry in provider.match:
                keyed.setdefault(entry, provider)
        self._table: PolicyTable[ProviderPolicy | None] = PolicyTable(
            None, domains=keyed, mx_suffixes=keyed
        )

    def lookup(self, domain: str, site: Site) -> ProviderPolicy | None:
        """The provider ``domain`` (normalised) at ``site`` belongs to; None: no provider."""
        return self._table.lookup(domain, site)
