"""TLS-RPT (RFC 8460): sessions counted by a real run, the ``tls-report`` command's JSON,
checked against a JSON schema written from RFC 8460 §4.4 (report fields) and §4.3 (result
types)."""

from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio
import trustme
from click.testing import CliRunner

from bulksend.campaign import Campaign
from bulksend.cli.app import main
from bulksend.delivery.run import run_campaign
from bulksend.routing import MXResolver, RoutingConfig
from bulksend.testing.https import policy_response
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, write_campaign
from bulksend.testing.smtp import ServerScript
from bulksend.tlspolicy import TlsPolicies, TlsState
from bulksend.tlspolicy.tlsrpt import RESULT_TYPES, SessionKey
from tests.helpers.tls import server_context
from tests.tlspolicy.test_mta_sts_delivery import DOMAIN, MX, report_counts, send, site
from tests.tlspolicy.world import sts_world

_COUNT = {"type": "integer", "minimum": 0}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_DATETIME = {
    "type": "string",
    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$",
}

#: RFC 8460 §4.4, field by field (required ones as the RFC marks them).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "properties": {"start-datetime": _DATETIME, "end-datetime": _DATETIME},
            "additionalProperties": False,
        },
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-string", "policy-domain"],
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": _STRINGS,
                            "policy-domain": {"type": "string", "minLength": 1},
                            "mx-host": _STRINGS,
                        },
                        "additionalProperties": False,
                    },
                    "summary": {
                        "type": "object",
                        "required": [
                            "total-successful-session-count",
                            "total-failure-session-count",
                        ],
                        "properties": {
                            "total-successful-session-count": _COUNT,
                            "total-failure-session-count": _COUNT,
                        },
                        "additionalProperties": False,
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "properties": {
                                "result-type": {"enum": list(RESULT_TYPES)},
                                "sending-mta-ip": {"type": "string"},
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": {"type": "string"},
                                "failed-session-count": _COUNT,
                                "additional-information": {"type": "string"},
                                "failure-reason-code": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def test_the_schema_catches_a_wrong_report() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    wrong = {"organization-name": "x", "policies": [{"policy": {"policy-type": "dmarc"}}]}
    assert len(list(validator.iter_errors(wrong))) >= 4


async def test_tls_report_of_a_day_validates_and_counts_sessions(
    tmp_path: Path, ca: trustme.CA
) -> None:
    # Testing mode with a certificate for another name: every session is delivered and
    # counted as a certificate-host-mismatch failure.
    async with sts_world(ca, [site(ca, cert_for="other.test")], [DOMAIN]) as world:
        world.publish(DOMAIN, "7", policy_response("testing", [MX]))
        await send(tmp_path, world, count=3)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    out = tmp_path / "report.json"
    state = tmp_path / "tls-state.sqlite3"
    result = CliRunner().invoke(
        main,
        ["tls-report", "--day", today, "--state", str(state), "--output", str(out),
         "--organization", "Sender Inc.", "--contact", "tls@sender.test"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(report)
    assert report["date-range"] == {
        "start-datetime": f"{today}T00:00:00Z",
        "end-datetime": f"{today}T23:59:59Z",
    }
    (entry,) = report["policies"]
    assert entry["policy"]["policy-type"] == "sts"
    assert entry["policy"]["policy-domain"] == DOMAIN
    assert entry["policy"]["mx-host"] == [MX]
    assert "mode: testing" in entry["policy"]["policy-string"]
    failures = entry["failure-details"]
    assert {f["result-type"] for f in failures} == {"certificate-host-mismatch"}
    assert {f["receiving-mx-hostname"] for f in failures} == {MX}
    failed = sum(f["failed-session-count"] for f in failures)
    assert failed == entry["summary"]["total-failure-session-count"] >= 1
    assert entry["summary"]["total-successful-session-count"] == 0


def test_tls_report_names_a_missing_state_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    result = CliRunner().invoke(
        main, ["tls-report", "--day", "2026-12-01", "--state", str(missing)]
    )
    assert result.exit_code == 1
    assert f"no TLS state file at '{missing}'" in result.output


def test_tls_report_refuses_a_bad_day() -> None:
    result = CliRunner().invoke(main, ["tls-report", "--day", "yesterday"])
    assert result.exit_code == 2
    assert "'yesterday' is not a day: write YYYY-MM-DD" in result.output


async def test_a_run_saves_its_tls_counts_as_it_goes_each_session_once(
    tmp_path: Path, ca: trustme.CA
) -> None:
    # One message a connection, slow final replies: each session is one failure (testing
    # mode, a certificate for another name), and the run lasts a few seconds.
    slow = ServerScript(tls_context=server_context(ca, "other.test"), reply_delays={"DOT": 0.1})
    spec = SiteSpec("site", (DOMAIN,), "127.0.0.2", slow)
    policy = "[policy.defaults]\nmax_connections = 1\nmessages_per_connection = 1\n"
    count = 30
    toml = write_campaign(tmp_path, addresses([DOMAIN], count), toml=campaign_toml(policy=policy))
    seen_during: dict[tuple[str, str], int] = {}
    async with sts_world(ca, [spec], [DOMAIN]) as world:
        world.publish(DOMAIN, "7", policy_response("testing", [MX]))
        server = world.world.servers["site"]
        options = world.options(tmp_path, limit=count, tls_save_every=0.2)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_campaign, Campaign.load(toml, {}), options)
                # Saved while the run goes: a run killed now would have lost only the rest.
                while not seen_during:
                    await trio.sleep(0.1)
                    seen_during = report_counts(tmp_path)
                during = server.stats.messages
    assert during < count  # the run was still sending when the counts were read
    assert set(seen_during) == {("sts", "certificate-host-mismatch")}
    # One failed session a message (each saved once, however many saves there were).
    assert report_counts(tmp_path) == {("sts", "certificate-host-mismatch"): count}


async def test_counts_that_cannot_be_saved_wait_for_the_next_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tls-state.sqlite3"
    state = TlsState(path)
    tls = TlsPolicies(MXResolver(RoutingConfig(nameservers=("127.0.0.1",))), state=state)
    key = SessionKey(
        "2026-12-03", DOMAIN, "sts", ("version: STSv1",), (MX,), "starttls-not-supported", MX, ""
    )
    tls.counts[key] += 3
    with sqlite3.connect(path) as other:  # the table gone under the run: a save fails
        other.execute("DROP TABLE tls_sessions")
    await tls.save()
    assert "TLS-RPT counts not saved" in caplog.text
    TlsState(path).close()  # the table is back
    tls.counts[key] += 1
    await tls.close()
    assert saved(path, "2026-12-03") == [(key, 4)]


async def test_a_save_cancelled_on_the_way_keeps_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "tls-state.sqlite3"
    tls = TlsPolicies(MXResolver(RoutingConfig(nameservers=("127.0.0.1",))), state=TlsState(path))
    key = SessionKey("2026-12-03", DOMAIN, "sts", (), (MX,), "validation-failure", MX, "")
    tls.counts[key] += 3
    with trio.CancelScope() as scope:
        scope.cancel()  # the run ends just as the minute's save begins
        await tls.save()
    await tls.close()
    assert saved(path, "2026-12-03") == [(key, 3)]


def saved(path: Path, day: str) -> list[tuple[SessionKey, int]]:
    """The session counts of ``day`` in the state file at ``path``, as another run reads them."""
    state = TlsState(path)
    try:
        return state.sessions(day)
    finally:
        state.close()
