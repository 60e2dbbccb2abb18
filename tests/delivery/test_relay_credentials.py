"""A relay's AUTH credentials: a typed value holding the password as a Secret, on every route."""

from __future__ import annotations

import pickle
from pathlib import Path

import trio

from bulksend.campaign import Campaign
from bulksend.config import Secret
from bulksend.delivery.run import RunOptions, routing_config
from bulksend.routing import Credentials, Router
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign

PASSWORD = "relay-s3cret-pw"

SMARTHOST = """
[routing.smarthost]
host = "127.0.0.2"
port = 2525
username = "bulk"
password_env = "RELAY_PASSWORD"
"""


async def test_smarthost_credentials_ride_on_routes_and_never_show_the_password(
    tmp_path: Path,
) -> None:
    toml = write_campaign(
        tmp_path, addresses(["far.example"], 1), toml=campaign_toml(extra=SMARTHOST)
    )
    campaign = Campaign.load(toml, {"RELAY_PASSWORD": PASSWORD})
    config = routing_config(campaign.config, RunOptions(journal=tmp_path / "journal.sqlite3"))
    with trio.fail_after(10):
        route = await Router(config).route("far.example")  # a smarthost needs no DNS
    assert route.auth == Credentials("bulk", Secret(PASSWORD))
    assert route.auth.password.reveal() == PASSWORD
    for shown in (repr(route), str(route.auth), repr(config)):
        assert PASSWORD not in shown
    # Worker processes receive routes by pickling: the credentials survive, still hidden.
    assert pickle.loads(pickle.dumps(route)).auth == route.auth
