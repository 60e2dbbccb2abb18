"""``send --throttle``: a store URL, never with its password in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bulksend.cli import main as cli
from bulksend.testing.scenario import write_campaign
from bulksend.throttles.location import parse_store_url


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


def test_the_password_comes_from_a_file_named_in_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\nignored second line\n")
    location = parse_store_url(f"redis://127.0.0.1:6379/0?password_file={secret}")
    assert location.url == "redis://127.0.0.1:6379/0"  # the parameter is ours, not the server's
    assert location.password({"BULKSEND_THROTTLE_PASSWORD": "from-env"}) == "s3cret"
    assert parse_store_url("redis://h:1/0").password({"BULKSEND_THROTTLE_PASSWORD": "e"}) == "e"


def test_an_unreadable_password_file_is_one_line(tmp_path: Path) -> None:
    toml = write_campaign(tmp_path, ["a@example.test"])
    url = f"redis://127.0.0.1:1/0?password_file={tmp_path / 'missing'}"
    result = CliRunner().invoke(cli, ["send", str(toml), "--throttle", url])
    assert result.exit_code == 1
    assert "cannot read the throttle store's password file" in result.output
    assert "Traceback" not in result.output
