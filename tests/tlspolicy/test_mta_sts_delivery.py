"""MTA-STS end to end: the test DNS server publishes ``_mta-sts`` TXT records, a local HTTPS
server (trustme certificates) serves the policies, and the SMTP sites show what a receiving
server observes: connections, plaintext commands, accepted messages."""

from __future__ import annotations

import datetime
from pathlib import Path

import trio
import trustme

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.journal import Journal, RecipientState, Status
from bulksend.metrics import Metrics
from bulksend.testing.https import Response, policy_response
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, write_campaign
from bulksend.testing.smtp import ServerScript
from bulksend.tlspolicy import TlsState
from tests.helpers.tls import server_context
from tests.tlspolicy.world import StsWorld, plaintext_mail, sts_world

DOMAIN = "strict.test"
MX = "mx1.site.test"


def site(ca: trustme.CA, *, cert_for: str | None = MX, starttls: bool = True) -> SiteSpec:
    """The site of strict.test at 127.0.0.2 (MX mx1.site.test), recording the wire."""
    context = server_context(ca, cert_for or MX) if starttls else None
    return SiteSpec(
        "site", (DOMAIN,), "127.0.0.2", ServerScript(tls_context=context, record_wire=True)
    )


async def send(
    tmp_path: Path, world: StsWorld, count: int = 4, metrics: Metrics | None = None
) -> RunSummary:
    """Send ``count`` recipients of strict.test; stop once each has an outcome."""
    toml = write_campaign(tmp_path, addresses([DOMAIN], count), toml=campaign_toml())
    with trio.fail_after(30):
        return await run_campaign(
            Campaign.load(toml, {}), world.options(tmp_path, limit=count), metrics=metrics
        )


def states(tmp_path: Path) -> list[RecipientState]:
    with Journal.open(tmp_path / "journal.sqlite3", None) as journal:
        return list(journal.iter_states())


def sessions(metrics: Metrics, policy: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "bulksend_tls_sessions_total", {"policy": policy, "result": result}
    )
    return 0.0 if value is None else value


def report_counts(tmp_path: Path) -> dict[tuple[str, str], int]:
    """The state file's TLS-RPT counts of today: (policy type, result) -> sessions."""
    state = TlsState(tmp_path / "tls-state.sqlite3")
    try:
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        counts: dict[tuple[str, str], int] = {}
        for key, n in state.sessions(today):
            counts[key.policy_type, key.result] = counts.get((key.policy_type, key.result), 0) + n
        return counts
    finally:
        state.close()


async def test_enforce_delivers_over_verified_tls(tmp_path: Path, ca: trustme.CA) -> None:
    metrics = Metrics()
    async with sts_world(ca, [site(ca)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", [MX]))
        summary = await send(tmp_path, world, metrics=metrics)
        server = world.world.servers["site"]
        assert summary.counts[Status.DELIVERED] == 4
        assert all(t.tls for t in server.transactions)
        assert world.policies.requests[f"mta-sts.{DOMAIN}"] == 1  # once per domain, not per message
    assert sessions(metrics, "sts", "success") >= 1
    assert report_counts(tmp_path)["sts", "success"] >= 1


async def test_enforce_never_contacts_an_mx_host_outside_the_policy(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with sts_world(ca, [site(ca)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", ["*.elsewhere.test"]))
        summary = await send(tmp_path, world)
        server = world.world.servers["site"]
        assert server.connections == []
    assert summary.counts[Status.DELIVERED] == 0
    for state in states(tmp_path):
        assert state.status is Status.PENDING and state.attempts == 1
        assert state.text is not None
        assert f"MX host {MX} is not in the MTA-STS policy of {DOMAIN}" in state.text


async def test_enforce_with_starttls_stripped_defers_and_sends_no_plaintext(
    tmp_path: Path, ca: trustme.CA
) -> None:
    metrics = Metrics()
    async with sts_world(ca, [site(ca, starttls=False)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", [MX]))
        summary = await send(tmp_path, world, metrics=metrics)
        server = world.world.servers["site"]
        assert len(server.connections) >= 1  # it was reached, and refused as it offers no TLS
        assert server.transactions == []
        assert plaintext_mail(server) == []
    assert summary.counts[Status.DELIVERED] == 0
    assert all("STARTTLS" in (s.text or "") for s in states(tmp_path))
    assert sessions(metrics, "sts", "starttls-not-supported") >= 1
    assert report_counts(tmp_path)["sts", "starttls-not-supported"] >= 1


async def test_enforce_with_a_wrong_certificate_defers_and_sends_no_plaintext(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with sts_world(ca, [site(ca, cert_for="other.test")], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("enforce", [MX]))
        summary = await send(tmp_path, world)
        server = world.world.servers["site"]
        assert server.transactions == []
        assert plaintext_mail(server) == []
    assert summary.counts[Status.DELIVERED] == 0
    assert all("certificate" in (s.text or "").lower() for s in states(tmp_path))
    assert report_counts(tmp_path)["sts", "certificate-host-mismatch"] >= 1


async def test_testing_mode_delivers_and_counts_the_failure(tmp_path: Path, ca: trustme.CA) -> None:
    metrics = Metrics()
    async with sts_world(ca, [site(ca, cert_for="other.test")], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("testing", [MX]))
        summary = await send(tmp_path, world, metrics=metrics)
    assert summary.counts[Status.DELIVERED] == 4
    assert sessions(metrics, "sts", "certificate-host-mismatch") >= 1
    assert report_counts(tmp_path)["sts", "certificate-host-mismatch"] >= 1


async def test_mode_none_is_ignored(tmp_path: Path, ca: trustme.CA) -> None:
    async with sts_world(ca, [site(ca, starttls=False)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", policy_response("none", []))
        summary = await send(tmp_path, world)
    assert summary.counts[Status.DELIVERED] == 4  # in plaintext, as without a policy


async def test_a_cached_policy_applies_when_the_refresh_fails(
    tmp_path: Path, ca: trustme.CA
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    state = tmp_path / "tls-state.sqlite3"
    async with sts_world(ca, [site(ca, starttls=False)], [DOMAIN]) as world:
        # First campaign: an enforce policy naming another host: nothing goes out, and the
        # policy is cached in the state file.
        world.publish(DOMAIN, "1", policy_response("enforce", ["mx.elsewhere.test"]))
        toml = write_campaign(first, addresses([DOMAIN], 2), toml=campaign_toml())
        with trio.fail_after(30):
            await run_campaign(
                Campaign.load(toml, {}), world.options(first, limit=2, tls_state=state)
            )
        # Second campaign, a new process in effect: the TXT id changed and the policy host
        # answers 500. The cached, unexpired policy still applies (RFC 8461 §5.1).
        world.publish(DOMAIN, "2", Response(500, body=b"down\r\n"))
        toml = write_campaign(second, addresses([DOMAIN], 2), toml=campaign_toml())
        with trio.fail_after(30):
            summary = await run_campaign(
                Campaign.load(toml, {}), world.options(second, limit=2, tls_state=state)
            )
        assert world.policies.requests[f"mta-sts.{DOMAIN}"] == 2
        assert world.world.servers["site"].connections == []
    assert summary.counts[Status.DELIVERED] == 0
    assert all("not in the MTA-STS policy" in (s.text or "") for s in states(second))


async def test_a_redirected_policy_is_a_fetch_error_and_no_policy(
    tmp_path: Path, ca: trustme.CA
) -> None:
    redirect = Response(301, (("Location", "https://elsewhere.test/policy.txt"),))
    async with sts_world(ca, [site(ca, starttls=False)], [DOMAIN]) as world:
        world.publish(DOMAIN, "1", redirect)
        summary = await send(tmp_path, world)
    # No policy could be fetched and none is cached: delivery as without MTA-STS, and the
    # failure is counted for the domain's TLS report.
    assert summary.counts[Status.DELIVERED] == 4
    assert report_counts(tmp_path)["sts", "sts-policy-fetch-error"] == 1


async def test_enforce_never_falls_back_to_the_domains_a_record(
    tmp_path: Path, ca: trustme.CA
) -> None:
    # strict.test has no MX records, only an A record on the site's address: the implicit MX
    # (RFC 5321 §5.1) is strict.test itself, which the policy's mx patterns do not name.
    bare = SiteSpec("site", (), "127.0.0.2", site(ca).script)
    async with sts_world(ca, [bare], [DOMAIN]) as world:
        world.world.dns.load({DOMAIN: {"A": ["127.0.0.2"]}})
        world.publish(DOMAIN, "1", policy_response("enforce", [MX]))
        summary = await send(tmp_path, world)
        assert world.world.servers["site"].connections == []
    assert summary.counts[Status.DELIVERED] == 0
    for state in states(tmp_path):
        assert state.status is Status.PENDING
        assert f"MX host {DOMAIN} is not in the MTA-STS policy of {DOMAIN}" in (state.text or "")
