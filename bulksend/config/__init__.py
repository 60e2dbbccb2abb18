"""Configuration: frozen dataclasses built once from the campaign TOML.

Code below the CLI never reads environment variables or files on its own; it receives these
objects. The loader (:func:`load_campaign`) is the one place that reads the campaign file, the
key files and password files, and it is handed the environment as an argument, so everything
below it stays pure and testable.

The rooms, each importing only the ones above it:

- :mod:`~bulksend.config.values`: the value parsers and checks (rate, duration, size, host
  names, domains, ports, host:port, nameservers), shared with routing and the CLI's flags.
- :mod:`~bulksend.config.schema`: the frozen dataclasses, :class:`Secret` and the enums.
- :mod:`~bulksend.config.table`: the reader of one TOML table, whose errors name the key.
- :mod:`~bulksend.config.policy`: the ``[policy]`` section (limits, timeouts, retry, backoff).
- :mod:`~bulksend.config.loader`: :func:`load_campaign`, the walk over the whole file.

Every key is documented in ``docs/campaign.md``.
"""

from bulksend.config.loader import load_campaign as load_campaign
from bulksend.config.schema import AttachmentConfig as AttachmentConfig
from bulksend.config.schema import BackoffRule as BackoffRule
from bulksend.config.schema import CampaignConfig as CampaignConfig
from bulksend.config.schema import DkimAlgorithm as DkimAlgorithm
from bulksend.config.schema import DkimConfig as DkimConfig
from bulksend.config.schema import LimitsOverride as LimitsOverride
from bulksend.config.schema import MessageConfig as MessageConfig
from bulksend.config.schema import RecipientsConfig as RecipientsConfig
from bulksend.config.schema import RetryPolicy as RetryPolicy
from bulksend.config.schema import RouteOverride as RouteOverride
from bulksend.config.schema import RoutingSection as RoutingSection
from bulksend.config.schema import Secret as Secret
from bulksend.config.schema import SendingPolicy as SendingPolicy
from bulksend.config.schema import SiteLimits as SiteLimits
from bulksend.config.schema import Smarthost as Smarthost
from bulksend.config.schema import SuppressionConfig as SuppressionConfig
from bulksend.config.schema import SuppressionReason as SuppressionReason
from bulksend.config.schema import Timeouts as Timeouts
from bulksend.config.schema import TlsMode as TlsMode
from bulksend.config.schema import TlsTrust as TlsTrust
from bulksend.config.schema import UnsubscribeConfig as UnsubscribeConfig
from bulksend.config.values import decoding_problem as decoding_problem
from bulksend.config.values import is_fqdn as is_fqdn
from bulksend.config.values import parse_domain as parse_domain
from bulksend.config.values import parse_duration as parse_duration
from bulksend.config.values import parse_rate as parse_rate
from bulksend.config.values import parse_size as parse_size

__all__ = [
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
    "decoding_problem",
    "is_fqdn",
    "load_campaign",
    "parse_domain",
    "parse_duration",
    "parse_rate",
    "parse_size",
]
