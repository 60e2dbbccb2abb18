"""MTA-STS parsing and matching (RFC 8461 §3.1, §3.2, §4.1): tables of inputs and results."""

from __future__ import annotations

import pytest

from bulksend.tlspolicy.mtasts import PolicyError, StsMode, mx_matches, parse_policy, parse_txt


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1; id=abc; ext=1"], "abc"),
        (["some other record", "v=STSv1; id=abc"], "abc"),
        ([], None),
        (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # several: no policy
        (["v=STSv1;"], None),  # no id
        (["v=STSv1; id=has-dash"], None),  # id is letters and digits
        (["v=STSv1; id=" + "a" * 33], None),  # at most 32
        (["v=STSv2; id=abc"], None),
        (["v=STSv1; id"], None),
    ],
)
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


GOOD = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "max_age: 86400\r\n"
)


def test_policy_file_is_parsed() -> None:
    policy = parse_policy(GOOD, domain="example.com", policy_id="1", fetched=100.0)
    assert policy.mode is StsMode.ENFORCE
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.max_age == 86400
    assert policy.expires == 86500.0
    assert policy.fresh(86499.0) and not policy.fresh(86500.0)
    # LF line ends and unknown keys are accepted (§3.2).
    lf = GOOD.replace("\r\n", "\n") + "extension: yes\n"
    assert parse_policy(lf, domain="example.com", policy_id="1", fetched=0).mx == policy.mx


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("STSv1", "STSv2"),
        GOOD.replace("mode: enforce", "mode: strict"),
        GOOD.replace("max_age: 86400", "max_age: 31557601"),
        GOOD.replace("max_age: 86400", "max_age: -1"),
        GOOD.replace("max_age: 86400\r\n", ""),
        GOOD + "mode: testing\r\n",  # twice
        "version: STSv1\r\nmode: enforce\r\nmax_age: 10\r\n",  # enforce without mx
        GOOD + "garbage line\r\n",
        GOOD.replace("mx: mail.example.com", "mx: mail..example.com"),
        GOOD.replace("mx: mail.example.com", "mx: *.*.example.com"),
        "",
    ],
)
def test_invalid_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text, domain="example.com", policy_id="1", fetched=0)


def test_mode_none_needs_no_mx() -> None:
    text = "version: STSv1\nmode: none\nmax_age: 100\n"
    assert parse_policy(text, domain="d.test", policy_id="1", fetched=0).mode is StsMode.NONE


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.com.", True),
        ("mail.example.com", "mx.example.com", False),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "mx1.example.com.evil.test", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected
