"""``[events]``: where a run sends its event stream (bulksend.events).

.. code-block:: toml

    [events]
    webhook = "https://hooks.example.com/bulksend"   # HTTPS only
    secret_env = "BULKSEND_WEBHOOK_SECRET"            # or secret_file: the HMAC key
    batch_size = 100                                   # events per POST, at most
    batch_wait = "1s"                                  # a batch waits no longer to fill
    spool = "events.spool"                             # default: beside the journal
    spool_max = "64MB"                                 # on disk while the receiver is down
    ca_certs = "hooks-ca.pem"                          # trust for the receiver (default: system)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bulksend.config.table import Table
from bulksend.config.values import parse_duration, parse_size

if TYPE_CHECKING:
    from bulksend.config.schema import Secret


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """The webhook of the event stream (None: no webhook)."""

    webhook: str | None = None
    secret: Secret | None = None
    batch_size: int = 100
    batch_wait: float = 1.0
    spool: Path | None = None
    spool_max: int = 64_000_000
    ca_certs: Path | None = None


def load_events(root: Table, secret: Callable[[Table], Secret | None]) -> EventsConfig:
    """The ``[events]`` table; ``secret(table)`` reads its secret_file / secret_env."""
    t = root.sub("events")
    if t is None:
        return EventsConfig()
    default = EventsConfig()
    webhook = t.string("webhook", required=True)
    assert webhook is not None
    parts = urlsplit(webhook)
    if parts.scheme != "https" or not parts.hostname:
        raise t.error(
            "webhook", f"{webhook!r} is not an https:// URL", "Events go over HTTPS only."
        )
    key = secret(t)
    size = t.integer("batch_size", minimum=1)
    wait = t.converted("batch_wait", parse_duration, "Write a duration like '1s'.")
    spool_max = t.converted("spool_max", parse_size, "Write a size like '64MB'.")
    config = EventsConfig(
        webhook=webhook,
        secret=key,
        batch_size=default.batch_size if size is None else size,
        batch_wait=default.batch_wait if wait is None else wait,
        spool=t.path_("spool", must_exist=False),
        spool_max=default.spool_max if spool_max is None else spool_max,
        ca_certs=t.path_("ca_certs"),
    )
    t.finish()
    return config
