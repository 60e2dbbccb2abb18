"""Sans-IO SMTP client protocol (RFC 5321, with RFC 2920 PIPELINING, RFC 3207 STARTTLS).

Placeholder: being written. ``Reply`` below is final.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete server reply (RFC 5321 §4.2), possibly multi-line.

    ``enhanced_code`` is the RFC 3463 status code ("5.1.1") when the first line carries one.
    ``lines`` holds the text of each line with the code (and enhanced code) removed.
    """

    code: int
    enhanced_code: str | None
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced_code:
            parts.append(self.enhanced_code)
        if self.lines:
            parts.append(" ".join(self.lines))
        return " ".join(parts)
