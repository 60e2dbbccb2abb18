"""Asking a running campaign to do something (``bulksend ctl``): one request, one answer,
over the control socket beside its journal (see :mod:`bulksend.control.server`)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Final

from bulksend.control.commands import Command
from bulksend.control.server import MAX_REQUEST, socket_path
from bulksend.errors import BulksendError

#: Seconds to wait for the answer (a cancellation of a large domain takes a while).
ANSWER_DEADLINE: Final = 60.0


class NotRunning(BulksendError):
    """No run holds the journal (no control socket, or nobody listening on it)."""


class ControlError(BulksendError):
    """The run refused the command, or its answer never came."""


def request(journal: Path, command: Command) -> dict[str, Any]:
    """Send ``command`` to the run that holds ``journal``; its answer (``ok`` is true).

    Raises:
        NotRunning: no run of that journal is going.
        ControlError: the run refused the command (the message says why) or did not answer.
    """
    reply = exchange(journal, command)
    if not reply.get("ok"):
        error = reply.get("error")
        raise ControlError(f"the run refused: {error if error else repr(reply)}")
    return reply


def exchange(journal: Path, command: Command) -> dict[str, Any]:
    """Send ``command`` to the run that holds ``journal``; its answer, accepted or refused.

    Raises:
        NotRunning: no run of that journal is going.
        ControlError: the run did not answer, or not with a JSON object.
    """
    path = socket_path(journal)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANSWER_DEADLINE)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(
                f"no bulksend run is sending {journal} (nothing listens on {path}); "
                f"`bulksend status {journal}` shows where the campaign stands"
            ) from None
        try:
            sock.sendall(json.dumps(command.to_json()).encode() + b"\n")
            answer = b""
            while b"\n" not in answer and len(answer) < 64 * MAX_REQUEST:
                data = sock.recv(MAX_REQUEST)
                if not data:
                    break
                answer += data
        except OSError as exc:
            raise ControlError(f"{path}: the run did not answer ({exc})") from None
    try:
        reply = json.loads(answer.partition(b"\n")[0])
    except ValueError:
        raise ControlError(f"{path}: the run's answer was cut short") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: the run's answer is not a JSON object: {reply!r}")
    return reply
