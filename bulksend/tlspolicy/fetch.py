"""Fetching an MTA-STS policy file over HTTPS (RFC 8461 §3.3), with httpx on Trio.

How this works: the policy host ``mta-sts.<domain>`` is resolved by the caller, through the
run's own resolvers (so the tests' DNS server answers it, as it answers MX lookups); this
module connects to each address in turn, sends the host name as SNI and ``Host``, and
verifies the certificate for that name (the system's trust store, or the context it is
given). It follows no redirect (§3.3: a 3xx is a failure), accepts only ``200`` with a
``text/plain`` body of at most ``max_size`` bytes (64 KiB by default, §3.3), and the whole
fetch runs under one deadline (a cancel scope). httpx runs on Trio through its
anyio/trio backend (httpcore), so no thread is involved. :func:`post_report` sends a TLS
report (RFC 8460 §5.3) the same way: to the addresses the caller resolved, with the URL's
host as SNI and ``Host``, its certificate verified, no redirect followed.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import httpx

__all__ = ["FetchError", "FetchSettings", "fetch_policy_text", "post_report"]

_PATH = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """The policy could not be fetched (sts-policy-fetch-error, or sts-webpki-invalid)."""

    def __init__(self, reason: str, *, result: str = "sts-policy-fetch-error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """How policies are fetched.

    Attributes:
        ssl_context: the certificate authorities to trust; None: the system's trust store.
        port: the HTTPS port (443; tests use a local server's, through the Python API only).
        deadline: seconds for one fetch, connection, TLS and body included.
        max_size: the most bytes a policy file may have (RFC 8461 §3.3: 64 KiB).
    """

    ssl_context: ssl.SSLContext | None = None
    port: int = 443
    deadline: float = 10.0
    max_size: int = 64 * 1024


async def fetch_policy_text(host: str, addresses: Sequence[str], settings: FetchSettings) -> str:
    """The text of ``https://<host>/.well-known/mta-sts.txt``, from the first address that
    answers.

    Raises:
        FetchError: every address failed; the reason is the last address's.
    """
    if not addresses:
        raise FetchError(f"{host} has no address")
    reason = ""
    with trio.move_on_after(settings.deadline):
        async with _client(settings) as client:
            for address in addresses:
                try:
                    return await _fetch_one(client, host, address, settings)
                except FetchError as exc:
                    if exc.result != "sts-policy-fetch-error":
                        raise
                    reason = exc.reason
        return _raise(f"{host}: {reason}")
    return _raise(f"{host}: no policy within {settings.deadline:g}s")


def _raise(reason: str) -> str:
    raise FetchError(reason)


def _client(settings: FetchSettings) -> httpx.AsyncClient:
    # httpx loads its command line (click) when imported: only when a policy is fetched.
    import httpx  # noqa: PLC0415

    # The deadline is the caller's cancel scope. httpx's own timeouts (half of it, per step)
    # only make a silent server fail first as an exception: httpcore closes its socket on an
    # exception, but not when cancelled in the TLS handshake.
    return httpx.AsyncClient(
        verify=settings.ssl_context or ssl.create_default_context(),
        follow_redirects=False,
        timeout=settings.deadline / 2,
        trust_env=False,
    )


def _request(
    client: httpx.AsyncClient, method: str, *, host: str, address: str, port: int,
    target: str, headers: dict[str, str], content: bytes | None = None,
) -> httpx.Request:  # fmt: skip
    """A request to ``address`` for ``host`` (SNI and ``Host``)."""
    literal = f"[{address}]" if ":" in address else address
    return client.build_request(
        method,
        f"https://{literal}:{port}{target}",
        headers={"Host": host, **headers},
        content=content,
        extensions={"sni_hostname": host},
    )


async def _send(
    client: httpx.AsyncClient, request: httpx.Request, host: str, address: str, seconds: float
) -> httpx.Response:
    """Send ``request`` (the response streamed), its failures as :class:`FetchError`."""
    import httpx  # noqa: PLC0415 (see _client)

    try:
        return await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise FetchError(f"{address}: no answer within {seconds:g}s") from None
    except httpx.ConnectError as exc:
        cause = exc.__cause__ or exc.__context__
        while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise FetchError(
                f"certificate not valid for {host}: {cause.verify_message}",
                result="sts-webpki-invalid",
            ) from None
        raise FetchError(f"{address}: {exc or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"{address}: {exc or type(exc).__name__}") from None


async def post_report(
    url: str, addresses: Sequence[str], body: bytes, settings: FetchSettings
) -> int:
    """POST a gzip'd TLS report to the ``https:`` ``url`` (RFC 8460 §5.3) at the first of
    ``addresses`` (the URL host's) that answers; the status of the answer (2xx: accepted).

    Raises:
        FetchError: no address answered, within ``settings.deadline`` in all.
    """
    import httpx  # noqa: PLC0415 (see _client)

    parts = httpx.URL(url)
    target = parts.raw_path.decode("ascii") or "/"
    headers = {"Content-Type": "application/tlsrpt+gzip"}
    reason = f"{parts.host} has no address"
    with trio.move_on_after(settings.deadline):
        async with _client(settings) as client:
            for address in addresses:
                request = _request(
                    client, "POST", host=parts.host, address=address, port=parts.port or 443,
                    target=target, headers=headers, content=body,
                )  # fmt: skip
                try:
                    response = await _send(
                        client, request, parts.host, address, settings.deadline / 2
                    )
                except FetchError as exc:
                    reason = exc.reason
                    continue
                await response.aclose()
                return response.status_code
        raise FetchError(f"{parts.host}: {reason}")
    raise FetchError(f"{parts.host}: no answer within {settings.deadline:g}s")


async def _fetch_one(
    client: httpx.AsyncClient, host: str, address: str, settings: FetchSettings
) -> str:
    import httpx  # noqa: PLC0415 (see _client)

    request = _request(
        client, "GET", host=host, address=address, port=settings.port, target=_PATH,
        headers={"Accept": "text/plain"},
    )  # fmt: skip
    response = await _send(client, request, host, address, settings.deadline / 2)
    try:
        if response.is_redirect:
            raise FetchError(f"answered {response.status_code} (a redirect: not followed)")
        if response.status_code != 200:
            raise FetchError(f"answered {response.status_code}")
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "text/plain":
            raise FetchError(f"Content-Type is {kind or 'missing'}, not text/plain")
        too_big = FetchError(f"the policy is larger than {settings.max_size} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_size:
            raise too_big
        body = bytearray()
        size = 0
        try:
            # Read to the end (the deadline bounds it), keeping no more than the cap: leaving
            # httpx's stream generators half-read would leave them to the garbage collector.
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size <= settings.max_size:
                    body += chunk
        except httpx.HTTPError as exc:
            raise FetchError(f"{address}: {exc or type(exc).__name__}") from None
        if size > settings.max_size:
            raise too_big
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise FetchError("the policy is not UTF-8 text") from None
    finally:
        await response.aclose()
