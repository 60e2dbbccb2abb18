"""The mailbox providers' rules bulksend ships: ``providers.toml``, beside this module.

Each provider table has the shape of a campaign's ``[policy.providers.NAME]``
(:func:`bulksend.config.providers.load_provider`), plus the page it was written from and, on
each backoff rule, the page documenting that reply and sample replies the tests check it
against. They are read once, on first use.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from bulksend.config.providers import ProviderPolicy, load_provider
from bulksend.config.table import Table

__all__ = ["RULES_FILE", "shipped_providers"]

#: Where the shipped rules live (for messages and ``policy show``).
RULES_FILE = "bulksend/egress/providers.toml"


@functools.cache
def shipped_providers() -> Mapping[str, ProviderPolicy]:
    """Every shipped provider, by name, in file order."""
    text = resources.files("bulksend.egress").joinpath("providers.toml").read_text("utf-8")
    root = Table(tomllib.loads(text), "", Path(RULES_FILE))
    found = {}
    for name, value in root.items():
        found[name] = load_provider(root.child(value, name), name, origin="shipped")
    return MappingProxyType(found)
