"""bulksend: a high-throughput bulk email sender on Trio.

The public API, listed with what each name is in ``docs/api.md``: load a campaign, run it,
open its journal, read the outcomes, the metrics, and the errors. Each name is re-exported
from the module it lives in (``from M import X as X``, as trio does); anything imported from
deeper modules may move. Importing this package does not load the command line.
"""

from __future__ import annotations

from bulksend.campaign import Campaign as Campaign
from bulksend.campaign import RenderError as RenderError
from bulksend.config import CampaignConfig as CampaignConfig
from bulksend.config import load_campaign as load_campaign
from bulksend.delivery.run import RunOptions as RunOptions
from bulksend.delivery.run import RunSummary as RunSummary
from bulksend.delivery.run import run_campaign as run_campaign
from bulksend.errors import BulksendError as BulksendError
from bulksend.errors import ConfigError as ConfigError
from bulksend.errors import JournalError as JournalError
from bulksend.journal import CampaignTally as CampaignTally
from bulksend.journal import Category as Category
from bulksend.journal import Journal as Journal
from bulksend.journal import JournalInUse as JournalInUse
from bulksend.journal import JournalWriter as JournalWriter
from bulksend.journal import Kind as Kind
from bulksend.journal import Outcome as Outcome
from bulksend.journal import RecipientState as RecipientState
from bulksend.journal import Status as Status
from bulksend.metrics import Metrics as Metrics
from bulksend.routing import PermanentRoutingError as PermanentRoutingError
from bulksend.routing import RoutingError as RoutingError
from bulksend.routing import TransientRoutingError as TransientRoutingError
from bulksend.smtp.errors import InDoubtError as InDoubtError
from bulksend.smtp.errors import LocalProtocolError as LocalProtocolError
from bulksend.smtp.errors import PermanentReplyError as PermanentReplyError
from bulksend.smtp.errors import RemoteProtocolError as RemoteProtocolError
from bulksend.smtp.errors import ReplyError as ReplyError
from bulksend.smtp.errors import SMTPConnectionError as SMTPConnectionError
from bulksend.smtp.errors import SMTPError as SMTPError
from bulksend.smtp.errors import SMTPTimeoutError as SMTPTimeoutError
from bulksend.smtp.errors import TLSError as TLSError
from bulksend.smtp.errors import TransientReplyError as TransientReplyError

__version__ = "0.1.0"

__all__ = [
    "BulksendError",
    "Campaign",
    "CampaignConfig",
    "CampaignTally",
    "Category",
    "ConfigError",
    "InDoubtError",
    "Journal",
    "JournalError",
    "JournalInUse",
    "JournalWriter",
    "Kind",
    "LocalProtocolError",
    "Metrics",
    "Outcome",
    "PermanentReplyError",
    "PermanentRoutingError",
    "RecipientState",
    "RemoteProtocolError",
    "RenderError",
    "ReplyError",
    "RoutingError",
    "RunOptions",
    "RunSummary",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPTimeoutError",
    "Status",
    "TLSError",
    "TransientReplyError",
    "TransientRoutingError",
    "load_campaign",
    "run_campaign",
]
