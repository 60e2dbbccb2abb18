"""Fixtures for campaign tests: a campaign directory builder, DKIM keys and a dkimpy verifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bulksend.campaign import Campaign

BASE_TOML = """
[campaign]
id = "spring-2025"

[message]
from = "news@example.org"
from_name = "Example News"
subject = "Hello {{ first_name }}"
to_name = "{{ first_name }} {{ last_name }}"
text = "body.txt"
html = "body.html"

[envelope]
sender = "bounces+{token}@example.org"

[recipients]
file = "recipients.csv"

[unsubscribe]
url = "https://example.org/u?c={{ campaign_id }}&r={{ token }}"
"""

TEXT_BODY = (
    "Hi {{ first_name }},\n\nOur spring offers: {{ offer }}.\nUnsubscribe: {{ unsubscribe_url }}\n"
)
HTML_BODY = (
    "<html><body><p>Hi {{ first_name }},</p><p>{{ offer }}</p>"
    '<a href="{{ unsubscribe_url }}">unsubscribe</a></body></html>\n'
)
RECIPIENTS = (
    "email,first_name,last_name,offer,token\n"
    "alice@example.com,Alice,Smith,tulips,t1\n"
    "bob@example.net,Bob,Jones,roses & <b>lilies</b>,t2\n"
)


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="session")
def rsa_pem() -> str:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def rsa1024_pem() -> str:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))


@pytest.fixture(scope="session")
def ed25519_pem() -> str:
    return _pem(ed25519.Ed25519PrivateKey.generate())


class CampaignDir:
    """A temporary campaign directory: templates, recipients and campaign.toml."""

    base = BASE_TOML

    def __init__(self, root: Path) -> None:
        self.root = root
        self.write("body.txt", TEXT_BODY)
        self.write("body.html", HTML_BODY)
        self.write("recipients.csv", RECIPIENTS)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def toml(self, text: str = BASE_TOML, extra: str = "") -> Path:
        return self.write("campaign.toml", text + "\n" + extra)

    def campaign(
        self, text: str = BASE_TOML, extra: str = "", environ: Mapping[str, str] | None = None
    ) -> Campaign:
        return Campaign.load(self.toml(text, extra), environ or {})


@pytest.fixture
def campaign_dir(tmp_path: Path) -> CampaignDir:
    return CampaignDir(tmp_path)


@pytest.fixture
def dkim_verify() -> Callable[..., bool]:
    """Verify a message's DKIM signature (index ``idx``) with dkimpy against given TXT records.

    dkimpy (with PyNaCl for Ed25519) is an independent implementation of RFC 6376/8463.
    """

    def verify(data: bytes, records: Mapping[str, str], idx: int = 0) -> bool:
        def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
            return records[name.decode().rstrip(".")].encode()

        result: bool = dkim.DKIM(data).verify(idx=idx, dnsfunc=dnsfunc)
        return result

    return verify
