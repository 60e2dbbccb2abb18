"""SMTP TLS Reporting (RFC 8460): result types, session counts, the daily JSON report.

How this works (no I/O here; :mod:`bulksend.tlspolicy.state` keeps the counts): each TLS
session to a host under a policy (MTA-STS or DANE) is counted once, by UTC day, policy
domain, policy and result: ``success`` or one of the result types of §4.3. A report for one
day (§4.4) has one entry per policy applied, with its successful and failed session counts
and the failures grouped by result type and receiving MX host. A policy domain's
``_smtp._tls`` TXT record (§3) names where its reports go (:func:`parse_rua`); a report
travels gzip'd (:func:`report_gzip`), by HTTPS POST or as the attachment of a
``multipart/report`` mail (§5.3, :func:`report_mail`).
"""

from __future__ import annotations

import datetime
import email.message
import email.policy
import email.utils
import gzip
import json
import ssl
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RESULT_TYPES",
    "SUCCESS",
    "SessionKey",
    "aggregate_report",
    "parse_rua",
    "report_gzip",
    "report_mail",
    "result_of",
]

SUCCESS = "success"
#: RFC 8460 §4.3's result types: TLS negotiation (4.3.1), policy (4.3.2), general (4.3.3).
RESULT_TYPES = (
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) for the certificate result types.
_EXPIRED = {9, 10}  # not yet valid, has expired
_UNTRUSTED = {2, 18, 19, 20, 21, 27}  # unknown issuer, self-signed, no local issuer...
_HOST_MISMATCH = {62}  # X509_V_ERR_HOSTNAME_MISMATCH


@dataclass(frozen=True, slots=True)
class SessionKey:
    """What one counted session is filed under (a row of the counts).

    Attributes:
        day: the UTC day, ``YYYY-MM-DD``.
        domain: the policy domain (the recipient domain).
        policy_type: ``sts``, ``tlsa`` or ``no-policy-found`` (§4.4).
        policy: the policy's text lines (the MTA-STS file, or the TLSA records).
        mx_patterns: an MTA-STS policy's ``mx`` patterns.
        result: ``success`` or a result type.
        mx_host: the receiving MX host name (failures only).
        address: the receiving IP address (failures only).
    """

    day: str
    domain: str
    policy_type: str
    policy: tuple[str, ...]
    mx_patterns: tuple[str, ...]
    result: str
    mx_host: str = ""
    address: str = ""


def result_of(exc: BaseException) -> str:
    """The RFC 8460 result type of a failed TLS session (``validation-failure`` if unsure)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        result = getattr(e, "tls_result", None)
        if isinstance(result, str):
            return result
        if isinstance(e, ssl.SSLCertVerificationError):
            code = e.verify_code
            if code in _HOST_MISMATCH:
                return "certificate-host-mismatch"
            if code in _EXPIRED:
                return "certificate-expired"
            if code in _UNTRUSTED:
                return "certificate-not-trusted"
            return "validation-failure"
        todo += [e.__cause__, e.__context__]
    return "validation-failure"


def aggregate_report(
    day: datetime.date,
    counts: Iterable[tuple[SessionKey, int]],
    *,
    organization: str,
    contact: str,
    domain: str | None = None,
) -> dict[str, Any]:
    """The RFC 8460 §4.4 aggregate report of ``day``'s sessions (of one ``domain``, or all).

    Args:
        counts: (session key, sessions) pairs; keys of other days are left out.
        organization: ``organization-name``, the sender's organisation.
        contact: ``contact-info``, an address or URL to reach it.
    """
    start = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    end = start + datetime.timedelta(days=1) - datetime.timedelta(seconds=1)
    wanted = day.isoformat()
    policies: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], dict[str, Any]] = {}
    for key, sessions in sorted(counts, key=lambda kc: _order(kc[0])):
        if key.day != wanted or (domain is not None and key.domain != domain):
            continue
        ident = (key.domain, key.policy_type, key.policy, key.mx_patterns)
        entry = policies.get(ident)
        if entry is None:
            policy: dict[str, Any] = {
                "policy-type": key.policy_type,
                "policy-string": list(key.policy),
                "policy-domain": key.domain,
            }
            if key.mx_patterns:
                policy["mx-host"] = list(key.mx_patterns)
            entry = policies[ident] = {
                "policy": policy,
                "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
                "failure-details": [],
            }
        summary = entry["summary"]
        if key.result == SUCCESS:
            summary["total-successful-session-count"] += sessions
            continue
        summary["total-failure-session-count"] += sessions
        detail: dict[str, Any] = {"result-type": key.result}
        if key.mx_host:
            detail["receiving-mx-hostname"] = key.mx_host
        if key.address:
            detail["receiving-ip"] = key.address
        detail["failed-session-count"] = sessions
        entry["failure-details"].append(detail)
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": _stamp(start), "end-datetime": _stamp(end)},
        "contact-info": contact,
        "report-id": f"{wanted}_{domain or 'all'}_{uuid.uuid4().hex}",
        "policies": list(policies.values()),
    }


def _order(key: SessionKey) -> tuple[str, ...]:
    return (key.domain, key.policy_type, json.dumps(key.policy), key.result, key.mx_host)


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rua(texts: Sequence[str]) -> tuple[str, ...]:
    """The report destinations (``mailto:`` and ``https:`` URIs) of a domain's ``_smtp._tls``
    TXT records (RFC 8460 §3): none unless exactly one record starts ``v=TLSRPTv1``; URIs
    of other schemes are left out."""
    found = [t for t in texts if t.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(found) != 1:
        return ()
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (part.partition("=") for part in found[0].split(";"))
    }
    uris = (u.strip() for u in fields.get("rua", "").split(","))
    return tuple(u for u in uris if u.lower().startswith(("mailto:", "https://")))


def report_gzip(report: dict[str, Any]) -> bytes:
    """The report as gzip'd JSON, ``application/tlsrpt+gzip`` (RFC 8460 §5.3)."""
    return gzip.compress(json.dumps(report).encode(), mtime=0)


def report_mail(
    report: dict[str, Any], *, domain: str, submitter: str, sender: str, recipient: str
) -> bytes:
    """The mail that carries ``report`` to a ``mailto:`` destination (RFC 8460 §5.3).

    ``multipart/report; report-type="tlsrpt"``: a short text part and the gzip'd JSON
    (``application/tlsrpt+gzip``, named ``submitter!domain!begin!end!report-id.json.gz``,
    §5.1), with the ``TLS-Report-Domain`` and ``TLS-Report-Submitter`` headers (§5.3.1)
    and the subject ``Report Domain: ... Submitter: ... Report-ID: <...>``.
    """
    start, end = (
        int(datetime.datetime.fromisoformat(report["date-range"][k]).timestamp())
        for k in ("start-datetime", "end-datetime")
    )
    report_id = report["report-id"]
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = urllib.parse.unquote(recipient)
    message["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=submitter)
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain}, "
        f"{report['date-range']['start-datetime']} to {report['date-range']['end-datetime']}.\n"
    )
    message.add_attachment(
        report_gzip(report),
        maintype="application",
        subtype="tlsrpt+gzip",
        filename=f"{submitter}!{domain}!{start}!{end}!{report_id}.json.gz",
    )
    message.set_type("multipart/report")
    message.set_param("report-type", "tlsrpt")
    return message.as_bytes()
