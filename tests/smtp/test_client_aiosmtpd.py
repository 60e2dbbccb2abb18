"""Interop: our trio client against aiosmtpd, an independent server implementation."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as AioEnvelope

from bulksend.config import TlsMode
from bulksend.smtp.client import Envelope, SMTPClient, Transaction
from bulksend.smtp.errors import TLSError
from tests.helpers.tls import client_context, server_context


@dataclass
class Recorder:
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: AioEnvelope, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: AioEnvelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 queued"


def _free_port() -> int:
    # aiosmtpd's Controller connects to its own port to check it started, so port 0 won't do.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(recorder: Recorder, **kwargs: Any) -> Iterator[Controller]:
    controller = Controller(recorder, hostname="127.0.0.1", port=_free_port(), **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def plain_server(recorder: Recorder) -> Iterator[Controller]:
    yield from _start(recorder)


@pytest.fixture
def tls_server(recorder: Recorder, ca: trustme.CA) -> Iterator[Controller]:
    server_ctx = server_context(ca, "mx.test.example")

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login == b"sender" and auth_data.password == b"s3cret"
        )
        return AuthResult(success=ok)

    yield from _start(
        recorder,
        tls_context=server_ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )


def port_of(controller: Controller) -> int:
    return int(controller.port)


async def test_send_messages_plain(plain_server: Controller, recorder: Recorder) -> None:
    with trio.fail_after(10):
        client = await SMTPClient.connect(
            "127.0.0.1", port_of(plain_server), hostname="client.test"
        )
        await client.handshake(tls=TlsMode.NONE)
        assert client.extensions.pipelining is False  # aiosmtpd does not offer it
        results = await client.send(
            Envelope("from@test.example", ("a@test.example", "nobody@test.example")),
            b"Subject: hi\n\n.leading dot\nbody\n",
        )
        assert [r.delivered for r in results] == [True, False]
        assert results[1].error is not None and "5.1.1" in str(results[1].error)
        # The connection is reused for a second message.
        second = await client.send(Envelope("", ("b@test.example",)), b"Subject: 2\r\n\r\nx")
        assert second[0].delivered
        await client.quit()
    assert recorder.messages == [
        (
            "from@test.example",
            ["a@test.example"],
            b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n",
        ),
        ("<>", ["b@test.example"], b"Subject: 2\r\n\r\nx\r\n"),
    ]


async def test_all_recipients_refused_sends_no_data(
    plain_server: Controller, recorder: Recorder
) -> None:
    with trio.fail_after(10):
        client = await SMTPClient.connect(
            "127.0.0.1", port_of(plain_server), hostname="client.test"
        )
        await client.handshake(tls=TlsMode.NONE)
        txn = Transaction(Envelope("f@test.example", ("nobody@test.example",)), b"x")
        done = await client.submit(txn)
        assert done == [txn]
        assert not txn.results[0].delivered
        assert client.usable
        assert (await client.send(Envelope("f@t.example", ("ok@t.example",)), b"y"))[0].delivered
        await client.quit()
    assert len(recorder.messages) == 1


async def test_starttls_and_auth(
    tls_server: Controller, recorder: Recorder, ca: trustme.CA
) -> None:
    client_ctx = client_context(ca)
    with trio.fail_after(10):
        client = await SMTPClient.connect("127.0.0.1", port_of(tls_server), hostname="client.test")
        await client.handshake(
            tls=TlsMode.REQUIRED, ssl_context=client_ctx, server_hostname="mx.test.example"
        )
        assert client.tls_active
        assert "LOGIN" in client.extensions.auth  # offered only after TLS
        await client.authenticate("sender", "s3cret")
        results = await client.send(Envelope("f@test.example", ("a@test.example",)), b"tls body")
        assert results[0].delivered
        await client.quit()
    assert recorder.messages[0][2] == b"tls body\r\n"


async def test_starttls_with_untrusted_certificate_fails_as_tls_error(
    tls_server: Controller,
) -> None:
    with trio.fail_after(10):
        client = await SMTPClient.connect("127.0.0.1", port_of(tls_server), hostname="client.test")
        with pytest.raises(TLSError) as info:
            await client.handshake(
                tls=TlsMode.REQUIRED,
                ssl_context=ssl.create_default_context(),
                server_hostname="mx.test.example",
            )
        assert info.value.transient
        assert not client.usable
        await client.aclose()
