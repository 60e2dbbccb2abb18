"""Send windows without a run: ``[schedule]`` parsed, and when a recipient may be sent."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest

from bulksend.config import load_campaign
from bulksend.config.schedule import ScheduleConfig, parse_window
from bulksend.errors import ConfigError
from bulksend.journal import Category, Due, Kind, Status
from bulksend.schedule.windows import OUTSIDE, SendWindows
from bulksend.testing.scenario import campaign_toml, write_campaign

BERLIN = "Europe/Berlin"


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def windows(**settings: object) -> SendWindows:
    return SendWindows(ScheduleConfig(**settings))  # type: ignore[arg-type]


def test_a_daily_window_in_a_time_zone() -> None:
    w = windows(timezone=BERLIN, windows=(parse_window("08:00-20:00"),))
    # 2026-12-03 is winter: Berlin is UTC+1.
    assert w.opens_at(at("2026-12-03T10:00:00+00:00")) == at("2026-12-03T10:00:00+00:00")
    assert w.opens_at(at("2026-12-03T19:30:00+00:00")) == at("2026-12-04T07:00:00+00:00")
    assert w.opens_at(at("2026-12-03T06:59:59+00:00")) == at("2026-12-03T07:00:00+00:00")
    assert w.opens_at(at("2026-12-03T18:59:59+00:00")) == at("2026-12-03T18:59:59+00:00")
    # Summer: UTC+2, the same local hours.
    assert w.opens_at(at("2026-07-01T05:00:00+00:00")) == at("2026-07-01T06:00:00+00:00")


def test_windows_past_midnight_and_several_a_day() -> None:
    w = windows(windows=(parse_window("22:00-02:00"), parse_window("09:00-10:00")))
    assert w.opens_at(at("2026-12-03T23:00:00+00:00")) == at("2026-12-03T23:00:00+00:00")
    assert w.opens_at(at("2026-12-04T01:00:00+00:00")) == at("2026-12-04T01:00:00+00:00")
    assert w.opens_at(at("2026-12-04T02:00:00+00:00")) == at("2026-12-04T09:00:00+00:00")
    assert w.opens_at(at("2026-12-04T10:00:00+00:00")) == at("2026-12-04T22:00:00+00:00")


def test_start_at_waits_and_stop_at_ends() -> None:
    start, stop = at("2026-12-04T08:00:00+00:00"), at("2026-12-05T08:00:00+00:00")
    w = windows(start_at=start, stop_at=stop, windows=(parse_window("07:00-21:00"),))
    assert w.opens_at(start - 86_400) == start
    assert w.opens_at(at("2026-12-04T21:00:00+00:00")) == at("2026-12-05T07:00:00+00:00")
    assert w.opens_at(stop) == math.inf
    # The next window opens after stop_at: never again.
    assert (
        windows(stop_at=stop, windows=(parse_window("09:00-10:00"),)).opens_at(
            at("2026-12-04T11:00:00+00:00")
        )
        == math.inf
    )


def _due(data: dict[str, str] | None) -> Due:
    return Due(1, "a@x.test", "x.test", data, Status.PENDING, 0, 0)


def test_a_recipient_outside_its_own_window_is_held_back_not_attempted() -> None:
    w = windows(windows=(parse_window("08:00-20:00"),), timezone="UTC", timezone_column="tz")
    now = at("2026-12-03T12:00:00+00:00")
    assert w.hold(_due({"tz": "UTC"}), now) is None
    assert w.hold(_due({}), now) is None  # no zone of its own: the campaign's
    assert w.hold(_due({"tz": "Not/AZone"}), now) is None  # unknown: the campaign's
    tokyo = w.hold(_due({"tz": "Asia/Tokyo"}), now)  # 21:00 there
    assert tokyo is not None
    assert (tokyo.kind, tokyo.text, tokyo.is_attempt) == (Kind.THROTTLED, OUTSIDE, False)
    assert tokyo.retry_after == at("2026-12-04T08:00:00+09:00") - now
    stopped = windows(stop_at=now).hold(_due(None), now)
    assert stopped is not None
    assert (stopped.kind, stopped.category, stopped.is_attempt) == (
        Kind.STOPPED,
        Category.SCHEDULE,
        False,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('timezone = "Mars/Olympus"', "schedule.timezone: unknown time zone 'Mars/Olympus'"),
        ('windows = ["8-20"]', "schedule.windows: '8-20' is not a window"),
        ('windows = ["25:00-26:00"]', "no such time of day"),
        ('windows = ["08:00-08:00"]', "is empty"),
        ('start_at = "soon"', "schedule.start_at: 'soon' is not a date and time"),
        (
            "start_at = 2026-12-04T08:00:00Z\nstop_at = 2026-12-04T07:00:00Z",
            "schedule.stop_at: it is not after start_at",
        ),
        ("windw = 1", "schedule.windw: unknown key"),
    ],
)
def test_schedule_mistakes_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = write_campaign(tmp_path, ["a@x.test"], toml=campaign_toml(extra=f"[schedule]\n{table}"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as caught:
        load_campaign(path, {})
    assert "\n" not in str(caught.value)


def test_schedule_is_read(tmp_path: Path) -> None:
    toml = campaign_toml(
        extra='[schedule]\nstart_at = 2026-12-04T08:00:00\ntimezone = "Europe/Berlin"\n'
        'windows = ["08:00-20:00"]\ntimezone_column = "tz"\n'
    )
    config = load_campaign(write_campaign(tmp_path, ["a@x.test"], toml=toml), {}).schedule
    assert config.start_at == at("2026-12-04T08:00:00+01:00")  # local time in the zone
    assert (config.windows, config.timezone_column, config.stop_at) == (
        ((8 * 3600, 20 * 3600),),
        "tz",
        None,
    )
