"""Throttle backends: where a site's rate, connection cap and backoff state live.

:class:`LocalThrottles` (the default) keeps them in this process; the Redis/Valkey backend
(:mod:`bulksend.throttles.redis`, the ``redis`` extra) shares them between every worker of a
campaign, so a site's limits hold in total (ARCHITECTURE invariant 7).
"""

from __future__ import annotations

from bulksend.throttles.local import LocalThrottles
from bulksend.throttles.protocol import Lease, SiteThrottle, ThrottleBackend

__all__ = ["Lease", "LocalThrottles", "SiteThrottle", "ThrottleBackend"]
