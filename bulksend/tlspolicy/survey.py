"""Which TLS policy recipient domains publish, for ``validate``: MTA-STS and (with
``dnssec``) DANE, looked up the way a run looks them up, nothing cached or counted."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from bulksend.routing import RoutingConfig, RoutingError
from bulksend.routing.mx import MXResolver
from bulksend.tlspolicy.fetch import FetchError, FetchSettings
from bulksend.tlspolicy.mtasts import PolicyError
from bulksend.tlspolicy.policy import TlsPolicies

__all__ = ["survey"]


async def survey(
    config: RoutingConfig, domains: Sequence[str], *, fetch: FetchSettings | None = None
) -> list[str]:
    """One line per domain: its MTA-STS policy (mode and mx patterns, or why it is
    unusable) and, when ``config.dnssec``, which of its MX hosts have usable TLSA records."""
    resolver = MXResolver(config)
    policies = TlsPolicies(
        resolver, dnssec=config.dnssec, fetch=fetch, allow_private=config.allow_private
    )
    lines = [""] * len(domains)

    async def one(i: int, domain: str) -> None:
        parts = [await _sts(policies, domain)]
        if config.dnssec:
            parts.append(await _dane(policies, resolver, domain))
        lines[i] = f"{domain}: " + "; ".join(parts)

    async with trio.open_nursery() as nursery:  # a silent resolver costs one timeout
        for i, domain in enumerate(domains):
            nursery.start_soon(one, i, domain)
    return lines


async def _sts(policies: TlsPolicies, domain: str) -> str:
    policy_id = await policies.published_id(domain)
    if policy_id is None:
        return "no MTA-STS policy"
    try:
        policy = await policies.fetch_policy(domain, policy_id)
    except (FetchError, PolicyError) as exc:
        return f"MTA-STS published (id {policy_id}) but its policy is unusable: {exc}"
    mx = f" (mx: {', '.join(policy.mx)})" if policy.mx else ""
    return f"MTA-STS {policy.mode.value}{mx}, max_age {policy.max_age}s"


async def _dane(policies: TlsPolicies, resolver: MXResolver, domain: str) -> str:
    try:
        hosts = (await resolver.resolve(domain)).hosts
    except RoutingError as exc:
        return f"DANE not checked: {exc.text}"
    found = []
    for host in hosts:
        dane = await policies.dane_policy(domain, host.name)
        if dane is not None:
            found.append(
                f"{host.name}: {dane.refusal}"
                if dane.refusal
                else f"{host.name} ({len(dane.tlsa)} TLSA)"
            )
    return "DANE on " + ", ".join(found) if found else "no DANE"
