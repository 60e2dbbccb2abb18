"""Owner-only files: replaced atomically, never readable by others, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulksend.files import replace_private


def test_a_replaced_file_is_the_new_text_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)
    replace_private(path, '{"new": 1}')
    assert path.read_text() == '{"new": 1}'
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_replace_raises_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # nothing can replace a directory with a file
    with pytest.raises(IsADirectoryError):
        replace_private(path, "text")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
