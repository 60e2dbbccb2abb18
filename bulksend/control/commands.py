"""Live control of a running campaign (``bulksend ctl``): the commands and the state they
leave, with no I/O.

How this works: a :class:`Command` (parsed from one JSON object, the control socket's
request) changes a :class:`ControlState`: pauses of the whole campaign, of a site or of a
domain, each until a wall-clock time or until resumed; a site's rate or connection cap for a
while or until the run ends (or back to the configured value); domains cancelled or bounced
(``ctl bounce-now``).
:meth:`ControlState.apply` answers with what changed, in words. The running process
(:mod:`bulksend.control.server`) then makes every destination follow the state, and
:meth:`ControlState.expire` drops what has run out.

Pauses, cancellations and bounces outlive the process (:meth:`ControlState.persistent`): a
site paused stays paused after ``resume`` until it is resumed. Rate and connection changes
are for this run only, as their name says ("until the end of the run or for a duration").

A *site selector* names a site as ``status`` shows it (its MX host names), by one of its MX
host names, or by a suffix of them (``google.com`` matches ``aspmx.l.google.com``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bulksend.config.values import parse_domain

#: The version of the persistent state's JSON (``<journal>.control.json``).
STATE_VERSION: Final = 1

ACTIONS: Final = ("pause", "resume", "cancel", "bounce", "rate", "connections", "status")
#: The commands that end a domain's waiting recipients.
ENDINGS: Final = ("cancel", "bounce")
SCOPES: Final = ("campaign", "site", "domain")


class CommandError(ValueError):
    """A command that cannot be carried out (the answer says why, in one line)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One request to the running process."""

    action: str
    scope: str = "campaign"
    target: str = ""
    value: float | None = None  # rate (per second) or connections; None: the configured one
    duration: float | None = None  # seconds; None: until resumed / the end of the run

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "scope": self.scope,
            "target": self.target,
            "value": self.value,
            "for": self.duration,
        }

    @classmethod
    def from_json(cls, data: object) -> Command:
        """The command in a request, checked.

        Raises:
            CommandError: not a command this process knows, or an impossible one.
        """
        if not isinstance(data, Mapping):
            raise CommandError("a command is a JSON object")
        action, scope, target = data.get("action"), data.get("scope"), data.get("target", "")
        value, duration = data.get("value"), data.get("for")
        if action not in ACTIONS:
            raise CommandError(f"unknown command {action!r}; one of {', '.join(ACTIONS)}")
        if scope not in SCOPES or not isinstance(target, str):
            raise CommandError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
        if scope == "campaign" and target:
            raise CommandError("a command for the whole campaign names no site or domain")
        if scope != "campaign" and not target:
            raise CommandError(f"a {scope} command needs the {scope}'s name")
        if scope == "domain":
            try:
                target = parse_domain(target)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        elif scope == "site":
            target = target.lower().rstrip(".")
        if duration is not None and not (_number(duration) and 0 < duration < math.inf):
            raise CommandError(f"--for {duration!r}: a duration must be positive")
        command = cls(action, scope, target, value, duration)
        command._check()
        return command

    def _check(self) -> None:
        if self.action in ("rate", "connections"):
            if self.scope != "site":
                raise CommandError(f"{self.action} applies to a site")
            if self.value is None:  # back to the configured value
                if self.duration is not None:
                    raise CommandError(f"{self.action} back to its configured value takes no --for")
            elif not (_number(self.value) and 0 < self.value < math.inf):
                raise CommandError(f"{self.action} needs a positive number, not {self.value!r}")
            elif self.action == "connections" and self.value != int(self.value):
                raise CommandError(f"connections must be a whole number, not {self.value!r}")
        if self.action in ENDINGS and self.scope != "domain":
            raise CommandError(f"{self.action} applies to a domain (--domain)")
        if self.action in ("resume", *ENDINGS, "status") and self.duration is not None:
            raise CommandError(f"{self.action} takes no --for")

    @property
    def subject(self) -> str:
        """What the command is about, in words: ``the campaign``, ``site X``, ``domain Y``."""
        return "the campaign" if self.scope == "campaign" else f"{self.scope} {self.target}"


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _for(duration: float | None) -> str:
    return "" if duration is None else f" for {duration:g}s"


def site_matches(selector: str, name: str, hosts: Iterable[str]) -> bool:
    """Whether a site selector names the site ``name`` with MX ``hosts`` (see module)."""
    if selector == name:
        return True
    return any(host == selector or host.endswith("." + selector) for host in hosts)


@dataclass(frozen=True, slots=True)
class Override:
    """A site limit changed by an operator until ``until`` (wall clock; inf: run's end)."""

    value: float
    until: float


@dataclass
class ControlState:
    """What operators asked for, still in force."""

    #: (scope, target) -> until (wall clock; math.inf: until resumed).
    pauses: dict[tuple[str, str], float] = field(default_factory=dict)
    rates: dict[str, Override] = field(default_factory=dict)
    connections: dict[str, Override] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    bounced: set[str] = field(default_factory=set)

    def apply(self, command: Command, now: float) -> str:
        """Change the state as ``command`` says; returns what changed, in words.

        Raises:
            CommandError: the command changes nothing that exists (resume what is not
                paused), or is ``status`` (no change: the caller answers it).
        """
        key = (command.scope, command.target)
        until = math.inf if command.duration is None else now + command.duration
        if command.action == "pause":
            self.pauses[key] = until
            return f"{command.subject} paused{_for(command.duration) or ' until resumed'}"
        if command.action == "resume":
            if self.pauses.pop(key, None) is None:
                raise CommandError(f"{command.subject} is not paused")
            return f"{command.subject} resumed"
        if command.action == "cancel":
            self.cancelled.add(command.target)
            self.pauses.pop(key, None)
            return f"{command.subject} cancelled: its waiting recipients end cancelled"
        if command.action == "bounce":
            self.bounced.add(command.target)
            self.pauses.pop(key, None)
            return f"{command.subject} bounced: its waiting recipients end bounced"
        if command.action in ("rate", "connections"):
            table = self.rates if command.action == "rate" else self.connections
            if command.value is None:
                if table.pop(command.target, None) is None:
                    raise CommandError(f"{command.subject}: no {command.action} set by ctl")
                return f"{command.subject}: {command.action} back to its configured value"
            table[command.target] = Override(command.value, until)
            shown = f"{command.value:g}/s" if command.action == "rate" else f"{command.value:g}"
            lasts = _for(command.duration) or " until the run ends"
            return f"{command.subject}: {command.action} {shown}{lasts}"
        raise CommandError(f"{command.action} changes nothing")

    def also_set(self, command: Command, sites: Iterable[tuple[str, tuple[str, ...]]]) -> str:
        """After ``command`` put a site's rate or cap back: the other selectors that still
        set it for a site ``command`` names (``sites``: each site's name and MX hosts), in
        words ("" when none)."""
        table = self.rates if command.action == "rate" else self.connections
        others: set[str] = set()
        for name, hosts in sites:
            if site_matches(command.target, name, hosts):
                others.update(s for s in table if site_matches(s, name, hosts))
        if not others:
            return ""
        return f" (still set as {', '.join(sorted(others))}: put those back too)"

    def expire(self, now: float) -> list[str]:
        """Drop what has run out at ``now``; returns what ended, in words."""
        ended = []
        for (scope, target), until in list(self.pauses.items()):
            if until <= now:
                del self.pauses[scope, target]
                subject = "the campaign" if scope == "campaign" else f"{scope} {target}"
                ended.append(f"{subject} resumed (its pause ran out)")
        for what, table in (("rate", self.rates), ("connections", self.connections)):
            for site, override in list(table.items()):
                if override.until <= now:
                    del table[site]
                    ended.append(f"site {site}: {what} back to its configured value")
        return ended

    def next_expiry(self) -> float:
        """The earliest wall-clock time something ends (math.inf: nothing does)."""
        times = [*self.pauses.values()]
        times += [o.until for o in (*self.rates.values(), *self.connections.values())]
        return min(times, default=math.inf)

    def site_paused_until(self, name: str, hosts: Iterable[str]) -> float:
        """Until when the site is paused (the campaign's pause included; -inf: it is not)."""
        hosts = tuple(hosts)
        until = -math.inf
        for (scope, target), end in self.pauses.items():
            if scope == "campaign" or (scope == "site" and site_matches(target, name, hosts)):
                until = max(until, end)
        return until

    def site_override(
        self, table: Mapping[str, Override], name: str, hosts: Iterable[str]
    ) -> float | None:
        """The value an operator set for the site in ``table`` (the last matching), if any."""
        hosts = tuple(hosts)
        found = None
        for selector, override in table.items():
            if site_matches(selector, name, hosts):
                found = override.value
        return found

    def held(self, domain: str, now: float) -> bool:
        """Whether ``domain`` must not be sent to now (paused, cancelled or bounced)."""
        if domain in self.cancelled or domain in self.bounced:
            return True
        return self.pauses.get(("domain", domain), -math.inf) > now

    # --- persistence ------------------------------------------------------------------------

    def persistent(self) -> dict[str, Any]:
        """What outlives the process (pauses, cancellations, bounces), as JSON."""
        return {
            "version": STATE_VERSION,
            "pauses": [
                {"scope": s, "target": t, "until": None if u == math.inf else u}
                for (s, t), u in sorted(self.pauses.items())
            ],
            "cancelled": sorted(self.cancelled),
            "bounced": sorted(self.bounced),
        }

    def shared(self) -> dict[str, Any]:
        """The state a PostgreSQL journal's workers share: :meth:`persistent`, and the
        sites' rate and connection changes (the workers come and go, the journal stays)."""
        return self.persistent() | {
            what: {
                site: {"value": o.value, "until": None if o.until == math.inf else o.until}
                for site, o in sorted(table.items())
            }
            for what, table in (("rates", self.rates), ("connections", self.connections))
        }

    @classmethod
    def restore(cls, data: object, now: float) -> ControlState:
        """The state :meth:`persistent` or :meth:`shared` wrote, less what ran out by ``now``.

        Raises:
            CommandError: not a state this bulksend wrote.
        """
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            raise CommandError(f"not a control state of version {STATE_VERSION}")
        state = cls()
        try:
            for pause in data["pauses"]:
                until = math.inf if pause["until"] is None else float(pause["until"])
                if until > now:
                    state.pauses[str(pause["scope"]), str(pause["target"])] = until
            state.cancelled = {str(d) for d in data["cancelled"]}
            state.bounced = {str(d) for d in data.get("bounced", ())}  # none before bounce
            for what, table in (("rates", state.rates), ("connections", state.connections)):
                for site, override in data.get(what, {}).items():
                    until = math.inf if override["until"] is None else float(override["until"])
                    if until > now:
                        table[str(site)] = Override(float(override["value"]), until)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CommandError(f"a damaged control state ({exc!r})") from None
        return state
