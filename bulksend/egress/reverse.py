"""``validate``'s check of each egress source: forward-confirmed reverse DNS of its EHLO name.

Gmail and Yahoo require it of bulk senders (and many receivers refuse mail without it): the
PTR record of the source address must name the host the source says in EHLO, and that name's
A/AAAA records must lead back to the address (FCrDNS). A source that fails gets a warning
naming what was found; a lookup that fails, one naming why.
"""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from bulksend.campaign.authcheck import Finding
from bulksend.config.egress import EgressConfig

__all__ = ["check_sources", "judge_fcrdns"]

_LIFETIME = 5.0  # seconds for one lookup, retries included


def judge_fcrdns(
    name: str, address: str, ehlo: str, ptr: list[str] | str, forward: list[str] | str
) -> Finding:
    """The finding for source ``name``: ``ptr`` holds its address's PTR names and
    ``forward`` the addresses of ``ehlo`` (each a reason string when the lookup failed)."""
    where = f"egress source {name} ({address}, EHLO {ehlo})"
    if isinstance(ptr, str):
        return Finding("warning", f"{where}: PTR lookup failed: {ptr}")
    if ehlo.lower().rstrip(".") not in ptr:
        found = ", ".join(ptr) or "no PTR record"
        return Finding(
            "warning",
            f"{where}: reverse DNS is {found}, not the EHLO name: set the PTR record of "
            f"{address} to {ehlo} (or ehlo to the PTR name)",
        )
    if isinstance(forward, str):
        return Finding("warning", f"{where}: address lookup of {ehlo} failed: {forward}")
    if address not in forward:
        found = ", ".join(forward) or "no address"
        return Finding(
            "warning",
            f"{where}: {ehlo} resolves to {found}, not back to {address}: add an "
            f"{'AAAA' if ':' in address else 'A'} record",
        )
    return Finding("ok", f"{where}: forward-confirmed reverse DNS")


async def check_sources(
    egress: EgressConfig, default_ehlo: str, nameservers: tuple[str, ...], port: int
) -> list[Finding]:
    """One finding per egress source (none without sources)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = list(nameservers)
    resolver.port = port
    resolver.lifetime = _LIFETIME
    findings = []
    for source in egress.sources.values():
        ehlo = source.ehlo or default_ehlo
        ptr = await _names(resolver, dns.reversename.from_address(source.address), "PTR")
        kind = "AAAA" if ":" in source.address else "A"
        forward = await _names(resolver, ehlo, kind) if isinstance(ptr, list) else []
        findings.append(judge_fcrdns(source.name, source.address, ehlo, ptr, forward))
    return findings


async def _names(
    resolver: dns.asyncresolver.Resolver, name: str | dns.name.Name, kind: str
) -> list[str] | str:
    """The records' text (names lower case, final dot cut); a reason when the lookup failed."""
    try:
        answer = await resolver.resolve(name, kind)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        return f"no answer within {_LIFETIME:g}s (timeout)"
    except dns.exception.DNSException as exc:
        return str(exc)
    return [r.to_text().lower().rstrip(".") for r in answer]
