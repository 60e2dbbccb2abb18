"""The provider rules bulksend ships: every one parses, cites its source, matches the replies
it was written for (each sample triggers its own rule and its action), and finds its
provider's MX hosts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bulksend.config import load_campaign
from bulksend.config.providers import ProviderPolicy
from bulksend.delivery.backoff import Backoff
from bulksend.egress.providers import ProviderTable, effective_providers
from bulksend.egress.rules import shipped_providers
from bulksend.errors import ConfigError
from bulksend.routing import Site
from bulksend.smtp.reply import Reply
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign

SHIPPED = shipped_providers()
RULES = [
    (name, index) for name, provider in SHIPPED.items() for index in range(len(provider.backoff))
]


def test_the_providers_the_issue_asks_for_are_shipped() -> None:
    assert set(SHIPPED) == {
        "google",
        "yahoo",
        "outlook",
        "microsoft365",
        "icloud",
        "comcast",
        "gmx",
        "orange",
        "mimecast",
        "proofpoint",
    }


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_provider_cites_its_documentation_and_has_limits(name: str) -> None:
    provider = SHIPPED[name]
    assert provider.documentation.startswith("https://")
    assert provider.match
    assert provider.limits.max_connections is not None
    assert provider.backoff
    assert provider.origin == "shipped"


@pytest.mark.parametrize(("name", "index"), RULES)
def test_every_sample_reply_triggers_its_rule_and_action(name: str, index: int) -> None:
    provider = SHIPPED[name]
    rule = provider.backoff[index]
    assert provider.sources[index].startswith("https://")
    assert provider.samples[index], "each rule needs a sample reply"
    for sample in provider.samples[index]:
        reply = Reply.from_wire(int(sample[:3]), (sample.encode(),))
        backoff = Backoff(name, provider.backoff, max_connections=10, rate=100.0)
        # The first rule that matches is this one (an earlier rule would shadow it).
        assert backoff.match(reply.code, reply.enhanced_code, reply.text) is rule, sample
        assert backoff.apply(rule, 1000.0, sample)
        limits = backoff.limits
        if rule.reduce_connections is not None:
            assert limits.max_connections == rule.reduce_connections
        if rule.rate_factor is not None:
            assert limits.rate == pytest.approx(100.0 * rule.rate_factor)
        if rule.suspend is not None:
            assert limits.suspended_until == 1000.0 + rule.suspend
        else:
            assert limits.suspended_until == -math.inf
        assert backoff.restore_at >= 1000.0 + rule.duration


@pytest.mark.parametrize(
    ("reply", "provider"),
    [
        ("421 4.7.28 Gmail has detected an unusual rate of unsolicited mail", "google"),
        ("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred", "yahoo"),
        ("451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited", "outlook"),
        ("451 4.7.500 Server busy. Please try again later from [192.0.2.1].", "microsoft365"),
    ],
)
def test_the_replies_the_issue_names_are_covered(reply: str, provider: str) -> None:
    parsed = Reply.from_wire(int(reply[:3]), (reply.encode(),))
    rules = SHIPPED[provider].backoff
    assert any(r.matches(parsed.code, parsed.enhanced_code, parsed.text) for r in rules)


@pytest.mark.parametrize(
    ("domain", "mx", "provider"),
    [
        ("gmail.com", "gmail-smtp-in.l.google.com", "google"),
        ("example.org", "aspmx.l.google.com", "google"),
        ("yahoo.com", "mta5.am0.yahoodns.net", "yahoo"),
        ("aol.com", "mx-aol.mail.gm0.yahoodns.net", "yahoo"),
        ("hotmail.com", "hotmail-com.olc.protection.outlook.com", "outlook"),
        ("contoso.com", "contoso-com.mail.protection.outlook.com", "microsoft365"),
        ("icloud.com", "mx01.mail.icloud.com", "icloud"),
        ("comcast.net", "mx1a1.comcast.net", "comcast"),
        ("web.de", "mx-ha03.web.de", "gmx"),
        ("gmx.de", "mx00.emig.gmx.net", "gmx"),
        ("orange.fr", "smtp-in.orange.fr", "orange"),
        ("example.org", "us-smtp-inbound-1.mimecast.com", "mimecast"),
        ("example.org", "mx0a-00123.pphosted.com", "proofpoint"),
        ("example.org", "mx.example.org", None),
    ],
)
def test_a_provider_is_found_by_its_mx_hosts(domain: str, mx: str, provider: str | None) -> None:
    found = ProviderTable(SHIPPED.values()).lookup(domain, Site.of([mx]))
    assert (found.name if found else None) == provider


def test_the_campaign_overrides_a_shipped_provider_key_by_key(tmp_path: Path) -> None:
    policy = load_campaign(
        write_campaign(
            tmp_path,
            addresses(["a.test"], 1),
            toml=campaign_toml(
                policy="""
[policy.providers.google]
match = ["example-google-tenant.test"]
max_connections = 40

[[policy.providers.google.backoff]]
code = "421"
enhanced_code = "4.7.28"
suspend = "2h"
"""
            ),
        ),
        {},
    ).policy
    google: ProviderPolicy = effective_providers(policy, SHIPPED)["google"]
    assert google.limits.max_connections == 40
    assert google.limits.connection_rate == SHIPPED["google"].limits.connection_rate
    assert google.match[-1] == "example-google-tenant.test"
    assert google.backoff[0].suspend == 7200.0  # the campaign's rule first
    assert google.backoff[1:] == SHIPPED["google"].backoff
    assert google.origin == "shipped+campaign"


def test_shipped_rules_can_be_turned_off(tmp_path: Path) -> None:
    policy = load_campaign(
        write_campaign(
            tmp_path,
            addresses(["a.test"], 1),
            toml=campaign_toml(policy="[policy]\nshipped_rules = false\n"),
        ),
        {},
    ).policy
    assert effective_providers(policy, SHIPPED) == {}


def test_a_new_provider_without_match_is_refused(tmp_path: Path) -> None:
    policy = load_campaign(
        write_campaign(
            tmp_path,
            addresses(["a.test"], 1),
            toml=campaign_toml(policy="[policy.providers.mine]\nrate = '5/s'\n"),
        ),
        {},
    ).policy
    with pytest.raises(
        ConfigError, match=r"campaign\.toml: policy\.providers\.mine: matches nothing"
    ):
        effective_providers(policy, SHIPPED, source=tmp_path / "campaign.toml")
