"""The suppression store: addresses and domains no campaign of this sender may mail again.

- :mod:`~bulksend.suppression.store`: the persistent store (one SQLite file shared by every
  campaign of a sender) and the view a run consults, re-read when the store changes.
- :mod:`~bulksend.suppression.rules`: which outcomes enter the store (hard bounces at once,
  soft bounces once repeated), pure.

The store is fed by runs (inline bounces), by ``bulksend inbound`` (DSN, ARF) and by
``bulksend suppress`` (by hand, CSV import). See docs/suppression.md.
"""

from __future__ import annotations

from bulksend.config import SuppressionReason as Reason
from bulksend.suppression.store import Entry as Entry
from bulksend.suppression.store import Source as Source
from bulksend.suppression.store import StoreSuppression as StoreSuppression
from bulksend.suppression.store import SuppressionStore as SuppressionStore
from bulksend.suppression.store import normalise_key as normalise_key

__all__ = [
    "Entry",
    "Reason",
    "Source",
    "StoreSuppression",
    "SuppressionStore",
    "normalise_key",
]
