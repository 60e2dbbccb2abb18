"""A run pointed at a test world (bulksend.testing.scenario), and the sites and limits tests share.

The CLI tests point ``bulksend`` at a world with flags (tests.cli.cli_helpers.world_args); the
tests that call :func:`~bulksend.delivery.run.run_campaign` directly use :func:`run_options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from bulksend.delivery.run import RunOptions
from bulksend.testing.scenario import SiteSpec, World


class Ports(NamedTuple):
    """A world's ports, where only the numbers travel (to a child process)."""

    dns_port: int
    smtp_port: int


def run_options(tmp_path: Path, world: World | Ports, **changes: Any) -> RunOptions:
    """Options for a run against ``world``: its DNS and SMTP ports, EHLO sender.test, a grace of
    one second, the journal ``tmp_path/journal.sqlite3``; ``changes`` set any other field."""
    settings: dict[str, Any] = {
        "journal": tmp_path / "journal.sqlite3",
        "nameservers": ("127.0.0.1",),
        "dns_port": world.dns_port,
        "smtp_port": world.smtp_port,
        "ehlo_hostname": "sender.test",
        "grace": 1,
    }
    settings.update(changes)
    return RunOptions(**settings)


def sharded_sites(big_domains: int, small_sites: int) -> list[SiteSpec]:
    """Sites to shard: "big" (``big_domains`` domains big1.test... rolled up on two MX hosts at
    127.0.0.2) and ``small_sites`` sites s1, s2... of one domain each (s1.test at 127.0.0.3...)."""
    big = tuple(f"big{i}.test" for i in range(1, big_domains + 1))
    sites = [SiteSpec("big", big, "127.0.0.2", mx_hosts=2)]
    sites += [
        SiteSpec(f"s{i}", (f"s{i}.test",), f"127.0.0.{i + 2}") for i in range(1, 1 + small_sites)
    ]
    return sites


def limits_policy(rate: int, max_connections: int = 2) -> str:
    """The ``[policy.defaults]`` table of a paced run: ``rate`` messages a second per site."""
    return f'[policy.defaults]\nmax_connections = {max_connections}\nrate = "{rate}/s"\n'
