"""``send --throttle``: a store URL, never with its password in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.testing.scenario import write_campaign


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "BULKSEND_THROTTLE_PASSWORD"),
        ("http://127.0.0.1:6379/0", "redis://host:port/db"),
    ],
)
def test_a_bad_throttle_url_is_refused_without_echoing_a_password(
    tmp_path: Path, url: str, message: str
) -> None:
    toml = write_campaign(tmp_path, ["a@example.test"])
    result = CliRunner().invoke(cli, ["send", str(toml), "--throttle", url])
    assert result.exit_code == 2
    assert message in result.output
    assert "hunter2" not in result.output
