"""Commands that run the test servers locally: ``sink`` and ``demo``."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click
import trio

from bulksend.cli.options import RunFlags, debug_option, demo_metrics_options, load_campaign
from bulksend.cli.output import EXIT_OK, EXIT_STOPPED, RunResult, info, print_summary
from bulksend.cli.run import execute_run, serve_until_signal, wait_for_signal
from bulksend.files import open_private
from bulksend.journal import Journal
from bulksend.journal.reports import write_report


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=2525, show_default=True)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Print a line every this many messages.",
)
@debug_option
def sink(host: str, port: int, every: int) -> None:
    """Run the test SMTP server (accepts everything, keeps nothing) until Ctrl-C."""
    from bulksend.testing.smtp import ServerScript, SMTPServer  # noqa: PLC0415

    async def serve() -> None:
        server = SMTPServer(ServerScript(record=False), host=host, port=port)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve)
            click.echo(f"sink listening on {bound[0]}:{bound[1]} (Ctrl-C stops)")
            started = time.monotonic()

            async def report() -> None:
                shown = [0]
                while True:
                    await server.wait_until(lambda: server.stats.messages >= shown[0] + every)
                    shown[0] = server.stats.messages - server.stats.messages % every
                    rate = server.stats.messages / max(time.monotonic() - started, 1e-9)
                    click.echo(f"{server.stats.messages:,} messages ({rate:,.0f}/s)")

            nursery.start_soon(report)
            await wait_for_signal()
            nursery.cancel_scope.cancel()
        click.echo(f"sink stopped after {server.stats.messages:,} messages")

    trio.run(serve)


@click.command()
@click.option(
    "--recipients",
    type=click.IntRange(min=10),
    default=20000,
    show_default=True,
    help="How many recipients the demo campaign has.",
)
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the campaign, journal and report are written (replaced).",
)
@click.option(
    "--keep-serving",
    is_flag=True,
    help="Keep the metrics endpoint up after the run until SIGINT/SIGTERM.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@demo_metrics_options
@debug_option
def demo(
    *,
    recipients: int,
    directory: Path,
    keep_serving: bool,
    quiet: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a realistic campaign against local test servers (DNS + SMTP on 127.0.0.x)."""
    from bulksend.cli import demo as world_of  # noqa: PLC0415
    from bulksend.cli.demo_sts import StsDemo  # noqa: PLC0415
    from bulksend.testing.scenario import running  # noqa: PLC0415

    flags = RunFlags(
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        limit=None,
        force=False,
        accounting=directory / "accounting.jsonl",
        nameservers=("127.0.0.1",),
        dns_port=53,
        smtp_port=25,
        ehlo_hostname="demo.sender.test",
        grace=5.0,
        quiet=quiet,
    )
    path, sites = world_of.write_demo_campaign(directory, recipients)
    sts = StsDemo(directory)
    sites = [*sites, sts.site]
    journal = directory / "bulksend-demo.journal.sqlite3"

    async def go() -> tuple[RunResult, list[str]]:
        async with running(sites) as world, sts.serving(world):
            ports = dataclasses.replace(flags, dns_port=world.dns_port, smtp_port=world.smtp_port)
            campaign = load_campaign(path)
            info(
                f"demo: {recipients:,} recipients over {len(sites)} sites on 127.0.0.x "
                f"(DNS 127.0.0.1:{world.dns_port}, SMTP port {world.smtp_port}); "
                f"files in {directory}/"
            )
            addresses, _unknown = world_of.demo_addresses(recipients)
            loop = world_of.DemoFeedback(campaign, journal, directory, addresses)
            options = sts.options(ports.options(journal, campaign))
            result = await execute_run(
                campaign,
                options,
                flags=ports,
                campaign_path=path,
                stream=sys.stderr,
                watch=loop.watch(),
            )
            return result, [] if result.signalled else await loop.follow_up(options)

    result, loop_lines = trio.run(go)
    print_summary(result, journal, sys.stdout, rejects=directory / "rejects.csv")
    sys.stdout.write("\n")
    with Journal.open(journal, None) as j:
        sys.stdout.write(sts.summary(j.counts_by_domain()) + "\n")
        write_report(j, sys.stdout, top_domains=12)
    sys.stdout.write("".join(f"{line}\n" for line in loop_lines))
    sys.stdout.write(
        f"\nfiles in {directory}/: campaign.toml, recipients.csv, journal, "
        "accounting.jsonl, report.txt, suppressions.sqlite3, tls-state.sqlite3, follow-up/\n"
    )
    with Journal.open(journal, None) as j, open_private(directory / "report.txt") as out:
        write_report(j, out, top_domains=50)
    sys.stdout.flush()
    server = result.metrics_server
    try:
        if keep_serving and server is not None:
            serve_until_signal(server)
    finally:
        if server is not None:
            server.close()
    raise SystemExit(EXIT_STOPPED if result.signalled else EXIT_OK)
