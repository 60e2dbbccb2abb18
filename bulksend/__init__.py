"""bulksend: a high-throughput bulk email sender on Trio."""

from __future__ import annotations

__version__ = "0.1.0"
