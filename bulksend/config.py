"""Configuration: frozen dataclasses built once from the campaign TOML.

Code below the CLI never reads environment variables or files on its own; it receives these
objects. The loader (``load_campaign``) names the file, the key and the fix in every error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TlsMode(enum.Enum):
    """STARTTLS policy (RFC 3207 §6: a client should be configurable to require TLS)."""

    NONE = "none"  # never attempt STARTTLS
    OPPORTUNISTIC = "opportunistic"  # use it when offered; fall back to plaintext on failure
    REQUIRED = "required"  # fail (temporarily) when unavailable or the handshake fails


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-stage deadlines in seconds; defaults are RFC 5321 §4.5.3.2's.

    Each applies to the *whole* reply of its stage, not to each byte.
    """

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    starttls: float = 120.0
    auth: float = 120.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    final_dot: float = 600.0
    rset: float = 120.0
    quit: float = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a deferred recipient is tried again (RFC 5321 §4.5.4.1 in spirit).

    The n-th retry waits ``min(initial * factor**(n-1), maximum)`` seconds, with +/- ``jitter``
    fraction of random spread. After ``max_age`` seconds since the first attempt the
    recipient expires with its last reply.
    """

    initial: float = 300.0
    factor: float = 2.0
    maximum: float = 4 * 3600.0
    jitter: float = 0.2
    max_age: float = 2 * 86400.0
