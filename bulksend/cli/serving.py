"""Running a listener from the command line (``inbound --listen``, ``unsubscribe-server``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click
import trio

from bulksend.cli.run import serve_metrics
from bulksend.config.values import parse_host_port
from bulksend.metrics import FeedbackMetrics

Serve = Callable[..., Awaitable[None]]


def listen_address(text: str, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]`` -> (host, port); port 0 (any free port) is allowed, for tests.

    Raises:
        click.BadParameter: not a host and port.
    """
    try:
        any_port = text.endswith(":0")
        host, port = parse_host_port(text.removesuffix(":0"), default_port)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    return host, 0 if any_port else port


def serve_until_stopped(
    serve: Serve,
    host: str,
    port: int,
    *,
    metrics: FeedbackMetrics,
    metrics_host: str,
    metrics_port: int | None,
) -> None:
    """Run ``serve(host, port, task_status=...)`` until SIGINT; say where it listens (and
    where its metrics are, with ``metrics_port``)."""
    server = None
    if metrics_port is not None:
        server = serve_metrics(metrics.registry, metrics_port, metrics_host)
        click.echo(f"bulksend: metrics at {server.url}", err=True)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners: Any = await nursery.start(serve, host, port)
            bound = listeners[0].socket.getsockname()
            click.echo(f"bulksend: listening on {bound[0]}:{bound[1]}", err=True)

    try:
        trio.run(main)
    finally:
        if server is not None:
            server.close()
