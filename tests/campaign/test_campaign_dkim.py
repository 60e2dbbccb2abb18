"""DKIM: signatures made with OpenSSL verify with dkimpy, for RSA and Ed25519."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from bulksend.campaign import Campaign, DkimSigner, Recipient
from bulksend.campaign.dkim import relaxed_body, relaxed_header
from bulksend.config import DkimAlgorithm, DkimConfig, Secret
from bulksend.errors import ConfigError

if TYPE_CHECKING:
    from conftest import CampaignDir

Verify = Callable[..., bool]
NOW = 1_700_000_000.0
RSA_512_PEM = """-----BEGIN PRIVATE KEY-----
MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEAql5I9ocNlyVozO0p
H2/1uZbppq5d74W92n3hoVTHAZc7RQf0tKzr593mBcaPC5eR7wd0Pi4PSHeu412E
NCEKHQIDAQABAkEAjua09qwDV0NWq4VGGAt2JiySYXAidLVOsQUji4orvoV4HeOB
ptR9KlQ7JAVKsrVbU0mt3qgS+kw1dpn7f1BfAQIhANOgZZaV0PyJ6BypbsG1qdyj
8LT5NiJq8nyDxmws9lbBAiEAzhc+qwZSG0A0ZdNRafuy6wSkcxt0ylwf6atPm8Jb
Bl0CIQCeqnOAI3M85GiSlLXlpj5knsWp6e8cfvKvSF1MXamUAQIgH9ol3Gb4r6+H
qak0bw3wxDQOep/muBPu9r18a1Vpnh0CIQCE1Q1tnzjx6rBQXsmSVlFGsDk7YaBY
ckYdVXLrHs1IGA==
-----END PRIVATE KEY-----
"""


def dkim_section(algorithm: str, selector: str, env: str, array: bool = False) -> str:
    head = "[[dkim]]" if array else "[dkim]"
    return (
        f'{head}\ndomain = "example.org"\nselector = "{selector}"\n'
        f'algorithm = "{algorithm}"\nkey_env = "{env}"\n'
    )


def records(campaign: Campaign) -> dict[str, str]:
    return {f"{s.selector}._domainkey.{s.domain}": s.public_txt_record() for s in campaign.signers}


def recipient(first: str = "Alice", address: str = "alice@example.com") -> Recipient:
    fields = {"first_name": first, "last_name": "S", "offer": "tulips  and\ttabs ", "token": "t"}
    return Recipient(address=address, fields=fields, line=2)


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_signed_messages_verify_with_dkimpy(
    campaign_dir: CampaignDir,
    dkim_verify: Verify,
    rsa_pem: str,
    ed25519_pem: str,
    algorithm: str,
) -> None:
    pem = rsa_pem if algorithm == "rsa-sha256" else ed25519_pem
    campaign_dir.write("tiny.bin", b"\x00" * 1000)
    text = campaign_dir.base.replace(
        'html = "body.html"\n', 'html = "body.html"\nattachments = ["tiny.bin"]\n'
    )
    campaign = campaign_dir.campaign(
        text, dkim_section(algorithm, "sel", "DKIM_KEY"), {"DKIM_KEY": pem}
    )
    assert campaign.warnings == ()
    txt = records(campaign)
    for person in [recipient(), recipient("Zoë Ñandú"), recipient("x", "jösé@bücher.example")]:
        rendered = campaign.render(person, now=NOW)
        assert rendered.data.startswith(b"DKIM-Signature: v=1; a=" + algorithm.encode())
        assert dkim_verify(rendered.data, txt), rendered.data.decode()
        assert all(len(line) <= 998 for line in rendered.data.split(b"\r\n"))
        # The signature covers the one-click unsubscribe headers (RFC 8058 §4) and the rest.
        signature = rendered.data.split(b"\r\n\r\n")[0].decode()
        assert (
            "h=from:to:subject:date:message-id:mime-version:list-unsubscribe:"
            "list-unsubscribe-post:content-type;"
        ) in signature.replace("\r\n\t", " ")
        tampered = rendered.data.replace(b"\r\nMIME-Version: 1.0", b"\r\nMIME-Version: 1.1")
        assert tampered != rendered.data
        assert not dkim_verify(tampered, txt)


def test_dual_signature_rsa_and_ed25519(
    campaign_dir: CampaignDir, dkim_verify: Verify, rsa_pem: str, ed25519_pem: str
) -> None:
    extra = dkim_section("rsa-sha256", "r", "RSA", array=True) + dkim_section(
        "ed25519-sha256", "e", "ED", array=True
    )
    campaign = campaign_dir.campaign(campaign_dir.base, extra, {"RSA": rsa_pem, "ED": ed25519_pem})
    rendered = campaign.render(recipient(), now=NOW)
    assert rendered.data.count(b"DKIM-Signature:") == 2
    txt = records(campaign)
    assert dkim_verify(rendered.data, txt, idx=0)
    assert dkim_verify(rendered.data, txt, idx=1)


def test_raw_base64_ed25519_key(campaign_dir: CampaignDir, dkim_verify: Verify) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    campaign_dir.write("ed.key", base64.b64encode(raw).decode() + "\n")
    extra = '[dkim]\ndomain = "example.org"\nselector = "s"\nalgorithm = "ed25519-sha256"\n'
    campaign = campaign_dir.campaign(campaign_dir.base, extra + 'key_file = "ed.key"\n')
    assert dkim_verify(campaign.render(recipient(), now=NOW).data, records(campaign))


def config(pem: str, algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256) -> DkimConfig:
    return DkimConfig("example.org", "s", algorithm, Secret(pem), "dkim.key_env in test.toml")


def test_small_keys_warned_or_refused(rsa1024_pem: str) -> None:
    signer = DkimSigner.from_config(config(rsa1024_pem))
    assert len(signer.warnings) == 1
    assert "1024 bits" in signer.warnings[0]
    with pytest.raises(ConfigError, match=r"dkim.key_env in test.toml: .*512 bits"):
        DkimSigner.from_config(config(RSA_512_PEM))


def test_key_and_algorithm_must_match(rsa_pem: str, ed25519_pem: str) -> None:
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        DkimSigner.from_config(config(rsa_pem, DkimAlgorithm.ED25519_SHA256))
    with pytest.raises(ConfigError, match="not an RSA key"):
        DkimSigner.from_config(config(ed25519_pem))
    with pytest.raises(ConfigError, match="cannot load the DKIM private key"):
        DkimSigner.from_config(config("not a key"))


def test_signer_repr_hides_the_key(rsa_pem: str) -> None:
    signer = DkimSigner.from_config(config(rsa_pem))
    assert "PRIVATE" not in repr(signer)
    assert "_key" not in repr(signer)


_wsp_text = st.text(alphabet=st.sampled_from(list("ab \t=\r\n.")), max_size=60)


@given(_wsp_text)
def test_relaxed_body_matches_dkimpy(text: str) -> None:
    """Bodies as bulksend makes them: CRLF line endings, ending in CRLF."""
    text = text.replace("\r\n", "\n").replace("\r", "\n") + "\n"
    body = text.replace("\n", "\r\n").encode()
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@given(st.text(alphabet=st.sampled_from(list("aB \t:;=")), max_size=40), st.booleans())
def test_relaxed_header_matches_dkimpy(value: str, folded: bool) -> None:
    raw = value.encode()
    if folded:
        raw = raw.replace(b";", b";\r\n\t")
    ((name, canon),) = Relaxed.canonicalize_headers([(b"Subject ", raw)])
    assert relaxed_header(b"Subject ", raw) == name + b":" + canon


def test_one_signer_signs_different_header_layouts(ed25519_pem: str, dkim_verify: Verify) -> None:
    """The signature header is prepared once per list of signed headers, not once for all."""
    signer = DkimSigner.from_config(config(ed25519_pem, DkimAlgorithm.ED25519_SHA256))
    body = b"Hello,\r\nthe same body.\r\n"
    layouts = [
        [b"From: a@example.org\r\n", b"To: b@example.com\r\n", b"Subject: One\r\n"],
        [b"From: a@example.org\r\n", b"Subject:  Two\r\n\tfolded\r\n", b"X-Other: x\r\n"],
        [b"From: a@example.org\r\n", b"To: b@example.com\r\n", b"Subject: One\r\n"],
    ]
    txt = {"s._domainkey.example.org": signer.public_txt_record()}
    signatures = []
    for lines in layouts:
        headers = [(line.partition(b":")[0].decode().lower(), line, None) for line in lines]
        signature = signer.sign(headers, body, timestamp=int(NOW))
        signatures.append(signature)
        assert dkim_verify(signature + b"".join(lines) + b"\r\n" + body, txt)
    assert b"h=from:to:subject;" in signatures[0]
    assert b"h=from:subject;" in signatures[1]
