"""A server's reply (RFC 5321 §4.2) and the command it answers.

This module imports nothing else from :mod:`bulksend.smtp`: the errors carry a :class:`Reply`
and name their stage with a :class:`Verb`, and the protocol produces both.

A reply is read in two steps. The protocol's scanner only checks the framing of each line
and takes the three-digit code, which is all the client needs to act on a 2xx or a 354; the
text (decoded) and the RFC 3463 enhanced status code are worked out the first time someone
asks for them (a refusal being classified, a delivery being journalled).
"""

from __future__ import annotations

import enum
import re

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


def _parse_text(code: int, raw: tuple[bytes, ...]) -> tuple[str | None, tuple[str, ...]]:
    """The enhanced code and each line's text, from the lines as received (each still
    starting with the code and its separator, line end cut)."""
    texts = [line[4:].decode("utf-8", "replace") for line in raw]
    enhanced, first = _split_enhanced(code, texts[0])
    if enhanced is not None:
        texts[0] = first
        for i in range(1, len(texts)):
            again, rest = _split_enhanced(code, texts[i])
            if again == enhanced:
                texts[i] = rest
    return enhanced, tuple(texts)


class Reply:
    """One complete server reply (RFC 5321 §4.2), possibly multi-line; immutable.

    ``enhanced_code`` is the RFC 3463 status code ("5.1.1") when the first line carries one.
    ``lines`` holds the text of each line with the code (and enhanced code) removed.
    """

    __slots__ = ("_enhanced", "_lines", "_raw", "code")

    code: int
    _raw: tuple[bytes, ...] | None
    _enhanced: str | None
    _lines: tuple[str, ...]

    def __init__(self, code: int, enhanced_code: str | None, lines: tuple[str, ...]) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "_raw", None)
        object.__setattr__(self, "_enhanced", enhanced_code)
        object.__setattr__(self, "_lines", lines)

    @classmethod
    def from_wire(cls, code: int, raw: tuple[bytes, ...]) -> Reply:
        """A reply whose text is parsed from ``raw`` (its lines as received, each still
        starting with the code and separator) the first time it is asked for."""
        reply = object.__new__(cls)
        object.__setattr__(reply, "code", code)
        object.__setattr__(reply, "_raw", raw)
        return reply

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Reply is immutable (cannot set {name!r})")

    def _parsed(self) -> None:
        raw = self._raw
        if raw is not None:
            enhanced, lines = _parse_text(self.code, raw)
            object.__setattr__(self, "_enhanced", enhanced)
            object.__setattr__(self, "_lines", lines)
            object.__setattr__(self, "_raw", None)

    @property
    def enhanced_code(self) -> str | None:
        self._parsed()
        return self._enhanced

    @property
    def lines(self) -> tuple[str, ...]:
        self._parsed()
        return self._lines

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_success(self) -> bool:
        """A 2xx: the command (or the message, at the final dot) was accepted."""
        return 200 <= self.code < 300

    def __reduce__(self) -> tuple[type[Reply], tuple[int, str | None, tuple[str, ...]]]:
        return Reply, self._key()

    def _key(self) -> tuple[int, str | None, tuple[str, ...]]:
        return self.code, self.enhanced_code, self.lines

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Reply({self.code!r}, {self.enhanced_code!r}, {self.lines!r})"

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced_code:
            parts.append(self.enhanced_code)
        if self.lines:
            parts.append(" ".join(self.lines))
        return " ".join(parts)
