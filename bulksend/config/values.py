"""Value parsers and checks: rate, duration, size, host names, domains, ports, host:port,
nameservers.

Public because the CLI parses its flags with the same rules as the campaign file. Each raises
``ValueError`` with a message the loader puts after the key's name.
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
from pathlib import Path

import dns.exception
import dns.name

from bulksend.text import CONTROL

__all__ = [
    "decoding_problem",
    "hostname_syntax",
    "is_fqdn",
    "parse_domain",
    "parse_duration",
    "parse_host_port",
    "parse_nameserver",
    "parse_port",
    "parse_rate",
    "parse_size",
]

_RATE_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_rate(value: str | float) -> float:
    """Parse ``"50/s"``, ``"3000/h"``, ``"10/min"`` or a bare number into events per second.

    Raises:
        ValueError: the text is not a positive rate.
    """
    if isinstance(value, bool):
        raise ValueError("expected a rate such as '50/s' or '3000/h'")
    if isinstance(value, int | float):
        per_second = float(value)
    else:
        m = _RATE_RE.match(value.lower())
        if m is None or m.group(2) not in _RATE_UNITS:
            raise ValueError(f"{value!r} is not a rate; write it like '50/s', '20/m' or '3000/h'")
        per_second = float(m.group(1)) / _RATE_UNITS[m.group(2)]
    if not math.isfinite(per_second) or per_second <= 0:
        raise ValueError(f"{value!r}: a rate must be greater than zero")
    return per_second


def parse_duration(value: str | float) -> float:
    """Parse ``"30s"``, ``"5m"``, ``"2h"``, ``"2d"``, ``"500ms"`` or a number of seconds.

    Raises:
        ValueError: the text is not a non-negative duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s' or '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(value.lower())
        if m is None:
            raise ValueError(
                f"{value!r} is not a duration; write seconds as a number or '30s', '5m', '2h', '2d'"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r}: a duration cannot be negative")
    return seconds


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Parse ``"25MB"``, ``"10 MiB"``, ``"500kB"`` or a number of bytes into bytes.

    Raises:
        ValueError: the text is not a positive size.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as '25MB'")
    if isinstance(value, int):
        size = value
    else:
        m = _SIZE_RE.match(value.lower())
        if m is None or m.group(2) not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; write bytes or '25MB', '10MiB', '500kB'")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"{value!r}: a size must be greater than zero")
    return size


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def hostname_syntax(name: str) -> bool:
    """A host name of LDH labels (RFC 1123 §2.1), or an address literal (RFC 5321 §4.1.3)."""
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
            kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv6Address
        else:
            kind = ipaddress.IPv4Address
        try:
            kind(literal)
        except ValueError:
            return False
        return True
    labels = name.lower().removesuffix(".").split(".")
    return len(name) <= 253 and all(_LABEL.match(label) for label in labels)


def is_fqdn(name: str) -> bool:
    """Whether an EHLO name is a fully qualified domain name (or an address literal).

    RFC 5321 §4.1.1.1 asks for the client's FQDN; receivers distrust a bare host name or
    ``localhost`` (often a spam score, sometimes a refusal).
    """
    if not hostname_syntax(name):
        return False
    if name.startswith("["):
        return True
    labels = name.lower().removesuffix(".").split(".")
    return (
        len(labels) >= 2
        and not labels[-1].isdigit()
        and labels[-1] not in ("localhost", "localdomain", "local")
    )


def decoding_problem(path: Path, encoding: str) -> str | None:
    """Where a file first fails to decode, as a one-line message; None when it decodes.

    Reads the file in 1 MiB blocks (memory stays flat) and names the line and the byte.
    """
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    label = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else repr(encoding)
    offset = 0
    with path.open("rb") as stream:
        while True:
            block = stream.read(1 << 20)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                byte = exc.object[exc.start]
                break
            if not block:
                return None
            offset += len(block)
        stream.seek(0)
        line = 1
        while stream.tell() < bad:
            line += stream.read(min(1 << 20, bad - stream.tell())).count(b"\n")
    hint = (
        'set [recipients] encoding = "latin-1" if the file uses it'
        if label == "UTF-8"
        else "set [recipients] encoding to the file's encoding"
    )
    return f"{path} is not valid {label} at line {line}, byte 0x{byte:02x}; {hint}"


_MAX_DOMAIN_OCTETS = 253  # a 255-octet wire name, without the final dot (RFC 1035 §2.3.4)
_LDH_LABEL = re.compile(rb"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def parse_domain(text: str) -> str:
    """``text`` as lowercase A-labels without a final dot: the one IDNA conversion.

    U-labels become A-labels (IDNA 2008 with UTS #46 mapping, RFC 5891); the length is
    checked *before* conversion, so a huge input never reaches the IDNA codec. Routing
    (:func:`bulksend.routing.normalize_domain`) and the campaign file's domain keys use it.

    Raises:
        ValueError: not a valid host name (too long, empty label, characters outside
            letters, digits and hyphen, or invalid IDNA 2008); the message says which.
    """
    name_text = text[:-1] if text.endswith(".") else text
    if not name_text or len(name_text.encode("utf-8", "surrogatepass")) > _MAX_DOMAIN_OCTETS:
        raise ValueError("domain is empty or longer than 253 octets")
    if name_text.startswith("["):
        raise ValueError("address literals are not routed")
    try:
        if name_text.isascii():
            name = dns.name.from_text(name_text, origin=None)
        else:
            name = dns.name.from_unicode(
                name_text, origin=None, idna_codec=dns.name.IDNA_2008_Practical
            )
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise ValueError(f"invalid domain ({exc})") from None
    labels = [label.lower() for label in name.labels]
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise ValueError(f"invalid domain label {label.decode('ascii', 'replace')!r}")
    return b".".join(labels).decode("ascii")


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[host]:port`` or ``[2001:db8::1]:port`` into (host, port).

    Brackets are accepted (and stripped) as in Postfix, where they mean "no MX lookup", which
    is what every configured host means here. An IPv6 address needs them: in ``::1:2525`` the
    port could not be told from the address.

    Raises:
        ValueError: none of those forms, no host, a control character or space in it, or a
            port that is not a number in 1..65535.
    """
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, '[2001:db8::1]:25'")
    if not host or CONTROL.search(host) or " " in host:
        raise ValueError(f"{text!r} is not a host")
    port = default_port
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
    return host, parse_port(port)


def parse_port(value: object) -> int:
    """A TCP port: an integer in 1..65535.

    Raises:
        ValueError: not an integer, or out of that range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a port number, found {value!r}")
    if not 0 < value < 65536:
        raise ValueError(f"port {value} is not in 1..65535")
    return value


def parse_nameserver(text: str) -> str:
    """A recursive resolver, which must be given as an IP address (a name would need DNS).

    Raises:
        ValueError: ``text`` is not an IPv4 or IPv6 address.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    return text
