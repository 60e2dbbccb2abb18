"""Templates checked against the recipients file before anything is sent, and the breaker
that tells a template problem (most renders fail) from a few bad rows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from bulksend.campaign import Recipient, RenderError
from bulksend.campaign.render import RenderBreaker
from bulksend.errors import ConfigError

if TYPE_CHECKING:
    from conftest import CampaignDir


def _rows(count: int, *, offer: str = "tulips") -> str:
    lines = ["email,first_name,last_name,offer,token"]
    lines += [f"user{i}@example.com,Name{i},Last,{offer},t{i}" for i in range(count)]
    return "\n".join(lines) + "\n"


def test_a_fitting_campaign_passes(campaign_dir: CampaignDir) -> None:
    campaign_dir.campaign().check_recipients()


@pytest.mark.parametrize(
    ("name", "old", "new", "where"),
    [
        ("body.txt", "{{ offer }}", "{{ ofer }}", "body.txt"),
        ("body.html", "{{ offer }}", "{{ ofer }}", "body.html"),
        ("campaign.toml", "Hello {{ first_name }}", "Hello {{ ofer }}", "message.subject"),
    ],
)
def test_a_field_missing_from_the_list_is_refused_naming_template_field_and_columns(
    campaign_dir: CampaignDir, name: str, old: str, new: str, where: str
) -> None:
    if name == "campaign.toml":
        campaign = campaign_dir.campaign(campaign_dir.base.replace(old, new))
    else:
        path = campaign_dir.root / name
        path.write_text(path.read_text().replace(old, new))
        campaign = campaign_dir.campaign()
    with pytest.raises(ConfigError) as caught:
        campaign.check_recipients()
    message = str(caught.value)
    assert "\n" not in message
    assert where in message
    assert "'ofer'" in message
    assert "columns: email, first_name, last_name, offer, token" in message
    assert "default" in message


@pytest.mark.parametrize(
    "body",
    [
        "Hi {{ nickname | default(first_name) }}",
        "Hi {{ nickname|d('you') }}",
        "{% if nickname is defined %}Hi {{ nickname }}{% endif %}",
        "{% set greeting = 'Hi' %}{{ greeting }} {% for i in range(2) %}{{ i }}{% endfor %}",
        "{{ email }} {{ campaign_id }} {{ message_id }} {{ unsubscribe_url }}",
    ],
)
def test_fields_with_a_fallback_or_provided_by_bulksend_are_not_required(
    campaign_dir: CampaignDir, body: str
) -> None:
    campaign_dir.write("body.txt", body)
    campaign_dir.campaign().check_recipients()


def test_jsonl_columns_are_the_keys_of_the_first_rows(campaign_dir: CampaignDir) -> None:
    base = campaign_dir.base.replace('"recipients.csv"', '"recipients.jsonl"')
    rows = [
        {"email": f"u{i}@example.com", "first_name": "A", "last_name": "B", "token": "t"}
        for i in range(30)
    ]
    rows[7]["offer"] = "tulips"  # one row has it: a column of the list
    campaign_dir.write("recipients.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    campaign_dir.write("body.txt", "{{ offer | default('') }}")
    campaign_dir.write("body.html", "{{ offer | default('') }}")
    campaign_dir.campaign(base).check_recipients()

    campaign_dir.write("body.txt", "{{ offer }} {{ rebate }}")
    with pytest.raises(ConfigError, match=r"body\.txt: the template reads 'rebate'"):
        campaign_dir.campaign(base).check_recipients()


def test_a_sample_that_does_not_render_is_refused(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("recipients.csv", _rows(30, offer="none"))
    campaign_dir.write("body.txt", "{{ 100 // (offer | int) }}")  # every row divides by zero
    with pytest.raises(ConfigError) as caught:
        campaign_dir.campaign().check_recipients()
    message = str(caught.value)
    assert "recipients.csv: renders fail systematically: 30 of the first 30" in message
    assert "ZeroDivisionError" in message
    assert "body.txt" in message


def test_one_bad_row_in_the_sample_is_left_to_the_run(campaign_dir: CampaignDir) -> None:
    rows = _rows(30).replace("user4@example.com,Name4,Last,tulips", "user4@example.com,N,L,0")
    campaign_dir.write("recipients.csv", rows)
    campaign_dir.write("body.txt", "{{ 100 // (offer | int(1)) }}")
    campaign = campaign_dir.campaign()
    campaign.check_recipients()
    fields = {"email": "user4@example.com", "offer": "0", "token": "t", "first_name": "N"}
    fields["last_name"] = "L"
    with pytest.raises(RenderError, match=r"body\.txt: template failed: ZeroDivisionError"):
        campaign.render(Recipient("user4@example.com", fields, line=6))


def test_render_errors_name_the_template_that_failed(campaign_dir: CampaignDir) -> None:
    campaign = campaign_dir.campaign(extra='[message.headers]\nX-Offer = "{{ rebate }}"\n')
    fields = {"email": "a@example.com", "first_name": "A", "last_name": "B", "offer": "o"}
    fields["token"] = "t"
    with pytest.raises(RenderError) as caught:
        campaign.render(Recipient("a@example.com", fields, line=2))
    assert caught.value.reason.startswith("message.headers.X-Offer: 'rebate' is undefined")


def _error() -> RenderError:
    return RenderError("a@example.com", "body.txt: 'x' is undefined")


def test_breaker_trips_on_more_than_a_tenth_of_the_first_hundred() -> None:
    breaker = RenderBreaker()
    for i in range(100):
        if i % 10 == 0:
            assert breaker.failed(_error()) is None  # 10 of 100: a few bad rows
        else:
            breaker.passed()
    assert breaker.verdict() is None
    assert breaker.failed(_error()) is None  # after the first 100 only streaks count
    early = RenderBreaker()
    for _ in range(10):
        assert early.failed(_error()) is None
        early.passed()
    stop = early.failed(_error())
    assert stop == (
        "renders fail systematically: 11 of the first 21 messages could not be rendered "
        "(last: body.txt: 'x' is undefined)"
    )


def test_breaker_trips_on_a_streak_later_in_the_list() -> None:
    breaker = RenderBreaker()
    for _ in range(500):
        breaker.passed()
    for _ in range(19):
        assert breaker.failed(_error()) is None
    breaker.passed()  # a success ends the streak
    for _ in range(19):
        assert breaker.failed(_error()) is None
    stop = breaker.failed(_error())
    assert stop is not None and "20 messages in a row" in stop


def test_breaker_judges_a_short_list_whole() -> None:
    breaker = RenderBreaker()
    for _ in range(4):
        breaker.passed()
    breaker.failed(_error())
    assert breaker.verdict() is not None  # 1 of 5
    long = RenderBreaker()
    for _ in range(19):
        long.passed()
    long.failed(_error())
    assert long.verdict() is None  # 1 of 20


def test_check_of_an_empty_list_passes(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("recipients.csv", "email,first_name\n")
    campaign_dir.campaign().check_recipients()
