"""Campaigns: recipients in, personalised and signed messages out.

The single entry point is :class:`Campaign`: ``Campaign.load(path, environ)`` reads the
campaign file, compiles the templates and loads the DKIM keys once; ``campaign.recipients()``
streams the valid recipients; ``campaign.render(recipient)`` returns a
:class:`RenderedMessage` or raises :class:`RenderError` for that recipient alone.
"""

from __future__ import annotations

from bulksend.campaign.dkim import DkimSigner
from bulksend.campaign.recipients import (
    FingerprintSet,
    Recipient,
    RecipientReader,
    Reject,
    RejectKind,
    RejectsFile,
    load_suppression,
)
from bulksend.campaign.render import (
    Campaign,
    RenderedMessage,
    RenderError,
    verp_decode,
    verp_token,
)

__all__ = [
    "Campaign",
    "DkimSigner",
    "FingerprintSet",
    "Recipient",
    "RecipientReader",
    "Reject",
    "RejectKind",
    "RejectsFile",
    "RenderError",
    "RenderedMessage",
    "load_suppression",
    "verp_decode",
    "verp_token",
]
