"""The exception hierarchy: one root, split the way a sender acts on it.

Every error bulksend raises derives from :class:`BulksendError`. SMTP errors are split
into *transient* (retry later) and *permanent* (bounce) so a caller never has to look at a
reply code to decide; network failures also subclass the builtin ``ConnectionError`` or
``TimeoutError`` so ordinary handlers catch them.
"""

from __future__ import annotations


class BulksendError(Exception):
    """Root of every error bulksend raises."""


class ConfigError(BulksendError):
    """A user's configuration or input file is wrong; the message names the file, key and fix."""


class JournalError(BulksendError):
    """The journal cannot be read or written (corrupt, disk full, changed campaign)."""


class SuppressionError(BulksendError):
    """The suppression store cannot be opened, read or written."""
