"""``validate``: a campaign's configuration, templates, recipients and DNS records."""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import dns.asyncresolver
import dns.exception
import dns.resolver
import trio

from bulksend.campaign.dkim import zone_txt
from bulksend.campaign.recipients import Reject
from bulksend.campaign.render import Campaign, RenderError
from bulksend.cli.options import debug_option, not_fqdn
from bulksend.cli.output import EXIT_OK, EXIT_UNDELIVERED
from bulksend.config import is_fqdn
from bulksend.delivery.run import ehlo_hostname
from bulksend.errors import ConfigError
from bulksend.progress import write_private_bytes
from bulksend.routing import system_nameservers
from bulksend.text import printable


@dataclass
class Finding:
    """One result of ``validate``: ``ok``, ``warning`` or ``error``."""

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


async def _dns_findings(
    campaign: Campaign, nameservers: tuple[str, ...], port: int
) -> list[Finding]:
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


@click.command()
@click.argument("campaign_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Render this many recipients (the first ones).",
)
@click.option(
    "--previews",
    type=click.IntRange(min=0),
    default=0,
    help="Write this many rendered messages as .eml files (0600).",
)
@click.option(
    "--preview-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where previews go; default <campaign dir>/previews.",
)
@click.option("--no-dns", is_flag=True, help="Skip the SPF, DKIM and DMARC lookups.")
@click.option(
    "--nameserver",
    "nameservers",
    multiple=True,
    help="DNS resolver for the lookups (repeatable); default the campaign's [routing] "
    "nameservers, else the system's (/etc/resolv.conf).",
)
@click.option("--dns-port", type=click.IntRange(1, 65535), default=53, hidden=True)
@debug_option
def validate(
    *,
    campaign_file: Path,
    sample: int,
    previews: int,
    preview_dir: Path | None,
    no_dns: bool,
    nameservers: tuple[str, ...],
    dns_port: int,
) -> None:
    """Check a campaign: config, templates, recipients, DKIM key, SPF/DKIM/DMARC in DNS."""
    campaign = Campaign.load(campaign_file, os.environ)
    campaign.check_recipients(sample)
    config = campaign.config
    findings = [Finding("ok", f"campaign {config.id}: configuration and templates load")]
    findings += [Finding("warning", w) for w in campaign.warnings]
    for signer in campaign.signers:
        findings.append(
            Finding(
                "ok",
                f"DKIM key loaded: {signer.algorithm.value} "
                f"{signer.selector}._domainkey.{signer.domain}",
            )
        )
    ehlo = ehlo_hostname(config, None)
    findings.append(
        Finding("ok", f"EHLO name: {ehlo}") if is_fqdn(ehlo) else Finding("warning", not_fqdn(ehlo))
    )
    rejects: list[Reject] = []
    rendered = 0
    kept: list[bytes] = []  # only the previews: each message may be max_message_size
    failures: list[str] = []
    now = time.time()
    keep = max(sample, previews)
    reader = iter(campaign.recipients(rejects.append))
    for recipient in reader:
        if rendered + len(failures) >= keep:
            break
        try:
            data = campaign.render(recipient, now=now).data
        except RenderError as exc:
            failures.append(str(exc))
            continue
        rendered += 1
        if len(kept) < previews:
            kept.append(data)
    if isinstance(reader, Generator):
        reader.close()  # the file it reads
    tried = rendered + len(failures)
    if failures:
        findings += [Finding("warning", f"render failure: {f}") for f in failures[:5]]
    findings.append(
        Finding(
            "ok" if tried and not failures else "warning",
            f"recipients: {rendered:,} of the first {tried:,} rendered"
            + (f"; {len(rejects):,} rows rejected before them" if rejects else ""),
        )
    )
    for reject in rejects[:5]:
        findings.append(
            Finding(
                "warning", f"rejected row: line {reject.line}: {reject.raw_email}: {reject.reason}"
            )
        )
    if previews:
        directory = preview_dir or config.source.parent / "previews"
        directory.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(kept, 1):
            write_private_bytes(directory / f"preview-{i:03d}.eml", data)
        findings.append(Finding("ok", f"{len(kept)} previews in {directory}"))
    if not no_dns:
        servers = tuple(nameservers) or config.routing.nameservers or _system_or_none()
        if servers:
            findings += trio.run(_dns_findings, campaign, servers, dns_port)
        else:
            findings.append(Finding("warning", "no nameserver: SPF, DKIM and DMARC not checked"))
    for f in findings:
        click.echo(printable(f"{f.level}: {f.text}"))  # DNS text is anyone's
    warnings = sum(1 for f in findings if f.level != "ok")
    click.echo(f"{warnings} warning(s)" if warnings else "campaign looks good")
    raise SystemExit(EXIT_UNDELIVERED if warnings else EXIT_OK)


def _system_or_none() -> tuple[str, ...]:
    try:
        return system_nameservers()
    except ConfigError:
        return ()
