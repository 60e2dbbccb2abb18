"""``bulksend unsubscribe-server``: the RFC 8058 one-click unsubscribe endpoint.

How this works. HTTP/1.1 through h11 (a sans-IO parser, the same shape as our SMTP protocol)
on Trio streams, one request per connection, behind the user's TLS reverse proxy. The URL a
message carries holds the campaign (``c``), the address (``e``) and the token (``t``: an HMAC
of both, :mod:`bulksend.campaign.unsubscribe`), so a request is checked with no lookup:

- ``POST`` with the body ``List-Unsubscribe=One-Click`` (RFC 8058 §3.1) and a valid token
  suppresses the address as ``unsubscribe`` (source ``http``) and answers ``200``: no cookie,
  no redirect, no login. Doing it again changes nothing more (idempotent). Given the
  campaign's journals, the unsubscribe of one of its recipients is also recorded there
  (:mod:`bulksend.journal.feedback`), for ``bulksend report``.
- ``GET`` shows a page with a button that makes that POST and changes nothing:
  link scanners and previewers follow GETs (RFC 8058 §4).
- a missing or malformed parameter is ``400``; a token that does not verify is ``403`` and a
  log line; any other method ``405``; a body over 1 KiB ``413``. Never a stack trace.
- a client that sends ``Expect: 100-continue`` is told ``100`` before its body is read.

Limits: ``max_connections`` at once (one more gets ``503``), ``timeout`` seconds for a whole
request, 8 KiB of request head.
"""

from __future__ import annotations

import contextlib
import html
import logging
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import h11
import trio

from bulksend.campaign.recipients import normalise_address
from bulksend.campaign.unsubscribe import verify_token
from bulksend.config import SuppressionReason
from bulksend.errors import JournalError, SuppressionError
from bulksend.inbound.listening import Listener
from bulksend.journal.feedback import FeedbackEvent, FeedbackKind
from bulksend.journal.feedback_log import FeedbackLog
from bulksend.metrics import FeedbackMetrics
from bulksend.suppression.backend import AnyStore
from bulksend.suppression.store import Source

__all__ = ["EndpointLimits", "UnsubscribeEndpoint"]

log = logging.getLogger("bulksend.unsubscribe")

MAX_BODY: Final = 1024
_MAX_HEAD: Final = 8192
_ONE_CLICK: Final = "List-Unsubscribe=One-Click"
_BUSY: Final = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_PAGE: Final = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Unsubscribe</title></head>
<body><p>Unsubscribe {address} from these emails?</p>
<form method="post" action=""><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form></body></html>
"""


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    """What one client may cost the endpoint."""

    max_connections: int = 200
    timeout: float = 10.0


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    campaign: str
    address: str
    token: str


class UnsubscribeEndpoint(Listener):
    """The endpoint; :meth:`serve` runs it on a listener."""

    def __init__(
        self,
        store: AnyStore,
        keys: Sequence[bytes],
        limits: EndpointLimits | None = None,
        metrics: FeedbackMetrics | None = None,
        journals: Mapping[str, Sequence[FeedbackLog]] | None = None,
    ) -> None:
        """``journals``: a campaign id's journals, where its unsubscribes are recorded."""
        if not keys:
            raise ValueError("the endpoint needs at least one key")
        self.store = store
        self.metrics = metrics
        self.journals = dict(journals or {})
        self.keys = tuple(keys)
        self.limits = limits or EndpointLimits()
        self._writing = trio.CapacityLimiter(1)
        super().__init__(self.limits.max_connections, _BUSY)

    async def session(self, stream: trio.abc.Stream) -> None:
        """One request, within the time limit."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        with trio.move_on_after(self.limits.timeout), contextlib.suppress(h11.LocalProtocolError):
            await self._request(stream, conn)

    async def _request(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        try:
            request = await _next(stream, conn)
            if not isinstance(request, h11.Request):
                return
            parsed = _parse_request(request)
            body = await _body(stream, conn, request)
            status, text = await self._answer(parsed, body)
        except _Refused as refused:
            status, text = refused.status, f"{refused}\n"
        except h11.RemoteProtocolError:
            status, text = 400, "Bad request.\n"
        headers = [("Allow", "GET, POST")] if status == 405 else []
        await _respond(stream, conn, status, text, headers)

    async def _answer(self, request: _Request, body: bytes) -> tuple[int, str]:
        if not verify_token(self.keys, request.campaign, request.address, request.token):
            log.warning(
                "unsubscribe: a token that does not verify (campaign %r)", request.campaign[:64]
            )
            raise _Refused(403, "This unsubscribe link is not valid.")
        if request.method == "GET":
            return 200, _PAGE.format(address=html.escape(request.address))
        if urllib.parse.unquote_plus(body.decode("ascii", "replace")).strip() != _ONE_CLICK:
            raise _Refused(400, f"The body must be {_ONE_CLICK}.")
        try:
            await trio.to_thread.run_sync(self._unsubscribe, request, limiter=self._writing)
        except SuppressionError as exc:
            log.warning("unsubscribe not recorded: %s", exc)
            raise _Refused(503, "Cannot record it now, try again later.") from None
        return 200, "You are unsubscribed.\n"

    def _unsubscribe(self, request: _Request) -> None:
        key = normalise_address(request.address)
        now = time.time()
        self._record(request, now)
        entry = self.store.get(key)
        if entry is not None and entry.reason is SuppressionReason.UNSUBSCRIBE:
            self._count("already")
            return  # already: a repeated click changes nothing
        self.store.add(key, SuppressionReason.UNSUBSCRIBE, Source.HTTP, now=now)
        self._count("suppressed")
        if self.metrics is not None:
            self.metrics.suppressions.labels(SuppressionReason.UNSUBSCRIBE, Source.HTTP).inc()

    def _record(self, request: _Request, now: float) -> None:
        """Record the unsubscribe in its campaign's journal, if it is one of its recipients."""
        event = FeedbackEvent(request.address, FeedbackKind.UNSUBSCRIBE, now, Source.HTTP.value)
        for journal in self.journals.get(request.campaign, ()):
            try:
                if journal.record([event])[0]:
                    return
            except JournalError as exc:
                # The suppression is what the reader asked for; the report loses one row.
                log.warning("unsubscribe not recorded in the journal: %s", exc)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.feedback.labels("unsubscribe", outcome).inc()


def _parse_request(request: h11.Request) -> _Request:
    method = request.method.decode("ascii", "replace").upper()
    if method not in ("GET", "POST"):
        raise _Refused(405, "Method not allowed.")
    target = request.target.decode("ascii", "replace")
    try:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, max_num_fields=10)
    except ValueError:  # more fields than that (or a malformed URL)
        raise _Refused(400, "The link has too many parameters.") from None
    values = {}
    for name in ("c", "e", "t"):
        given = query.get(name, [])
        if len(given) != 1 or not given[0] or len(given[0]) > 320:
            raise _Refused(400, f"The link lacks its {name!r} parameter.")
        values[name] = given[0]
    if "@" not in values["e"]:
        raise _Refused(400, "The link's address is not an address.")
    return _Request(method, values["c"], values["e"], values["t"])


async def _next(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Event | None:
    """The next event of the request; None when the client is done (or paused)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(4096)))
            continue
        return event if isinstance(event, h11.Event) else None


async def _body(stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request) -> bytes:
    for name, value in request.headers:
        if name == b"content-length" and int(value) > MAX_BODY:
            raise _Refused(413, "The request body is too large.")
    if conn.they_are_waiting_for_100_continue:  # curl and others wait for it (RFC 9110 §10.1.1)
        proceed = h11.InformationalResponse(status_code=100, headers=[])
        await stream.send_all(conn.send(proceed) or b"")
    body = b""
    while True:
        event = await _next(stream, conn)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _Refused(413, "The request body is too large.")
        elif isinstance(event, h11.EndOfMessage):
            return body
        else:
            raise _Refused(400, "Bad request.")


async def _respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    text: str,
    extra: Sequence[tuple[str, str]] = (),
) -> None:
    body = text.encode("utf-8")
    kind = "text/html" if text.startswith("<!doctype") else "text/plain"
    headers = [
        ("Content-Type", f"{kind}; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *extra,
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.move_on_after(5):
        await stream.send_all(data)
