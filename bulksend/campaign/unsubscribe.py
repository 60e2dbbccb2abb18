"""One-click unsubscribe tokens (RFC 8058): an HMAC over the campaign and the address.

The token in a message's unsubscribe URL is ``base64url(HMAC-SHA256(key, campaign "\\0"
address))`` cut to 128 bits, the address normalised as the suppression list normalises it.
The endpoint verifies it with no lookup, and nobody without the key can make the token of
another address. The key is read from a file or the environment (``[unsubscribe] key_file``
or ``key_env``), never written in the campaign; the endpoint accepts several keys, so a key
can be replaced while mail signed with the old one is still being answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from bulksend.campaign.recipients import normalise_address
from bulksend.config.schema import UnsubscribeConfig

__all__ = ["signing_key", "unsubscribe_token", "verify_token"]

_TOKEN_BYTES: Final = 16


def signing_key(unsubscribe: UnsubscribeConfig | None) -> bytes | None:
    """The HMAC key of a campaign's unsubscribe tokens, if it has one."""
    if unsubscribe is None or unsubscribe.key is None:
        return None
    return unsubscribe.key.reveal().encode("utf-8")


def unsubscribe_token(key: bytes, campaign_id: str, address: str) -> str:
    """The token of ``address`` in campaign ``campaign_id`` (22 URL-safe characters)."""
    message = f"{campaign_id}\0{normalise_address(address)}".encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()[:_TOKEN_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify_token(keys: Sequence[bytes], campaign_id: str, address: str, token: str) -> bool:
    """Whether ``token`` is the token of ``address`` in ``campaign_id`` under one of ``keys``."""
    given = token.encode("ascii", "replace")
    return any(
        hmac.compare_digest(unsubscribe_token(key, campaign_id, address).encode(), given)
        for key in keys
    )
