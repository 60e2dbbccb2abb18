"""What goes on the wire besides the commands' names: checked arguments and encoded data.

* Command arguments are checked before a byte is produced: CR, LF, NUL or any other control
  character (the project's one rule, :data:`bulksend.text.CONTROL`, which also refuses lone
  surrogates: text that cannot be encoded), and paths longer than RFC 5321 §4.5.3.1 allows,
  raise :class:`LocalProtocolError` (no command injection). An :class:`Envelope` checks its
  addresses once, when it is made.
* Message data is normalised (bare CR and bare LF become CRLF, RFC 5321 §2.3.8), dot-stuffed
  (§4.5.2) and terminated with CRLF.CRLF (:func:`encode_data`). Normalising before stuffing
  is what defeats SMTP smuggling (CVE-2023-51764/5/6).

Pure functions and one frozen value, used by :class:`~bulksend.smtp.protocol.ClientProtocol`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from bulksend.smtp.errors import LocalProtocolError
from bulksend.text import CONTROL

__all__ = [
    "MAX_DOMAIN",
    "MAX_LOCAL_PART",
    "MAX_PATH",
    "Envelope",
    "auth_plain",
    "check_address",
    "check_text",
    "encode_data",
]

# RFC 5321 §4.5.3.1.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


def check_text(what: str, value: str) -> None:
    match = CONTROL.search(value)
    if match is not None:
        raise LocalProtocolError(
            f"{what} contains control character {match.group()!r}: refused before sending"
        )


# A plain ASCII address, short enough for every limit of RFC 5321 §4.5.3.1: printable, no
# space, "<" or ">"; the domain holds no "@" (the local part may). Most addresses are such, and
# one match clears them; anything else gets the detailed checks below.
_PLAIN_ADDRESS = re.compile(r"[!-;=?-~]{1,64}@[!-;=?A-~]{1,189}")


def check_address(address: str, *, smtputf8: bool = False) -> None:
    """Refuse an envelope address that could inject a command or break RFC 5321 limits.

    The empty address (the null reverse-path ``<>``) is allowed.

    Raises:
        LocalProtocolError: control characters, ``<``/``>``, over-long parts, or a non-ASCII
            address when the transaction is not SMTPUTF8.
    """
    if _PLAIN_ADDRESS.fullmatch(address) is not None:
        return
    check_text("address", address)
    if not address:
        return
    if any(c in address for c in "<> "):
        raise LocalProtocolError(f"address {address!r} contains '<', '>' or a space")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise LocalProtocolError(f"address {address!r} is not local-part@domain")
    encoded = address.encode("utf-8")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise LocalProtocolError(f"local part of {address!r} exceeds {MAX_LOCAL_PART} octets")
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise LocalProtocolError(f"domain of {address!r} exceeds {MAX_DOMAIN} octets")
    if len(encoded) + 2 > MAX_PATH:
        raise LocalProtocolError(f"path <{address}> exceeds {MAX_PATH} octets")
    if not smtputf8 and not address.isascii():
        raise LocalProtocolError(
            f"address {address!r} is not ASCII and SMTPUTF8 is not in use",
            enhanced_code="5.6.7",
        )


def _refusal(address: str, smtputf8: bool) -> LocalProtocolError | None:
    try:
        check_address(address, smtputf8=smtputf8)
    except LocalProtocolError as exc:
        return exc
    return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """Sender (``""`` is the null reverse-path) and one or more recipients.

    Every address is checked once, when the envelope is made (:func:`check_address`): a
    refused one keeps its error in :attr:`refusals` (or :attr:`sender_refusal`), so that a
    recipient can fail alone and :meth:`ClientProtocol.send_envelope_mail` and
    :meth:`~ClientProtocol.send_envelope_rcpt` need not check again.
    """

    sender: str
    recipients: tuple[str, ...]
    eightbitmime: bool = False
    smtputf8: bool = False
    sender_refusal: LocalProtocolError | None = field(init=False, repr=False, compare=False)
    refusals: tuple[LocalProtocolError | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        smtputf8 = self.smtputf8
        object.__setattr__(self, "sender_refusal", _refusal(self.sender, smtputf8))
        refusals = tuple(
            _refusal(r, smtputf8) if r else LocalProtocolError("empty recipient address")
            for r in self.recipients
        )
        object.__setattr__(self, "refusals", refusals)


def encode_data(body: bytes) -> bytes:
    """Encode a message for DATA: CRLF-normalise, dot-stuff, add the CRLF.CRLF terminator.

    Bare CR and bare LF become CRLF first (RFC 5321 §2.3.8), so that no ``<LF>.<LF>`` or
    ``<CR>.<CR>`` sequence survives to end the data early on a lenient server (SMTP
    smuggling). Then every line starting with "." gets another (§4.5.2).

    Rendered messages are already CRLF-normalised: three C-speed counts find that out and
    skip the rewriting; dot-stuffing is one ``replace``, done only where a line starts with
    "." (text does that, and so do QP soft line breaks that fall before a ".").
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        if b"\r\n" in body:
            body = body.replace(b"\r\n", b"\n")
        body = body.replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if body.startswith(b"."):
        body = b"." + body
    if b"\n." in body:
        body = body.replace(b"\r\n.", b"\r\n..")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def auth_plain(username: str, password: str) -> str:
    check_text("AUTH username", username)
    check_text("AUTH password", password)
    token = f"\0{username}\0{password}".encode()
    return base64.b64encode(token).decode("ascii")
