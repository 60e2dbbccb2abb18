"""Adaptive backoff: a site that pushes back gets fewer connections, a lower rate, or a pause.

How this works (in the manner of KumoMTA's traffic-shaping automation and PowerMTA's
backoff mode): every reply a site gives is checked against the policy's
:class:`~bulksend.config.BackoffRule` list, first match wins. A match applies the rule's
actions *for the rule's duration*, absolutely, not compounding: "reduce to 2 connections"
means 2, however many 421s arrive; "rate factor 0.5" means half the configured rate; a
suspension stops new transactions until it ends. A repeated match extends the period. When
the period ends the site's configured limits come back, and the change is logged.

A recipient whose reply triggered a backoff is a *throttle* deferral, not a failed attempt:
the receiver said "not so fast", not "not this recipient", so it is retried when the site
allows, and its retry interval does not grow (the journal's ``Outcome.throttled``).

This module is plain state with no I/O; the destination applies it and sleeps until
:attr:`Backoff.restore_at`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from bulksend.config import BackoffRule

log = logging.getLogger("bulksend.backoff")


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for a site at one moment."""

    max_connections: int
    rate: float | None
    suspended_until: float


class Backoff:
    """One site's backoff state.

    Args:
        site: the site's name, for logs.
        rules: the policy's backoff rules, in order.
        max_connections: the configured connection limit.
        rate: the configured message rate (per second), None for unlimited.
    """

    def __init__(
        self,
        site: str,
        rules: Sequence[BackoffRule],
        *,
        max_connections: int,
        rate: float | None,
    ) -> None:
        self.site = site
        self.rules = tuple(rules)
        self.base_connections = max_connections
        self.base_rate = rate
        self.limits = Limits(max_connections, rate, -math.inf)
        self.restore_at = math.inf  # when the reduced limits end
        self.reason = ""  # the reply that caused the current backoff
        # An operator's pause (``bulksend ctl``), apart from any backoff: wall-clock end,
        # math.inf until resumed, -math.inf when not paused.
        self.paused_until = -math.inf
        self.paused_reason = ""

    @property
    def active(self) -> bool:
        return self.restore_at != math.inf

    def match(self, code: int, enhanced_code: str | None, text: str) -> BackoffRule | None:
        """The first rule this reply matches, if any."""
        for rule in self.rules:
            if rule.matches(code, enhanced_code, text):
                return rule
        return None

    def apply(self, rule: BackoffRule, now: float, reason: str) -> bool:
        """Put ``rule`` in force from ``now``; returns True if the limits changed."""
        old = self.limits
        connections = old.max_connections
        rate = old.rate
        if rule.reduce_connections is not None:
            connections = min(connections, max(rule.reduce_connections, 1))
        if rule.rate_factor is not None and self.base_rate is not None:
            reduced = self.base_rate * rule.rate_factor
            rate = reduced if rate is None else min(rate, reduced)
        suspended = old.suspended_until
        if rule.suspend is not None:
            suspended = max(suspended, now + rule.suspend)
        self.limits = Limits(connections, rate, suspended)
        self.restore_at = max(
            self.restore_at if self.active else now,
            now + rule.duration,
            suspended,
        )
        self.reason = reason
        changed = self.limits != old
        if changed:
            log.warning(
                "site %s backing off until +%.0fs (connections %d, rate %s, suspended %s): %s",
                self.site,
                self.restore_at - now,
                connections,
                "unlimited" if rate is None else f"{rate:g}/s",
                "yes" if suspended > now else "no",
                reason,
            )
        return changed

    def adopt(self, limits: Limits, restore_at: float, reason: str) -> bool:
        """Take another worker's backoff (shared throttles); returns True if it changed."""
        if limits == self.limits and restore_at == self.restore_at:
            return False
        self.limits = limits
        self.restore_at = restore_at
        self.reason = reason
        log.warning("site %s follows a shared backoff: %s", self.site, reason)
        return True

    def pause(self, until: float, reason: str) -> None:
        """An operator's pause until ``until`` (wall clock; -math.inf resumes)."""
        self.paused_until = until
        self.paused_reason = reason if until != -math.inf else ""

    def set_base(self, max_connections: int, rate: float | None) -> None:
        """An operator's new configured limits: in force at once, except that a backoff in
        force keeps what it lowered until it ends."""
        self.base_connections = max_connections
        self.base_rate = rate
        old = self.limits
        if self.active:
            max_connections = min(max_connections, old.max_connections)
            if old.rate is not None:
                rate = old.rate if rate is None else min(rate, old.rate)
        self.limits = Limits(max_connections, rate, old.suspended_until)

    def restore(self, now: float) -> bool:
        """Bring back the configured limits if the period is over; True if it was."""
        if not self.active or now < self.restore_at:
            return False
        self.limits = Limits(self.base_connections, self.base_rate, -math.inf)
        self.restore_at = math.inf
        log.warning("site %s restored to its configured limits", self.site)
        self.reason = ""
        return True
