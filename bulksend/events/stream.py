"""The event stream of a run: JSON lines on stdout, batched signed HTTPS webhooks.

How this works: the run calls the :class:`EventStream` with each recorded outcome, without
an await; it makes the event (:mod:`bulksend.events.schema`) and offers it to each sink's
bounded in-memory channel. A full channel drops the event and counts it
(``bulksend_events_total{sink, result="dropped"}``): delivery never waits for a sink.

:class:`JsonLines` writes its events in batches, from a thread (a slow reader of stdout
slows only the sink). :class:`Webhook` gathers events into batches (``batch_size``, or
whatever came within ``batch_wait``) and POSTs each as ``{"v": 1, "events": [...]}``, signed
(:func:`sign`: HMAC-SHA256 over ``"<timestamp>." + body``, in the ``X-Bulksend-Signature``
header as ``t=<timestamp>,v1=<hex>``). A batch that fails (no answer, 5xx, 408, 429) goes to
the on-disk :class:`~bulksend.events.spool.Spool` and is retried with exponential backoff
(0.5 s doubling to 60 s, jittered), oldest first; while the receiver is down, new batches
join the spool once the few held in memory are waiting. A batch the receiver refuses (any
other 4xx) is dropped and counted: sending it again would not help. At the end of a run the
webhook gets ``grace`` seconds to catch up; what is left stays in the spool for the next
run.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter

from bulksend.config.events import EventsConfig
from bulksend.events.schema import VERSION, event
from bulksend.events.spool import Spool
from bulksend.journal import Due, Outcome

#: Events a sink holds in memory before it drops new ones.
CHANNEL: Final = 100_000
#: Batches the webhook holds in memory before new ones go to the spool.
_BATCHES: Final = 8
#: Seconds one POST may take.
POST_DEADLINE: Final = 30.0
_RETRY_FIRST, _RETRY_MAX = 0.5, 60.0
SIGNATURE_HEADER: Final = "X-Bulksend-Signature"

Event = dict[str, Any]


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (epoch seconds)."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class _Sink:
    """A bounded channel of events and the task that empties it."""

    name = ""

    def __init__(self, counts: Counter) -> None:
        self._send, self._receive = trio.open_memory_channel[Event](CHANNEL)
        self._counts = counts
        self._gathering: list[Event] = []

    def offer(self, item: Event) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self._counts.labels(self.name, "dropped").inc()

    def close(self) -> None:
        self._send.close()

    async def _batch(self, size: int, wait: float) -> list[Event]:
        """Up to ``size`` events: the first awaited, then what comes within ``wait``.

        They are kept in :attr:`_gathering` until returned (a stop meanwhile finds them).
        """
        batch = self._gathering
        batch.append(await self._receive.receive())
        with trio.move_on_after(wait), contextlib.suppress(trio.EndOfChannel):
            # Closed meanwhile: these are the last ones (the next call ends).
            while len(batch) < size:
                batch.append(await self._receive.receive())
        self._gathering = []
        return batch


class JsonLines(_Sink):
    """One JSON line per event on a stream (``--events stdout``)."""

    name = "stdout"

    def __init__(self, stream: TextIO, counts: Counter) -> None:
        super().__init__(counts)
        self._stream = stream

    def _write(self, batch: list[Event]) -> None:
        self._stream.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in batch))
        self._stream.flush()

    async def run(self) -> None:
        while True:
            try:
                batch = await self._batch(1000, 0.2)
            except trio.EndOfChannel:
                return
            await trio.to_thread.run_sync(self._write, batch)
            self._counts.labels(self.name, "sent").inc(len(batch))


class Webhook(_Sink):
    """Batched, signed POSTs to ``[events] webhook``, spooled on disk while it is down."""

    name = "webhook"

    def __init__(self, config: EventsConfig, spool: Path, counts: Counter) -> None:
        super().__init__(counts)
        assert config.webhook is not None
        assert config.secret is not None
        self.config = config
        self._url = config.webhook
        self._secret = config.secret.reveal().encode()
        self._spool_dir = spool
        self._batches, self._ready = trio.open_memory_channel[bytes](_BATCHES)
        self._spool: Spool | None = None
        self._posting: bytes | None = None  # a batch from memory, being sent
        self._rng = random.Random()

    async def run(self) -> None:
        self._spool = await trio.to_thread.run_sync(Spool, self._spool_dir, self.config.spool_max)
        context = ssl.create_default_context(
            cafile=None if self.config.ca_certs is None else str(self.config.ca_certs)
        )
        # Deadlines are cancel scopes (POST_DEADLINE), not httpx's timeouts.
        async with httpx.AsyncClient(verify=context, timeout=None) as client:  # noqa: S113
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._gather)
                    await self._post_all(client)
            finally:
                with trio.CancelScope(shield=True):
                    await self._keep_the_rest()

    async def _gather(self) -> None:
        """Events into batches; a batch the poster cannot take now goes to the spool."""
        async with self._batches:
            while True:
                try:
                    batch = await self._batch(self.config.batch_size, self.config.batch_wait)
                except trio.EndOfChannel:
                    return
                body = json.dumps({"v": VERSION, "events": batch}, ensure_ascii=False).encode()
                try:
                    self._batches.send_nowait(body)
                except trio.WouldBlock:
                    await self._to_spool(body, len(batch))

    async def _post_all(self, client: httpx.AsyncClient) -> None:
        spool = self._spool
        assert spool is not None
        delay = 0.0
        while True:
            body = await trio.to_thread.run_sync(spool.oldest) if len(spool) else None
            spooled = body is not None
            if body is None:
                try:
                    body = await self._ready.receive()
                except trio.EndOfChannel:
                    return
            self._posting = None if spooled else body
            result = await self._post(client, body)
            self._posting = None
            count = _count(body)
            if result != "retry":
                if spooled:
                    await trio.to_thread.run_sync(spool.drop_oldest)
                self._counts.labels(self.name, result).inc(count)
                delay = 0.0
                continue
            if not spooled:
                await self._to_spool(body, count)
            delay = min(max(2 * delay, _RETRY_FIRST), _RETRY_MAX)
            await trio.sleep(delay * self._rng.uniform(0.8, 1.2))

    async def _post(self, client: httpx.AsyncClient, body: bytes) -> str:
        """POST one batch: "sent", "refused" (a 4xx: never again) or "retry"."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
        }
        with trio.move_on_after(POST_DEADLINE):
            try:
                response = await client.post(self._url, content=body, headers=headers)
            except httpx.HTTPError:
                return "retry"
            if response.is_success:
                return "sent"
            if response.status_code in (408, 429) or response.status_code >= 500:
                return "retry"
            return "refused"
        return "retry"

    async def _to_spool(self, body: bytes, count: int) -> None:
        assert self._spool is not None
        kept = await trio.to_thread.run_sync(self._spool.put, body)
        self._counts.labels(self.name, "spooled" if kept else "dropped").inc(count)

    async def _keep_the_rest(self) -> None:
        """Stopped: what is still in memory goes to the spool, for the next run."""
        rest = [] if self._posting is None else [self._posting]
        while True:
            try:
                rest.append(self._ready.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        events, self._gathering = self._gathering, []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if events:
            rest.append(json.dumps({"v": VERSION, "events": events}, ensure_ascii=False).encode())
        for body in rest:
            await self._to_spool(body, _count(body))


def _count(body: bytes) -> int:
    return len(json.loads(body)["events"])


class EventStream:
    """The run's outcomes as events, to every sink (call it as ``on_outcome``)."""

    def __init__(
        self,
        campaign: str,
        *,
        registry: CollectorRegistry,
        stdout: TextIO | None = None,
        webhook: EventsConfig | None = None,
        spool: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.campaign = campaign
        self._clock = clock
        counts = Counter(
            "bulksend_events",
            "Events of the event stream, by sink and result (sent, spooled, dropped, refused)",
            ["sink", "result"],
            registry=registry,
        )
        self.sinks: list[JsonLines | Webhook] = []
        if stdout is not None:
            self.sinks.append(JsonLines(stdout, counts))
        if webhook is not None and webhook.webhook is not None:
            assert spool is not None
            self.sinks.append(Webhook(webhook, webhook.spool or spool, counts))
        self._done = trio.Event()

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def __call__(self, due: Due, outcome: Outcome, site: str) -> None:
        item = event(self.campaign, due, outcome, site, self._clock())
        if item is not None:
            for sink in self.sinks:
                sink.offer(item)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every sink until :meth:`aclose` (started with ``nursery.start``)."""
        try:
            async with trio.open_nursery() as nursery:
                for sink in self.sinks:
                    nursery.start_soon(sink.run)
                task_status.started()
        finally:
            self._done.set()

    async def aclose(self, grace: float) -> None:
        """No more events: let the sinks send what they hold, for up to ``grace`` seconds
        (then the webhook keeps the rest in its spool)."""
        for sink in self.sinks:
            sink.close()
        with trio.move_on_after(grace):
            await self._done.wait()
