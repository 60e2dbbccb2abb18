"""The ``bulksend`` command line: a thin face over the campaign, delivery and journal rooms.

The entry point is :func:`main` (``bulksend = "bulksend.cli:main"``). ``app`` holds the
click group and its one-line errors; ``output`` the exit statuses and what runs print;
``options`` the shared options; ``run`` the run orchestration (one process or ``--workers``);
one module per command group: ``send`` (send, resume), ``report`` (status, report),
``validate``, ``local`` (sink, demo), ``suppress`` (the suppression store), ``inbound``
(bounces and complaints into it), ``unsubscribe`` (the one-click endpoint); ``serving`` runs
their listeners.
"""

from __future__ import annotations

from bulksend.cli.app import main

__all__ = ["main"]
