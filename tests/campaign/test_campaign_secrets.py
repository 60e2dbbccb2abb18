"""Secrets in the campaign file: from a file or the environment, warned when exposed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import CampaignDir

DKIM = """
[[dkim]]
domain = "example.org"
selector = "s1"
algorithm = "ed25519-sha256"
key_file = "dkim.pem"
"""


def test_key_file_readable_by_others_is_warned(campaign_dir: CampaignDir, ed25519_pem: str) -> None:
    key = campaign_dir.write("dkim.pem", ed25519_pem)
    os.chmod(key, 0o644)
    exposed = campaign_dir.campaign(extra=DKIM)
    assert any("readable by others" in w and "chmod 600" in w for w in exposed.warnings)
    os.chmod(key, 0o600)
    private = campaign_dir.campaign(extra=DKIM)
    assert not any("readable by others" in w for w in private.warnings)


def test_secrets_never_show_in_the_config_repr(campaign_dir: CampaignDir, ed25519_pem: str) -> None:
    key = campaign_dir.write("dkim.pem", ed25519_pem)
    os.chmod(key, 0o600)
    smarthost = """
[routing.smarthost]
host = "127.0.0.1"
port = 2525
username = "bulk"
password_env = "RELAY_PASSWORD"
"""
    campaign = campaign_dir.campaign(
        extra=DKIM + smarthost, environ={"RELAY_PASSWORD": "hunter2-relay"}
    )
    text = repr(campaign.config)
    secret_line = ed25519_pem.splitlines()[1]
    assert "hunter2-relay" not in text
    assert secret_line not in text
    assert campaign.config.routing.smarthost is not None
    password = campaign.config.routing.smarthost.password
    assert password is not None
    assert password.reveal() == "hunter2-relay"
