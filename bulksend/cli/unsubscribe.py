"""``bulksend unsubscribe-server``: the RFC 8058 one-click unsubscribe endpoint."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

import click

from bulksend.cli.options import JournalParam, debug_option, metrics_options
from bulksend.cli.serving import listen_address, serve_until_stopped
from bulksend.cli.suppress import open_store, store_options
from bulksend.config import load_campaign
from bulksend.errors import ConfigError
from bulksend.inbound.unsubscribe import EndpointLimits, UnsubscribeEndpoint
from bulksend.journal.feedback_log import open_feedback_logs
from bulksend.metrics import FeedbackMetrics

_MIN_KEY: Final = 16


def strong_key(key: str, origin: str) -> bytes:
    """``key`` as bytes, if long enough: anyone with one link can test guesses of a short key
    offline, then sign a link for any address."""
    data = key.encode("utf-8")
    if len(data) < _MIN_KEY:
        raise ConfigError(
            f"{origin}: the key is {len(data)} bytes, under {_MIN_KEY}: it can be guessed from "
            "one link; use a random one, e.g. `openssl rand -base64 32`"
        )
    return data


def file_keys(files: tuple[Path, ...]) -> list[bytes]:
    """The keys in ``files`` (one a file), each checked to be long enough."""
    keys: list[bytes] = []
    for path in files:
        try:
            text = path.read_text("utf-8").strip("\r\n")
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"{path}: cannot read the key ({exc})") from None
        if not text:
            raise ConfigError(f"{path}: the key file is empty")
        keys.append(strong_key(text, str(path)))
    return keys


def _keys(campaign: Path | None, files: tuple[Path, ...], envs: tuple[str, ...]) -> list[bytes]:
    keys: list[bytes] = []
    if campaign is not None:
        unsubscribe = load_campaign(campaign, os.environ).unsubscribe
        if unsubscribe is not None and unsubscribe.key is not None:
            keys.append(strong_key(unsubscribe.key.reveal(), f"{campaign}: [unsubscribe] key"))
    keys += file_keys(files)
    for name in envs:
        if not os.environ.get(name):
            raise ConfigError(f"environment variable {name!r} is not set (--key-env)")
        keys.append(strong_key(os.environ[name].strip("\r\n"), f"environment variable {name!r}"))
    if not keys:
        raise click.UsageError("no key: give --key-file, --key-env or a --campaign with one")
    return keys


@click.command(name="unsubscribe-server")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to listen (port 8080).")
@click.option(
    "--key-file",
    "key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A token key (repeatable: keep the old key during a rotation).",
)
@click.option("--key-env", "key_envs", multiple=True, help="A token key in this variable.")
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=EndpointLimits().max_connections,
    show_default=True,
)
@click.option(
    "--journal",
    "journals",
    multiple=True,
    type=JournalParam(exists=True),
    help="The --campaign's journal, a file or a postgresql:// URL (repeatable, for shards): "
    "its recipients' unsubscribes are recorded in it for `bulksend report`.",
)
@metrics_options
@store_options
@debug_option
def unsubscribe_server(
    *,
    listen: str,
    metrics_host: str,
    metrics_port: int | None,
    key_files: tuple[Path, ...],
    key_envs: tuple[str, ...],
    max_connections: int,
    journals: tuple[Path | str, ...],
    store: Path | str | None,
    campaign: Path | None,
) -> None:
    """Serve the one-click unsubscribe URL ([unsubscribe] url) behind a TLS proxy.

    POST List-Unsubscribe=One-Click with a valid token suppresses the address; GET shows a
    confirmation page and changes nothing (docs/suppression.md).
    """
    host, port = listen_address(listen, 8080)
    keys = _keys(campaign, key_files, key_envs)
    if journals and campaign is None:
        raise click.UsageError("--journal needs --campaign (its links name the campaign by id)")
    with open_store(store, campaign, journals) as opened, contextlib.ExitStack() as closing:
        logs = open_feedback_logs(journals, closing)
        campaign_id = "" if campaign is None else load_campaign(campaign, os.environ).id
        limits = EndpointLimits(max_connections=max_connections)
        metrics = FeedbackMetrics()
        endpoint = UnsubscribeEndpoint(opened, keys, limits, metrics, {campaign_id: logs})
        serve_until_stopped(
            endpoint.serve,
            host,
            port,
            metrics=metrics,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
        )
