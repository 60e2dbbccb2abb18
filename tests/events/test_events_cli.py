"""The event stream of a real `bulksend send`: a local HTTPS webhook receiver gets every
event once, signed; one that is down for a while gets the backlog later; JSON lines on
stdout."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from bulksend.journal import Journal, Status
from bulksend.testing.scenario import (
    SiteSpec,
    World,
    addresses,
    campaign_toml,
    running,
    write_campaign,
)
from bulksend.testing.smtp import ServerScript
from bulksend.testing.webhook import WebhookReceiver
from tests.cli.cli_helpers import Proc, bulksend, world_args
from tests.helpers.worlds import limits_policy

SECRET = "s3cret-for-the-hook"
BAD = "user7@w.test"
SITE = SiteSpec("w", ("w.test",), "127.0.0.2", ServerScript(unknown_mailboxes=frozenset({BAD})))


@asynccontextmanager
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[WebhookReceiver, int, Path]]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    hook = WebhookReceiver(context)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(hook.serve)
        yield hook, port, ca_file
        nursery.cancel_scope.cancel()


def campaign(tmp_path: Path, count: int, rate: int, port: int, ca_file: Path) -> Path:
    events = (
        f'[events]\nwebhook = "https://127.0.0.1:{port}/hook"\nsecret_env = "HOOK_SECRET"\n'
        f'batch_size = 10\nbatch_wait = "200ms"\nca_certs = "{ca_file}"\n'
    )
    toml = campaign_toml(policy=limits_policy(rate), extra=events)
    return write_campaign(tmp_path / "c", addresses(["w.test"], count), toml=toml)


def outcomes(journal: Path) -> Counter[tuple[int, str]]:
    with Journal.open_readonly(journal) as j:
        return Counter((s.id, s.status.value) for s in j.iter_states() if not s.status.waiting)


def check_signatures(hook: WebhookReceiver) -> None:
    for request in hook.requests:
        fields = dict(
            part.split("=", 1) for part in request.headers["x-bulksend-signature"].split(",")
        )
        expected = hmac.new(
            SECRET.encode(), fields["t"].encode() + b"." + request.body, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(fields["v1"], expected)


async def send(tmp_path: Path, world: World, path: Path, *extra: str, name: str = "send") -> Path:
    journal = tmp_path / "j.sqlite3"
    env = {**os.environ, "HOOK_SECRET": SECRET}
    async with bulksend(
        tmp_path,
        "send",
        str(path),
        "--journal",
        str(journal),
        "--grace",
        "5",
        "-q",
        *world_args(world),
        *extra,
        name=name,
        env=env,
    ) as proc:
        assert await proc.wait(90) in (0, 4), proc
    return journal


async def test_every_event_once_signed(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with running([SITE]) as world, receiver(tmp_path) as (hook, port, ca_file):
            journal = await send(tmp_path, world, campaign(tmp_path, 60, 100, port, ca_file))
            events = hook.events()
    assert len(hook.requests) >= 6  # batches of at most 10
    check_signatures(hook)
    assert len({e["event_id"] for e in events}) == len(events)
    seen = Counter((e["recipient"], e["event"]) for e in events)
    assert seen == outcomes(journal)  # every final outcome once, nothing else
    bounced = next(e for e in events if e["event"] == "bounced")
    assert (bounced["address"], bounced["code"], bounced["v"]) == (BAD, 550, 1)
    assert bounced["category"] == "bad_mailbox"


async def test_a_receiver_down_for_a_while_gets_the_backlog_later(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with running([SITE]) as world, receiver(tmp_path) as (hook, port, ca_file):
            hook.down = True
            path = campaign(tmp_path, 80, 20, port, ca_file)  # 4 s of sending at 20/s

            async def come_back() -> None:
                with trio.fail_after(30):
                    while len(hook.requests) < 3 or world.delivered < 30:
                        await trio.sleep(0.05)
                hook.down = False

            async with trio.open_nursery() as nursery:
                nursery.start_soon(come_back)
                journal = await send(tmp_path, world, path)
            events = hook.events()
    refused = [r for r in hook.requests if r.status == 503]
    assert len(refused) >= 3
    check_signatures(hook)
    # Each event once, however often its batch was refused; the spool is empty again.
    assert len({e["event_id"] for e in events}) == len(events)
    assert Counter((e["recipient"], e["event"]) for e in events) == outcomes(journal)
    assert list((tmp_path / "j.sqlite3.events").iterdir()) == []


async def send_with_events_on_stdout(
    tmp_path: Path, sites: list[SiteSpec], path: Path
) -> tuple[Proc, Path]:
    """`send --events stdout` of the campaign at ``path`` to ``sites``; it ends with exit
    status 4 (something bounced or expired). The process and its journal."""
    journal = tmp_path / "j.sqlite3"
    with trio.fail_after(120):
        async with (
            running(sites) as world,
            bulksend(
                tmp_path,
                "send",
                str(path),
                "--journal",
                str(journal),
                "--events",
                "stdout",
                "-q",
                *world_args(world),
                name="send",
            ) as proc,
        ):
            assert await proc.wait(60) == 4, proc
    return proc, journal


async def test_events_on_stdout_as_json_lines(tmp_path: Path) -> None:
    toml = campaign_toml(policy=limits_policy(100))
    path = write_campaign(tmp_path / "c", addresses(["w.test"], 30), toml=toml)
    proc, journal = await send_with_events_on_stdout(tmp_path, [SITE], path)  # exit 4: a bounce
    lines = proc.stdout().splitlines()
    events = [json.loads(line) for line in lines]  # every line is an event
    assert Counter((e["recipient"], e["event"]) for e in events) == outcomes(journal)
    assert {e["v"] for e in events} == {1}
    assert "delivered 29" in " ".join(proc.stderr().split())  # the summary went to stderr
    with Journal.open_readonly(journal) as j:
        assert j.counts()[Status.BOUNCED] == 1


async def _hang(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()  # accepts, never answers: the worst receiver


async def test_a_receiver_that_never_answers_does_not_slow_delivery(tmp_path: Path) -> None:
    rate = 40
    with trio.fail_after(120):
        async with running([SITE]) as world, trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            nursery.start_soon(trio.serve_listeners, _hang, listeners)
            port = listeners[0].socket.getsockname()[1]
            ca_file = tmp_path / "ca.pem"
            trustme.CA().cert_pem.write_to_path(str(ca_file))
            await send(tmp_path, world, campaign(tmp_path, 120, rate, port, ca_file))
            nursery.cancel_scope.cancel()
    times = sorted(world.servers["w"].stats.message_times)
    observed = (len(times) - 1) / (times[-1] - times[0])
    assert observed == pytest.approx(rate, rel=0.1)  # the site's own pace, as without events
    # What the receiver never took waits in the spool for the next run.
    spooled = sorted((tmp_path / "j.sqlite3.events").iterdir())
    assert sum(len(json.loads(p.read_bytes())["events"]) for p in spooled) == 120


async def test_a_recipient_whose_max_age_runs_out_gets_one_expired_event(
    tmp_path: Path,
) -> None:
    dead = SiteSpec("dead", ("dead.test",), "127.0.0.3", dead=True)
    retry = (
        '[policy.retry]\ninitial = "500ms"\nfactor = 1.0\nmaximum = "500ms"\njitter = 0.0\n'
        'max_age = "2s"\n'
    )
    toml = campaign_toml(policy=limits_policy(100) + retry)
    path = write_campaign(tmp_path / "c", addresses(["w.test", "dead.test"], 20), toml=toml)
    proc, journal = await send_with_events_on_stdout(tmp_path, [SITE, dead], path)
    events = [json.loads(line) for line in proc.stdout().splitlines()]
    final = Counter((e["recipient"], e["event"]) for e in events if e["event"] != "deferred")
    assert final == outcomes(journal)  # every final state once, expired ones included
    expired = [e for e in events if e["event"] == "expired"]
    assert len(expired) == 10
    assert {e["domain"] for e in expired} == {"dead.test"}
    assert all(e["category"] for e in expired), expired  # the last reply's category
    with Journal.open_readonly(journal) as j:
        assert j.counts()[Status.EXPIRED] == 10
