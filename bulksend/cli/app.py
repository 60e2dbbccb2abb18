"""The ``bulksend`` click group, and errors as one line on stderr.

Commands: ``send``, ``resume``, ``status``, ``report``, ``validate``, ``sink``, ``demo``,
``tls-report`` (docs/cli.md), ``suppress``, ``inbound`` and ``unsubscribe-server``
(docs/suppression.md); each lives in its own module and is added to the group here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import traceback
from typing import Any

import click
import trio

from bulksend.cli.ctl import ctl
from bulksend.cli.distributed import import_, worker
from bulksend.cli.inbound import inbound
from bulksend.cli.local import demo, sink
from bulksend.cli.options import DEBUG_KEY, debug_option
from bulksend.cli.output import EXIT_ERROR, EXIT_STOPPED
from bulksend.cli.plan import plan
from bulksend.cli.policy import policy
from bulksend.cli.report import report, status
from bulksend.cli.send import resume, send
from bulksend.cli.suppress import suppress
from bulksend.cli.tls_report import tls_report
from bulksend.cli.top import top
from bulksend.cli.unsubscribe import unsubscribe_server
from bulksend.cli.validate import validate
from bulksend.errors import BulksendError


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _user_error(exc: BaseException) -> BaseException | None:
    """The error to report in one line, if ``exc`` is (or only wraps) a user-facing one."""
    leaves = _leaves(exc)
    known = [e for e in leaves if isinstance(e, BulksendError | OSError)]
    if known and all(isinstance(e, BulksendError | OSError | trio.Cancelled) for e in leaves):
        return known[0]
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split()) if "\n" not in text else text.splitlines()[0]


def _stdout_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is stdout's reader going away (``bulksend report | head``)."""
    if not any(isinstance(e, BrokenPipeError) for e in _leaves(exc)):
        return False
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), 0)
    except (OSError, ValueError):
        return False  # not a file descriptor (tests' captured output)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poll.poll(0))


def _end_by_sigpipe() -> None:
    """End as a Unix tool does when its reader leaves: killed by SIGPIPE, without a word."""
    with contextlib.suppress(OSError, ValueError):
        # Python flushes stdout at exit: point it at /dev/null so that flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


class _Group(click.Group):
    """Turns errors into one line on stderr and exit status 1 (a traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("bulksend: interrupted", err=True)
            ctx.exit(EXIT_STOPPED)
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                raise
            if _stdout_gone(exc):
                _end_by_sigpipe()
            error = _user_error(exc)
            if ctx.meta.get(DEBUG_KEY):
                traceback.print_exception(exc, file=sys.stderr)
                if error is None:
                    ctx.exit(EXIT_ERROR)
            if error is None:
                click.echo(
                    f"bulksend: error: unexpected {type(exc).__name__}: {_message(exc)} "
                    "(run with --debug for the traceback)",
                    err=True,
                )
                ctx.exit(EXIT_ERROR)
            click.echo(f"bulksend: error: {_message(error)}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulksend", prog_name="bulksend")
@debug_option
def main() -> None:
    """bulksend: send one personalised message to every recipient of a list, straight to
    their mail exchangers, resumably. See docs/cli.md."""
    # --debug (eager) has configured logging already; otherwise only errors are logged.
    logging.basicConfig(level=logging.ERROR, format="bulksend: %(message)s")


for _command in (
    send,
    resume,
    import_,
    worker,
    status,
    report,
    validate,
    sink,
    demo,
    suppress,
    inbound,
    unsubscribe_server,
    tls_report,
    policy,
    plan,
    ctl,
    top,
):
    main.add_command(_command)
