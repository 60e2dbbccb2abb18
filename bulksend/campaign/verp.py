"""Signed VERP return paths: a forged bounce cannot name (and suppress) an address.

With ``[bounces] key_file`` (or ``key_env``) the return path of a recipient carries a tag
before its VERP token, ``bounces+<tag>.user=example.com@example.org``: the first 40 bits of
``HMAC-SHA256(key, normalised address)`` in lower-case base32, 8 characters that survive an
MTA that changes the case of the local part. ``bulksend inbound`` given the key acts only on
reports whose tag verifies; nobody without the key can make the tag of another address.

A return path must keep its local part within 64 octets (RFC 5321 §4.5.3.1.1). When the tag
would push it over, the recipient's return path is the template without a token
(``bounces+@example.org``): its bounces cannot be linked to the address, and a listener with
the key drops them as unsigned, which never suppresses anyone by mistake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

from bulksend.campaign.recipients import normalise_address

__all__ = [
    "MAX_LOCAL_PART",
    "TAG_LENGTH",
    "signed_return_path",
    "split_tag",
    "tag_verifies",
    "verp_tag",
]

TAG_LENGTH: Final = 8
MAX_LOCAL_PART: Final = 64
_TAG: Final = re.compile(r"[a-z2-7]{8}\.", re.IGNORECASE)


def verp_tag(key: bytes, address: str) -> str:
    """The tag of ``address`` under ``key`` (8 lower-case base32 characters)."""
    message = normalise_address(address).encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()[: TAG_LENGTH * 5 // 8]
    return base64.b32encode(digest).decode("ascii").lower()


def signed_return_path(key: bytes, before: str, after: str, address: str, token: str) -> str:
    """``before + tag "." token + after``, or ``before + after`` when that local part would
    be longer than 64 octets."""
    signed = f"{before}{verp_tag(key, address)}.{token}{after}"
    if len(signed.rpartition("@")[0].encode("utf-8")) > MAX_LOCAL_PART:
        return before + after
    return signed


def split_tag(token: str) -> tuple[str, str] | None:
    """``"<tag>.<token>"`` -> (tag, token); None when the token carries no tag."""
    if not _TAG.match(token) or len(token) == TAG_LENGTH + 1:
        return None
    return token[:TAG_LENGTH].lower(), token[TAG_LENGTH + 1 :]


def tag_verifies(keys: Sequence[bytes], tag: str, address: str) -> bool:
    """Whether ``tag`` is the tag of ``address`` under one of ``keys``."""
    given = tag.encode("ascii", "replace")
    return any(hmac.compare_digest(verp_tag(key, address).encode(), given) for key in keys)
