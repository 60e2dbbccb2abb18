"""Where this account's state lives: the sent-campaign record, the TLS policy state file."""

from __future__ import annotations

import os
from pathlib import Path

TLS_STATE_ENV = "BULKSEND_TLS_STATE"


def state_dir() -> Path:
    """This account's state directory: ``$XDG_STATE_HOME/bulksend`` (``~/.local/state``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "bulksend"


def tls_state_path() -> Path:
    """The TLS state file runs use: ``$BULKSEND_TLS_STATE``, else in :func:`state_dir`."""
    given = os.environ.get(TLS_STATE_ENV)
    return Path(given) if given else state_dir() / "tls-state.sqlite3"
