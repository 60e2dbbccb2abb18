"""SMTP errors.

``ReplyError`` carries the server's reply; ``TransientReplyError`` (4xx) and
``PermanentReplyError`` (5xx) tell the caller what to do with it. Protocol and network
errors are always transient: a malformed reply or a dropped connection is never a bounce.
``InDoubtError`` is the one case where the message may already have been delivered: the
final-dot reply never arrived.
"""

from __future__ import annotations

from bulksend.errors import BulksendError
from bulksend.smtp.reply import Reply, Verb


class SMTPError(BulksendError):
    """Root of SMTP errors."""

    #: True when retrying later may succeed.
    transient: bool = True


class LocalProtocolError(SMTPError):
    """We tried something the protocol does not allow (a bug or a refused input).

    Raised before any byte is produced: an address with CR/LF, an over-long path, a command
    out of sequence. ``enhanced_code`` is the RFC 3463 code a server would have given for
    the same refusal, where there is one (5.3.4 too big for the server's SIZE, 5.6.7 an
    address that needs SMTPUTF8, 5.6.3 data that needs 8BITMIME).
    """

    transient = False

    def __init__(self, message: str, *, enhanced_code: str | None = None) -> None:
        super().__init__(message)
        self.enhanced_code = enhanced_code


class RemoteProtocolError(SMTPError):
    """The server broke the protocol: malformed, over-long or inconsistent reply."""


class ReplyError(SMTPError):
    """The server answered with a non-success reply."""

    def __init__(self, reply: Reply, stage: Verb) -> None:
        self.reply = reply
        self.stage = stage
        super().__init__(f"{stage}: {reply}")

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def enhanced_code(self) -> str | None:
        return self.reply.enhanced_code

    @property
    def text(self) -> str:
        return self.reply.text


class TransientReplyError(ReplyError):
    """4xx: try again later."""

    transient = True


class PermanentReplyError(ReplyError):
    """5xx: do not retry."""

    transient = False


class SMTPConnectionError(SMTPError, ConnectionError):
    """The connection failed or was lost."""


class SMTPTimeoutError(SMTPError, TimeoutError):
    """A stage's deadline passed before the server's reply was complete."""


class TLSError(SMTPConnectionError):
    """STARTTLS was required but unavailable, or the handshake or verification failed."""

    #: The RFC 8460 result type when it is known from the error itself (TLS-RPT).
    tls_result: str | None = None


class StartTLSUnavailable(TLSError):
    """TLS is required and the server does not offer STARTTLS, or refuses it."""

    tls_result = "starttls-not-supported"


class InDoubtError(SMTPConnectionError):
    """The data was sent but its final reply never came: the message may have been delivered."""


def reply_error(reply: Reply, stage: Verb) -> ReplyError:
    """Build the right :class:`ReplyError` subclass for a non-2xx/3xx reply."""
    if reply.code >= 500:
        return PermanentReplyError(reply, stage)
    return TransientReplyError(reply, stage)
