"""The campaign's configuration: frozen dataclasses, :class:`Secret` and the enums.

Built once by :func:`bulksend.config.load_campaign` and handed down; nothing here reads a file
or the environment.
"""

from __future__ import annotations

import enum
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from bulksend.config.egress import EgressConfig

if TYPE_CHECKING:  # providers.py imports this module
    from bulksend.config.providers import ProviderPolicy

from bulksend.config.events import EventsConfig
from bulksend.config.schedule import ScheduleConfig

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "AttachmentConfig",
    "BackoffRule",
    "CampaignConfig",
    "DkimAlgorithm",
    "DkimConfig",
    "LimitsOverride",
    "MessageConfig",
    "RecipientsConfig",
    "RetryPolicy",
    "RouteOverride",
    "RoutingSection",
    "Secret",
    "SendingPolicy",
    "SiteLimits",
    "Smarthost",
    "SuppressionConfig",
    "SuppressionReason",
    "Timeouts",
    "TlsMode",
    "TlsTrust",
    "UnsubscribeConfig",
    "pick",
]


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


# --------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """A secret string (a private key, a password) whose ``repr`` and ``str`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call it only where the value is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Worker processes (--workers N) receive the config by pickling.
        return (Secret, (self._value,))


# --------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True, slots=True)
class AttachmentConfig:
    """One file attached to every message (encoded once per campaign)."""

    path: Path
    content_type: str
    filename: str


@dataclass(frozen=True, slots=True)
class MessageConfig:
    """What each message looks like. Fields marked *template* are Jinja2 templates."""

    from_address: str  # ASCII (IDN domain as A-labels)
    subject: str  # template
    from_name: str = ""  # template
    reply_to: str | None = None
    to_name: str = ""  # template
    text_template: Path | None = None
    html_template: Path | None = None
    attachments: tuple[AttachmentConfig, ...] = ()
    feedback_id: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # (name, value template), in file order


@dataclass(frozen=True, slots=True)
class RecipientsConfig:
    """Where the recipients come from and where the ones not sent are written down."""

    file: Path
    format: str  # "csv" or "jsonl"
    rejects: Path
    email_column: str = "email"
    suppression: Path | None = None
    allow_test_domain: bool = False
    encoding: str = "utf-8"  # a Python codec name, checked at load time


class SuppressionReason(enum.StrEnum):
    """Why an address (or domain) is in the suppression store."""

    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"  # repeated soft bounces
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"


_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SuppressionConfig:
    """The ``[suppression]`` section: the persistent store and the rules that feed it.

    ``expiry`` maps a reason to seconds after its last event (a reason not in it never
    expires). ``soft_bounce_limit`` soft bounces within ``soft_bounce_window`` seconds
    suppress an address as ``soft_bounce``.
    """

    #: A SQLite file, or a postgresql:// URL; None: the default place
    #: (:func:`~bulksend.suppression.backend.campaign_store`).
    store: Path | str | None = None
    enabled: bool = True  # false: ``store = false``, the campaign uses no store
    soft_bounce_limit: int = 3
    soft_bounce_window: float = 7 * _DAY
    expiry: Mapping[SuppressionReason, float] = field(
        default_factory=lambda: MappingProxyType({SuppressionReason.SOFT_BOUNCE: 30 * _DAY})
    )


@dataclass(frozen=True, slots=True)
class UnsubscribeConfig:
    """RFC 8058 one-click unsubscribe (and an optional RFC 2369 mailto)."""

    url: str  # template; must render to an https:// URL
    mailto: str | None = None
    #: The HMAC key of ``unsubscribe_token`` (bulksend.campaign.unsubscribe); None: no token.
    key: Secret | None = None


class DkimAlgorithm(enum.Enum):
    """DKIM signing algorithms (RFC 6376 §3.3, RFC 8463)."""

    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


@dataclass(frozen=True, slots=True)
class DkimConfig:
    """One DKIM signature to add to every message."""

    domain: str
    selector: str
    algorithm: DkimAlgorithm
    private_key: Secret = field(repr=False)  # PEM (or base64 raw ed25519 seed)
    key_origin: str = ""  # where the key came from, for error messages: never the key


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """Traffic limits of one destination (a site: the MX hosts one or more domains share).

    ``rate`` and ``connection_rate`` are per second; ``None`` means no limit beyond the
    connection cap.
    """

    max_connections: int = 5
    rate: float | None = None
    connection_rate: float | None = None
    messages_per_connection: int = 100
    recipients_per_transaction: int = 1
    idle_timeout: float = 30.0
    tls: TlsMode = TlsMode.OPPORTUNISTIC
    #: The ``[egress.pool.NAME]`` to send from (None: the campaign's, else the default address).
    pool: str | None = None
    #: ``"source"``: the limits above hold per (site, source address); ``"site"``: in total.
    scope: str = "source"


@dataclass(frozen=True, slots=True)
class LimitsOverride:
    """A partial :class:`SiteLimits`: ``None`` fields inherit."""

    max_connections: int | None = None
    rate: float | None = None
    connection_rate: float | None = None
    messages_per_connection: int | None = None
    recipients_per_transaction: int | None = None
    idle_timeout: float | None = None
    tls: TlsMode | None = None
    pool: str | None = None
    scope: str | None = None

    def apply(self, base: SiteLimits) -> SiteLimits:
        """Return ``base`` with this override's set fields replacing its own."""
        return SiteLimits(
            max_connections=pick(self.max_connections, base.max_connections),
            rate=pick(self.rate, base.rate),
            connection_rate=pick(self.connection_rate, base.connection_rate),
            messages_per_connection=pick(
                self.messages_per_connection, base.messages_per_connection
            ),
            recipients_per_transaction=pick(
                self.recipients_per_transaction, base.recipients_per_transaction
            ),
            idle_timeout=pick(self.idle_timeout, base.idle_timeout),
            tls=pick(self.tls, base.tls),
            pool=pick(self.pool, base.pool),
            scope=pick(self.scope, base.scope),
        )


_T = TypeVar("_T")


def pick(value: _T | None, default: _T) -> _T:
    """``value``, or ``default`` where it is None (an unset key or override field)."""
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class BackoffRule:
    """When a reply matches, the destination slows down.

    Every condition that is set must match (code, enhanced code prefix, regex on the text);
    every action that is set applies. ``duration`` is how long the reduced connection cap or
    rate stays in force after the last matching reply before the site's limits come back.
    """

    code: str | None = None  # "421", or a pattern with x for any digit: "4xx", "45x"
    enhanced_code: str | None = None  # "4.7.28" or a prefix "4.7"
    text: re.Pattern[str] | None = None
    reduce_connections: int | None = None
    rate_factor: float | None = None
    suspend: float | None = None  # seconds
    duration: float = 600.0  # seconds

    def matches(self, code: int, enhanced_code: str | None, text: str) -> bool:
        """Say whether a reply matches every condition of this rule."""
        if self.code is not None:
            digits = f"{code:03d}"
            if len(digits) != 3 or any(
                p not in ("x", d) for p, d in zip(self.code, digits, strict=True)
            ):
                return False
        if self.enhanced_code is not None:
            if enhanced_code is None:
                return False
            if enhanced_code != self.enhanced_code and not enhanced_code.startswith(
                self.enhanced_code + "."
            ):
                return False
        return self.text is None or self.text.search(text) is not None


@dataclass(frozen=True, slots=True)
class SendingPolicy:
    """How fast, how many at once, how securely, and for how long to keep trying."""

    defaults: SiteLimits = SiteLimits()
    domains: Mapping[str, LimitsOverride] = field(default_factory=lambda: MappingProxyType({}))
    sites: Mapping[str, LimitsOverride] = field(default_factory=lambda: MappingProxyType({}))
    max_total_connections: int = 500
    total_rate: float | None = None
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    backoff: tuple[BackoffRule, ...] = ()
    #: ``[policy.providers.NAME]``: limits and backoff shared by every matching site.
    providers: Mapping[str, ProviderPolicy] = field(default_factory=lambda: MappingProxyType({}))
    #: ``[policy] shipped_rules``: whether bulksend's own provider rules apply.
    shipped_rules: bool = True


@dataclass(frozen=True, slots=True)
class RouteOverride:
    """Send a domain's mail to this host instead of its MX."""

    host: str
    port: int = 25


@dataclass(frozen=True, slots=True)
class Smarthost:
    """Relay every message through one submission server."""

    host: str
    port: int = 587
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    tls: TlsMode = TlsMode.REQUIRED


@dataclass(frozen=True, slots=True)
class RoutingSection:
    """The campaign file's ``[routing]`` section, as written.

    :func:`bulksend.delivery.run.routing_config` turns it, with the run's options, into the
    :class:`bulksend.routing.RoutingConfig` the router uses.
    """

    nameservers: tuple[str, ...] = ()
    allow_private_addresses: bool = False
    overrides: Mapping[str, RouteOverride] = field(default_factory=lambda: MappingProxyType({}))
    smarthost: Smarthost | None = None
    dnssec: bool = False  # the nameservers validate DNSSEC: DANE (RFC 7672)
    mta_sts: bool = True  # apply MTA-STS policies (RFC 8461)


@dataclass(frozen=True, slots=True)
class TlsTrust:
    """The ``[tls]`` section: certificate authorities trusted besides the system's.

    ``ca_certs`` is the PEM text of ``ca_file``, read (and checked) by the loader, so the
    delivery code builds its verifying context without reading a file.
    """

    ca_file: Path | None = None
    ca_certs: str | None = None


#: The default cap on one rendered message: the common receivers' limit (Gmail, Outlook).
DEFAULT_MAX_MESSAGE_SIZE = 25 * 1000 * 1000


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """A whole campaign file, loaded and checked."""

    source: Path  # the campaign file, absolute
    id: str
    message: MessageConfig
    envelope_sender: str  # may contain one "{token}" in its local part (VERP)
    recipients: RecipientsConfig
    unsubscribe: UnsubscribeConfig | None = None
    dkim: tuple[DkimConfig, ...] = ()
    policy: SendingPolicy = SendingPolicy()
    routing: RoutingSection = RoutingSection()
    #: Our name in EHLO; None: the run's ``--ehlo-hostname``, else this host's FQDN.
    ehlo_hostname: str | None = None
    #: No rendered message may be larger (bytes); a recipient whose message is fails alone.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    tls: TlsTrust = TlsTrust()
    suppression: SuppressionConfig = SuppressionConfig()
    #: ``[journal] url``: the campaign's PostgreSQL journal (``postgresql://...``), used
    #: when no ``--journal`` is given; None: a SQLite file beside the campaign file.
    journal_url: str | None = None
    #: ``[egress]``: source addresses and pools (empty: the machine's default address).
    egress: EgressConfig = field(default_factory=EgressConfig)
    #: ``[schedule]``: when it may send (bulksend.config.schedule).
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    #: ``[events]``: the event stream's webhook (bulksend.config.events).
    events: EventsConfig = field(default_factory=EventsConfig)
    #: ``[bounces] key_file``/``key_env``: the HMAC key of signed VERP return paths
    #: (bulksend.campaign.verp); None: unsigned.
    verp_key: Secret | None = None
    #: Problems worth telling the user that do not stop the campaign (e.g. a key file
    #: readable by others).
    warnings: tuple[str, ...] = ()
