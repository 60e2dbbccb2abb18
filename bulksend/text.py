"""Text rules for the whole project: what a one-line value may hold; remote text made safe.

:data:`CONTROL` is the one rule for values that go out on one line (a header, an address, a
host, a file name). It lives in this module, which imports nothing of bulksend, so that every
layer can use it, the sans-IO SMTP protocol included.

:func:`printable` is for text that others wrote (SMTP reply text, DNS records), shown or
exported. Every mail server and DNS zone on the internet chooses such text. Written raw to a
terminal its control characters act: ESC starts escape sequences (OSC sets the window title,
CSI clears the screen), BEL rings, U+009B is a CSI on its own (C1), and bidi controls such as
U+202E reorder what the reader sees. JSON escapes only C0; CSV escapes nothing. So every
place that displays or exports remote text passes it through :func:`printable` first.

:func:`storable` is remote text as a database keeps it.

:func:`write_table` lays rows out as aligned columns for the CLI's reports.

:func:`first_line` is an exception's message as a one-line error keeps it (a database
driver's messages run over several lines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TextIO

__all__ = ["CONTROL", "first_line", "printable", "storable", "write_table"]

#: The one control-character rule: C0, DEL, C1, the Unicode line and paragraph separators,
#: and lone surrogates (text that cannot be encoded). None may appear in a one-line value: a
#: header, an address, a file name, a host. (Escaping remote text for display is another job:
#: :func:`printable`.)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character written as its Python escape.

    Escapes are ``\\n``, ``\\r``, ``\\t``, else ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.
    Non-printable means Unicode's "Other" and "Separator" categories except the ASCII space
    (:meth:`str.isprintable`): C0 controls and DEL (``\\x1b``, ``\\x7f``), C1 controls
    (``\\x9b``), format characters such as bidi overrides (``\\u202e``), line and paragraph
    separators, lone surrogates and unassigned code points. Printable text, accented and
    non-Latin letters included, comes back unchanged.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def storable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with no lone surrogate and no NUL: neither
    SQLite nor PostgreSQL can store those (``?`` stands for each)."""
    return text[:limit].encode("utf-8", "replace").decode("utf-8").replace("\0", "?")


def write_table(rows: Sequence[Sequence[str]], out: TextIO, *, indent: str = "  ") -> None:
    """Write rows as a plain-text table: columns aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.rjust(w) if i and c[:1].isdigit() else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write(indent + "  ".join(cells).rstrip() + "\n")


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name when it has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
