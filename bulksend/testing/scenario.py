"""A whole delivery world on loopback: DNS, several SMTP sites on 127.0.0.x, a campaign.

How this works: :func:`running` starts the test DNS server and one
:class:`~bulksend.testing.smtp.SMTPServer` per :class:`SiteSpec`, each on its own 127.0.0.x
address but all on the *same* port (RoutingConfig has one SMTP port for every MX host, as
port 25 is in real life), publishes MX and A records for every site's domains, and yields a
:class:`World` that knows the ports. :func:`write_campaign` writes a campaign directory
(TOML, templates, recipients CSV) that points at it. Tests, ``bulksend demo`` and the
benchmarks all build on this, so what they exercise is the real stack over real sockets.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bulksend.testing.dns import DNSServer
from bulksend.testing.smtp import ServerScript, SMTPServer

__all__ = [
    "SiteSpec",
    "World",
    "addresses",
    "campaign_toml",
    "running",
    "write_campaign",
    "write_shared_campaign",
]


@dataclass(frozen=True)
class SiteSpec:
    """One receiving site.

    Attributes:
        name: a short name; MX hosts are ``mx1.<name>.test`` ...
        domains: recipient domains whose MX records point at this site.
        address: the 127.0.0.x address its MX hosts resolve to.
        script: the test server's behaviour.
        dead: publish the MX records but run no server (connections are refused).
        mx_hosts: how many MX host names (all on ``address``), listed in a different order
            for each domain, to exercise MX rollup.
    """

    name: str
    domains: tuple[str, ...]
    address: str
    script: ServerScript = field(default_factory=ServerScript)
    dead: bool = False
    mx_hosts: int = 1

    def mx_names(self) -> list[str]:
        return [f"mx{i + 1}.{self.name}.test" for i in range(self.mx_hosts)]


@dataclass
class World:
    """The running servers."""

    dns: DNSServer
    dns_port: int
    smtp_port: int
    servers: dict[str, SMTPServer]

    @property
    def delivered(self) -> int:
        return sum(s.stats.messages for s in self.servers.values())

    def received(self) -> collections.Counter[str]:
        """Every recipient any server accepted, with how many times (repeats show as > 1)."""
        total: collections.Counter[str] = collections.Counter()
        for server in self.servers.values():
            total.update(server.received())
        return total


def zones(sites: Sequence[SiteSpec]) -> dict[str, dict[str, Any]]:
    """MX and A records for every site; the MX order rotates per domain (same set)."""
    records: dict[str, dict[str, Any]] = {}
    for site in sites:
        names = site.mx_names()
        for name in names:
            records[name] = {"A": [site.address]}
        for i, domain in enumerate(site.domains):
            order = names[i % len(names) :] + names[: i % len(names)]
            records[domain] = {"MX": [(10, n) for n in order]}
    return records


@contextlib.asynccontextmanager
async def running(sites: Sequence[SiteSpec]) -> AsyncIterator[World]:
    """Start DNS and every live site's SMTP server; stop them on exit."""
    dns = DNSServer(zones(sites))
    async with trio.open_nursery() as nursery:
        dns_port = await nursery.start(dns.serve)
        servers, port = await _start_smtp(nursery, sites)
        try:
            yield World(dns, dns_port, port, servers)
        finally:
            nursery.cancel_scope.cancel()


async def _start_smtp(
    nursery: trio.Nursery, sites: Sequence[SiteSpec]
) -> tuple[dict[str, SMTPServer], int]:
    live = [s for s in sites if not s.dead]
    # Every server must listen on the same port: the first picks it, the others follow.
    for _attempt in range(20):
        port = 0
        servers: dict[str, SMTPServer] = {}
        try:
            for site in live:
                server = SMTPServer(site.script, host=site.address, port=port)
                _host, port = await nursery.start(server.serve)
                servers[site.name] = server
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue  # the port was taken on another address: start again
        if not port:  # every site is dead: any port where nothing listens will do
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        return servers, port
    raise OSError(errno.EADDRINUSE, "no port free on every site address")


def campaign_toml(
    *,
    campaign_id: str = "test-campaign",
    policy: str = "",
    extra: str = "",
) -> str:
    """The TOML of a personalised test campaign (files as :func:`write_campaign` makes)."""
    return f"""\
[campaign]
id = "{campaign_id}"
ehlo_hostname = "sender.test"

[message]
from = "news@sender.test"
from_name = "Sender News"
subject = "Hello {{{{ first_name }}}}, your code is {{{{ code }}}}"
to_name = "{{{{ first_name }}}}"
text = "body.txt"
html = "body.html"

[envelope]
sender = "bounces+{{token}}@sender.test"

[recipients]
file = "recipients.csv"
rejects = "rejects.csv"
allow_test_domain = true

[unsubscribe]
url = "https://sender.test/unsubscribe?c={{{{ campaign_id }}}}&e={{{{ email | urlencode }}}}"

[routing]
allow_private_addresses = true

{policy}
{extra}
"""


TEXT_BODY = """Hello {{ first_name }},

Your personal code is {{ code }}. This message is about two kilobytes long, like a typical
newsletter, so that throughput figures mean something.
{% for i in range(12) %}
Line {{ i }}: the quick brown fox jumps over the lazy dog, again and again, for {{ first_name }}.
{%- endfor %}

.A line that starts with a dot, to exercise dot-stuffing.
"""

HTML_BODY = """<html><body><p>Hello {{ first_name }},</p>
<p>Your personal code is <b>{{ code }}</b>.</p>
{% for i in range(6) %}<p>Paragraph {{ i }} for {{ first_name }}.</p>{% endfor %}
</body></html>
"""


def write_campaign(
    directory: Path,
    recipients: Iterable[str],
    *,
    toml: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> Path:
    """Write a campaign (TOML, templates, recipients CSV) into ``directory``; return the TOML."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "body.txt").write_text(TEXT_BODY)
    (directory / "body.html").write_text(HTML_BODY)
    with (directory / "recipients.csv").open("w") as out:
        out.write("email,first_name,code\n")
        for i, address in enumerate(recipients):
            first = (fields or {}).get("first_name", f"Reader{i}")
            out.write(f"{address},{first},{i:06d}\n")
    path = directory / "campaign.toml"
    path.write_text(toml if toml is not None else campaign_toml())
    return path


SHARED_TOML = """\
[campaign]
id = "{campaign_id}"
ehlo_hostname = "sender.test"

[message]
from = "news@sender.test"
subject = "The same news for everyone ({{{{ campaign_id }}}})"
text = "body.txt"

[envelope]
sender = "bounces@sender.test"

[recipients]
file = "recipients.csv"
rejects = "rejects.csv"
allow_test_domain = true

[routing]
allow_private_addresses = true

[policy.defaults]
recipients_per_transaction = {per_transaction}
{policy}
"""


def write_shared_campaign(
    directory: Path,
    recipients: Iterable[str],
    *,
    per_transaction: int,
    campaign_id: str = "shared",
    policy: str = "",
) -> Path:
    """A campaign whose message is the same for everyone (several recipients per transaction)."""
    toml = SHARED_TOML.format(
        campaign_id=campaign_id, per_transaction=per_transaction, policy=policy
    )
    path = write_campaign(directory, recipients, toml=toml)
    (directory / "body.txt").write_text("The service is down from 22:00 to 23:00.\n")
    return path


def addresses(domains: Sequence[str], count: int) -> list[str]:
    """``count`` distinct addresses spread round robin over ``domains``."""
    return [f"user{i}@{domains[i % len(domains)]}" for i in range(count)]
