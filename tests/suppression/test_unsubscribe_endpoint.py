"""The one-click unsubscribe endpoint (RFC 8058), driven by a real HTTP client on loopback."""

from __future__ import annotations

import contextlib
import email
import http.client
import re
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from bulksend.campaign import Campaign
from bulksend.campaign.unsubscribe import unsubscribe_token, verify_token
from bulksend.cli import main
from bulksend.config import SuppressionReason
from bulksend.delivery.run import run_campaign
from bulksend.inbound.unsubscribe import EndpointLimits, UnsubscribeEndpoint
from bulksend.journal import Status
from bulksend.metrics import FeedbackMetrics
from bulksend.suppression.store import Source, SuppressionStore
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.cli.cli_helpers import bulksend
from tests.helpers.worlds import run_options

KEY = b"k" * 32
OLD_KEY = b"o" * 32


def link(address: str, campaign: str = "spring", key: bytes = KEY) -> str:
    query = urllib.parse.urlencode(
        {"c": campaign, "e": address, "t": unsubscribe_token(key, campaign, address)}
    )
    return f"/unsubscribe?{query}"


def fetch(
    port: int, method: str, target: str, body: bytes | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


async def request(
    port: int, method: str, target: str, body: bytes | None = None
) -> tuple[int, dict[str, str], str]:
    return await trio.to_thread.run_sync(fetch, port, method, target, body)


@asynccontextmanager
async def endpoint(
    store: SuppressionStore,
    limits: EndpointLimits | None = None,
    metrics: FeedbackMetrics | None = None,
) -> AsyncIterator[int]:
    server = UnsubscribeEndpoint(store, [KEY, OLD_KEY], limits, metrics)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


ONE_CLICK = b"List-Unsubscribe=One-Click"


def test_tokens_bind_campaign_and_address() -> None:
    token = unsubscribe_token(KEY, "spring", "John@Example.com")
    assert len(token) == 22
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert verify_token([KEY], "spring", "john@example.COM", token)  # normalised
    assert not verify_token([KEY], "spring", "jane@example.com", token)
    assert not verify_token([KEY], "autumn", "john@example.com", token)
    assert not verify_token([OLD_KEY], "spring", "john@example.com", token)
    assert verify_token([OLD_KEY, KEY], "spring", "john@example.com", token)
    assert not verify_token([KEY], "spring", "john@example.com", "é" + token[1:])


async def test_post_suppresses_once_and_get_never(tmp_path: Path) -> None:
    metrics = FeedbackMetrics()
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with endpoint(store, metrics=metrics) as port:
            status, headers, page = await request(port, "GET", link("a@x.test"))
            assert status == 200
            assert '<form method="post"' in page
            assert "Set-Cookie" not in headers
            assert store.check("a@x.test") is None
            for _ in range(2):
                status, headers, text = await request(port, "POST", link("A@X.test"), ONE_CLICK)
                assert (status, text) == (200, "You are unsubscribed.\n")
                assert "Set-Cookie" not in headers
                assert "Location" not in headers
            # A key being rotated out still verifies.
            status, _, _ = await request(port, "POST", link("b@x.test", key=OLD_KEY), ONE_CLICK)
            assert status == 200
        entries = [(e.key, e.reason, e.source, e.count) for e in store.entries()]
    assert entries == [
        ("a@x.test", SuppressionReason.UNSUBSCRIBE, Source.HTTP, 1),
        ("b@x.test", SuppressionReason.UNSUBSCRIBE, Source.HTTP, 1),
    ]
    sample = metrics.registry.get_sample_value
    assert sample("bulksend_feedback_total", {"kind": "unsubscribe", "outcome": "suppressed"}) == 2
    assert sample("bulksend_feedback_total", {"kind": "unsubscribe", "outcome": "already"}) == 1
    assert sample("bulksend_suppressions_total", {"reason": "unsubscribe", "source": "http"}) == 2


async def test_what_the_endpoint_refuses(tmp_path: Path) -> None:
    forged = link("a@x.test", key=b"not the key")
    other = link("a@x.test").replace("a%40x.test", "b%40x.test")
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with endpoint(store) as port:
            assert (await request(port, "POST", forged, ONE_CLICK))[0] == 403
            assert (await request(port, "POST", other, ONE_CLICK))[0] == 403
            assert (await request(port, "GET", forged))[0] == 403
            status, headers, _ = await request(port, "PUT", link("a@x.test"), ONE_CLICK)
            assert (status, headers["Allow"]) == (405, "GET, POST")
            assert (await request(port, "DELETE", link("a@x.test")))[0] == 405
            assert (await request(port, "POST", link("a@x.test"), b"x" * 5000))[0] == 413
            assert (await request(port, "POST", link("a@x.test"), b"unsubscribe=yes"))[0] == 400
            assert (await request(port, "POST", "/unsubscribe?c=spring", ONE_CLICK))[0] == 400
            status, _, text = await request(port, "GET", "/unsubscribe?c=a&e=nobody&t=x")
            assert (status, text) == (400, "The link's address is not an address.\n")
            # Not HTTP at all: a 400, and the endpoint goes on.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"\x00\x01garbage\r\n\r\n")
                assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 400")
            assert (await request(port, "GET", link("a@x.test")))[0] == 200
        assert list(store.entries()) == []


async def test_a_post_that_expects_100_continue_gets_it(tmp_path: Path) -> None:
    head = f"POST {link('a@x.test')} HTTP/1.1\r\nHost: x.test\r\nExpect: 100-continue\r\n"
    head += f"Content-Length: {len(ONE_CLICK)}\r\n\r\n"
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with endpoint(store, EndpointLimits(timeout=5)) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(head.encode())
                assert await stream.receive_some(100) == b"HTTP/1.1 100 \r\n\r\n"
                await stream.send_all(ONE_CLICK)
                assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 200 ")
        assert store.check("a@x.test") is not None


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; what comes back until the endpoint closes (or resets) the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return answer


async def test_smuggling_shapes_get_one_answer_and_no_hidden_request(tmp_path: Path) -> None:
    target = link("a@x.test").encode()
    post = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n" + ONE_CLICK
    get = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
    shapes = {
        b"HTTP/1.1 400 ": [
            post.replace(b"Content-Length: 26", b"Content-Length: 26\r\nContent-Length: 5"),
            post.replace(b"Content-Length: 26", b"Content-Length: +26"),
            post.replace(b"Content-Length: 26", b"Content-Length : 26"),
            post.replace(b"Content-Length: 26", b"Transfer-Encoding: xchunked"),
        ],
        # A POST hidden behind a first request is never read: one request per connection.
        b"HTTP/1.1 200 ": [
            get + b"\r\n" + post,
            get + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + post,
        ],
    }
    huge = get + b"".join(b"X-%d: y\r\n" % n for n in range(100_000)) + b"\r\n"
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(30):
        async with endpoint(store, EndpointLimits(timeout=5)) as port:
            for status, requests in shapes.items():
                for data in requests:
                    answer = await exchange(port, data)
                    assert answer.startswith(status), (data[:120], answer[:60])
                    assert answer.count(b"HTTP/1.1 ") == 1
            # 100,000 header lines: over the 8 KiB head, a 400 (or a reset, the rest unread).
            answer = await exchange(port, huge)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:60]
            assert (await request(port, "GET", link("a@x.test")))[0] == 200  # it goes on
        assert list(store.entries()) == []


async def test_a_link_with_too_many_parameters_is_a_400_not_a_stack_trace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crowded = link("a@x.test") + "&x=1" * 10
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with endpoint(store) as port:
            status, _, text = await request(port, "POST", crowded, ONE_CLICK)
        assert list(store.entries()) == []
    assert (status, text) == (400, "The link has too many parameters.\n")
    assert [r for r in caplog.records if r.exc_info] == []


async def test_connections_are_bounded(tmp_path: Path) -> None:
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with endpoint(store, EndpointLimits(max_connections=1, timeout=5)) as port:
            first = await trio.open_tcp_stream("127.0.0.1", port)
            async with first:
                await first.send_all(b"GET / HTTP/1.1\r\n")  # and waits
                await trio.sleep(0.1)
                assert (await request(port, "GET", link("a@x.test")))[0] == 503


async def test_the_loop_a_campaign_link_unsubscribes_and_the_next_campaign_skips(
    tmp_path: Path,
) -> None:
    # The campaign signs its unsubscribe URLs; the endpoint takes one of them as a mail
    # client would post it; the next campaign to the list skips that address.
    toml = campaign_toml(extra='[suppression]\nstore = "../s.sqlite3"\n').replace(
        'url = "https://sender.test/unsubscribe?c={{ campaign_id }}&e={{ email | urlencode }}"',
        'url = "https://sender.test/unsubscribe?c={{ campaign_id }}&e={{ email | urlencode }}'
        '&t={{ unsubscribe_token }}"\nkey_env = "UNSUB_KEY"',
    )
    assert "unsubscribe_token" in toml
    environ = {"UNSUB_KEY": KEY.decode()}
    recipients = addresses(["ok.test"], 4)
    first = write_campaign(tmp_path / "first", recipients, toml=toml)
    second = write_campaign(
        tmp_path / "second", recipients, toml=toml.replace("test-campaign", "next")
    )
    sites = [SiteSpec("ok", ("ok.test",), "127.0.0.2")]
    with trio.fail_after(60):
        async with running(sites) as world:
            options = run_options(tmp_path / "first", world)
            await run_campaign(Campaign.load(first, environ), options)
            sent = {
                t.rcpt_to[0]: email.message_from_bytes(t.data)
                for t in world.servers["ok"].transactions
            }
            url = sent["user2@ok.test"]["List-Unsubscribe"].strip("<>")
            with SuppressionStore.open(tmp_path / "s.sqlite3") as store:
                async with endpoint(store) as port:
                    target = url.removeprefix("https://sender.test")
                    assert (await request(port, "POST", target, ONE_CLICK))[0] == 200
            before = len(world.servers["ok"].transactions)
            options = run_options(tmp_path / "second", world)
            summary = await run_campaign(Campaign.load(second, environ), options)
            again = [t.rcpt_to[0] for t in world.servers["ok"].transactions[before:]]
    assert summary.counts[Status.SUPPRESSED] == 1
    assert sorted(again) == sorted(a for a in recipients if a != "user2@ok.test")


async def test_the_command_line_server(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite3"
    (tmp_path / "key").write_text(KEY.decode() + "\n")
    args = ["unsubscribe-server", "--listen", "127.0.0.1:0", "--store", str(store)]
    with trio.fail_after(30):
        async with bulksend(tmp_path, *args, "--key-file", str(tmp_path / "key")) as proc:
            await proc.wait_for(lambda: "listening on" in proc.stderr(), 20, "the endpoint")
            port = int(proc.stderr().split("listening on 127.0.0.1:")[1].split()[0])
            assert (await request(port, "POST", link("a@x.test"), ONE_CLICK))[0] == 200
            assert (await request(port, "POST", link("b@x.test", key=OLD_KEY), ONE_CLICK))[0] == 403
    with SuppressionStore.open(store) as opened:
        assert [e.key for e in opened.entries()] == ["a@x.test"]


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    # One link of one's own, and "secret" is found offline: then any address's link is forged.
    (tmp_path / "key").write_text("secret\n")
    args = ["unsubscribe-server", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "s")]
    result = CliRunner().invoke(main, [*args, "--key-file", str(tmp_path / "key")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'key'}: the key is 6 bytes, under 16" in result.stderr
    assert "openssl rand -base64 32" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


async def test_a_running_campaign_skips_a_reader_who_unsubscribes_meanwhile(
    tmp_path: Path,
) -> None:
    # One connection, slow final replies: most recipients wait in the journal while a reader
    # posts to the endpoint; the run reads the store again and never sends to them.
    slow = ServerScript(reply_delays={"DOT": 0.1})
    sites = [SiteSpec("slow", ("slow.test",), "127.0.0.2", slow)]
    toml = campaign_toml(
        policy="[policy.defaults]\nmax_connections = 1\n",
        extra='[suppression]\nstore = "s.sqlite3"\n',
    )
    recipients = addresses(["slow.test"], 40)
    campaign = write_campaign(tmp_path, recipients, toml=toml)
    reader = "user38@slow.test"
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(60):
        async with running(sites) as world, endpoint(store) as port:
            server = world.servers["slow"]
            options = run_options(tmp_path, world, suppression_check=0.05)

            async def unsubscribe() -> None:
                await server.wait_until(lambda: server.stats.messages >= 2)
                target = link(reader, campaign="test-campaign")
                assert (await request(port, "POST", target, ONE_CLICK))[0] == 200

            async with trio.open_nursery() as nursery:
                nursery.start_soon(unsubscribe)
                summary = await run_campaign(Campaign.load(campaign, {}), options)
            received = server.received()
    assert summary.counts[Status.SUPPRESSED] == 1
    assert reader not in received
    assert sorted(received) == sorted(a for a in recipients if a != reader)
