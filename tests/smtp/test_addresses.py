"""Whatever text reaches the protocol (an address, the EHLO name, credentials), a bad one is
refused with the module's own clean error before any byte, never with a stray exception."""

from __future__ import annotations

import pytest
import trio

from bulksend.config import TlsMode
from bulksend.smtp.client import Envelope, SMTPClient
from bulksend.smtp.encoding import check_address
from bulksend.smtp.errors import LocalProtocolError
from bulksend.smtp.protocol import ClientProtocol, State, Verb
from bulksend.testing.smtp import ServerScript, serving

# Lone surrogates (text that cannot be encoded), C1 controls and the Unicode line and
# paragraph separators: the project's one control-character rule refuses them all.
UNENCODABLE_OR_CONTROL = [
    "a\ud800@x.test",
    "\udcff@x.test",
    "a@x\udc80.test",
    "a\x85@x.test",
    "a\x9b@x.test",
    "a\u2028@x.test",
    "a@x.test\u2029",
]


@pytest.mark.parametrize("smtputf8", [False, True], ids=["ascii", "smtputf8"])
@pytest.mark.parametrize("address", UNENCODABLE_OR_CONTROL)
def test_unencodable_or_control_addresses_are_refused_cleanly(address: str, smtputf8: bool) -> None:
    with pytest.raises(LocalProtocolError, match="control character"):
        check_address(address, smtputf8=smtputf8)


def ready() -> ClientProtocol:
    proto = ClientProtocol("client.test")
    proto.receive_data(b"220 mx\r\n")
    proto.next_reply()
    proto.send_ehlo()
    proto.receive_data(b"250-mx\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n")
    proto.next_reply()
    assert proto.state is State.READY
    return proto


@pytest.mark.parametrize("address", UNENCODABLE_OR_CONTROL)
def test_commands_with_such_addresses_produce_no_byte(address: str) -> None:
    proto = ready()
    with pytest.raises(LocalProtocolError):
        proto.send_mail(address, smtputf8=True)
    assert proto.pending == 0
    proto.send_mail("ok@x.test", smtputf8=True)
    with pytest.raises(LocalProtocolError):
        proto.send_rcpt(address, smtputf8=True)
    assert proto.pending == 1 and proto.next_expected is Verb.MAIL


@pytest.mark.parametrize("secret", ["hunter\ud800", "hunter\x85"])
def test_credentials_that_cannot_be_sent_are_refused_without_showing_them(secret: str) -> None:
    for send in (
        lambda: ready().send_auth_plain("user", secret),
        lambda: ready().send_auth_plain(secret, "pw"),
        lambda: ready().send_auth_login(secret),
    ):
        with pytest.raises(LocalProtocolError) as info:
            send()
        assert "hunter" not in str(info.value)


@pytest.mark.parametrize("name", ["h\ud800.test", "hé.test", "h\x85.test"])
def test_an_ehlo_name_that_cannot_go_on_the_wire_is_refused_at_once(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        ClientProtocol(name)


async def test_an_unencodable_recipient_fails_alone_on_the_wire() -> None:
    async with serving(ServerScript(record_wire=True)) as server:
        with trio.fail_after(10):
            host, port = server.address
            client = await SMTPClient.connect(host, port, hostname="client.test")
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(Envelope("s@x.test", ("a\ud800@x.test", "b@x.test")), b"x")
            bad_sender = await client.send(Envelope("s\ud800@x.test", ("c@x.test",)), b"y")
            assert client.usable
            await client.quit()
    assert isinstance(results[0].error, LocalProtocolError)
    assert results[1].delivered
    assert isinstance(bad_sender[0].error, LocalProtocolError)
    assert [t.rcpt_to for t in server.transactions] == [("b@x.test",)]
    assert b"RCPT TO:<c@x.test>" not in server.connections[0].received


def test_envelope_commands_refuse_what_the_envelope_refused() -> None:
    proto = ready()
    with pytest.raises(LocalProtocolError):
        proto.send_envelope_mail(Envelope("s\r\nRSET@x.test", ("a@x.test",)))
    assert proto.state is State.READY and proto.pending == 0
    env = Envelope("s@x.test", ("a@x.test", "b>@x.test"))
    assert proto.send_envelope_mail(env, size=3) == b"MAIL FROM:<s@x.test>\r\n"
    assert proto.send_envelope_rcpt(env, 0) == b"RCPT TO:<a@x.test>\r\n"
    with pytest.raises(LocalProtocolError):
        proto.send_envelope_rcpt(env, 1)
    assert proto.pending == 2 and proto.next_expected is Verb.MAIL
