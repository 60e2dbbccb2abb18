"""A throwaway certificate authority for ``bulksend demo``: a CA and its leaf certificates,
made with ``cryptography`` when the demo starts and never written anywhere lasting.

How this works: :class:`ThrowawayCA` makes an ECDSA P-256 CA certificate valid for a day;
:meth:`ThrowawayCA.server_context` issues a leaf for some host names (subjectAltName, server
auth) and loads it into a server's context; :meth:`ThrowawayCA.client_context` is a
verifying client's context (the system's defaults) that also trusts the CA. The CA is
trusted only where such a context is handed in through the Python API (the MTA-STS fetch,
the SMTP client's verified TLS), never through a campaign file. Tests use trustme instead.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ThrowawayCA"]

_LIFETIME = datetime.timedelta(days=1)
_SKEW = datetime.timedelta(minutes=5)  # valid a little before now: clocks differ


class ThrowawayCA:
    """A self-signed CA (ECDSA P-256), valid from a few minutes ago for a day."""

    def __init__(self, name: str = "bulksend demo CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self.certificate = (
            _builder(subject, subject, public)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A server's context with a new certificate from this CA for host ``names``."""
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        ca_public = self._key.public_key()
        leaf = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
                self.certificate.subject,
                public,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        pem = leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain reads only files: one in a private directory, gone at once.
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "leaf.pem"
            path.write_bytes(pem)
            context.load_cert_chain(path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client's context (the system's defaults) that also trusts this CA."""
        context = ssl.create_default_context()
        context.load_verify_locations(
            cadata=self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        )
        return context


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + _LIFETIME)
    )
