"""A server's reply (RFC 5321 §4.2) and the command it answers.

This module imports nothing else from :mod:`bulksend.smtp`: the errors carry a :class:`Reply`
and name their stage with a :class:`Verb`, and the protocol produces both.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Reply", "Verb"]


class Verb(enum.StrEnum):
    """An SMTP command (or the greeting, or the message data), as errors name their stage:
    a ``str``, so ``error.stage == Verb.RCPT`` holds whether a stage was given as either."""

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "AUTH response"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BODY = "end of data"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: +|$)")


def _split_enhanced(code: int, text: str) -> tuple[str | None, str]:
    match = _ENHANCED.match(text)
    # RFC 3463 §2: the class digit must agree with the reply code's first digit.
    if match is None or int(match.group(1)) != code // 100:
        return None, text
    return f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}", text[match.end() :]


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete server reply (RFC 5321 §4.2), possibly multi-line.

    ``enhanced_code`` is the RFC 3463 status code ("5.1.1") when the first line carries one.
    ``lines`` holds the text of each line with the code (and enhanced code) removed.
    """

    code: int
    enhanced_code: str | None
    lines: tuple[str, ...]

    @classmethod
    def from_wire(cls, code: int, raw: list[bytes]) -> Reply:
        """The reply made of ``raw``, its lines' text as received (code and separator cut)."""
        texts = [line.decode("utf-8", "replace") for line in raw]
        enhanced, first = _split_enhanced(code, texts[0])
        if enhanced is not None:
            texts[0] = first
            for i in range(1, len(texts)):
                again, rest = _split_enhanced(code, texts[i])
                if again == enhanced:
                    texts[i] = rest
        return cls(code, enhanced, tuple(texts))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_success(self) -> bool:
        """A 2xx: the command (or the message, at the final dot) was accepted."""
        return 200 <= self.code < 300

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced_code:
            parts.append(self.enhanced_code)
        if self.lines:
            parts.append(" ".join(self.lines))
        return " ".join(parts)
