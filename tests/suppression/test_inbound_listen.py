"""``bulksend inbound --listen``: DSNs and ARF reports over real SMTP on loopback, and what the
receiver refuses (relaying, size, slow or noisy peers, too many connections)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trustme
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.cli import main as cli
from bulksend.config import SuppressionConfig, SuppressionReason
from bulksend.errors import SuppressionError
from bulksend.inbound.ingest import Ingest
from bulksend.inbound.parse import Verp
from bulksend.inbound.receiver import Receiver, ReceiverLimits
from bulksend.journal import Journal, NewRecipient
from bulksend.journal.feedback_log import SqliteFeedbackLog
from bulksend.metrics import FeedbackMetrics
from bulksend.suppression.rules import Rules
from bulksend.suppression.store import Source, SuppressionStore
from tests.cli.cli_helpers import bulksend, scrape
from tests.helpers.tls import client_context, server_context
from tests.suppression.test_feedback_parse import _LINES as MIME_LINES

FIXTURES = Path(__file__).parent / "fixtures"
VERP = Verp.from_template("bounces+{token}@sender.test")


class Client:
    """A bare SMTP client: send lines, read whole replies."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""

    async def reply(self) -> str:
        while True:
            m = re.search(rb"(?:^|\r\n)(\d{3}) [^\r\n]*\r\n", self.buffer)
            if m is not None:
                reply, self.buffer = self.buffer[: m.end()], self.buffer[m.end() :]
                return reply.decode()
            data = await self.stream.receive_some(65536)
            if not data:
                return ""
            self.buffer += data

    async def say(self, line: bytes) -> str:
        await self.stream.send_all(line + b"\r\n")
        return await self.reply()

    async def send_message(self, rcpt: str, data: bytes) -> str:
        assert (await self.say(b"EHLO mx.example.com")).startswith("250")
        assert (await self.say(b"MAIL FROM:<>")).startswith("250")
        assert (await self.say(f"RCPT TO:<{rcpt}>".encode())).startswith("250")
        assert (await self.say(b"DATA")).startswith("354")
        body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        body = (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:]  # a first line too
        await self.stream.send_all(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return await self.reply()


@asynccontextmanager
async def listening(
    deliver: Callable[[bytes, list[str]], None],
    limits: ReceiverLimits | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    receiver = Receiver("bounces.sender.test", ["sender.test"], deliver, limits, tls)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(receiver.serve, "127.0.0.1", 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(port: int) -> AsyncIterator[Client]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        c = Client(stream)
        assert (await c.reply()).startswith("220 bounces.sender.test")
        yield c


def ingesting(
    store: SuppressionStore, metrics: FeedbackMetrics | None = None
) -> Callable[[bytes, list[str]], None]:
    applying = Ingest(store, Rules(SuppressionConfig()), VERP, metrics=metrics)

    def deliver(data: bytes, recipients: list[str]) -> None:
        applying.message(data, now=1000.0, envelope_to=recipients[0])

    return deliver


async def test_reports_over_smtp_suppress_the_right_addresses(tmp_path: Path) -> None:
    metrics = FeedbackMetrics()
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with listening(ingesting(store, metrics)) as port, client(port) as c:
            for fixture, rcpt in [
                ("postfix_5_1_1.eml", "bounces+gone=example.com@sender.test"),
                ("microsoft_jmrp.eml", "fbl@sender.test"),
                ("postfix_delayed.eml", "bounces+slow=example.net@sender.test"),
                ("vacation.eml", "bounces+alice=example.com@sender.test"),
                # No Delivered-To here: the envelope recipient carries the token.
                ("human_reply.eml", "bounces+carol=example.com@sender.test"),
                ("unknown_token.eml", "bounces+not-a-token+ZZ@sender.test"),
            ]:
                data = (FIXTURES / fixture).read_bytes()
                assert (await c.send_message(rcpt, data)).startswith("250 2.0.0"), fixture
            assert (await c.say(b"QUIT")).startswith("221")
        entries = {e.key: (e.reason, e.source) for e in store.entries()}
    assert entries == {
        "gone@example.com": (SuppressionReason.HARD_BOUNCE, Source.DSN),
        "reader@outlook.com": (SuppressionReason.COMPLAINT, Source.ARF),
    }
    counted = {
        (s.labels["kind"], s.labels["outcome"]): s.value
        for family in metrics.registry.collect()
        if family.name == "bulksend_feedback"
        for s in family.samples
    }
    assert counted == {
        ("bounce", "suppressed"): 1,
        ("complaint", "suppressed"): 1,
        ("delay", "delay"): 1,
        ("auto_reply", "auto_reply"): 1,
        ("not_feedback", "not_feedback"): 1,
        ("bounce", "unknown_recipient"): 1,
    }
    sample = metrics.registry.get_sample_value
    assert sample("bulksend_suppressions_total", {"reason": "complaint", "source": "arf"}) == 1


async def test_the_envelope_recipient_finds_the_token(tmp_path: Path) -> None:
    # A bounce with no Delivered-To and a To: header that names no token.
    data = (FIXTURES / "yahoo_failure_notice.eml").read_bytes()
    data = b"".join(
        line for line in data.splitlines(keepends=True) if not line.startswith(b"Delivered-To")
    ).replace(b"To: bounces+nobody=yahoo.com@sender.test", b"To: bounces@sender.test", 1)
    data = data.replace(b"<nobody@yahoo.com>:", b"the address:")
    data = data.replace(b"Return-Path: <bounces+nobody=yahoo.com@sender.test>", b"")
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with listening(ingesting(store)) as port, client(port) as c:
            rcpt = "bounces+nobody=yahoo.com@sender.test"
            assert (await c.send_message(rcpt, data)).startswith("250")
        assert store.check("nobody@yahoo.com") is not None


async def test_no_relaying_and_no_data_before_recipients() -> None:
    delivered: list[bytes] = []
    with trio.fail_after(20):
        async with listening(lambda data, _r: delivered.append(data)) as port, client(port) as c:
            assert (await c.say(b"MAIL FROM:<>")).startswith("503")  # EHLO first
            assert (await c.say(b"EHLO x")).startswith("250-bounces.sender.test")
            assert (await c.say(b"RCPT TO:<a@sender.test>")).startswith("503")
            assert (await c.say(b"MAIL FROM:<>")).startswith("250")
            assert (await c.say(b"RCPT TO:<victim@elsewhere.example>")).startswith("550 5.7.1")
            assert (await c.say(b"RCPT TO:<x@sender.test.evil>")).startswith("550 5.7.1")
            assert (await c.say(b"DATA")).startswith("503")
            assert (await c.say(b"VRFY postmaster")).startswith("502")
            assert (await c.say(b"QUIT")).startswith("221")
    assert delivered == []


async def test_a_message_over_the_size_limit_is_refused_and_not_kept() -> None:
    delivered: list[bytes] = []
    limits = ReceiverLimits(max_size=64 * 1024)
    deliver = delivered.append
    with trio.fail_after(20):
        async with listening(lambda data, _r: deliver(data), limits) as port, client(port) as c:
            assert (await c.say(b"EHLO x")).startswith("250")
            # Announced with SIZE=: refused at MAIL.
            assert (await c.say(b"MAIL FROM:<> SIZE=20000000")).startswith("552 5.3.4")
            # Not announced: read to the end, thrown away, refused; the session goes on.
            big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200
            assert (await c.send_message("a@sender.test", big)).startswith("552 5.3.4")
            small = b"Subject: small\r\n\r\n.leading dot\r\nbody\r\n"
            assert (await c.send_message("a@sender.test", small)).startswith("250")
    assert delivered == [b"Subject: small\r\n\r\n.leading dot\r\nbody\r\n"]


async def test_a_20_mb_message_is_refused_at_the_default_size_limit() -> None:
    delivered: list[bytes] = []
    with trio.fail_after(60):
        async with listening(lambda data, _r: delivered.append(data)) as port, client(port) as c:
            assert (await c.say(b"EHLO x")).startswith("250")
            assert (await c.say(b"MAIL FROM:<>")).startswith("250")  # no SIZE= announced
            assert (await c.say(b"RCPT TO:<a@sender.test>")).startswith("250")
            assert (await c.say(b"DATA")).startswith("354")
            chunk = (b"y" * 998 + b"\r\n") * 1000  # 1 MB
            for _ in range(20):
                await c.stream.send_all(chunk)
            assert (await c.say(b".")).startswith("552 5.3.4")
            assert (await c.say(b"NOOP")).startswith("250")  # the session goes on
    assert delivered == []


async def test_slow_and_noisy_peers_are_dropped() -> None:
    limits = ReceiverLimits(command_timeout=0.2, max_errors=2)
    with trio.fail_after(20):
        async with listening(lambda _d, _r: None, limits) as port:
            async with client(port) as c:
                assert (await c.reply()).startswith("421 4.4.2")  # said nothing in time
                assert await c.reply() == ""  # and the connection is closed
            async with client(port) as c:
                assert (await c.say(b"HELP")).startswith("502")
                assert (await c.say(b"HELP")).startswith("502")
                assert (await c.say(b"HELP")).startswith("421 4.7.0")
                assert await c.reply() == ""
            async with client(port) as c:
                assert (await c.say(b"X" * 600)).startswith("500 5.5.2")


async def test_connections_are_bounded() -> None:
    limits = ReceiverLimits(max_connections=1)
    with trio.fail_after(20):
        async with listening(lambda _d, _r: None, limits) as port, client(port) as first:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                second = Client(stream)
                assert (await second.reply()).startswith("421 4.3.2")
            assert (await first.say(b"NOOP")).startswith("250")


async def test_a_failing_store_defers_the_message(tmp_path: Path) -> None:
    def deliver(_data: bytes, _recipients: list[str]) -> None:
        raise SuppressionError("store failed (disk I/O error)")

    with trio.fail_after(20):
        async with listening(deliver) as port, client(port) as c:
            data = (FIXTURES / "postfix_5_1_1.eml").read_bytes()
            assert (await c.send_message("bounces@sender.test", data)).startswith("451 4.3.0")
            assert (await c.say(b"NOOP")).startswith("250")


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_stops_the_listener(junk: bytes) -> None:
    async def main() -> None:
        delivered: list[bytes] = []
        with trio.fail_after(20):
            async with listening(lambda data, _r: delivered.append(data)) as port:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@sender.test>\r\n")
                    await stream.send_all(b"DATA\r\n" + junk + b"\r\n.\r\n" + junk)
                async with client(port) as c:
                    assert (await c.say(b"NOOP")).startswith("250")

    trio.run(main)


async def test_the_command_line_listener(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite3"
    args = ["inbound", "--listen", "127.0.0.1:0", "--store", str(store), "--metrics-port", "0"]
    args += ["--sender", "bounces+{token}@sender.test", "--hostname", "bounces.sender.test"]
    args += ["--any-recipient"]
    with trio.fail_after(30):
        async with bulksend(tmp_path, *args, name="listen") as proc:
            await proc.wait_for(lambda: "listening on" in proc.stderr(), 20, "the listener")
            port = int(proc.stderr().split("listening on 127.0.0.1:")[1].split()[0])
            async with client(port) as c:
                data = (FIXTURES / "gmail_5_1_1.eml").read_bytes()
                rcpt = "bounces+missing=gmail.com@sender.test"
                assert (await c.send_message(rcpt, data)).startswith("250")
                assert (await c.say(b"QUIT")).startswith("221")
            await proc.wait_for(lambda: "suppressed" in proc.stdout(), 10, "the outcome")
            url = proc.stderr().split("metrics at ")[1].split()[0]
            assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
            samples = await scrape(url)
    assert proc.stdout() == "bounces+missing=gmail.com@sender.test: suppressed\n"
    feedback = ("bulksend_feedback_total", (("kind", "bounce"), ("outcome", "suppressed")))
    assert samples[feedback] == 1
    assert ("bulksend_queue_depth", ()) not in samples  # a listener exports no run metrics
    with SuppressionStore.open(store) as opened:
        assert opened.check("missing@gmail.com") is not None


def _signed(key: bytes, address: str) -> str:
    """The signed return path of ``address`` (docs/campaign.md), computed here independently."""
    digest = hmac.new(key, address.lower().encode(), hashlib.sha256).digest()
    local, _, domain = address.partition("@")
    return f"bounces+{base64.b32encode(digest[:5]).decode().lower()}.{local}={domain}@sender.test"


async def test_with_verp_keys_only_signed_reports_suppress(tmp_path: Path) -> None:
    # No --journal, no --any-recipient: the key is what stops a forged DSN.
    old, new = b"old-verp-key-0123456789", b"new-verp-key-0123456789"
    (tmp_path / "new.key").write_bytes(new + b"\n")
    (tmp_path / "old.key").write_bytes(old)
    store = tmp_path / "s.sqlite3"
    args = ["inbound", "--listen", "127.0.0.1:0", "--store", str(store), "--metrics-port", "0"]
    args += ["--sender", "bounces+{token}@sender.test", "--hostname", "bounces.sender.test"]
    args += ["--verp-key-file", str(tmp_path / "new.key")]
    args += ["--verp-key-file", str(tmp_path / "old.key")]
    dsn = (FIXTURES / "gmail_5_1_1.eml").read_bytes()
    arf = (FIXTURES / "yahoo_arf.eml").read_bytes()
    signed_arf = arf.replace(
        b"Return-Path: <bounces+reader=yahoo.com@sender.test>",
        f"Return-Path: <{_signed(new, 'reader@yahoo.com')}>".encode(),
    )
    sent = [
        (_signed(new, "missing@gmail.com"), dsn),  # signed: suppresses
        (_signed(old, "rotated@gmail.com"), dsn.replace(b"missing", b"rotated")),  # old key
        ("fbl@sender.test", signed_arf),  # a complaint whose returned message is signed
        # A forged tag, a tag under a key we do not hold, no tag at all: nothing.
        ("bounces+aaaaaaaa.victim=gmail.com@sender.test", dsn.replace(b"missing", b"victim")),
        (_signed(b"someone-elses-key-0123", "victim2@gmail.com"), dsn),
        ("bounces+victim3=gmail.com@sender.test", dsn.replace(b"missing", b"victim3")),
        ("fbl@sender.test", arf),  # a complaint naming an unsigned return path
    ]
    with trio.fail_after(30):
        async with bulksend(tmp_path, *args, name="listen") as proc:
            await proc.wait_for(lambda: "listening on" in proc.stderr(), 20, "the listener")
            port = int(proc.stderr().split("listening on 127.0.0.1:")[1].split()[0])
            async with client(port) as c:
                for rcpt, data in sent:
                    assert (await c.send_message(rcpt, data)).startswith("250 2.0.0"), rcpt
                assert (await c.say(b"QUIT")).startswith("221")
            await proc.wait_for(lambda: proc.stdout().count("\n") == len(sent), 10, "outcomes")
            samples = await scrape(proc.stderr().split("metrics at ")[1].split()[0])
    outcomes = [line.rpartition(": ")[2] for line in proc.stdout().splitlines()]
    assert outcomes == ["suppressed"] * 3 + ["forged", "forged", "unsigned", "unsigned"]

    def feedback(kind: str, outcome: str) -> float:
        labels = (("kind", kind), ("outcome", outcome))
        return samples.get(("bulksend_feedback_total", labels), 0.0)

    assert feedback("bounce", "suppressed") == 2
    assert feedback("complaint", "suppressed") == 1
    assert feedback("bounce", "forged") == 2
    assert feedback("bounce", "unsigned") == 1
    assert feedback("complaint", "unsigned") == 1
    with SuppressionStore.open(store) as opened:
        keys = {e.key: e.reason for e in opened.entries()}
    assert keys == {
        "missing@gmail.com": SuppressionReason.HARD_BOUNCE,
        "rotated@gmail.com": SuppressionReason.HARD_BOUNCE,
        "reader@yahoo.com": SuppressionReason.COMPLAINT,
    }


async def test_starttls_upgrades_the_session_and_drops_what_came_before(
    tmp_path: Path, ca: trustme.CA
) -> None:
    tls = server_context(ca, "bounces.sender.test")
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        async with listening(ingesting(store), tls=tls) as port, client(port) as c:
            assert "250-STARTTLS\r\n" in await c.say(b"EHLO mx.example.com")
            # A command pipelined after STARTTLS in the clear (CVE-2011-0411) is dropped.
            assert (await c.say(b"STARTTLS\r\nRSET")).startswith("220 2.0.0")
            secure = trio.SSLStream(
                c.stream, client_context(ca), server_hostname="bounces.sender.test"
            )
            await secure.do_handshake()
            assert secure.getpeercert() is not None
            c.stream, c.buffer = secure, b""
            # The session started over: no reply to the RSET, and EHLO first again.
            assert (await c.say(b"MAIL FROM:<>")).startswith("503 5.5.1 EHLO first")
            ehlo = await c.say(b"EHLO mx.example.com")
            assert ehlo.startswith("250-bounces.sender.test")
            assert "STARTTLS" not in ehlo
            assert (await c.say(b"STARTTLS")).startswith("502")  # once only
            data = (FIXTURES / "postfix_5_1_1.eml").read_bytes()
            assert (await c.send_message("bounces@sender.test", data)).startswith("250 2.0.0")
        assert store.check("gone@example.com") is not None


async def test_starttls_only_when_offered_and_a_failed_handshake_ends_one_session(
    ca: trustme.CA,
) -> None:
    with trio.fail_after(20):
        async with listening(lambda _d, _r: None) as port, client(port) as c:
            assert "STARTTLS" not in await c.say(b"EHLO x")
            assert (await c.say(b"STARTTLS")).startswith("502")
        tls = server_context(ca, "bounces.sender.test")
        async with listening(lambda _d, _r: None, tls=tls) as port:
            async with client(port) as c:
                assert (await c.say(b"STARTTLS")).startswith("503")  # EHLO first
                assert (await c.say(b"EHLO x")).startswith("250")
                assert (await c.say(b"MAIL FROM:<>")).startswith("250")
                assert (await c.say(b"STARTTLS")).startswith("503")  # not in a transaction
                assert (await c.say(b"RSET")).startswith("250")
                assert (await c.say(b"STARTTLS")).startswith("220")
                await c.stream.send_all(b"this is no TLS client hello\r\n" * 10)
                assert await c.reply() == ""  # the session ends
            async with client(port) as c:  # the listener goes on
                assert (await c.say(b"NOOP")).startswith("250")


def test_starttls_options_are_checked(tmp_path: Path, ca: trustme.CA) -> None:
    cert = tmp_path / "cert.pem"
    ca.issue_cert("bounces.sender.test").cert_chain_pems[0].write_to_path(str(cert))
    args = ["inbound", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "s.sqlite3")]
    args += ["--sender", "bounces+{token}@sender.test", "--tls-cert", str(cert), "--any-recipient"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "STARTTLS needs both --tls-cert and --tls-key" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--tls-key", str(cert)])  # no key in it
    assert result.exit_code == 1
    assert "cannot load the certificate and its key" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_listener_needs_the_journal_or_any_recipient(tmp_path: Path) -> None:
    # A forged DSN to bounces+victim=example.com@ would suppress any address at all.
    args = ["inbound", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "s.sqlite3")]
    args += ["--sender", "bounces+{token}@sender.test"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "give the campaign's --journal" in result.stderr
    assert "--any-recipient" in result.stderr
    assert not (tmp_path / "s.sqlite3").exists()


async def test_mail_to_the_unsubscribe_address_unsubscribes_its_sender(tmp_path: Path) -> None:
    # RFC 2369 List-Unsubscribe: <mailto:...>, delivered to the receiver over SMTP.
    with SuppressionStore.open(tmp_path / "s.sqlite3") as store, trio.fail_after(20):
        rules = Rules(SuppressionConfig())
        applying = Ingest(store, rules, VERP, mailto="unsubscribe@sender.test")

        def deliver(data: bytes, recipients: list[str]) -> None:
            applying.message(data, now=1000.0, envelope_to=recipients[0])

        async with listening(deliver) as port, client(port) as c:
            for fixture in ("mailto_unsubscribe.eml", "vacation.eml"):  # an auto-reply: nobody
                data = (FIXTURES / fixture).read_bytes()
                reply = await c.send_message("unsubscribe@sender.test", data)
                assert reply.startswith("250 2.0.0"), fixture
        entries = [(e.key, e.reason, e.source) for e in store.entries()]
    assert entries == [("reader10@example.com", SuppressionReason.UNSUBSCRIBE, Source.MAILTO)]


@settings(max_examples=40, deadline=None)
@given(st.lists(MIME_LINES, max_size=40), st.binary(max_size=64))
def test_garbage_mime_over_smtp_is_answered_and_applied_without_a_crash(
    lines: list[str], tail: bytes
) -> None:
    # MIME-shaped garbage through the whole path: receiver, parser, store and journal.
    data = "\r\n".join(lines).encode("utf-8", "surrogatepass") + tail

    async def main(directory: Path) -> None:
        journal = directory / "run.journal"
        with Journal.open(journal, "test") as opened:
            opened.import_recipients([NewRecipient("y@sender.test", {})])
        with (
            SuppressionStore.open(directory / "s.sqlite3") as store,
            contextlib.closing(SqliteFeedbackLog(journal)) as log,
            trio.fail_after(20),
        ):
            applying = Ingest(store, Rules(SuppressionConfig()), VERP, journals=[log])

            def deliver(message: bytes, recipients: list[str]) -> None:
                applying.message(message, now=1000.0, envelope_to=recipients[0])

            async with listening(deliver) as port, client(port) as c:
                reply = await c.send_message("bounces+x=y@sender.test", data)
                assert reply.startswith("250 2.0.0"), reply
                assert (await c.say(b"NOOP")).startswith("250")
            assert sum(applying.counts.values()) >= 1

    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, Path(directory))


async def test_one_host_cannot_take_every_connection() -> None:
    # Slow sessions from one address hold its share of the slots, not all of them.
    limits = ReceiverLimits(max_connections=10, max_per_peer=2)
    with trio.fail_after(20):
        async with (
            listening(lambda _d, _r: None, limits) as port,
            contextlib.AsyncExitStack() as held,
        ):
            for _ in range(2):
                await held.enter_async_context(client(port))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                assert (await Client(stream).reply()).startswith("421 4.3.2")
            other = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            async with other:
                c = Client(other)
                assert (await c.reply()).startswith("220 bounces.sender.test")
                assert (await c.say(b"NOOP")).startswith("250")


async def test_a_slow_session_ends_at_the_session_time_limit() -> None:
    # Slowloris: a byte within every command time limit, for ever.
    limits = ReceiverLimits(command_timeout=0.5, session_timeout=1.5)
    replies: list[str] = []

    async def trickle(stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            for byte in b"NOOP\r\n" * 100:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.1)

    with trio.fail_after(20):
        async with listening(lambda _d, _r: None, limits) as port, client(port) as c:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle, c.stream)
                while not replies or replies[-1]:
                    try:
                        replies.append(await c.reply())
                    except trio.BrokenResourceError:
                        replies.append("")
                nursery.cancel_scope.cancel()
            assert 1.4 < trio.current_time() - start < 5
    assert replies[-2:] == ["421 4.4.2 Session too long, closing\r\n", ""]
    assert set(replies[:-2]) == {"250 2.0.0 OK\r\n"}
