"""DANE end to end (``[routing] dnssec = true``): TLSA records computed from trustme
certificates, served by the test DNS server with or without AD, and a site that shows what
it received."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.journal import Journal, RecipientState, Status
from bulksend.metrics import Metrics
from bulksend.testing.dns import Fault
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript
from tests.helpers.worlds import run_options
from tests.tlspolicy.world import plaintext_mail

DOMAIN = "dane.test"
MX = "mx1.dane.test"
TLSA_NAME = f"_25._tcp.{MX}"
DNSSEC = "dnssec = true\n"  # lands in the campaign's [routing] table


def served(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def spki_sha256(cert: trustme.LeafCert | trustme.CA) -> str:
    pem = (
        cert.cert_chain_pems[0].bytes()
        if isinstance(cert, trustme.LeafCert)
        else cert.cert_pem.bytes()
    )
    spki = (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha256(spki).hexdigest()


def dane_site(cert: trustme.LeafCert | None) -> SiteSpec:
    context = None if cert is None else served(cert)
    return SiteSpec(
        "dane", (DOMAIN,), "127.0.0.2", ServerScript(tls_context=context, record_wire=True)
    )


async def send(tmp_path: Path, world: World, metrics: Metrics | None = None) -> RunSummary:
    toml = write_campaign(tmp_path, addresses([DOMAIN], 3), toml=campaign_toml(policy=DNSSEC))
    # No CA is trusted for SMTP: only the TLSA records can authenticate the server.
    with trio.fail_after(30):
        return await run_campaign(
            Campaign.load(toml, {}), run_options(tmp_path, world, limit=3, grace=2), metrics=metrics
        )


def states(tmp_path: Path) -> list[RecipientState]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return list(journal.iter_states())


def sessions(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "bulksend_tls_sessions_total", {"policy": "dane", "result": result}
    )
    return 0.0 if value is None else value


async def test_matching_dane_ee_record_delivers(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("unrelated.name.test")  # DANE-EE: names do not matter (RFC 7672 §3.1.1)
    metrics = Metrics()
    async with running([dane_site(cert)]) as world:
        world.dns.load({TLSA_NAME: {"TLSA": [f"3 1 1 {spki_sha256(cert)}"], "secure": True}})
        summary = await send(tmp_path, world, metrics)
        transactions = world.servers["dane"].transactions
    assert summary.counts[Status.DELIVERED] == 3
    assert transactions and all(t.tls for t in transactions)
    assert sessions(metrics, "success") >= 1


async def test_matching_dane_ta_record_delivers(tmp_path: Path) -> None:
    root = trustme.CA()
    issuer = root.create_child_ca()
    cert = issuer.issue_cert(MX)  # chain: the leaf, then the intermediate it names as TA
    metrics = Metrics()
    async with running([dane_site(cert)]) as world:
        world.dns.load({TLSA_NAME: {"TLSA": [f"2 1 1 {spki_sha256(issuer)}"], "secure": True}})
        summary = await send(tmp_path, world, metrics)
    assert summary.counts[Status.DELIVERED] == 3
    assert sessions(metrics, "success") >= 1


async def test_a_certificate_matching_no_record_defers(tmp_path: Path, ca: trustme.CA) -> None:
    cert, other = ca.issue_cert(MX), ca.issue_cert(MX)
    metrics = Metrics()
    async with running([dane_site(cert)]) as world:
        world.dns.load({TLSA_NAME: {"TLSA": [f"3 1 1 {spki_sha256(other)}"], "secure": True}})
        summary = await send(tmp_path, world, metrics)
        server = world.servers["dane"]
        assert server.transactions == []
        assert plaintext_mail(server) == []
    assert summary.counts[Status.DELIVERED] == 0
    assert all("DANE" in (s.text or "") for s in states(tmp_path))
    assert sessions(metrics, "validation-failure") >= 1


async def test_tlsa_without_ad_is_ignored(tmp_path: Path, ca: trustme.CA) -> None:
    cert, other = ca.issue_cert(MX), ca.issue_cert(MX)
    async with running([dane_site(cert)]) as world:
        # Not validated (no AD): the record is not trusted, so its mismatch does not matter.
        world.dns.load({TLSA_NAME: {"TLSA": [f"3 1 1 {spki_sha256(other)}"]}})
        summary = await send(tmp_path, world)
    assert summary.counts[Status.DELIVERED] == 3


async def test_pkix_usages_are_ignored(tmp_path: Path, ca: trustme.CA) -> None:
    cert, other = ca.issue_cert(MX), ca.issue_cert(MX)
    async with running([dane_site(cert)]) as world:
        world.dns.load({TLSA_NAME: {"TLSA": [f"1 1 1 {spki_sha256(other)}"], "secure": True}})
        summary = await send(tmp_path, world)
    assert summary.counts[Status.DELIVERED] == 3


async def test_a_failing_tlsa_lookup_defers_without_connecting(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with running([dane_site(ca.issue_cert(MX))]) as world:
        world.dns.inject(TLSA_NAME, Fault.SERVFAIL, "TLSA")
        summary = await send(tmp_path, world)
        assert world.servers["dane"].connections == []
    assert summary.counts[Status.DELIVERED] == 0
    assert all("TLSA lookup" in (s.text or "") for s in states(tmp_path))
