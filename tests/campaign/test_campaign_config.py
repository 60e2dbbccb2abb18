"""Campaign file loading: the documented example loads; every mistake names key and file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme

from bulksend.campaign import Campaign
from bulksend.config import (
    BackoffRule,
    DkimAlgorithm,
    RouteOverride,
    Secret,
    SendingPolicy,
    SiteLimits,
    TlsMode,
    load_campaign,
    parse_duration,
    parse_rate,
)
from bulksend.delivery.scheduler import SitePolicy
from bulksend.errors import ConfigError
from bulksend.routing import Site

if TYPE_CHECKING:
    from conftest import CampaignDir

DOCS = Path(__file__).resolve().parents[2] / "docs" / "campaign.md"


def docs_example() -> str:
    match = re.search(r"```toml\n(.*?)```", DOCS.read_text("utf-8"), re.S)
    assert match is not None
    return match.group(1)


@pytest.fixture
def example(campaign_dir: CampaignDir, rsa_pem: str, ed25519_pem: str, ca: trustme.CA) -> Path:
    for name in ("brochure.pdf", "terms.txt", "suppressed.txt"):
        campaign_dir.write(name, "x\n")
    campaign_dir.write("dkim-rsa.pem", rsa_pem)
    ca.cert_pem.write_to_path(str(campaign_dir.root / "internal-ca.pem"))
    return campaign_dir.toml(docs_example())


def test_documented_example_loads(example: Path, ed25519_pem: str) -> None:
    environ = {
        "BULKSEND_DKIM_ED25519": ed25519_pem,
        "BULKSEND_RELAY_PASSWORD": "hunter2",
        "BULKSEND_UNSUBSCRIBE_KEY": "a long random key",
    }
    config = load_campaign(example, environ)
    root = example.parent
    assert config.id == "spring-2025"
    assert config.source == example
    assert config.ehlo_hostname == "mta1.example.org"
    assert config.max_message_size == 25_000_000
    assert config.recipients.encoding == "utf-8"
    assert config.tls.ca_file == root / "internal-ca.pem"
    assert config.suppression.store == root / "suppressions.sqlite3"
    assert config.suppression.soft_bounce_limit == 3
    assert config.unsubscribe is not None
    assert config.unsubscribe.key == Secret("a long random key")
    assert config.message.text_template == root / "body.txt"
    assert config.message.attachments[1].filename == "Terms.txt"
    assert config.message.headers == (("X-Campaign", "spring-2025"), ("X-Segment", "{{ segment }}"))
    assert config.recipients.rejects == root / "spring-2025.rejects.csv"
    assert [d.algorithm for d in config.dkim] == [
        DkimAlgorithm.RSA_SHA256,
        DkimAlgorithm.ED25519_SHA256,
    ]
    policy = config.policy
    assert policy.defaults == SiteLimits(
        max_connections=5,
        rate=50.0,
        connection_rate=5.0,
        messages_per_connection=100,
        recipients_per_transaction=1,
        idle_timeout=30.0,
        tls=TlsMode.OPPORTUNISTIC,
    )
    assert policy.total_rate == 2000.0
    assert policy.timeouts.greeting == 300.0
    assert policy.timeouts.quit == 10.0
    assert policy.retry.max_age == 2 * 86400
    table = SitePolicy(policy)
    gmail = table.lookup("gmail.com", Site.of(["alt1.ASPMX.l.google.com.", "aspmx.l.google.com"]))
    assert (gmail.max_connections, gmail.rate) == (20, 300.0)
    net = table.lookup("example.net", Site.of(["mx.example.net"]))
    assert (net.rate, net.tls, net.max_connections) == (3000 / 3600, TlsMode.REQUIRED, 5)
    assert policy.backoff[0].matches(421, None, "Too many connections from you")
    assert not policy.backoff[0].matches(451, None, "Too many connections")
    assert policy.backoff[1].matches(451, "4.7.28", "rate limited")
    assert not policy.backoff[1].matches(451, "4.2.2", "full")
    assert (policy.backoff[0].duration, policy.backoff[1].duration) == (600.0, 3600.0)
    routing = config.routing
    assert routing.overrides["example.net"] == RouteOverride("mx.internal.example", 2525)
    assert routing.smarthost is not None
    assert routing.smarthost.password is not None
    assert routing.smarthost.password.reveal() == "hunter2"
    # Secrets never show in a repr.
    text = repr(config)
    assert "hunter2" not in text
    assert "PRIVATE KEY" not in text
    assert repr(routing.smarthost.password) == "Secret('***')"
    # And the whole thing prepares into a Campaign.
    Campaign.from_config(config)


def test_minimal_campaign_defaults(campaign_dir: CampaignDir) -> None:
    config = load_campaign(campaign_dir.toml(), {})
    assert config.journal_url is None  # a SQLite file beside the campaign
    assert config.policy == SendingPolicy()
    assert config.dkim == ()
    assert config.recipients.format == "csv"
    assert config.envelope_sender == "bounces+{token}@example.org"


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        ('[policy.sites."gmail.com"]\nrat = "5/s"\n', 'policy.sites."gmail.com".rat', "`rate`"),
        ("[policy.defaults]\nmax_conections = 3\n", "policy.defaults.max_conections", "unknown"),
        ("[routing]\nnameserver = []\n", "routing.nameserver", "nameservers"),
        ("[extra]\nx = 1\n", "extra", "unknown key"),
    ],
)
def test_unknown_keys(campaign_dir: CampaignDir, text: str, key: str, fix: str) -> None:
    path = campaign_dir.toml(extra=text)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    message = str(caught.value)
    assert str(path) in message
    assert f": {key}: unknown key" in message
    assert fix in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[policy.sites."gmail.com"]\nrate = "fast"\n', 'policy.sites."gmail.com".rate', "rate"),
        (
            '[policy.defaults]\nmax_connections = "5"\n',
            "policy.defaults.max_connections",
            "an integer",
        ),
        ("[policy.defaults]\nmax_connections = 0\n", "policy.defaults.max_connections", ">= 1"),
        ('[policy.defaults]\ntls = "maybe"\n', "policy.defaults.tls", "none"),
        ("[policy.retry]\nfactor = 0.5\n", "policy.retry.factor", ">= 1"),
        ("[policy]\nbackoff = [{ code = 421 }]\n", "policy.backoff[0].suspend", "does nothing"),
        (
            '[policy]\nbackoff = [{ text = "(", suspend = 1 }]\n',
            "policy.backoff[0].text",
            "regular",
        ),
        ('[routing]\nnameservers = ["dns.example"]\n', "routing.nameservers", "IP address"),
        (
            '[routing]\nallow_private_addresses = "yes"\n',
            "routing.allow_private_addresses",
            "true or false",
        ),
        (
            '[routing.overrides]\n"a.example" = "host:99999"\n',
            'routing.overrides."a.example"',
            "port",
        ),
        (
            '[journal]\nurl = "postgresql://u:hunter2@db/x?campaign=c"\n',
            "journal.url",
            "password_file=PATH",
        ),
        ('[journal]\nurl = "mysql://db/x"\n', "journal.url", "not a PostgreSQL journal URL"),
    ],
)
def test_wrong_types_and_values(
    campaign_dir: CampaignDir, text: str, key: str, expected: str
) -> None:
    path = campaign_dir.toml(extra=text)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('text = "body.txt"', 'text = "missing.txt"', "message.text"),
        ('file = "recipients.csv"', 'file = "nobody.csv"', "recipients.file"),
        (
            'html = "body.html"',
            'html = "body.html"\nattachments = ["gone.pdf"]',
            "message.attachments[0].path",
        ),
        (
            'file = "recipients.csv"',
            'file = "recipients.csv"\nsuppression = "none.txt"',
            "recipients.suppression",
        ),
    ],
)
def test_missing_files(campaign_dir: CampaignDir, old: str, new: str, key: str) -> None:
    path = campaign_dir.toml(campaign_dir.base.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_campaign(path, {})
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: file ")
    assert "does not exist" in message
    assert "relative paths are read from the campaign file's directory" in message


def test_dkim_key_sources(campaign_dir: CampaignDir, rsa_pem: str) -> None:
    section = '[dkim]\ndomain = "example.org"\nselector = "s"\n'
    with pytest.raises(ConfigError, match=r"dkim\.key_file: file .*nokey\.pem.* does not exist"):
        load_campaign(campaign_dir.toml(extra=section + 'key_file = "nokey.pem"\n'), {})
    with pytest.raises(ConfigError, match=r"dkim\.key_env: environment variable 'K' is not set"):
        load_campaign(campaign_dir.toml(extra=section + 'key_env = "K"\n'), {})
    with pytest.raises(ConfigError, match=r"dkim\.key_file: neither key_file nor key_env"):
        load_campaign(campaign_dir.toml(extra=section), {})
    campaign_dir.write("k.pem", rsa_pem)
    with pytest.raises(ConfigError, match=r"dkim\.key_env: both key_file and key_env"):
        load_campaign(
            campaign_dir.toml(extra=section + 'key_file = "k.pem"\nkey_env = "K"\n'), {"K": "x"}
        )
    config = load_campaign(campaign_dir.toml(extra=section + 'key_file = "k.pem"\n'), {})
    assert "PRIVATE" not in repr(config)
    assert config.dkim[0].private_key.reveal() == rsa_pem
    bad = campaign_dir.toml(extra=section + 'key_env = "K"\n')
    with pytest.raises(ConfigError, match=r"dkim\.key_env = 'K' in .*campaign\.toml"):
        Campaign.load(bad, {"K": "garbage"})


def test_config_mistakes_in_message(campaign_dir: CampaignDir) -> None:
    base = campaign_dir.base
    cases = [
        (base.replace('from = "news@example.org"', 'from = "not an address"'), "message.from"),
        (
            base.replace('subject = "Hello {{ first_name }}"', 'subject = "a\\nb"'),
            "message.subject",
        ),
        (base.replace("https://example.org", "http://example.org"), "unsubscribe.url"),
        (
            base.replace('sender = "bounces+{token}@example.org"', 'sender = "b@{token}.org"'),
            "envelope.sender",
        ),
        (base.replace('[campaign]\nid = "spring-2025"', '[campaign]\nid = "../x"'), "campaign.id"),
        (
            base.replace('to_name = "{{ first_name }} {{ last_name }}"\n', "").replace(
                "\n[envelope]", "\nto_name = 3\n[envelope]"
            ),
            "message.to_name",
        ),
    ]
    for text, key in cases:
        path = campaign_dir.toml(text)
        with pytest.raises(ConfigError, match=re.escape(f"{path}: {key}: ")):
            load_campaign(path, {})
    headers = campaign_dir.toml(extra='[message.headers]\nSubject = "x"\n')
    with pytest.raises(ConfigError, match=r"message\.headers\.Subject: bulksend writes"):
        load_campaign(headers, {})


def test_missing_and_broken_campaign_files(campaign_dir: CampaignDir) -> None:
    with pytest.raises(ConfigError, match="cannot read the campaign file"):
        load_campaign(campaign_dir.root / "none.toml", {})
    broken = campaign_dir.write("broken.toml", "[campaign\nid = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        load_campaign(broken, {})
    no_message = campaign_dir.write("short.toml", '[campaign]\nid = "x"\n')
    with pytest.raises(ConfigError, match=r"short\.toml: message: missing"):
        load_campaign(no_message, {})


def test_template_syntax_error_names_the_file(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("body.html", "<p>\n{{ broken </p>\n")
    with pytest.raises(ConfigError, match=r"body\.html: line 2: template error"):
        campaign_dir.campaign()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50/s", 50.0), ("3000/h", 3000 / 3600), ("10/min", 10 / 60), ("2/m", 2 / 60), (7, 7.0)],
)
def test_parse_rate(text: str | float, expected: float) -> None:
    assert parse_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0/s", "fast", "5/fortnight", "-1", True])
def test_parse_rate_refuses(text: str | float) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("2d", 172800.0), ("500ms", 0.5), (12, 12.0)],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


def test_backoff_code_patterns() -> None:
    rule = BackoffRule(code="45x", suspend=1.0)
    assert rule.matches(451, None, "")
    assert not rule.matches(421, None, "")
