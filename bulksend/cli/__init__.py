"""The ``bulksend`` command line: a thin face over the campaign, delivery and journal rooms.

The entry point is :func:`main` (``bulksend = "bulksend.cli:main"``).
"""

from __future__ import annotations

from bulksend.cli.app import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_UNDELIVERED,
    EXIT_USAGE,
    campaign_sidecar,
    judge_dkim,
    judge_dmarc,
    judge_spf,
    main,
    send,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_UNDELIVERED",
    "EXIT_USAGE",
    "campaign_sidecar",
    "judge_dkim",
    "judge_dmarc",
    "judge_spf",
    "main",
    "send",
]
