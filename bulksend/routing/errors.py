"""Routing failures, split the way a sender acts on them.

A :class:`PermanentRoutingError` bounces the recipient (the domain publishes that it takes no
mail, or does not exist); a :class:`TransientRoutingError` defers it (DNS was unavailable, or
gave nothing usable yet). Both carry an RFC 3463 enhanced status code and a text, so the journal
can record them the way it records an SMTP reply.
"""

from __future__ import annotations

from bulksend.errors import BulksendError

__all__ = ["PermanentRoutingError", "RoutingError", "TransientRoutingError"]


class RoutingError(BulksendError):
    """A domain could not be turned into a route.

    Attributes:
        domain: the domain as given (or its A-label form once known).
        enhanced_code: RFC 3463 status, e.g. ``"5.1.10"`` or ``"4.4.3"``.
        text: what happened, for a person reading the journal.
    """

    #: True when retrying later may succeed.
    transient: bool = True

    def __init__(self, domain: str, enhanced_code: str, text: str) -> None:
        self.domain = domain
        self.enhanced_code = enhanced_code
        self.text = text
        super().__init__(f"{domain}: {enhanced_code} {text}")

    def __reduce__(self) -> tuple[type[RoutingError], tuple[str, str, str]]:
        return (type(self), (self.domain, self.enhanced_code, self.text))


class PermanentRoutingError(RoutingError):
    """Mail for this domain cannot be delivered: bounce, do not retry."""

    transient = False


class TransientRoutingError(RoutingError):
    """The route is unknown for now: defer and retry later."""

    transient = True
