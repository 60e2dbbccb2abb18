"""TLS to MX hosts that an attacker cannot strip: MTA-STS (RFC 8461), DANE (RFC 7672) and
TLS-RPT (RFC 8460).

:mod:`.mtasts`, :mod:`.dane` and :mod:`.tlsrpt` are I/O-free (parsing, matching, counting,
the report); :mod:`.fetch` fetches policy files over HTTPS; :mod:`.state` keeps policies and
counts across runs; :mod:`.policy` makes the per-host decision the delivery layer applies.
"""

from __future__ import annotations

from bulksend.tlspolicy.fetch import FetchError, FetchSettings
from bulksend.tlspolicy.mtasts import PolicyError, StsMode, StsPolicy
from bulksend.tlspolicy.policy import HostPolicy, PolicyKind, TlsPolicies
from bulksend.tlspolicy.state import TlsState

__all__ = [
    "FetchError",
    "FetchSettings",
    "HostPolicy",
    "PolicyError",
    "PolicyKind",
    "StsMode",
    "StsPolicy",
    "TlsPolicies",
    "TlsState",
]
