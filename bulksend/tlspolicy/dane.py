"""DANE for SMTP (RFC 7672, RFC 6698, RFC 7671): which TLSA records count, and matching them.

How this works (no I/O here; the records come from a DNSSEC-validated lookup of
``_25._tcp.<mx host>``, see :mod:`bulksend.tlspolicy.policy`):

* Only DANE-TA(2) and DANE-EE(3) records are usable for SMTP; PKIX-TA(0) and PKIX-EE(1) are
  ignored (RFC 7672 §3.1.3), and so are unknown selectors and matching types. When no record
  is usable, DANE does not apply to the host (§2.2).
* A record's selector picks what is compared: 0 the whole certificate (DER), 1 its
  SubjectPublicKeyInfo (DER); its matching type how: 0 exact, 1 SHA-256, 2 SHA-512.
* DANE-EE(3): the server's own certificate must match; names and expiry are not checked
  (RFC 7672 §3.1.1): the DNS record is the authority.
* DANE-TA(2): a certificate the server sent (or, for ``2 0 0``, the record's own
  certificate) must match, and the server's certificate must chain to it and be valid for
  the MX host name (RFC 7672 §3.1.2, §3.2.2).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import DNSName, SubjectAlternativeName
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = ["DANE_EE", "DANE_TA", "Tlsa", "usable", "verify_chain"]

DANE_TA = 2
DANE_EE = 3
_HASHES = {1: hashlib.sha256, 2: hashlib.sha512}
# A DANE-TA anchor is the domain's own CA, not a public one: its leaf certificates need a
# subjectAltName for the host, not the CA/Browser Forum's other rules (such as a non-critical
# subjectAltName); the CA certificates above it are checked as usual.
_TA_LEAF_POLICY = ExtensionPolicy.permit_all().require_present(
    SubjectAlternativeName, Criticality.AGNOSTIC, None
)


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    def matches(self, der: bytes) -> bool:
        """Whether this record's data matches the DER certificate ``der``."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        selected = der
        if self.selector == 1:
            selected = cert.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            )
        digest = _HASHES.get(self.mtype)
        return (selected if digest is None else digest(selected).digest()) == self.data


def usable(records: Iterable[Tlsa]) -> tuple[Tlsa, ...]:
    """The records RFC 7672 lets an SMTP client use: DANE-TA/EE, selector 0/1, type 0/1/2."""
    return tuple(
        r
        for r in records
        if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1) and r.mtype in (0, 1, 2)
    )


def verify_chain(records: Sequence[Tlsa], chain: Sequence[bytes], host: str) -> str | None:
    """Check the server's certificates (DER, its own first) against usable TLSA records.

    Returns:
        None when a record authenticates the server, else why not (for the deferral).
    """
    if not chain:
        return "the server sent no certificate"
    if any(r.usage == DANE_EE and r.matches(chain[0]) for r in records):
        return None
    anchors = [
        der for der in chain[1:] if any(r.usage == DANE_TA and r.matches(der) for r in records)
    ]
    anchors += [r.data for r in records if (r.usage, r.selector, r.mtype) == (DANE_TA, 0, 0)]
    for anchor in anchors:
        if _chains_to(chain, anchor, host):
            return None
    return f"no TLSA record of {host} matches the certificate chain it presented"


def _chains_to(chain: Sequence[bytes], anchor: bytes, host: str) -> bool:
    try:
        leaf = x509.load_der_x509_certificate(chain[0])
        ta = x509.load_der_x509_certificate(anchor)
        intermediates = [x509.load_der_x509_certificate(der) for der in chain[1:]]
        verifier = (
            PolicyBuilder()
            .store(Store([ta]))
            .time(datetime.datetime.now(datetime.UTC))
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_TA_LEAF_POLICY
            )
            .build_server_verifier(DNSName(host))
        )
        verifier.verify(leaf, intermediates)
    except (ValueError, VerificationError):
        return False
    return True
