"""The control command model, without a run: checks, state, expiry, persistence."""

from __future__ import annotations

import math

import pytest

from bulksend.control.commands import Command, CommandError, ControlState, site_matches

T0 = 1_704_067_200.0


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"action": "explode"}, "unknown command 'explode'"),
        ({"action": "pause", "scope": "galaxy", "target": "x"}, "unknown scope 'galaxy'"),
        ({"action": "pause", "scope": "site", "target": ""}, "needs the site's name"),
        ({"action": "pause", "scope": "campaign", "target": "x"}, "names no site or domain"),
        ({"action": "cancel", "scope": "site", "target": "x"}, "cancel applies to a domain"),
        ({"action": "bounce", "scope": "site", "target": "x"}, "bounce applies to a domain"),
        ({"action": "bounce", "scope": "domain", "target": "x.test", "for": 5}, "takes no --for"),
        ({"action": "rate", "scope": "site", "target": "x", "value": 0}, "positive number"),
        ({"action": "rate", "scope": "domain", "target": "x.test", "value": 5}, "to a site"),
        (
            {"action": "connections", "scope": "site", "target": "x", "value": 2.5},
            "whole number",
        ),
        ({"action": "pause", "scope": "campaign", "for": -1}, "must be positive"),
        ({"action": "resume", "scope": "campaign", "for": 5}, "takes no --for"),
        ({"action": "pause", "scope": "domain", "target": "a..b"}, "domain"),
        ([], "a command is a JSON object"),
    ],
)
def test_impossible_commands_are_refused_in_one_line(request_: object, error: str) -> None:
    with pytest.raises(CommandError, match=error.replace("(", r"\(")):
        Command.from_json(request_)


def test_a_command_travels_as_json_unchanged() -> None:
    command = Command("rate", "site", "mx.example.net", 20.0, 60.0)
    assert Command.from_json(command.to_json()) == command
    assert Command.from_json({"action": "pause", "scope": "domain", "target": "Ex.COM."}) == (
        Command("pause", "domain", "ex.com")
    )


def test_site_selectors() -> None:
    hosts = ("alt1.aspmx.l.google.com", "aspmx.l.google.com")
    name = ",".join(hosts)
    assert site_matches(name, name, hosts)
    assert site_matches("aspmx.l.google.com", name, hosts)
    assert site_matches("google.com", name, hosts)
    assert not site_matches("oogle.com", name, hosts)
    assert not site_matches("yahoo.com", name, hosts)


def test_pauses_rates_and_their_expiry() -> None:
    state = ControlState()
    hosts = ("mx.a.test",)
    assert state.site_paused_until("mx.a.test", hosts) == -math.inf
    said = state.apply(Command("pause", "site", "a.test", duration=30.0), T0)
    assert said == "site a.test paused for 30s"
    assert state.site_paused_until("mx.a.test", hosts) == T0 + 30
    assert state.site_paused_until("mx.b.test", ("mx.b.test",)) == -math.inf
    state.apply(Command("pause"), T0)
    assert state.site_paused_until("mx.b.test", ("mx.b.test",)) == math.inf  # the campaign's
    state.apply(Command("rate", "site", "mx.a.test", 50.0, 10.0), T0)
    assert state.site_override(state.rates, "mx.a.test", hosts) == 50.0
    assert state.next_expiry() == T0 + 10
    assert state.expire(T0 + 10) == ["site mx.a.test: rate back to its configured value"]
    assert state.site_override(state.rates, "mx.a.test", hosts) is None
    assert state.expire(T0 + 30) == ["site a.test resumed (its pause ran out)"]
    assert state.apply(Command("resume"), T0 + 31) == "the campaign resumed"
    with pytest.raises(CommandError, match="the campaign is not paused"):
        state.apply(Command("resume"), T0 + 32)


def test_a_rate_or_cap_set_without_a_duration_goes_back_to_the_configured_one() -> None:
    state = ControlState()
    hosts = ("mx.a.test",)
    state.apply(Command("rate", "site", "a.test", 50.0), T0)
    state.apply(Command("connections", "site", "a.test", 3.0), T0)
    back = Command.from_json(Command("rate", "site", "a.test").to_json())
    assert state.apply(back, T0 + 1) == "site a.test: rate back to its configured value"
    assert state.site_override(state.rates, "mx.a.test", hosts) is None
    assert state.site_override(state.connections, "mx.a.test", hosts) == 3.0  # its own
    assert state.shared()["rates"] == {}
    with pytest.raises(CommandError, match=r"site a\.test: no rate set by ctl"):
        state.apply(back, T0 + 2)
    with pytest.raises(CommandError, match="takes no --for"):
        Command.from_json({"action": "connections", "scope": "site", "target": "a", "for": 5})


def test_putting_a_rate_back_names_the_other_selectors_still_setting_it() -> None:
    state = ControlState()
    site = ("mx1.alpha.test", ("mx1.alpha.test",))
    state.apply(Command("rate", "site", "alpha.test", 50.0), T0)
    state.apply(Command("rate", "site", "mx1.alpha.test", 40.0), T0)
    state.apply(Command("rate", "site", "beta.test", 30.0), T0)
    back = Command("rate", "site", "mx1.alpha.test")
    state.apply(back, T0)
    assert state.also_set(back, [site, ("mx1.beta.test", ("mx1.beta.test",))]) == (
        " (still set as alpha.test: put those back too)"
    )
    assert state.site_override(state.rates, *site) == 50.0
    state.apply(Command("rate", "site", "alpha.test"), T0)
    assert state.also_set(back, [site]) == ""


def test_held_domains() -> None:
    state = ControlState()
    state.apply(Command("pause", "domain", "p.test", duration=5.0), T0)
    state.apply(Command("cancel", "domain", "c.test"), T0)
    state.apply(Command("pause", "domain", "b.test"), T0)
    assert state.apply(Command("bounce", "domain", "b.test"), T0) == (
        "domain b.test bounced: its waiting recipients end bounced"
    )
    assert state.held("p.test", T0 + 4) and not state.held("p.test", T0 + 5)
    assert state.held("c.test", T0 + 10**6)
    assert state.held("b.test", T0 + 10**6) and ("domain", "b.test") not in state.pauses
    assert not state.held("other.test", T0)


def test_pauses_and_cancellations_persist_rates_do_not() -> None:
    state = ControlState()
    state.apply(Command("pause", "site", "a.test"), T0)
    state.apply(Command("pause", "domain", "d.test", duration=60.0), T0)
    state.apply(Command("cancel", "domain", "c.test"), T0)
    state.apply(Command("bounce", "domain", "b.test"), T0)
    state.apply(Command("rate", "site", "a.test", 5.0), T0)
    saved = state.persistent()
    again = ControlState.restore(saved, T0 + 30)
    assert again.pauses == state.pauses
    assert again.cancelled == {"c.test"}
    assert again.bounced == {"b.test"}
    # A state saved before bounce-now existed has no "bounced": none bounced.
    before = {k: v for k, v in saved.items() if k != "bounced"}
    assert ControlState.restore(before, T0).bounced == set()
    assert again.rates == {}
    later = ControlState.restore(saved, T0 + 61)  # the domain's pause ran out meanwhile
    assert later.pauses == {("site", "a.test"): math.inf}
    with pytest.raises(CommandError, match="version 1"):
        ControlState.restore({"version": 99}, T0)
    with pytest.raises(CommandError, match="damaged"):
        ControlState.restore({"version": 1, "pauses": [{}], "cancelled": []}, T0)
