"""The demo's throwaway CA: a server with its certificate is verified by a client that trusts
it through :meth:`ThrowawayCA.client_context`, and by no one else (real TLS on loopback)."""

from __future__ import annotations

import ssl

import trio

from bulksend.config.schema import TlsMode
from bulksend.smtp.client import SMTPClient
from bulksend.smtp.errors import TLSError
from bulksend.testing.certs import ThrowawayCA
from bulksend.testing.smtp import ServerScript, SMTPServer

NAME = "mx1.example-sts.test"


async def starttls(ca: ThrowawayCA, context: ssl.SSLContext, name: str = NAME) -> str:
    """STARTTLS to a test server with ``ca``'s certificate for NAME, verifying ``name``:
    ``verified``, or why not."""
    server = SMTPServer(ServerScript(tls_context=ca.server_context(NAME)), host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve)
        with trio.fail_after(10):
            client = await SMTPClient.connect(host, port, hostname="sender.test")
            try:
                await client.handshake(
                    tls=TlsMode.REQUIRED, ssl_context=context, server_hostname=name
                )
            except TLSError as exc:
                return str(exc)
            else:
                return "verified" if client.tls_active else "plaintext"
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()


async def test_a_client_that_trusts_the_ca_verifies_its_certificate() -> None:
    ca = ThrowawayCA()
    assert await starttls(ca, ca.client_context()) == "verified"


async def test_no_one_else_trusts_it() -> None:
    ca = ThrowawayCA()
    assert "unable to get local issuer" in await starttls(ca, ssl.create_default_context())
    other = ThrowawayCA().client_context()
    assert "certificate verify failed" in await starttls(ca, other)


async def test_the_certificate_is_for_its_names_only() -> None:
    ca = ThrowawayCA()
    why = await starttls(ca, ca.client_context(), name="mx2.example-sts.test")
    assert "Hostname mismatch" in why
