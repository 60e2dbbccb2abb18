"""The ``[policy]`` section: how fast and how wide to send, per domain and per site.

``[policy.defaults]``, ``[policy.domains.<domain>]`` and ``[policy.sites.<domain or MX
suffix>]`` are each a partial set of limits (:class:`~bulksend.config.schema.LimitsOverride`);
``[policy.timeouts]``, ``[policy.retry]`` and the ``[[policy.backoff]]`` rules complete the
:class:`~bulksend.config.schema.SendingPolicy`. Every key is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from bulksend.config.providers import load_providers
from bulksend.config.schema import (
    BackoffRule,
    LimitsOverride,
    RetryPolicy,
    SendingPolicy,
    SiteLimits,
    Timeouts,
    TlsMode,
    pick,
)
from bulksend.config.table import Table, host_keyed
from bulksend.config.values import parse_duration, parse_rate

__all__ = ["load_policy"]


def load_policy(root: Table) -> SendingPolicy:
    t = root.sub("policy")
    if t is None:
        return SendingPolicy()
    defaults_table = t.sub("defaults")
    defaults = SiteLimits()
    if defaults_table is not None:
        defaults = _load_override(defaults_table).apply(defaults)

    def keyed(name: str, what: str) -> Mapping[str, LimitsOverride]:
        section = t.sub(name)
        result: dict[str, LimitsOverride] = {}
        if section is not None:
            for written, key, value in host_keyed(section, what):
                if not isinstance(value, dict):
                    raise section.error(
                        written, "expected a table", f"Write [policy.{name}.{written}]."
                    )
                result[key] = _load_override(section.child(value, written))
        return MappingProxyType(result)

    domains = keyed("domains", "domain")
    sites = keyed("sites", "domain or host suffix")
    max_total = t.integer("max_total_connections", minimum=1)
    total_rate = t.converted("total_rate", parse_rate, "Write a rate like '500/s'.")

    timeouts = Timeouts()
    timeouts_table = t.sub("timeouts")
    if timeouts_table is not None:
        values = {}
        for name in Timeouts.__dataclass_fields__:
            seconds = timeouts_table.converted(name, parse_duration, "Write seconds or '5m'.")
            if seconds is not None:
                if seconds <= 0:
                    raise timeouts_table.error(name, "must be positive", "Use a value > 0.")
                values[name] = seconds
        timeouts_table.finish()
        timeouts = Timeouts(**values)

    retry = RetryPolicy()
    retry_table = t.sub("retry")
    if retry_table is not None:
        hint = "Write seconds or a duration like '5m'."
        initial = retry_table.converted("initial", parse_duration, hint)
        maximum = retry_table.converted("maximum", parse_duration, hint)
        max_age = retry_table.converted("max_age", parse_duration, hint)
        factor = retry_table.number("factor")
        jitter = retry_table.number("jitter")
        if factor is not None and factor < 1:
            raise retry_table.error("factor", f"{factor} is below 1", "Use a factor >= 1.")
        if jitter is not None and not 0 <= jitter < 1:
            raise retry_table.error("jitter", f"{jitter} is out of range", "Use 0 <= jitter < 1.")
        retry_table.finish()
        retry = RetryPolicy(
            initial=pick(initial, retry.initial),
            factor=pick(factor, retry.factor),
            maximum=pick(maximum, retry.maximum),
            jitter=pick(jitter, retry.jitter),
            max_age=pick(max_age, retry.max_age),
        )

    rules: list[BackoffRule] = []
    raw_rules = t.typed("backoff", list, "an array of [[policy.backoff]] tables") or []
    for index, item in enumerate(raw_rules):
        if not isinstance(item, dict):
            raise t.error(f"backoff[{index}]", "expected a table", "Write [[policy.backoff]].")
        rules.append(load_backoff(t.child(item, "backoff", index)))
    providers, shipped_rules = load_providers(t)
    t.finish()
    return SendingPolicy(
        defaults=defaults,
        domains=domains,
        sites=sites,
        max_total_connections=pick(max_total, 500),
        total_rate=total_rate,
        timeouts=timeouts,
        retry=retry,
        backoff=tuple(rules),
        providers=providers,
        shipped_rules=shipped_rules,
    )


def load_backoff(t: Table) -> BackoffRule:
    code_value = t.raw("code")
    code: str | None = None
    if code_value is not None:
        code = str(code_value).lower() if not isinstance(code_value, bool) else ""
        if not re.match(r"^[245][0-9x][0-9x]$", code):
            raise t.error("code", f"{code_value!r} is not a reply code", "Use 421, '4xx' or '45x'.")
    enhanced = t.string("enhanced_code")
    if enhanced is not None and not re.match(r"^[245](\.\d{1,3}){0,2}$", enhanced):
        raise t.error("enhanced_code", f"{enhanced!r} is not an enhanced code", "Use '4.7.28'.")
    text = t.string("text")
    pattern = None
    if text is not None:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise t.error("text", f"invalid regular expression ({exc})", "Fix it.") from None
    reduce_to = t.integer("reduce_connections", minimum=1)
    factor = t.number("rate_factor")
    if factor is not None and not 0 < factor <= 1:
        raise t.error("rate_factor", f"{factor} is out of range", "Use 0 < rate_factor <= 1.")
    suspend = t.converted("suspend", parse_duration, "Write a duration like '10m'.")
    duration = t.converted("duration", parse_duration, "Write a duration like '10m'.")
    if code is None and enhanced is None and pattern is None:
        raise t.error("code", "the rule matches nothing", "Set code, enhanced_code or text.")
    if reduce_to is None and factor is None and suspend is None:
        raise t.error(
            "suspend", "the rule does nothing", "Set reduce_connections, rate_factor or suspend."
        )
    t.finish()
    return BackoffRule(
        code=code,
        enhanced_code=enhanced,
        text=pattern,
        reduce_connections=reduce_to,
        rate_factor=factor,
        suspend=suspend,
        duration=pick(duration, 600.0),
    )


def _scope(value: object) -> str:
    if value not in ("source", "site"):
        raise ValueError(f"{value!r} is not a scope")
    return str(value)


def _load_override(t: Table) -> LimitsOverride:
    override = LimitsOverride(
        max_connections=t.integer("max_connections", minimum=1),
        rate=t.converted("rate", parse_rate, "Write a rate like '50/s' or '3000/h'."),
        connection_rate=t.converted(
            "connection_rate", parse_rate, "Write a rate like '5/s' or '100/m'."
        ),
        messages_per_connection=t.integer("messages_per_connection", minimum=1),
        recipients_per_transaction=t.integer("recipients_per_transaction", minimum=1),
        idle_timeout=t.converted("idle_timeout", parse_duration, "Write a duration like '30s'."),
        tls=t.converted("tls", TlsMode, 'Use "none", "opportunistic" or "required".'),
        pool=t.string("pool"),
        scope=t.converted("scope", _scope, 'Use "source" or "site".'),
    )
    t.finish()
    return override
