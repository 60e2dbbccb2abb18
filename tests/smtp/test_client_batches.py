"""A pipelined batch (its write and every reply it is owed) runs under one deadline, re-armed
per reply: each stage keeps its own time limit and a dripping reply does not escape it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from bulksend.config import Timeouts, TlsMode
from bulksend.smtp.client import Envelope, SMTPClient
from bulksend.smtp.errors import InDoubtError, SMTPTimeoutError
from bulksend.testing.smtp import HANG, ServerScript, serving

STAGE_TIMEOUTS = {"MAIL": "mail", "RCPT": "rcpt", "DATA": "data_init", "DOT": "final_dot"}


async def open_client(address: tuple[str, int], timeouts: Timeouts) -> SMTPClient:
    return SMTPClient(await trio.open_tcp_stream(*address), hostname="c.test", timeouts=timeouts)


@pytest.mark.parametrize("verb", list(STAGE_TIMEOUTS))
async def test_a_pipelined_stage_without_reply_ends_at_its_own_deadline(verb: str) -> None:
    timeouts = replace(Timeouts(), **{STAGE_TIMEOUTS[verb]: 0.3})
    async with serving(ServerScript(replies={verb: HANG})) as server:
        with trio.fail_after(10):
            client = await open_client(server.address, timeouts)
            await client.handshake(tls=TlsMode.NONE)
            assert client.extensions.pipelining
            start = trio.current_time()
            results = await client.send(Envelope("s@x.test", ("a@x.test",)), b"x")
            assert trio.current_time() - start < 3  # 0.3 s, not the other stages' 5 s
            assert not client.usable
            await client.aclose()
    error = results[0].error
    assert isinstance(error, InDoubtError if verb == "DOT" else SMTPTimeoutError), error
    assert "within 0.3s" in str(error)
    assert server.transactions == []


async def test_a_dripping_reply_inside_a_batch_does_not_escape_its_deadline() -> None:
    # The RCPT reply comes one byte every 0.05 s (about 1 s in all, each byte well within
    # the 0.5 s limit): the deadline covers the whole reply, not each byte.
    script = ServerScript(drip=0.05, drip_verbs=frozenset({"RCPT"}))
    async with serving(script) as server:
        with trio.fail_after(10):
            client = await open_client(server.address, replace(Timeouts(), rcpt=0.5))
            await client.handshake(tls=TlsMode.NONE)
            results = await client.send(Envelope("s@x.test", ("a@x.test",)), b"x")
            await client.aclose()
    error = results[0].error
    assert isinstance(error, SMTPTimeoutError)
    assert "RCPT" in str(error) and "within 0.5s" in str(error)
    assert server.transactions == []
