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
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from bulksend.cli.demo_sts import sts_addresses
from bulksend.cli.progress import Progress
from bulksend.delivery.scheduler import Scheduler
from bulksend.errors import JournalError
from bulksend.journal import JournalPeek
from bulksend.journal.backend import open_peek
from bulksend.testing.scenario import SiteSpec, campaign_toml, write_campaign
from bulksend.testing.smtp import ServerScript

if TYPE_CHECKING:
    from bulksend.journal.postgres import PostgresPeek

__all__ = [
    "DEMO_POLICY",
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
    toml = campaign_toml(campaign_id="bulksend-demo", policy=DEMO_POLICY)
    path = write_campaign(directory, rows, toml=toml)
    return path, demo_sites(unknown)


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
