"""What ``bulksend policy show`` prints: a destination's effective limits and rules, and
where each value came from.

Plain functions over the loaded configuration, no I/O: the CLI finds the destination's MX
hosts and prints the lines. The layers, in the order they apply (see
:class:`bulksend.delivery.scheduler.SitePolicy`): ``default`` (built in), ``defaults``
(``[policy.defaults]``), ``site`` (the ``[policy.sites]`` entry of the longest matching MX
suffix), ``domain`` (``[policy.domains]``); a provider's shared limits come from ``shipped``
rules or the campaign's ``provider`` table; an egress source's caps from ``source``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from bulksend.config import BackoffRule, LimitsOverride, SendingPolicy, SiteLimits
from bulksend.config.egress import EgressConfig, EgressSource
from bulksend.config.providers import ProviderPolicy
from bulksend.egress.providers import ProviderTable, check_warmup_providers, effective_providers
from bulksend.egress.selection import lanes
from bulksend.routing import PolicyTable, Site

__all__ = ["explain"]

_LIMITS = [f.name for f in dataclasses.fields(SiteLimits)]
_SHARED = ("max_connections", "rate", "connection_rate")


def explain(
    policy: SendingPolicy,
    egress: EgressConfig,
    shipped: Mapping[str, ProviderPolicy],
    *,
    domain: str,
    site: Site,
    campaign_file: Path | None = None,
) -> list[str]:
    """The lines of ``policy show`` for ``domain`` (normalised) at ``site``;
    ``campaign_file`` is named in messages."""
    lines = [f"destination: {domain}", f"mx hosts: {', '.join(site.mx)}"]
    limits, origins = _layers(policy, domain, site)
    lines.append("limits (each site; with a pool, each source at each site):")
    for name in _LIMITS:
        lines.append(_row(name, getattr(limits, name), origins[name]))
    lanes_ = lanes(egress, limits)
    providers = effective_providers(policy, shipped, source=campaign_file)
    check_warmup_providers(egress.sources.values(), providers, campaign_file)
    provider = ProviderTable(providers.values()).lookup(domain, site)
    if lanes_[0].sources:
        lines.append(f"egress: pool {limits.pool}, scope {limits.scope}")
        for lane in lanes_:
            for source, weight in lane.sources:
                caps = ", ".join(
                    f"{n} {_value(getattr(lane.limits, n), n)}"
                    for n in _SHARED
                    if lane.source and getattr(source, n) is not None
                )
                lines.append(
                    f"  source {source.name}: {source.address}, EHLO "
                    f"{source.ehlo or '(the campaign name)'}, weight {weight}"
                    + (f" (source caps: {caps})" if caps else "")
                )
                warmups = _warmups(source, provider) if lane.source else ""
                if warmups:
                    lines.append(f"    warm-up: {warmups}")
    rules: list[tuple[BackoffRule, str]] = [
        (r, "campaign [[policy.backoff]]") for r in policy.backoff
    ]
    if provider is None:
        lines.append("provider: none")
    else:
        lines.append(
            f"provider: {provider.name} ({provider.origin}"
            + (f"; {provider.documentation}" if provider.documentation else "")
            + ")"
        )
        lines.append(f"  match: {', '.join(provider.match)}")
        lines.append("  limits shared by every site of the provider:")
        own = policy.providers.get(provider.name)
        for name in _SHARED:
            value = getattr(provider.limits, name)
            set_here = own is not None and getattr(own.limits, name) is not None
            origin = "provider" if set_here else "shipped" if value is not None else "default"
            lines.append("  " + _row(name, value, origin))
        for rule, page in zip(provider.backoff, provider.sources, strict=True):
            where = f"provider {provider.name}, " + (f"shipped: {page}" if page else "campaign")
            rules.append((rule, where))
    if lanes_[0].rules:
        rules += [(r, "egress: source blocked") for r in lanes_[0].rules]
    lines.append("backoff rules (first match wins):" if rules else "backoff rules: none")
    for index, (rule, where) in enumerate(rules, 1):
        lines.append(f"  {index}. {_rule(rule)}  ({where})")
    return lines


def _warmups(source: EgressSource, provider: ProviderPolicy | None) -> str:
    """A source's warm-up schedules that apply at this destination: its own, its provider's."""
    parts = [_curve(source.warmup)] if source.warmup else []
    curve = () if provider is None else source.warmup_providers.get(provider.name, ())
    if provider is not None and curve:
        parts.append(f"to {provider.name}: {_curve(curve)}")
    return "; ".join(parts)


def _curve(days: tuple[int, ...]) -> str:
    shown = (
        [str(n) for n in days] if len(days) <= 4 else [*map(str, days[:3]), "...", str(days[-1])]
    )
    return f"{', '.join(shown)} a day ({len(days)} days)"


def _layers(policy: SendingPolicy, domain: str, site: Site) -> tuple[SiteLimits, dict[str, str]]:
    """The limits for ``domain`` at ``site``, and the layer each field was set by."""
    origins = dict.fromkeys(_LIMITS, "default")
    limits = SiteLimits()
    if policy.defaults != limits:
        for name in _LIMITS:
            if getattr(policy.defaults, name) != getattr(limits, name):
                origins[name] = "defaults"
        limits = policy.defaults
    sites = PolicyTable[str | None](None, mx_suffixes={k: k for k in policy.sites})
    domains = PolicyTable[str | None](None, domains={k: k for k in policy.domains})
    for layer, table, overrides in (
        ("site", sites, policy.sites),
        ("domain", domains, policy.domains),
    ):
        key = table.lookup(domain, site)
        if key is None:
            continue
        override: LimitsOverride = overrides[key]
        for name in _LIMITS:
            if getattr(override, name) is not None:
                origins[name] = f'{layer} "{key}"'
        limits = override.apply(limits)
    return limits, origins


def _row(name: str, value: object, origin: str) -> str:
    return f"  {name} = {_value(value, name)}".ljust(44) + f"({origin})"


def _value(value: object, name: str = "") -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        unit = "/s" if name.endswith("rate") else "s" if name.endswith("timeout") else ""
        return f"{value:g}{unit}"
    return str(getattr(value, "value", value))


def _rule(rule: BackoffRule) -> str:
    when = [
        f"{name} {value}"
        for name, value in (
            ("code", rule.code),
            ("enhanced_code", rule.enhanced_code),
            ("text", None if rule.text is None else repr(rule.text.pattern)),
        )
        if value is not None
    ]
    then = [
        f"{name} {_value(value)}"
        for name, value in (
            ("reduce_connections", rule.reduce_connections),
            ("rate_factor", rule.rate_factor),
            ("suspend", None if rule.suspend is None else f"{rule.suspend:g}s"),
        )
        if value is not None
    ]
    return f"{' '.join(when)} -> {', '.join(then)} for {rule.duration:g}s"
