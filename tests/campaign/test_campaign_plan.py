"""The compiled message plan: the fast path's wire bytes are the Jinja2 path's, byte for byte."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.campaign import Campaign, Recipient, RenderError
from bulksend.cli import main as cli
from bulksend.config import load_campaign
from bulksend.testing.scenario import addresses, write_campaign

NOW = 1_700_000_000.0

TOML = """
[campaign]
id = "plan-test"
max_message_size = {size}

[message]
from = "news@example.org"
from_name = "Example News"
subject = {subject}
to_name = {to_name}
text = "body.txt"
html = "body.html"

[message.headers]
X-Offer = {offer}

[envelope]
sender = "bounces@example.org"

[recipients]
file = "recipients.csv"

[unsubscribe]
url = "https://example.org/u?c={{{{ campaign_id }}}}&e={{{{ email | urlencode }}}}"
"""

# Merge values: ASCII, non-ASCII, QP-sensitive ('=', '.', spaces and tabs at line ends),
# HTML specials, and line breaks and control characters (refused in headers, kept in bodies).
VALUE_CHARS = st.sampled_from(
    [*list("aZ09 .=\t<&>\"'-_/?%{}"), "\r", "\n", "\r\n", "\x00", "\x7f", "é", "€", "😀", "\u2028"]
)
VALUES = st.one_of(
    st.just(""),
    st.lists(VALUE_CHARS, max_size=12).map("".join),
    st.text(max_size=20),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "= ", ". ", "<&>"]), st.integers(0, 120)
    ),
    st.integers(-5, 10**6),
)
SLOTS = st.sampled_from(
    [
        "{{ a }}",
        "{{ b }}",
        "{{a}}",
        "{{ a | urlencode }}",
        "{{ b | upper }}",
        "{{ a | trim | lower }}",
        "{{ c | default('d=f<') }}",
        "{{ c | d('x') }}",
        "{{ b | e }}",
        "{{ 'k&v' }}",
        "{{- a -}}",
        "{{ email }}",
        "{{ message_id }}",
    ]
)
# Template text: no '{' (it would start Jinja2 syntax next to a slot).
TEXT_CHARS = st.sampled_from(
    [*list("ab .=\t<&>}"), "\n", "\r\n", "\r", " \n", ".\n", "=\n", "é", "€", "😀", "x" * 80]
)
TEXT = st.lists(TEXT_CHARS, max_size=10).map("".join)
HEADER_TEXT = st.lists(st.sampled_from([*list("ab .=<&>}é€"), "x" * 40]), max_size=6).map("".join)
LOGIC = st.sampled_from(["{% if a %}A{% endif %}", "{{ a | replace('a', 'b') }}", "{{ a.b }}"])
UNDEFINED = st.just("{{ nope }}")


@st.composite
def loops(draw: st.DrawFn) -> str:
    """A ``range`` loop over text, slots and its variable (unrolled by the plan)."""
    body = draw(st.lists(st.one_of(TEXT, SLOTS, st.just("{{ i }}")), max_size=4))
    end = draw(st.sampled_from(["{% endfor %}", "{%- endfor %}", "{% endfor -%}"]))
    count = draw(st.sampled_from(["3", "0", "1, 4", "5, 0, -2"]))
    return f"{{% for i in range({count}) %}}" + "".join(body) + end


def templates(logic: bool) -> st.SearchStrategy[str]:
    parts = [TEXT, SLOTS, loops(), TEXT, SLOTS] + ([LOGIC, UNDEFINED] if logic else [])
    return st.lists(st.one_of(*parts), max_size=8).map("".join)


def headers(logic: bool) -> st.SearchStrategy[str]:
    parts = [HEADER_TEXT, SLOTS] + ([LOGIC] if logic else [])
    return st.lists(st.one_of(*parts), max_size=5).map("".join)


def outcome(campaign: Campaign, recipient: Recipient) -> object:
    try:
        m = campaign.render(recipient, now=NOW)
    except RenderError as exc:
        return ("refused", exc.reason)
    return (m.data, m.envelope_sender, m.recipient, m.needs_8bitmime, m.needs_smtputf8)


def pair(
    root: Path, subject: str, to_name: str, offer: str, text: str, html: str, size: int
) -> tuple[Campaign, Campaign]:
    (root / "body.txt").write_bytes(text.encode())
    (root / "body.html").write_bytes(html.encode())
    (root / "recipients.csv").write_text("email\n")
    toml = TOML.format(
        size=size,
        subject=json.dumps(subject, ensure_ascii=False),
        to_name=json.dumps(to_name, ensure_ascii=False),
        offer=json.dumps(offer, ensure_ascii=False),
    )
    (root / "campaign.toml").write_text(toml)
    config = load_campaign(root / "campaign.toml", {})
    return Campaign(config), Campaign(config, fast_path=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=headers(logic=True),
    to_name=headers(logic=False),
    offer=headers(logic=False),
    text=templates(logic=False),
    html=templates(logic=True),
    fields=st.fixed_dictionaries(
        {"a": VALUES, "b": VALUES}, optional={"c": VALUES, "range": st.just("r")}
    ),
    size=st.sampled_from([10_000_000, 400, 2_000]),
)
def test_fast_path_bytes_equal_jinja2_bytes(
    subject: str,
    to_name: str,
    offer: str,
    text: str,
    html: str,
    fields: dict[str, object],
    size: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fast, jinja = pair(Path(tmp), subject, to_name, offer, text, html, size)
    engines = dict(fast.engines())
    assert engines.get("message.to_name", "fast path") == "fast path"  # it has no logic
    assert engines.get(str(Path(tmp) / "body.txt"), "fast path") == "fast path"
    assert all(engine == "Jinja2" for _, engine in jinja.engines())
    for address in ("alice@example.com", "ålice@exämple.com"):
        person = Recipient(address=address, fields=fields, line=7, needs_smtputf8=True)
        assert outcome(fast, person) == outcome(jinja, person)


CASES = {
    # Jinja2 stops at the piece that passes max_message_size, before the undefined name.
    "limit before an undefined name": ("{{ a }}{{ nope }}", {"a": "x" * 600}, 400),
    "undefined name before the limit": ("{{ nope }}{{ a }}", {"a": "x" * 600}, 400),
    "a merge field named range": ("{% for i in range(2) %}{{ i }}{% endfor %}", {"range": 1}, 9**9),
    "a lone surrogate": ("line\n{{ a }}\nend\n", {"a": "\ud800"}, 10**6),
    "the last line prints nothing": ("a\n{{ a }}", {"a": ""}, 10**6),
    "a CR before a slot's LF": ("x\r{{ a }}y\n", {"a": "\n"}, 10**6),
    "a value ending the line with spaces": ("x{{ a }}\nz", {"a": "  \t"}, 10**6),
    "a lone dot": ("x\n{{ a }}\n.", {"a": "."}, 10**6),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_path_edges_equal_jinja2(case: str, tmp_path: Path) -> None:
    text, fields, size = CASES[case]
    fast, jinja = pair(tmp_path, "Hi", "", "o", text, "<p>{{ b | d('') }}</p>", size)
    assert dict(fast.engines())[str(tmp_path / "body.txt")] == "fast path"
    person = Recipient(address="alice@example.com", fields=fields, line=7)
    assert outcome(fast, person) == outcome(jinja, person)


def test_limit_is_reported_before_a_later_undefined_name(tmp_path: Path) -> None:
    fast, _ = pair(tmp_path, "Hi", "", "o", "{{ a }}{{ nope }}", "<p></p>", 400)
    person = Recipient(address="alice@example.com", fields={"a": "x" * 600}, line=7)
    assert outcome(fast, person) == (
        "refused",
        f"{tmp_path / 'body.txt'}: the template's output exceeds max_message_size (400 bytes); "
        "check the template, or raise [campaign] max_message_size",
    )


def test_validate_reports_each_templates_engine(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, addresses(["a.test"], 3))
    html = (tmp_path / "body.html").read_text()
    (tmp_path / "body.html").write_text(html + "{% if code %}<p>{{ code }}</p>{% endif %}\n")
    result = CliRunner().invoke(cli, ["validate", str(path), "--no-dns"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for key in ("message.subject", "message.to_name", "unsubscribe.url"):
        assert f"ok: template {key}: fast path" in lines
    assert f"ok: template {tmp_path / 'body.txt'}: fast path" in lines  # its loop is unrolled
    assert f"ok: template {tmp_path / 'body.html'}: Jinja2" in lines
