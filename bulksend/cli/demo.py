"""``bulksend demo``: a realistic campaign against test servers on 127.0.0.x, in one process.

The demo world (:func:`demo_sites`) is a small internet of mail sites, each a test SMTP
server from :mod:`bulksend.testing` on its own loopback address, found through a test DNS
server, so the real stack (DNS, routing, scheduler, SMTP client, journal) does the work:

* ``bigmail``: a large provider, six domains rolled up onto one set of three MX hosts, that
  refuses more than ``rate_limit`` transactions a second with ``421 4.7.0 Rate limited`` and
  fails every 97th message with ``421 4.7.0 Try again later``. The campaign has a
  ``[[policy.backoff]]`` rule for the first, so the site's rate is halved for a while each
  time (adaptive backoff, visible in the progress display and metrics); the second is an
  ordinary deferral, retried a few seconds later.
* ``isp``: two domains; one mailbox in 25 does not exist (``550 5.1.1``: bounced).
* ``greyhost``: greylisting: the first try of every recipient gets ``451 4.7.1``; the
  campaign's short retry schedule delivers them a few seconds later.
* ``slowmail``: a slow server (half a second to greet, 50 ms per message).
* ``busy``: answers every recipient ``451 4.3.2``: retried until the campaign's short
  ``max_age``, then expired.
* ``gone``: MX records but no server: connections are refused. Its recipients are retried
  (host backoff) until the campaign's short ``max_age``, then expired.
* ``corp``: three small company domains on one well-behaved server.
* ``example-sts``: a domain with an MTA-STS ``enforce`` policy, served over verified STARTTLS
  (:mod:`bulksend.cli.demo_sts`).

Plus a few rows the recipients reader rejects (invalid, duplicate).

The feedback loop (:class:`DemoFeedback`), once the first readers of the list have their
message: a forged DSN names one of them in a return path without the signed tag (dropped:
the campaign signs its return paths), three of them bounce later (a DSN each, applied by
the inbound machinery, which suppresses them and records the later bounce in the running
campaign's journal), and one unsubscribes with one click (a real HTTP POST to the RFC 8058
endpoint on 127.0.0.1). After the report, a short follow-up campaign to the first readers of
the same list (at the sites that answer at once) skips them, and the readers the run bounced
inline.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.client
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from bulksend.campaign.render import Campaign, verp_token
from bulksend.campaign.unsubscribe import signing_key, unsubscribe_token
from bulksend.cli.demo_sts import sts_addresses
from bulksend.cli.progress import Progress
from bulksend.delivery.run import RunOptions, run_campaign
from bulksend.delivery.scheduler import Scheduler
from bulksend.errors import JournalError
from bulksend.inbound.ingest import Ingest
from bulksend.inbound.parse import Verp
from bulksend.inbound.unsubscribe import UnsubscribeEndpoint
from bulksend.journal import Journal, JournalPeek, Status
from bulksend.journal.backend import open_peek
from bulksend.journal.feedback_log import SqliteFeedbackLog
from bulksend.suppression.backend import open_suppression_store
from bulksend.suppression.rules import Rules
from bulksend.testing.scenario import SiteSpec, campaign_toml, write_campaign
from bulksend.testing.smtp import ServerScript

if TYPE_CHECKING:
    from bulksend.journal.postgres import PostgresPeek

__all__ = [
    "DEMO_POLICY",
    "DemoFeedback",
    "demo_addresses",
    "demo_sites",
    "stop_when_only_dead_left",
    "write_demo_campaign",
]

#: (site name, its domains, its 127.0.0.x address, share of recipients in percent)
_LAYOUT: Final = (
    (
        "bigmail",
        (
            "bigmail.test",
            "bmail.test",
            "mailbig.test",
            "bigmail-business.test",
            "inbox-big.test",
            "big-family.test",
        ),
        "127.0.0.2",
        50,
    ),
    ("isp", ("isp-one.test", "isp-two.test"), "127.0.0.3", 20),
    ("greyhost", ("greyhost.test",), "127.0.0.4", 10),
    ("slowmail", ("slowmail.test",), "127.0.0.5", 6),
    ("busy", ("busy.test",), "127.0.0.6", 4),
    ("gone", ("gone.test",), "127.0.0.7", 2),
    ("corp", ("acme.test", "globex.test", "initech.test"), "127.0.0.8", 8),
)
DEAD_SITES: Final = frozenset({"gone"})
#: Sites whose recipients may take seconds to settle (a deferral in 97, greylisting, 451 until
#: expiry, refused): the follow-up campaign leaves them out, to stay short.
_SLOW_SITES: Final = frozenset({"bigmail", "greyhost", "busy", "gone"})
#: The follow-up campaign goes to the first readers of the list (at the sites that answer).
FOLLOW_UP: Final = 200
_LATER_BOUNCES: Final = 3

DEMO_POLICY: Final = """\
[policy]
max_total_connections = 100

[policy.defaults]
max_connections = 4
messages_per_connection = 500
idle_timeout = "5s"

[policy.sites."bigmail.test"]
max_connections = 10
rate = "800/s"

[policy.timeouts]
connect = "2s"
greeting = "10s"
final_dot = "10s"

[policy.retry]
initial = "3s"
factor = 2.0
maximum = "6s"
jitter = 0.1
max_age = "25s"

[[policy.backoff]]
code = 421
text = "(?i)rate limited"
rate_factor = 0.5
duration = "5s"
"""


def demo_addresses(count: int) -> tuple[list[str], frozenset[str]]:
    """The demo's recipient addresses (deterministic) and the isp's unknown mailboxes."""
    slots: list[tuple[str, str]] = []
    for name, domains, _address, share in _LAYOUT:
        slots += [(name, domains[i % len(domains)]) for i in range(share)]
    # Interleave the slots so every site's recipients are spread over the whole list.
    order = sorted(range(len(slots)), key=lambda i: (i * 37) % len(slots))
    spread = [slots[i] for i in order]
    addresses: list[str] = []
    unknown: set[str] = set()
    for i in range(count):
        name, domain = spread[i % len(spread)]
        address = f"reader{i}@{domain}"
        addresses.append(address)
        if name == "isp" and i % 25 == 0:
            unknown.add(address)
    return addresses, frozenset(unknown)


def demo_sites(unknown: frozenset[str]) -> list[SiteSpec]:
    """The demo world's sites (see the module docstring)."""
    scripts = {
        "bigmail": ServerScript(
            hostname="mx.bigmail.test",
            rate_limit=400,
            rate_window=1.0,
            fail_every=97,
            record=False,
        ),
        "isp": ServerScript(hostname="mx.isp.test", unknown_mailboxes=unknown, record=False),
        "greyhost": ServerScript(
            hostname="mx.greyhost.test", greylist=True, greylist_seconds=2.0, record=False
        ),
        "slowmail": ServerScript(
            hostname="mx.slowmail.test",
            reply_delays={"GREETING": 0.5, "DOT": 0.05},
            record=False,
        ),
        "busy": ServerScript(
            hostname="mx.busy.test",
            replies={"RCPT": "451 4.3.2 System not accepting network messages"},
            record=False,
        ),
        "corp": ServerScript(hostname="mx.corp.test", record=False),
    }
    return [
        SiteSpec(
            name,
            domains,
            address,
            scripts.get(name, ServerScript(record=False)),
            dead=name in DEAD_SITES,
            mx_hosts=3 if name == "bigmail" else 1,
        )
        for name, domains, address, _share in _LAYOUT
    ]


def _dead_domains() -> frozenset[str]:
    return frozenset(d for name, domains, _a, _s in _LAYOUT if name in DEAD_SITES for d in domains)


def write_demo_campaign(directory: Path, count: int) -> tuple[Path, list[SiteSpec]]:
    """A fresh demo campaign in ``directory`` (its old contents removed)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    directory.chmod(0o700)
    addresses, unknown = demo_addresses(count)
    # Rows the reader rejects: shown in the report as invalid.
    rows: Sequence[str] = [
        *addresses,
        *sts_addresses(count),
        "not-an-address",
        "nobody@",
        addresses[0],
    ]
    path = write_campaign(directory, rows, toml=_demo_toml("bulksend-demo"))
    for key in ("unsubscribe.key", "bounces.key"):
        (directory / key).write_text(secrets.token_urlsafe(32) + "\n")
        (directory / key).chmod(0o600)
    return path, demo_sites(unknown)


def _demo_toml(campaign_id: str, files: str = "") -> str:
    """The demo campaign: signed one-click unsubscribe links, signed VERP return paths and a
    suppression store, the store and the keys in the directory ``files`` (relative to the
    campaign's)."""
    toml = campaign_toml(
        campaign_id=campaign_id,
        policy=DEMO_POLICY,
        extra=f'[suppression]\nstore = "{files}suppressions.sqlite3"\n'
        f'[bounces]\nkey_file = "{files}bounces.key"\n',
    )
    link = "e={{ email | urlencode }}"
    signed = f'{link}&t={{{{ unsubscribe_token }}}}"\nkey_file = "{files}unsubscribe.key"\n'
    return toml.replace(f'{link}"\n', signed)


def _sites_of(names: frozenset[str]) -> frozenset[str]:
    return frozenset(d for name, domains, _a, _s in _LAYOUT if name in names for d in domains)


def _dsn(address: str, return_path: str) -> bytes:
    """A DSN (RFC 3464) as a receiving MTA sends it when a mailbox it accepted is gone."""
    host = f"mx.{address.rpartition('@')[2]}"
    return (
        f"From: MAILER-DAEMON@{host}\r\nTo: {return_path}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {host}\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{address}>: mailbox closed after delivery\r\n"
        "\r\n--b--\r\n"
    ).encode()


def _post(port: int, target: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            target,
            body=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return conn.getresponse().status
    finally:
        conn.close()


@dataclass
class DemoFeedback:
    """The demo's feedback loop: what comes back during the run, and the follow-up."""

    campaign: Campaign
    journal: Path
    directory: Path
    addresses: Sequence[str]
    bounced_later: list[str] = field(default_factory=list)
    #: The address a forged DSN named, and its outcomes.
    forged: tuple[str, list[str]] = field(default_factory=lambda: ("", []))
    unsubscribed: str = ""
    unsubscribe_status: int = 0

    def watch(self) -> Callable[[Scheduler, Progress], Awaitable[None]]:
        """The run's watcher: end the run as :func:`stop_when_only_dead_left` does, and
        meanwhile play what comes back."""

        async def watching(scheduler: Scheduler, progress: Progress) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.during_run, scheduler)
                await stop_when_only_dead_left(scheduler, progress)

        return watching

    async def during_run(self, scheduler: Scheduler) -> None:
        """Once five of the follow-up's readers have their message, a forged DSN names one
        (dropped: its return path is not signed), three bounce later and one unsubscribes
        (see the module's comment)."""
        first = set(self.readers())
        delivered: list[str] = []
        while len(delivered) <= _LATER_BOUNCES + 1 and not scheduler.stopping:
            await trio.sleep(0.5)
            with contextlib.suppress(JournalError):
                delivered = await trio.to_thread.run_sync(self._delivered, first)
        if len(delivered) <= _LATER_BOUNCES + 1:
            return
        config = self.campaign.config
        assert config.suppression.store is not None  # the demo campaign has one
        assert config.verp_key is not None  # and signs its return paths
        store = open_suppression_store(config.suppression.store)
        log = SqliteFeedbackLog(self.journal)  # the run holds the journal: this writes beside it
        try:
            verp = Verp.from_template(config.envelope_sender, [config.verp_key.reveal().encode()])
            assert verp is not None  # the demo's sender has a {token}
            ingest = Ingest(store, Rules(config.suppression), verp, journals=[log])
            # A forged DSN first: a reader's address in a return path without the tag.
            forged = delivered[_LATER_BOUNCES + 1]
            plain = f"{verp.before}{verp_token(forged)}{verp.after}"
            self.forged = (forged, await self._bounce(ingest, forged, plain))
            for address in delivered[:_LATER_BOUNCES]:
                await self._bounce(ingest, address, self.campaign.envelope_sender(address))
                self.bounced_later.append(address)
            reader = delivered[_LATER_BOUNCES]
            key = signing_key(config.unsubscribe)
            assert key is not None  # the demo campaign signs its links
            query = {"c": config.id, "e": reader, "t": unsubscribe_token(key, config.id, reader)}
            target = f"/unsubscribe?{urllib.parse.urlencode(query)}"
            endpoint = UnsubscribeEndpoint(store, [key], journals={config.id: [log]})
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(endpoint.serve, "127.0.0.1", 0)
                port = listeners[0].socket.getsockname()[1]
                self.unsubscribe_status = await trio.to_thread.run_sync(_post, port, target)
                nursery.cancel_scope.cancel()
            self.unsubscribed = reader
        finally:
            log.close()
            store.close()

    @staticmethod
    async def _bounce(ingest: Ingest, address: str, return_path: str) -> list[str]:
        """A DSN for ``address`` sent to ``return_path``, read as ``inbound`` reads it."""
        applying = functools.partial(
            ingest.message, _dsn(address, return_path), now=time.time(), envelope_to=return_path
        )
        return await trio.to_thread.run_sync(applying)

    def readers(self) -> list[str]:
        """The follow-up's readers: the first of the list, at the sites that answer at once."""
        slow = _sites_of(_SLOW_SITES)
        return [a for a in self.addresses[:FOLLOW_UP] if a.rpartition("@")[2] not in slow]

    def _delivered(self, among: set[str]) -> list[str]:
        """The readers in ``among`` delivered so far, in list order."""
        with Journal.open_readonly(self.journal) as journal:
            done = {s.address for s in journal.iter_states([Status.DELIVERED])}
        return [a for a in self.addresses if a in among and a in done]

    async def follow_up(self, options: RunOptions) -> list[str]:
        """A short second campaign to the first readers of the same list; what it says."""
        readers = self.readers()
        directory = self.directory / "follow-up"
        directory.mkdir()
        path = write_campaign(directory, readers, toml=_demo_toml("bulksend-demo-2", "../"))
        journal = directory / "journal.sqlite3"
        campaign = Campaign.load(path, {})
        summary = await run_campaign(campaign, replace(options, journal=journal))
        with Journal.open(journal, None) as j:
            why = collections.Counter(
                (s.text or "").rpartition(": ")[2] for s in j.iter_states([Status.SUPPRESSED])
            )
        return self.lines(len(readers), summary.counts, why)

    def lines(
        self, readers: int, counts: Mapping[Status, int], why: collections.Counter[str]
    ) -> list[str]:
        """The demo's account of the loop."""
        out = ["", "the feedback loop"]
        if self.forged[0]:
            out.append(
                f"a forged DSN naming {self.forged[0]} (its return path without the signed "
                f"tag) was dropped: {', '.join(self.forged[1])}"
            )
        if self.bounced_later:
            out.append(
                f"during the run, {len(self.bounced_later)} readers bounced later (a DSN each, "
                f"read as bulksend inbound reads it): {', '.join(self.bounced_later)}"
            )
        if self.unsubscribed:
            out.append(
                f"and {self.unsubscribed} unsubscribed with one click (HTTP POST to the "
                f"endpoint: {self.unsubscribe_status})"
            )
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(why.items()))
        out.append(
            f"follow-up campaign to the first {readers} readers of the list: "
            f"{counts.get(Status.DELIVERED, 0)} delivered, "
            f"{counts.get(Status.SUPPRESSED, 0)} skipped as suppressed ({skipped or 'none'})"
        )
        return out


async def stop_when_only_dead_left(scheduler: Scheduler, progress: Progress) -> None:
    """End the demo once every waiting recipient belongs to a dead site."""
    dead = _dead_domains()
    peek: JournalPeek | PostgresPeek | None = None
    try:
        while not scheduler.stopping:
            await trio.sleep(1.0)
            try:
                peek = peek or open_peek(progress.journal)
                waiting = await trio.to_thread.run_sync(peek.waiting_by_domain)
            except JournalError:
                continue
            if set(waiting) <= dead:
                left = sum(waiting.values())
                if left:
                    progress.stream.write(
                        f"bulksend: demo: only the dead site's {left:,} recipients are left "
                        "waiting; stopping (a resume would retry them)\n"
                    )
                scheduler.stop()
                return
    finally:
        if peek is not None:
            peek.close()
