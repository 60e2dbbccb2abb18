"""End to end crash test: a campaign process is SIGKILLed at random moments, then resumed.

The servers (in this test's process) keep their own record of every accepted message. In
the end every recipient is delivered, and received exactly once, except recipients the
journal reports as in doubt (their message may have gone out just before a kill): each may
have been received once more per crash that left it in doubt, and never zero times.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.helpers.worlds import limits_policy

CHILD = "tests.delivery.campaign_child"
REPO = Path(__file__).resolve().parents[2]
DOMAINS = ["k1.test", "k2.test", "k3.test"]
POLICY = limits_policy(150, max_connections=3)


async def run_child(toml: Path, journal: Path, dns: int, smtp: int) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", CHILD, str(toml), str(journal), str(dns), str(smtp)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_killed_campaign_resumes_without_loss_or_repeats(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    recipients = addresses(DOMAINS, 300)
    toml = write_campaign(tmp_path, recipients, toml=campaign_toml(policy=POLICY))
    journal = tmp_path / "journal.sqlite3"
    sites = [SiteSpec("k", tuple(DOMAINS), "127.0.0.2", mx_hosts=2)]
    kills = 0
    with trio.fail_after(120):
        async with running(sites) as world:
            server = world.servers["k"]
            for run in range(4):
                child = await run_child(toml, journal, world.dns_port, world.smtp_port)
                # Three runs are killed at a random point; the fourth runs to the end.
                target = server.stats.messages + rng.randint(5, 80) if run < 3 else 10**9
                async with trio.open_nursery() as nursery:
                    done = trio.Event()

                    async def killer(child: trio.Process = child, target: int = target) -> None:
                        await server.wait_until(lambda: server.stats.messages >= target)
                        await trio.sleep(rng.random() * 0.02)
                        child.send_signal(signal.SIGKILL)

                    async def waiter(child: trio.Process = child, done: trio.Event = done) -> None:
                        await child.wait()
                        done.set()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(killer)
                    nursery.start_soon(waiter)
                assert child.stdout is not None
                output = (await child.stdout.receive_some()).decode() if done.is_set() else ""
                await child.stdout.aclose()
                if child.returncode == -signal.SIGKILL:
                    kills += 1
                    continue
                assert child.returncode == 0
                assert json.loads(output.strip().splitlines()[-1])["complete"]
                break
            else:
                pytest.fail("the campaign did not complete")
            received = server.received()
    assert kills >= 1
    with Journal.open(journal, None) as j:
        result = {s.address: s for s in j.iter_states()}
        in_doubt_total = j.in_doubt_total()
    assert {s.status for s in result.values()} == {Status.DELIVERED}
    assert set(received) == set(recipients)  # nobody lost
    repeated = {a: n for a, n in received.items() if n > 1}
    for address, count in repeated.items():
        # A repeat only where the journal says "in doubt", at most once per such crash.
        assert count <= 1 + result[address].in_doubt
    assert sum(n - 1 for n in repeated.values()) <= in_doubt_total
