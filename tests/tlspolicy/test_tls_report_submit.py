"""``bulksend tls-report --submit``: each policy domain's report goes where its
``_smtp._tls`` TXT record asks (RFC 8460 §3, §5.3): an HTTPS POST of the gzip'd JSON to a
local HTTPS server, and a ``multipart/report`` mail through the campaign's smarthost (a test
SMTP server with STARTTLS), both on loopback, names from the test DNS server."""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio
import trustme
from click.testing import CliRunner, Result

from bulksend.cli.app import main
from bulksend.testing.https import PolicyServer, open_policy_server
from bulksend.testing.scenario import SiteSpec, World, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript, SMTPServer
from bulksend.tlspolicy import TlsState
from bulksend.tlspolicy.tlsrpt import SessionKey, parse_rua
from tests.helpers.tls import server_context
from tests.tlspolicy.test_tls_report import SCHEMA

DOMAIN = "strict.test"
OTHER = "quiet.test"  # counted too, but publishes no _smtp._tls record
REPORTS_HOST = "tlsrpt.strict.test"
RELAY = "127.0.0.3"
TODAY = datetime.datetime.now(datetime.UTC).date()


@dataclass
class Receivers:
    world: World
    https: PolicyServer

    @property
    def relay(self) -> SMTPServer:
        return self.world.servers["relay"]


@asynccontextmanager
async def receivers(ca: trustme.CA) -> AsyncIterator[Receivers]:
    """The test DNS server, a relay with STARTTLS (a certificate for its address) and an
    HTTPS server for ``tlsrpt.strict.test``."""
    relay = ServerScript(tls_context=server_context(ca, RELAY))
    async with (
        running([SiteSpec("relay", (), RELAY, relay)]) as world,
        open_policy_server(server_context(ca, REPORTS_HOST)) as https,
    ):
        yield Receivers(world, https)


def publish(receivers: Receivers, rua: str) -> None:
    receivers.world.dns.load(
        {
            f"_smtp._tls.{DOMAIN}": {"TXT": [f'"v=TLSRPTv1; rua={rua}"']},
            REPORTS_HOST: {"A": ["127.0.0.1"]},
        }
    )


def state_file(tmp_path: Path) -> Path:
    """A TLS state file with today's sessions: strict.test 5 successes and 2 failures under
    its MTA-STS policy, quiet.test 1 success."""
    path = tmp_path / "tls-state.sqlite3"
    day = TODAY.isoformat()
    policy = ("version: STSv1", "mode: enforce", "mx: mx1.site.test", "max_age: 86400")
    store = TlsState(path)
    try:
        store.add_sessions(
            [
                (SessionKey(day, DOMAIN, "sts", policy, ("mx1.site.test",), "success"), 5),
                (
                    SessionKey(
                        day, DOMAIN, "sts", policy, ("mx1.site.test",),
                        "certificate-host-mismatch", "mx1.site.test", "127.0.0.2",
                    ),
                    2,
                ),
                (SessionKey(day, OTHER, "sts", policy, ("mx1.site.test",), "success"), 1),
            ]
        )  # fmt: skip
    finally:
        store.close()
    return path


def campaign(tmp_path: Path, ca: trustme.CA, receivers: Receivers, *, relay: bool) -> Path:
    """A campaign whose [tls] ca_file trusts the test CA and (``relay``) whose smarthost is
    the test relay."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    extra = f'[tls]\nca_file = "{ca_file}"\n'
    if relay:
        extra += f'\n[routing.smarthost]\nhost = "{RELAY}:{receivers.world.smtp_port}"\n'
    directory = tmp_path / "campaign"
    directory.mkdir()
    return write_campaign(directory, ["a@x.test"], toml=campaign_toml(extra=extra))


async def submit(tmp_path: Path, receivers: Receivers, campaign_file: Path) -> Result:
    args = [
        "tls-report", "--day", TODAY.isoformat(), "--state", str(state_file(tmp_path)),
        "--submit", "--campaign", str(campaign_file), "--nameserver", "127.0.0.1",
        "--dns-port", str(receivers.world.dns_port), "--organization", "Sender Inc.",
        "--contact", "tls-admin@sender.test",
    ]  # fmt: skip
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(lambda: CliRunner().invoke(main, args))


def check_report(report: dict[str, Any]) -> None:
    """A valid RFC 8460 report of strict.test alone, with its counts."""
    jsonschema.validate(report, SCHEMA)
    assert report["organization-name"] == "Sender Inc."
    assert report["contact-info"] == "tls-admin@sender.test"
    (policy,) = report["policies"]
    assert policy["policy"]["policy-domain"] == DOMAIN
    assert policy["summary"] == {
        "total-successful-session-count": 5,
        "total-failure-session-count": 2,
    }


async def test_submit_posts_gzipped_json_over_https(tmp_path: Path, ca: trustme.CA) -> None:
    async with receivers(ca) as r:
        publish(r, f"https://{REPORTS_HOST}:{r.https.port}/v1/reports")
        result = await submit(tmp_path, r, campaign(tmp_path, ca, r, relay=False))
    assert result.exit_code == 0, result.output
    (post,) = r.https.posts
    assert post.host == REPORTS_HOST
    assert post.target == "/v1/reports"
    assert post.headers["content-type"] == "application/tlsrpt+gzip"
    check_report(json.loads(gzip.decompress(post.body)))
    assert f"{DOMAIN}: report " in result.stderr
    assert f"sent to https://{REPORTS_HOST}:{r.https.port}/v1/reports: accepted (200)" in (
        result.stderr
    )
    assert f"{OTHER}: publishes no TLS-RPT destination" in result.stderr


async def test_submit_mails_a_tlsrpt_report_through_the_smarthost(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with receivers(ca) as r:
        publish(r, "mailto:tls-reports@strict.test")
        result = await submit(tmp_path, r, campaign(tmp_path, ca, r, relay=True))
    assert result.exit_code == 0, result.output
    (txn,) = r.relay.transactions
    assert txn.tls  # the smarthost's STARTTLS, verified with the campaign's ca_file
    assert txn.mail_from == "tls-admin@sender.test"
    assert txn.rcpt_to == ("tls-reports@strict.test",)
    message = email.message_from_bytes(txn.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == DOMAIN
    assert message["TLS-Report-Submitter"] == "sender.test"
    (text, attachment) = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    report = json.loads(gzip.decompress(attachment.get_content()))
    check_report(report)
    assert message["Subject"] == (
        f"Report Domain: {DOMAIN} Submitter: sender.test Report-ID: <{report['report-id']}>"
    )
    name = attachment.get_filename()
    assert name is not None
    assert name.startswith(f"sender.test!{DOMAIN}!")
    assert name.endswith(".json.gz")


async def test_a_mailto_without_a_smarthost_is_reported_and_exits_4(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with receivers(ca) as r:
        publish(r, "mailto:tls-reports@strict.test")
        result = await submit(tmp_path, r, campaign(tmp_path, ca, r, relay=False))
    assert result.exit_code == 4, result.output
    assert "report not sent to mailto:tls-reports@strict.test: a mailto: destination needs" in (
        result.stderr
    )
    assert r.relay.transactions == []


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=TLSRPTv1; rua=mailto:a@b.test"], ("mailto:a@b.test",)),
        (
            ["v=TLSRPTv1;rua=https://r.test/x, mailto:a@b.test"],
            ("https://r.test/x", "mailto:a@b.test"),
        ),
        (["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@b.test"], ("mailto:a@b.test",)),
        (["v=TLSRPTv1; rua=mailto:a@b.test", "v=TLSRPTv1; rua=mailto:c@d.test"], ()),  # §3
        (["v=TLSRPTv1; rua=http://r.test/x,ftp://r.test"], ()),  # only mailto and https
        (["v=TLSRPTv2; rua=mailto:a@b.test"], ()),
        ([], ()),
    ],
)
def test_parse_rua(records: list[str], expected: tuple[str, ...]) -> None:
    assert parse_rua(records) == expected


async def test_a_mailto_with_a_line_break_is_refused_before_any_connection(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with receivers(ca) as r:
        publish(r, "mailto:tls-reports@strict.test%0D%0ABcc:evil@elsewhere.test")
        result = await submit(tmp_path, r, campaign(tmp_path, ca, r, relay=True))
    assert result.exit_code == 4, result.output
    assert "report not sent to mailto:tls-reports@strict.test%0D%0ABcc" in result.stderr
    assert "Traceback" not in result.output
    assert r.relay.stats.connections_opened == 0


async def test_an_https_destination_at_a_private_address_is_refused(
    tmp_path: Path, ca: trustme.CA
) -> None:
    # SSRF: a domain's TXT record points the POST at our own network (here, loopback).
    async with receivers(ca) as r:
        publish(r, f"https://{REPORTS_HOST}:{r.https.port}/admin")
        toml = campaign(tmp_path, ca, r, relay=False)
        text = toml.read_text()
        assert "allow_private_addresses = true" in text
        toml.write_text(text.replace("allow_private_addresses = true", ""))
        result = await submit(tmp_path, r, toml)
    assert result.exit_code == 4, result.output
    assert r.https.posts == []
    assert (
        f"{REPORTS_HOST} has no public address (127.0.0.1): not sent "
        "([routing] allow_private_addresses = true allows it)"
    ) in result.stderr


async def test_a_destination_with_a_terminal_escape_is_shown_escaped(
    tmp_path: Path, ca: trustme.CA
) -> None:
    async with receivers(ca) as r:
        publish(r, "mailto:a\\027[2Jb@strict.test")  # an ESC byte in the TXT record
        result = await submit(tmp_path, r, campaign(tmp_path, ca, r, relay=False))
    assert result.exit_code == 4, result.output
    assert "\x1b" not in result.stderr
    assert "report not sent to mailto:a\\x1b[2Jb@strict.test: a mailto: destination" in (
        result.stderr
    )
