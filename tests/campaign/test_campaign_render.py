"""Rendering: messages parse back, carry the right headers, and refuse header injection."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import re
from email.message import EmailMessage
from typing import TYPE_CHECKING, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.campaign import Campaign, Recipient, RenderedMessage, RenderError
from bulksend.campaign.render import (
    encode_mailbox,
    encode_unstructured,
    verp_decode,
    verp_token,
)
from bulksend.errors import ConfigError

if TYPE_CHECKING:
    from conftest import CampaignDir

NOW = 1_700_000_000.0


def parse(message: RenderedMessage) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(message.data, policy=email.policy.default))


def content(part: object) -> object:
    """A part's decoded content, with the wire's CRLF line endings read as newlines."""
    value = cast(EmailMessage, part).get_content()
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


def assert_wire_clean(data: bytes) -> None:
    """CRLF only, no line over 998 octets, no header line without a name or continuation."""
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert line[:1] in (b" ", b"\t") or re.match(rb"^[!-9;-~]+:", line), line


def recipient(address: str = "alice@example.com", **fields: object) -> Recipient:
    values: dict[str, object] = {
        "email": address,
        "first_name": "Alice",
        "last_name": "Smith",
        "offer": "tulips",
        "token": "t1",
    }
    values.update(fields)
    return Recipient(address=address, fields=values, line=2)


def test_text_and_html_message_parses_back(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign()
    rendered = [campaign.render(r, now=NOW) for r in campaign.recipients()]
    assert [m.recipient for m in rendered] == ["alice@example.com", "bob@example.net"]
    bob = rendered[1]
    assert_wire_clean(bob.data)
    assert bob.envelope_sender == "bounces+bob=example.net@example.org"
    assert not bob.needs_8bitmime
    assert not bob.needs_smtputf8

    msg = parse(bob)
    assert msg["From"] == "Example News <news@example.org>"
    assert msg["To"] == "Bob Jones <bob@example.net>"
    assert msg["Subject"] == "Hello Bob"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["Message-ID"] == bob.message_id
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Unsubscribe"] == "<https://example.org/u?c=spring-2025&r=t2>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert content(text) == (
        "Hi Bob,\n\nOur spring offers: roses & <b>lilies</b>.\n"
        "Unsubscribe: https://example.org/u?c=spring-2025&r=t2\n"
    )
    # autoescape applies to HTML only
    html_text = content(html)
    assert "roses &amp; &lt;b&gt;lilies&lt;/b&gt;" in html_text
    assert 'href="https://example.org/u?c=spring-2025&amp;r=t2"' in html_text
    assert msg.defects == []


def test_golden_bytes_are_stable(campaign_dir: CampaignDir) -> None:
    """The same recipient renders to the same bytes: a resend is the same message."""
    first = campaign_dir.campaign().render(recipient(), now=NOW)
    second = campaign_dir.campaign().render(recipient(), now=NOW)
    assert first == second
    head = first.data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.splitlines()[:6] == [
        "From: Example News <news@example.org>",
        "To: Alice Smith <alice@example.com>",
        "Subject: Hello Alice",
        "Date: Tue, 14 Nov 2023 22:13:20 +0000",
        f"Message-ID: {first.message_id}",
        "MIME-Version: 1.0",
    ]


def test_message_id_depends_on_campaign_and_recipient(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign()
    a1 = campaign.render(recipient("a@example.com"), now=NOW).message_id
    a2 = campaign.render(recipient("a@example.com"), now=NOW + 3600).message_id
    b = campaign.render(recipient("b@example.com"), now=NOW).message_id
    assert a1 == a2 != b
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.org>", a1)
    other = campaign_dir.campaign(campaign_dir.base.replace("spring-2025", "autumn"))
    assert other.render(recipient("a@example.com"), now=NOW).message_id != a1


def test_text_only_single_part(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(campaign_dir.base.replace('html = "body.html"\n', ""))
    msg = parse(campaign.render(recipient(), now=NOW))
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(msg).startswith("Hi Alice,\n")


def test_html_only_single_part(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(campaign_dir.base.replace('text = "body.txt"\n', ""))
    msg = parse(campaign.render(recipient(), now=NOW))
    assert msg.get_content_type() == "text/html"
    assert "<p>Hi Alice,</p>" in content(msg)


def test_attachments_make_multipart_mixed(campaign_dir: CampaignDir) -> None:
    pdf = bytes(range(256)) * 40
    campaign_dir.write("brochure.pdf", pdf)
    campaign_dir.write("prix.txt", "€ 10\n")
    extra = 'attachments = ["brochure.pdf", { path = "prix.txt", filename = "prix é.txt" }]\n'
    text = campaign_dir.base.replace('html = "body.html"\n', 'html = "body.html"\n' + extra)
    campaign = campaign_dir.campaign(text)
    rendered = campaign.render(recipient(), now=NOW)
    assert_wire_clean(rendered.data)
    msg = parse(rendered)
    assert msg.get_content_type() == "multipart/mixed"
    body, brochure, price = msg.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    assert brochure.get_content_type() == "application/pdf"
    assert brochure.get_filename() == "brochure.pdf"
    assert content(brochure) == pdf
    assert price.get_filename() == "prix é.txt"
    assert price.get_payload(decode=True) == "€ 10\n".encode()
    assert msg.defects == []


def test_attachment_with_single_body(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("a.bin", b"\x00\x01")
    text = campaign_dir.base.replace('html = "body.html"\n', 'attachments = ["a.bin"]\n')
    msg = parse(campaign_dir.campaign(text).render(recipient(), now=NOW))
    first, attachment = msg.iter_parts()
    assert first.get_content_type() == "text/plain"
    assert content(attachment) == b"\x00\x01"


def test_non_ascii_headers_are_encoded_words(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(campaign_dir.base.replace("Example News", "Café Société"))
    rendered = campaign.render(recipient(first_name="Zoë", last_name="Ñandú"), now=NOW)
    assert rendered.data.isascii()
    assert not rendered.needs_8bitmime
    msg = parse(rendered)
    assert msg["Subject"] == "Hello Zoë"
    assert msg["From"].addresses[0].display_name == "Café Société"
    assert msg["To"].addresses[0].display_name == "Zoë Ñandú"


def test_display_name_with_specials_is_quoted(campaign_dir: CampaignDir) -> None:
    rendered = campaign_dir.campaign().render(
        recipient(first_name='Smith, "J"', last_name="<x@evil.example>"), now=NOW
    )
    to = parse(rendered)["To"]
    assert len(to.addresses) == 1
    assert to.addresses[0].addr_spec == "alice@example.com"
    assert to.addresses[0].display_name == 'Smith, "J" <x@evil.example>'


def test_long_subject_is_folded(campaign_dir: CampaignDir) -> None:
    long_offer = " ".join(["springtime"] * 40)
    campaign = campaign_dir.campaign(
        campaign_dir.base.replace("Hello {{ first_name }}", "{{ offer }}")
    )
    rendered = campaign.render(recipient(offer=long_offer), now=NOW)
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert parse(rendered)["Subject"] == long_offer


def test_long_unbreakable_subject_stays_under_998(campaign_dir: CampaignDir) -> None:
    word = "x" * 3000
    campaign = campaign_dir.campaign(
        campaign_dir.base.replace("Hello {{ first_name }}", "{{ offer }}")
    )
    rendered = campaign.render(recipient(offer=word), now=NOW)
    assert_wire_clean(rendered.data)
    assert parse(rendered)["Subject"] == word


def test_long_body_lines_are_wrapped(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign()
    rendered = campaign.render(recipient(offer="y" * 5000 + "\r\nbare\rcr"), now=NOW)
    assert_wire_clean(rendered.data)
    text = next(parse(rendered).iter_parts())
    assert "y" * 5000 + "\nbare\ncr" in content(text)


def test_idn_and_smtputf8_recipients(campaign_dir: CampaignDir) -> None:
    campaign_dir.write(
        "recipients.csv",
        "email,first_name,last_name,offer,token\n"
        "jo@bücher.example,Jo,B,x,t\n"
        "jösé@bücher.example,Jose,B,x,t\n",
    )
    campaign = campaign_dir.campaign()
    idn, utf8 = (campaign.render(r, now=NOW) for r in campaign.recipients())
    assert idn.recipient == "jo@xn--bcher-kva.example"
    assert not idn.needs_smtputf8
    assert idn.data.isascii()
    assert parse(idn)["To"].addresses[0].addr_spec == "jo@xn--bcher-kva.example"
    assert utf8.recipient == "jösé@xn--bcher-kva.example"
    assert utf8.needs_smtputf8
    assert utf8.needs_8bitmime
    assert utf8.envelope_sender.isascii()
    assert verp_decode(utf8.envelope_sender[len("bounces+") : -len("@example.org")]) == (
        "jösé@xn--bcher-kva.example"
    )
    assert "jösé@bücher.example".encode() in utf8.data


def test_feedback_id_reply_to_and_extra_headers(campaign_dir: CampaignDir) -> None:
    text = campaign_dir.base.replace(
        'from_name = "Example News"',
        'from_name = "Example News"\nreply_to = "help@example.org"\n'
        'feedback_id = "spring:newsletter:example"',
    )
    extra = '[message.headers]\nX-Campaign = "spring"\nX-Segment = "{{ offer }}"\n'
    msg = parse(campaign_dir.campaign(text, extra).render(recipient(), now=NOW))
    assert msg["Reply-To"] == "help@example.org"
    assert msg["Feedback-ID"] == "spring:newsletter:example"
    assert msg["X-Campaign"] == "spring"
    assert msg["X-Segment"] == "tulips"


def test_unsubscribe_mailto(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(campaign_dir.base + 'mailto = "unsub@example.org"\n')
    msg = parse(campaign.render(recipient(), now=NOW))
    assert msg["List-Unsubscribe"] == (
        "<https://example.org/u?c=spring-2025&r=t1>, <mailto:unsub@example.org>"
    )


def test_missing_field_fails_only_that_recipient(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign()
    fields = {"email": "x@example.com", "last_name": "S", "offer": "o", "token": "t"}
    with pytest.raises(RenderError) as caught:
        campaign.render(Recipient("x@example.com", fields, line=7), now=NOW)
    assert caught.value.recipient == "x@example.com"
    assert caught.value.line == 7
    assert "'first_name' is undefined" in caught.value.reason
    assert "line 7" in str(caught.value)
    campaign.render(recipient(), now=NOW)  # the next one is fine


def test_sandbox_refuses_unsafe_access(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("body.txt", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    campaign = campaign_dir.campaign()
    with pytest.raises(RenderError, match=r"unsafe|__class__"):
        campaign.render(recipient(), now=NOW)


def test_template_raising_fails_only_that_recipient(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("body.txt", "{{ 1 // offer|int }}")
    campaign = campaign_dir.campaign()
    with pytest.raises(RenderError, match="ZeroDivisionError"):
        campaign.render(recipient(offer="0"), now=NOW)
    campaign.render(recipient(offer="2"), now=NOW)


INJECTIONS = ["x\r\nBcc: victim@example.com", "x\nBcc: v@x", "x\rBcc: v@x", "x\x00y", "x\x85y"]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize(
    ("old", "new", "extra"),
    [
        ("Hello {{ first_name }}", "{{ offer }}", ""),  # subject
        ('from_name = "Example News"', 'from_name = "{{ offer }}"', ""),
        ("{{ first_name }} {{ last_name }}", "{{ offer }}", ""),  # to name
        ("", "", '[message.headers]\nX-Offer = "{{ offer }}"\n'),
        ("r={{ token }}", "r={{ offer }}", ""),  # unsubscribe URL
    ],
    ids=["subject", "from-name", "to-name", "extra-header", "unsubscribe-url"],
)
def test_header_injection_fails_the_recipient(
    campaign_dir: CampaignDir, payload: str, old: str, new: str, extra: str
) -> None:
    text = campaign_dir.base.replace(old, new) if old else campaign_dir.base
    campaign = campaign_dir.campaign(text, extra)
    with pytest.raises(RenderError) as caught:
        campaign.render(recipient(offer=payload), now=NOW)
    assert "control character" in caught.value.reason
    assert b"Bcc" not in campaign.render(recipient(offer="fine"), now=NOW).data


@pytest.mark.parametrize("address", ["a\r\nRCPT TO:<v@x>@example.com", "a b@example.com", "a>@x"])
def test_bad_recipient_address_never_reaches_envelope_or_to(
    campaign_dir: CampaignDir, address: str
) -> None:
    """VERP and To use the address: a hand-built bad one fails instead of injecting."""
    with pytest.raises(RenderError):
        campaign_dir.campaign().render(recipient(address), now=NOW)


def test_fixed_envelope_sender_without_verp(campaign_dir: CampaignDir) -> None:
    text = campaign_dir.base.replace("bounces+{token}@example.org", "bounces@example.org")
    rendered = campaign_dir.campaign(text).render(recipient(), now=NOW)
    assert rendered.envelope_sender == "bounces@example.org"


@given(st.text(max_size=300))
def test_unstructured_header_property(value: str) -> None:
    """Any text either is refused (control characters) or encodes to one clean header."""
    try:
        line = encode_unstructured("Subject", value)
    except ValueError:
        assert re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", value)
        return
    assert line.isascii()
    assert line.endswith(b"\r\n")
    physical = line[:-2].split(b"\r\n")
    assert all(len(p) <= 998 for p in physical)
    assert all(p[:1] == b" " for p in physical[1:])  # continuation lines only
    assert all(p.strip() for p in physical)  # no whitespace-only line
    assert b"\r" not in line.replace(b"\r\n", b"") and b"\n" not in line.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(line + b"\r\n", policy=email.policy.default)
    assert len(parsed.keys()) == 1
    assert str(parsed["Subject"]).strip() == value.strip()


@given(st.text(max_size=80), st.sampled_from(["a@example.com", "Ünï@bücher.example"]))
def test_mailbox_header_property(display: str, address: str) -> None:
    try:
        line = encode_mailbox("To", display, address)
    except ValueError:
        assert re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", display)
        return
    physical = line[:-2].split(b"\r\n")
    assert all(p[:1] == b" " for p in physical[1:])
    parsed = email.message_from_bytes(line + b"\r\n", policy=email.policy.SMTPUTF8)
    assert len(parsed.keys()) == 1
    assert b"\r\n" not in line[:-2].replace(b"\r\n ", b"")


@given(st.emails())
def test_verp_token_round_trip(address: str) -> None:
    token = verp_token(address)
    assert re.fullmatch(r"[A-Za-z0-9._+=-]+", token)
    local, _, domain = address.rpartition("@")
    assert verp_decode(token) == f"{local}@{domain.lower()}"


def test_verp_token_examples() -> None:
    assert verp_token("user@Example.COM") == "user=example.com"
    assert verp_token("a+b=c@x.org") == "a+2Bb+3Dc=x.org"
    assert verp_decode("a+2Bb+3Dc=x.org") == "a+b=c@x.org"


def test_campaign_from_config_matches_load(campaign_dir: CampaignDir) -> None:
    loaded = campaign_dir.campaign()
    again = Campaign.from_config(loaded.config)
    assert again.render(recipient(), now=NOW) == loaded.render(recipient(), now=NOW)


_VERP_KEY = "0123456789abcdef-verp-signing-key"


def _expected_tag(address: str) -> str:
    """The tag as docs/campaign.md specifies it, computed here without bulksend's code."""
    digest = hmac.new(_VERP_KEY.encode(), address.lower().encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:5]).decode().lower()


def test_a_verp_key_signs_the_return_path(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(
        extra='[bounces]\nkey_env = "VERP_KEY"\n', environ={"VERP_KEY": _VERP_KEY}
    )
    sender = campaign.render(recipient("Alice@Example.com"), now=NOW).envelope_sender
    tag = _expected_tag("alice@example.com")
    assert sender == f"bounces+{tag}.Alice=example.com@example.org"
    assert re.fullmatch(r"[a-z2-7]{8}", tag)
    assert len(sender.rpartition("@")[0]) <= 64


def test_a_signed_return_path_stays_within_64_octets(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(
        extra='[bounces]\nkey_env = "VERP_KEY"\n', environ={"VERP_KEY": _VERP_KEY}
    )
    # "bounces+" + 8 + "." + local + "=example.com": 64 octets exactly, then one over.
    fits = "a" * (64 - len("bounces+12345678.=example.com")) + "@example.com"
    over = "b" + fits
    signed = campaign.render(recipient(fits), now=NOW).envelope_sender
    assert len(signed.rpartition("@")[0]) == 64
    assert signed.startswith(f"bounces+{_expected_tag(fits)}.a")
    # One octet more: no token at all (its bounces are not linked, never mislinked).
    assert campaign.render(recipient(over), now=NOW).envelope_sender == "bounces+@example.org"


def test_a_verp_key_needs_a_token_in_the_sender(campaign_dir: CampaignDir) -> None:
    text = campaign_dir.base.replace("bounces+{token}@example.org", "bounces@example.org")
    with pytest.raises(ConfigError, match=r"bounces\.key_env.*has none.*\{token\}"):
        campaign_dir.campaign(text, '[bounces]\nkey_env = "K"\n', environ={"K": _VERP_KEY})
