"""Sending a day's TLS reports to the policy domains that ask for them (RFC 8460 §3, §5.3).

How this works: for each policy domain, ``_smtp._tls.<domain>`` TXT is looked up through
the run's resolvers (:meth:`MXResolver.records`); its ``rua`` names where the report goes
(:func:`~bulksend.tlspolicy.tlsrpt.parse_rua`). An ``https:`` destination gets the gzip'd
JSON by POST (:func:`~bulksend.tlspolicy.fetch.post_report`: its host resolved the same
way, its certificate verified, no redirect); a ``mailto:`` destination gets a
``multipart/report`` mail (:func:`~bulksend.tlspolicy.tlsrpt.report_mail`) through the
configured smarthost, over bulksend's own SMTP client (STARTTLS and AUTH as the smarthost
is configured). Each destination is tried once; the outcome of each is one
:class:`Delivery`, failures included, so one bad destination does not stop the others.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

import dns.rdtypes.ANY.TXT

from bulksend.config.schema import TlsMode
from bulksend.routing.config import Relay
from bulksend.routing.errors import RoutingError
from bulksend.routing.mx import MXResolver, is_acceptable_address
from bulksend.smtp.client import SMTPClient
from bulksend.smtp.encoding import Envelope
from bulksend.smtp.errors import SMTPError
from bulksend.tlspolicy.fetch import FetchError, FetchSettings, post_report
from bulksend.tlspolicy.tlsrpt import parse_rua, report_gzip, report_mail

__all__ = ["Delivery", "Submission", "report_destinations"]

_NO_SMARTHOST = (
    "a mailto: destination needs a relay: give --campaign with a [routing.smarthost] section"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one report sent to one destination."""

    domain: str
    destination: str
    ok: bool
    detail: str


async def report_destinations(resolver: MXResolver, domain: str) -> tuple[str, ...]:
    """The ``rua`` URIs ``domain`` publishes (none: it wants no report, or the lookup failed)."""
    found = await resolver.records(f"_smtp._tls.{domain}", "TXT")
    return parse_rua(
        [
            b"".join(rd.strings).decode("ascii", "replace")
            for rd in found.found
            if isinstance(rd, dns.rdtypes.ANY.TXT.TXT)
        ]
    )


@dataclass(frozen=True, slots=True)
class Submission:
    """How reports are sent.

    Attributes:
        resolver: looks up ``_smtp._tls`` records, HTTPS hosts and the smarthost's name.
        ssl_context: verifies HTTPS hosts and the smarthost (the system's trust store plus
            the campaign's ``[tls] ca_file``).
        submitter: our domain (``TLS-Report-Submitter``, the report's file name).
        sender: the mail's From and MAIL FROM.
        ehlo_hostname: our name in EHLO.
        smarthost: the relay mail goes through; None: ``mailto:`` destinations fail.
        allow_private: accept an HTTPS host's non-global addresses.
        deadline: seconds for one HTTPS POST.
    """

    resolver: MXResolver
    ssl_context: ssl.SSLContext
    submitter: str
    sender: str
    ehlo_hostname: str
    smarthost: Relay | None = None
    allow_private: bool = False
    deadline: float = 30.0

    async def send(self, report: dict[str, Any], domain: str, destination: str) -> Delivery:
        """Send ``report`` (of ``domain``) to one ``rua`` destination."""
        try:
            if destination.lower().startswith("mailto:"):
                if self.smarthost is None:
                    return Delivery(domain, destination, False, _NO_SMARTHOST)
                detail = await self._mail(
                    report, domain, destination[len("mailto:") :], self.smarthost
                )
            else:
                detail = await self._post(report, destination)
        except (SMTPError, FetchError, RoutingError) as exc:
            return Delivery(domain, destination, False, str(exc))
        return Delivery(domain, destination, True, detail)

    async def _post(self, report: dict[str, Any], url: str) -> str:
        host = urllib.parse.urlsplit(url).hostname or ""
        addresses, _expires = await self.resolver.addresses(host)
        acceptable = [
            a for a in addresses if is_acceptable_address(a, allow_private=self.allow_private)
        ]
        if not acceptable:  # a TXT record from anyone must not make us POST inside our network
            raise FetchError(
                f"{host} has no public address ({', '.join(addresses)}): not sent "
                "([routing] allow_private_addresses = true allows it)"
            )
        settings = FetchSettings(ssl_context=self.ssl_context, deadline=self.deadline)
        status = await post_report(url, acceptable, report_gzip(report), settings)
        if not 200 <= status < 300:
            raise FetchError(f"{host} answered {status}")
        return f"accepted ({status})"

    async def _mail(self, report: dict[str, Any], domain: str, address: str, relay: Relay) -> str:
        recipient = urllib.parse.unquote(address.split("?", 1)[0])
        envelope = Envelope(self.sender, (recipient,))
        refusal = envelope.sender_refusal or envelope.refusals[0]
        if refusal is not None:  # CR, LF or worse, from DNS: never into a header or command
            raise refusal
        data = report_mail(
            report, domain=domain, submitter=self.submitter, sender=self.sender,
            recipient=recipient,
        )  # fmt: skip
        host = relay.address or (await self.resolver.addresses(relay.host))[0][0]
        client = await SMTPClient.connect(host, relay.port, hostname=self.ehlo_hostname)
        try:
            await client.handshake(
                tls=relay.tls or TlsMode.REQUIRED,
                ssl_context=self.ssl_context,
                server_hostname=relay.host,
            )
            if relay.auth is not None:
                await client.authenticate(relay.auth.username, relay.auth.password.reveal())
            (result,) = await client.send(envelope, data)
        finally:
            await client.quit()
        if result.error is not None:
            raise result.error
        return f"accepted by {relay.host} ({result.reply})"
