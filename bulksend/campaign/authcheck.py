"""Whether a campaign's mail will authenticate: SPF, DKIM and DMARC records in DNS.

:func:`check_authentication` is the entry point (``bulksend validate`` runs it): it looks up
the TXT records of the envelope sender's domain (SPF, RFC 7208), of each DKIM selector
(RFC 6376 §3.6) and of the From domain (DMARC, RFC 7489), and returns one
:class:`Finding` per conclusion. The ``judge_*`` functions are pure: records in, findings out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from bulksend.campaign.dkim import zone_txt
from bulksend.campaign.render import Campaign

__all__ = ["Finding", "check_authentication", "judge_dkim", "judge_dmarc", "judge_spf"]


@dataclass
class Finding:
    """One result of a check (``validate``): ``ok``, ``warning`` or ``error``."""

    level: str
    text: str


def judge_spf(domain: str, records: list[str] | None) -> list[Finding]:
    """SPF (RFC 7208) of the envelope sender's domain."""
    if records is None:
        return [Finding("warning", f"SPF: could not look up TXT {domain}")]
    spf = [r for r in records if r.lower().startswith("v=spf1")]
    if not spf:
        return [
            Finding(
                "warning",
                f"SPF: no v=spf1 TXT record at {domain}; receivers "
                "will treat the mail as unauthenticated",
            )
        ]
    if len(spf) > 1:
        return [
            Finding(
                "warning",
                f"SPF: {len(spf)} v=spf1 records at {domain} (a permerror, "
                "RFC 7208 §4.5): publish one",
            )
        ]
    terms = spf[0].lower().split()
    all_terms = [t for t in terms if t.lstrip("+-~?") == "all"]
    if not all_terms and not any(t.startswith("redirect=") for t in terms):
        return [Finding("warning", f"SPF: {domain}: {spf[0]!r} has no 'all' term")]
    if any(t in ("all", "+all") for t in all_terms):
        return [Finding("warning", f"SPF: {domain}: {spf[0]!r} allows every host (+all)")]
    if "?all" in all_terms:
        return [Finding("warning", f"SPF: {domain}: {spf[0]!r} is neutral (?all): weak")]
    return [Finding("ok", f"SPF: {domain}: {spf[0]}")]


def _txt_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def judge_dkim(name: str, records: list[str] | None, expected: str) -> list[Finding]:
    """The DKIM key record at ``selector._domainkey.domain`` against the configured key."""
    if records is None:
        return [Finding("warning", f"DKIM: could not look up TXT {name}")]
    keys = [r for r in records if "p=" in r]
    if not keys:
        return [
            Finding(
                "warning", f"DKIM: no key record at {name}; publish: {zone_txt(name, expected)}"
            )
        ]
    published = _txt_tags(keys[0]).get("p", "")
    wanted = _txt_tags(expected)["p"]
    if not published:
        return [Finding("warning", f"DKIM: the key at {name} is revoked (empty p=)")]
    if published != wanted:
        return [
            Finding(
                "warning",
                f"DKIM: the key at {name} is not the configured key's "
                f"public key; publish: {zone_txt(name, expected)}",
            )
        ]
    return [Finding("ok", f"DKIM: {name} publishes the configured key")]


def _aligned(a: str, b: str) -> bool:
    """Relaxed DMARC alignment, approximated: one domain is the other or a subdomain of it."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def judge_dmarc(
    from_domain: str, records: list[str] | None, *, dkim_domains: Sequence[str], spf_domain: str
) -> list[Finding]:
    """DMARC (RFC 7489) of the From domain, and whether DKIM or SPF can align with it."""
    name = f"_dmarc.{from_domain}"
    findings: list[Finding] = []
    if records is None:
        findings.append(Finding("warning", f"DMARC: could not look up TXT {name}"))
    else:
        dmarc = [r for r in records if r.lower().replace(" ", "").startswith("v=dmarc1")]
        if not dmarc:
            findings.append(
                Finding(
                    "warning",
                    f"DMARC: no v=DMARC1 record at {name}; bulk "
                    "senders need one (Gmail, Yahoo 2024)",
                )
            )
        else:
            policy = _txt_tags(dmarc[0]).get("p", "").lower()
            if policy not in ("quarantine", "reject"):
                findings.append(
                    Finding(
                        "warning", f"DMARC: {name} policy p={policy or '?'} only monitors (weak)"
                    )
                )
            else:
                findings.append(Finding("ok", f"DMARC: {name} p={policy}"))
    if not any(_aligned(d, from_domain) for d in dkim_domains) and not _aligned(
        spf_domain, from_domain
    ):
        findings.append(
            Finding(
                "warning",
                f"DMARC: neither a DKIM domain ({', '.join(dkim_domains) or 'none'}) "
                f"nor the envelope domain {spf_domain} aligns with "
                f"the From domain {from_domain}",
            )
        )
    return findings


_TXT_LIFETIME = 5.0  # seconds for one validate lookup, retries included


class _TxtLookups:
    """``validate``'s TXT lookups through the given resolvers.

    A failure is remembered with the resolvers and the reason. After a timeout (a resolver
    that does not answer) the remaining lookups are not sent: each would wait as long again.
    """

    def __init__(self, nameservers: tuple[str, ...], port: int) -> None:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
        resolver.port = port
        resolver.lifetime = _TXT_LIFETIME
        self._resolver = resolver
        self.where = ", ".join(
            s if port == 53 else (f"[{s}]:{port}" if ":" in s else f"{s}:{port}")
            for s in nameservers
        )
        self._failures: list[str] = []
        self._timed_out = False
        self._skipped: list[str] = []

    async def txt(self, name: str) -> list[str] | None:
        """TXT strings at ``name`` ([] when none), None when the lookup failed or was skipped."""
        if self._timed_out:
            self._skipped.append(name)
            return None
        try:
            answer = await self._resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            self._timed_out = True
            self._failures.append(f"TXT {name}: no answer within {_TXT_LIFETIME:g}s (timeout)")
            return None
        except dns.resolver.NoNameservers as exc:
            # Each resolver answered, unhelpfully (REFUSED, SERVFAIL, a malformed reply).
            answers = sorted({f"answered {e[3]}" for e in exc.kwargs.get("errors") or ()})
            self._failures.append(f"TXT {name}: " + ("; ".join(answers) or str(exc)))
            return None
        except dns.exception.DNSException as exc:
            self._failures.append(f"TXT {name}: {exc}")
            return None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    def failures(self) -> list[str]:
        """Why lookups failed, one line each, naming what was not asked after a timeout."""
        lines = list(self._failures)
        if self._skipped:
            lines.append("not asked after the timeout: " + ", ".join(self._skipped))
        return lines


async def check_authentication(
    campaign: Campaign, nameservers: tuple[str, ...], port: int
) -> list[Finding]:
    """SPF, DKIM and DMARC of ``campaign``'s domains as its receivers will see them.

    The TXT records are asked of ``nameservers`` on ``port``; a lookup that fails is a
    warning naming the resolver and the reason.
    """
    lookups = _TxtLookups(nameservers, port)
    config = campaign.config
    from_domain = config.message.from_address.rpartition("@")[2].lower()
    spf_domain = config.envelope_sender.rpartition("@")[2].lower()
    findings = judge_spf(spf_domain, await lookups.txt(spf_domain))
    if not campaign.signers:
        findings.append(Finding("warning", "DKIM: no [dkim] section: messages are not signed"))
    for signer in campaign.signers:
        name = f"{signer.selector}._domainkey.{signer.domain}"
        records = await lookups.txt(name)
        findings += judge_dkim(name, records, signer.public_txt_record())
    findings += judge_dmarc(
        from_domain,
        await lookups.txt(f"_dmarc.{from_domain}"),
        dkim_domains=[s.domain for s in campaign.signers],
        spf_domain=spf_domain,
    )
    findings += [
        Finding("warning", f"DNS: resolver {lookups.where}: {failure}")
        for failure in lookups.failures()
    ]
    return findings
