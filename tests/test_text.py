"""printable(): remote text made safe for terminals, spreadsheets and exports."""

from __future__ import annotations

import pytest

from bulksend.text import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: sets the window title
        ("\x1b[2J", "\\x1b[2J"),  # CSI: clears the screen
        ("\x9b31m", "\\x9b31m"),  # C1 CSI on its own
        ("a\x7fb", "a\\x7fb"),  # DEL
        ("\u202eevil", "\\u202eevil"),  # bidi override
        ("one\ntwo\rthree\tfour", "one\\ntwo\\rthree\\tfour"),
        ("line\u2028sep", "line\\u2028sep"),
        ("bad byte \udce7", "bad byte \\udce7"),  # a surrogate from surrogateescape
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_control_and_format_characters_are_escaped(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown  # once escaped, it stays as it is


def test_printable_text_is_unchanged() -> None:
    text = "550 5.1.1 <müller@exämple.de>: Benutzer unbekannt; 用户不存在; \\ backslash"
    assert printable(text) is text
