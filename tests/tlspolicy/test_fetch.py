"""The policy fetch over real HTTPS on loopback (a trustme certificate): no redirects, a size
cap, certificate validation for the policy host's name, text/plain only."""

from __future__ import annotations

import contextlib
import functools

import pytest
import trio
import trustme

from bulksend.testing.https import PolicyServer, Response, open_policy_server, policy_response
from bulksend.tlspolicy import FetchError, FetchSettings
from bulksend.tlspolicy.fetch import fetch_policy_text
from tests.helpers.tls import client_context, server_context

HOST = "mta-sts.example.test"
CHUNKED = (("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"))


async def fetch(server: PolicyServer, ca: trustme.CA, host: str = HOST) -> str:
    settings = FetchSettings(ssl_context=client_context(ca), port=server.port, deadline=5)
    with trio.fail_after(10):
        return await fetch_policy_text(host, ["127.0.0.1"], settings)


async def test_a_policy_is_fetched(ca: trustme.CA) -> None:
    async with open_policy_server(server_context(ca, HOST)) as server:
        server.responses[HOST] = policy_response("enforce", ["mx.example.test"])
        text = await fetch(server, ca)
    assert text.startswith("version: STSv1\r\nmode: enforce\r\n")


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (Response(301, (("Location", "https://example.test/"),)), "redirect"),
        (Response(302, (("Location", "/other"),)), "redirect"),
        (Response(404), "404"),
        (Response(body=b"x" * (64 * 1024 + 1)), "larger than 65536 bytes"),
        (Response(headers=CHUNKED, body=b"x" * (64 * 1024 + 1)), "larger than 65536 bytes"),
        (
            Response(headers=(("Content-Type", "text/html"),), body=b"version: STSv1\r\n"),
            "text/html",
        ),
    ],
)
async def test_fetch_errors(ca: trustme.CA, response: Response, reason: str) -> None:
    async with open_policy_server(server_context(ca, HOST)) as server:
        server.responses[HOST] = response
        with pytest.raises(FetchError, match=reason) as caught:
            await fetch(server, ca)
    assert caught.value.result == "sts-policy-fetch-error"


async def test_a_policy_of_exactly_64_kib_is_accepted(ca: trustme.CA) -> None:
    async with open_policy_server(server_context(ca, HOST)) as server:
        server.responses[HOST] = Response(headers=CHUNKED, body=b"x" * (64 * 1024))
        assert len(await fetch(server, ca)) == 64 * 1024


async def test_a_certificate_for_another_name_is_refused(ca: trustme.CA) -> None:
    async with open_policy_server(server_context(ca, "mta-sts.other.test")) as server:
        server.responses[HOST] = policy_response("enforce", ["mx.example.test"])
        with pytest.raises(FetchError) as caught:
            await fetch(server, ca)
    assert caught.value.result == "sts-webpki-invalid"


async def test_an_untrusted_certificate_is_refused(ca: trustme.CA) -> None:
    async with open_policy_server(server_context(trustme.CA(), HOST)) as server:
        server.responses[HOST] = policy_response("enforce", ["mx.example.test"])
        with pytest.raises(FetchError) as caught:
            await fetch(server, ca)
    assert caught.value.result == "sts-webpki-invalid"


async def test_the_deadline_holds_against_a_silent_server(ca: trustme.CA) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers the TLS handshake
    port = listener.getsockname()[1]
    settings = FetchSettings(ssl_context=client_context(ca), port=port, deadline=0.5)
    with trio.fail_after(5), pytest.raises(FetchError, match=r"no answer within 0\.25s"):
        await fetch_policy_text(HOST, ["127.0.0.1"], settings)
    listener.close()


async def test_the_deadline_holds_against_a_server_that_trickles_its_policy(
    ca: trustme.CA,
) -> None:
    # Each byte comes well within httpx's per-read timeout; only the whole deadline ends it.
    async def trickle(stream: trio.SocketStream) -> None:
        secure = trio.SSLStream(stream, server_context(ca, HOST), server_side=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await secure.receive_some(65536)  # the request
            await secure.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(200):
                await secure.send_all(b"1\r\nx\r\n")
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, trickle, 0, host="127.0.0.1")
        )
        settings = FetchSettings(
            ssl_context=client_context(ca), port=listener.socket.getsockname()[1], deadline=1
        )
        start = trio.current_time()
        with trio.fail_after(5), pytest.raises(FetchError, match=r"no policy within 1s"):
            await fetch_policy_text(HOST, ["127.0.0.1"], settings)
        assert trio.current_time() - start < 3
        nursery.cancel_scope.cancel()
