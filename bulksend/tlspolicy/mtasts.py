"""MTA-STS (RFC 8461): the TXT record, the policy file, MX matching and cache freshness.

How this works (no I/O here; :mod:`bulksend.tlspolicy.fetch` fetches, :mod:`.policy` decides):

* ``_mta-sts.<domain>`` TXT (§3.1): exactly one record that begins ``v=STSv1;`` says the
  domain has a policy, and its ``id`` says which version; none, or more than one, means no
  policy. Fields are ``key=value`` pairs separated by ``;`` with optional spaces; ``id`` is
  1-32 letters and digits.
* The policy file (§3.2) is ``key: value`` lines (CRLF or LF). ``version: STSv1``, ``mode``
  (enforce, testing or none) and ``max_age`` (0 to 31557600 seconds) must appear once; ``mx``
  once or more unless the mode is ``none``. Unknown keys are ignored, as §3.2 asks, but a line
  that is not ``key: value`` or a known key with a bad value makes the whole policy invalid.
* An ``mx`` pattern is a host name or ``*.`` and a domain; the wildcard matches exactly one
  leftmost label (§4.1): ``*.example.com`` matches ``mx1.example.com`` but neither
  ``example.com`` nor ``a.b.example.com``.
* A cached policy is used until its ``max_age`` runs out; it is fetched again when the TXT
  ``id`` differs from the cached one, and kept when that fetch fails (§5.1).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "MAX_AGE_LIMIT",
    "PolicyError",
    "StsMode",
    "StsPolicy",
    "mx_matches",
    "parse_policy",
    "parse_txt",
]

#: The largest ``max_age`` a policy may give (§3.2: about one year).
MAX_AGE_LIMIT = 31_557_600

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_MX_PATTERN = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})+\.?")


class PolicyError(ValueError):
    """A policy file or TXT record that does not follow RFC 8461 (sts-policy-invalid)."""


class StsMode(enum.Enum):
    """What a sender does with a policy (§5)."""

    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """One domain's MTA-STS policy.

    Attributes:
        domain: the policy domain (the recipient domain, lowercase A-labels).
        id: the TXT record's ``id`` the policy was fetched under.
        mode: enforce, testing or none.
        mx: the MX host patterns, lowercase, without final dots.
        max_age: seconds the policy may be cached.
        fetched: when it was fetched (wall-clock seconds): it is fresh until
            ``fetched + max_age``.
        text: the policy file's lines, for TLS-RPT's ``policy-string``.
    """

    domain: str
    id: str
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    fetched: float
    text: tuple[str, ...] = ()

    @property
    def expires(self) -> float:
        """When the cached policy may no longer be used (wall-clock seconds)."""
        return self.fetched + self.max_age

    def fresh(self, now: float) -> bool:
        """Whether the policy may still be used at ``now`` (wall-clock seconds)."""
        return now < self.expires

    def allows(self, host: str) -> bool:
        """Whether MX host ``host`` matches one of the policy's ``mx`` patterns."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_txt(records: list[str]) -> str | None:
    """The policy ``id`` of a domain's ``_mta-sts`` TXT records, or None: no policy (§3.1).

    Records that do not begin with ``v=STSv1`` are ignored; none, several, or one with a
    malformed field or no valid ``id`` mean no policy.
    """
    ours = [r for r in records if re.match(r"v=STSv1\s*(;|$)", r)]
    if len(ours) != 1:
        return None
    fields: dict[str, str] = {}
    for written in ours[0].split(";"):
        part = written.strip(" \t")
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not _FIELD.fullmatch(key) or key in fields:
            return None
        fields[key] = value
    policy_id = fields.get("id", "")
    return policy_id if _ID.fullmatch(policy_id) else None


def parse_policy(text: str, *, domain: str, policy_id: str, fetched: float) -> StsPolicy:
    """Parse a policy file strictly (§3.2).

    Raises:
        PolicyError: what is wrong with it, for the report and the journal.
    """
    values: dict[str, list[str]] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        key, sep, value = line.partition(":")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not sep or not _FIELD.fullmatch(key) or not value:
            raise PolicyError(f"line {number} is not 'key: value': {line[:80]!r}")
        values.setdefault(key, []).append(value)
    version = _single(values, "version")
    if version != "STSv1":
        raise PolicyError(f"version is {version!r}, not 'STSv1'")
    mode_text = _single(values, "mode")
    try:
        mode = StsMode(mode_text)
    except ValueError:
        raise PolicyError(f"mode {mode_text!r} is not enforce, testing or none") from None
    age_text = _single(values, "max_age")
    if not age_text.isdigit() or len(age_text) > 10 or int(age_text) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {age_text!r} is not a number of seconds 0-{MAX_AGE_LIMIT}")
    mx = tuple(p.lower().rstrip(".") for p in values.get("mx", []))
    for pattern in mx:
        if not _MX_PATTERN.fullmatch(pattern):
            raise PolicyError(f"mx {pattern!r} is not a host name or '*.' and a domain")
    if not mx and mode is not StsMode.NONE:
        raise PolicyError(f"mode {mode.value} needs at least one mx line")
    return StsPolicy(domain, policy_id, mode, mx, int(age_text), fetched, tuple(lines))


def _single(values: dict[str, list[str]], key: str) -> str:
    found = values.get(key, [])
    if len(found) != 1:
        raise PolicyError(f"{key} must appear once, not {len(found)} times")
    return found[0]


def mx_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` matches an ``mx`` pattern: exactly, or ``*.`` for one label (§4.1)."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern
