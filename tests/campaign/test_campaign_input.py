"""Campaign input and limits: file encodings, the EHLO name, message size, paths, private CAs.

What a user meets: one-line errors that name the file, line and key (never a traceback, never
a journal left behind), the bytes a receiving server sees, and the journal's outcomes.
"""

from __future__ import annotations

import email
import email.policy
import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import trio
import trustme
from click.testing import CliRunner

from bulksend.campaign import Campaign, RenderError
from bulksend.campaign.authcheck import judge_dkim
from bulksend.campaign.recipients import Recipient
from bulksend.cli import main
from bulksend.delivery.run import run_campaign
from bulksend.errors import ConfigError
from bulksend.journal import Journal, Status
from bulksend.testing.scenario import SiteSpec, campaign_toml, running
from bulksend.testing.smtp import ServerScript
from tests.helpers.tls import server_context
from tests.helpers.worlds import run_options

if TYPE_CHECKING:
    from conftest import CampaignDir

LATIN1_ROWS = "email,first_name,last_name,offer,token\nalice@example.com,Alice,Smith,tulips,t1\n"
LATIN1_ROWS += "francois@example.net,François,Müller,crème brûlée,t2\n"  # line 3


def bulksend(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bulksend ARGS`` to the end (bounded; no network is needed).

    The run's record of sent campaigns stays in ``cwd``, never the user's state directory.
    """
    return subprocess.run(
        [sys.executable, "-m", "bulksend", *args],
        cwd=cwd,
        env={**os.environ, "BULKSEND_SENT_RECORD": str(cwd / "sent.jsonl")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- [recipients] encoding ------------------------------------------------------------------


def test_a_latin1_csv_is_refused_at_load_naming_line_byte_and_fix(
    campaign_dir: CampaignDir,
) -> None:
    path = campaign_dir.write("recipients.csv", LATIN1_ROWS.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        campaign_dir.campaign()
    assert str(caught.value) == (
        f'{path} is not valid UTF-8 at line 3, byte 0xe7; set [recipients] encoding = "latin-1" '
        "if the file uses it"
    )


def test_a_latin1_jsonl_file_is_refused_too(campaign_dir: CampaignDir) -> None:
    rows = '{"email": "a@example.com", "first_name": "A"}\n{"email": "b@example.com"}\n'
    rows += '{"email": "c@example.com", "first_name": "Zoë"}\n'
    campaign_dir.write("r.jsonl", rows.encode("latin-1"))
    toml = campaign_dir.base.replace('file = "recipients.csv"', 'file = "r.jsonl"')
    with pytest.raises(ConfigError, match=r"r\.jsonl is not valid UTF-8 at line 3, byte 0xeb"):
        campaign_dir.campaign(toml)


def test_an_unknown_encoding_is_refused_at_load(campaign_dir: CampaignDir) -> None:
    for name in ("klingon", "base64"):  # unknown, and a bytes codec rather than a text one
        toml = campaign_dir.base.replace(
            'file = "recipients.csv"', f'file = "recipients.csv"\nencoding = "{name}"'
        )
        with pytest.raises(ConfigError, match=rf"recipients\.encoding: '{name}' is not a known"):
            campaign_dir.campaign(toml)


def test_send_and_validate_refuse_a_latin1_file_in_one_line(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("recipients.csv", LATIN1_ROWS.encode("latin-1"))
    toml = campaign_dir.toml()
    for command in (["send", str(toml), "--quiet"], ["validate", str(toml), "--no-dns"]):
        done = bulksend(*command, cwd=campaign_dir.root)
        assert done.returncode == 1, done
        line = one_error_line(done.stderr)
        assert line.startswith("bulksend: error: ")
        assert "recipients.csv is not valid UTF-8 at line 3, byte 0xe7" in line
        assert 'encoding = "latin-1"' in line
    assert not list(campaign_dir.root.glob("*journal*")), "no journal is left behind"


def test_a_latin1_file_with_its_encoding_renders_the_names(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("recipients.csv", LATIN1_ROWS.encode("latin-1"))
    toml = campaign_dir.base.replace(
        'file = "recipients.csv"', 'file = "recipients.csv"\nencoding = "latin-1"'
    ).replace('id = "spring-2025"', 'id = "spring-2025"\nehlo_hostname = "mta1.example.org"')
    campaign = campaign_dir.campaign(toml)
    _alice, francois = campaign.recipients()
    message = email.message_from_bytes(
        campaign.render(francois, now=1_700_000_000).data, policy=email.policy.default
    )
    assert message["Subject"] == "Hello François"
    assert message["To"].addresses[0].display_name == "François Müller"
    text = message.get_body(("plain",))
    assert text is not None
    assert "Our spring offers: crème brûlée." in text.get_content()
    done = bulksend("validate", str(campaign_dir.toml(toml)), "--no-dns", cwd=campaign_dir.root)
    assert done.returncode == 0, done
    assert "2 of the first 2 rendered" in done.stdout


# --- [campaign] ehlo_hostname ---------------------------------------------------------------


async def test_the_campaign_ehlo_hostname_is_what_the_server_sees(tmp_path: Path) -> None:
    toml = campaign_toml().replace('ehlo_hostname = "sender.test"', 'ehlo_hostname = "mta1.a.test"')
    path = _write(tmp_path, toml, ["x@ehlo.test", "y@ehlo.test"])
    sites = [SiteSpec("ehlo", ("ehlo.test",), "127.0.0.2", ServerScript(record_wire=True))]
    with trio.fail_after(30):
        async with running(sites) as world:
            options = run_options(  # no ehlo_hostname: the campaign's
                tmp_path, world, journal=tmp_path / "j.sqlite3", ehlo_hostname=None
            )
            summary = await run_campaign(Campaign.load(path, {}), options)
            server = world.servers["ehlo"]
            greetings = {bytes(c.received).split(b"\r\n")[0] for c in server.connections}
    assert summary.counts[Status.DELIVERED] == 2
    assert greetings == {b"EHLO mta1.a.test"}


async def test_a_name_that_is_not_a_fqdn_is_warned_about_in_one_line(tmp_path: Path) -> None:
    toml = campaign_toml().replace('ehlo_hostname = "sender.test"', 'ehlo_hostname = "mybox"')
    path = _write(tmp_path, toml, ["x@ehlo.test"])
    sites = [SiteSpec("ehlo", ("ehlo.test",), "127.0.0.2", ServerScript(record_wire=True))]
    with trio.fail_after(60):
        async with running(sites) as world:
            args = ["--nameserver", "127.0.0.1", "--dns-port", str(world.dns_port)]
            args += ["--smtp-port", str(world.smtp_port), "--quiet"]
            done = await trio.to_thread.run_sync(
                lambda: bulksend("send", str(path), *args, cwd=tmp_path)
            )
            server = world.servers["ehlo"]
            greetings = {bytes(c.received).split(b"\r\n")[0] for c in server.connections}
    assert done.returncode == 0, done
    assert greetings == {b"EHLO mybox"}
    warnings = [line for line in done.stderr.splitlines() if "EHLO name" in line]
    assert warnings == [
        "bulksend: warning: the EHLO name 'mybox' is not a fully qualified domain name; "
        "receivers may refuse or distrust the mail: set [campaign] ehlo_hostname (or "
        "--ehlo-hostname) to this host's public name"
    ]


def test_validate_checks_the_ehlo_name(
    campaign_dir: CampaignDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine whose FQDN is unset: getfqdn() answers "localhost".
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "localhost")
    unset = CliRunner().invoke(main, ["validate", str(campaign_dir.toml()), "--no-dns"])
    assert "warning: the EHLO name 'localhost' is not a fully qualified domain name" in (
        unset.output
    )
    assert unset.exit_code == 4
    toml = campaign_dir.base.replace(
        'id = "spring-2025"', 'id = "spring-2025"\nehlo_hostname = "mta1.example.org"'
    )
    named = CliRunner().invoke(main, ["validate", str(campaign_dir.toml(toml)), "--no-dns"])
    assert "ok: EHLO name: mta1.example.org" in named.output
    assert named.exit_code == 0, named.output


def test_an_ehlo_hostname_that_is_no_host_name_is_refused(campaign_dir: CampaignDir) -> None:
    for bad in ("two words", "mx..example", "bad\\r\\nMAIL FROM:<x>", "[300.1.1.1]"):
        toml = campaign_dir.base.replace(
            'id = "spring-2025"', f'id = "spring-2025"\nehlo_hostname = "{bad}"'
        )
        with pytest.raises(ConfigError, match=r"campaign\.ehlo_hostname: .* is not a host name"):
            campaign_dir.campaign(toml)


def _write(directory: Path, toml: str, recipients: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "body.txt").write_text("Hello {{ first_name }}, {{ code }}\n")
    (directory / "body.html").write_text("<p>Hello {{ first_name }}</p>\n")
    rows = "".join(f"{a},R{i},{i:06d}\n" for i, a in enumerate(recipients))
    (directory / "recipients.csv").write_text("email,first_name,code\n" + rows)
    path = directory / "campaign.toml"
    path.write_text(toml)
    return path


# --- [campaign] max_message_size ------------------------------------------------------------


def _with_campaign_keys(campaign_dir: CampaignDir, keys: str, message: str = "") -> str:
    toml = campaign_dir.base.replace('id = "spring-2025"', f'id = "spring-2025"\n{keys}')
    return toml.replace('html = "body.html"', f'html = "body.html"\n{message}')


def test_an_attachment_over_the_cap_is_refused_at_load(campaign_dir: CampaignDir) -> None:
    with (campaign_dir.root / "big.pdf").open("wb") as sparse:
        sparse.truncate(40 * 1000 * 1000)  # 40 MB, no disk used
    toml = _with_campaign_keys(campaign_dir, "", 'attachments = ["big.pdf"]')
    with pytest.raises(ConfigError) as caught:
        campaign_dir.campaign(toml)  # the default cap: 25 MB
    text = str(caught.value)
    assert "message.attachments[0]: 'big.pdf' makes every message over 25,000,000 bytes" in text
    assert "max_message_size" in text
    campaign_dir.write("small.txt", "x" * 200_000)
    toml = _with_campaign_keys(
        campaign_dir, 'max_message_size = "100kB"', 'attachments = ["small.txt"]'
    )
    with pytest.raises(ConfigError, match=r"'small\.txt' makes every message over 100,000 bytes"):
        campaign_dir.campaign(toml)


def test_a_runaway_template_fails_its_recipient_not_the_process(campaign_dir: CampaignDir) -> None:
    campaign_dir.write(
        "body.txt",
        "Hi {{ first_name }}\n{% if first_name == 'Bob' %}{{ 'x' * 1000000000 }}{% endif %}"
        "{% if first_name == 'Carol' %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{{ offer }}{% endfor %}{% endfor %}{% endif %}\n",
    )
    campaign_dir.write(
        "recipients.csv",
        "email,first_name,last_name,offer,token\na@example.com,Alice,S,tulips,t1\n"
        "b@example.com,Bob,J,roses,t2\nc@example.com,Carol,K,lilies,t3\n",
    )
    campaign = campaign_dir.campaign(_with_campaign_keys(campaign_dir, "max_message_size = 100000"))
    alice, bob, carol = campaign.recipients()
    assert len(campaign.render(alice).data) < 100_000
    for runaway in (bob, carol):
        with pytest.raises(RenderError, match=r"exceeds max_message_size \(100,000 bytes\)"):
            campaign.render(runaway)


def test_a_message_over_the_cap_fails_its_recipient(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("terms.txt", "t" * 60_000)  # 80 kB base64-encoded: under the cap alone
    toml = _with_campaign_keys(
        campaign_dir, 'max_message_size = "100kB"', 'attachments = ["terms.txt"]'
    )
    campaign = campaign_dir.campaign(toml)
    short = Recipient(
        "a@example.com", {"first_name": "A", "last_name": "B", "offer": "x", "token": "t"}
    )
    assert len(campaign.render(short).data) < 100_000
    long = Recipient(
        "b@example.com", {"first_name": "A", "last_name": "B", "offer": "y" * 15_000, "token": "t"}
    )
    with pytest.raises(RenderError, match=r"over max_message_size \(100,000 bytes\)"):
        campaign.render(long)  # the offer is in both bodies: 30 kB more


async def test_a_send_goes_on_past_a_recipient_whose_message_is_too_big(tmp_path: Path) -> None:
    toml = campaign_toml().replace(
        'ehlo_hostname = "sender.test"', 'ehlo_hostname = "sender.test"\nmax_message_size = 50000'
    )
    # Enough small ones that the load-time sample check (docs: >10% failing) lets it run.
    small = [f"small{i}@big.test" for i in range(12)]
    path = _write(tmp_path, toml, [*small, "huge@big.test"])
    rows = "".join(f"{a},S,1\n" for a in small)
    rows = "email,first_name,code\n" + rows + "huge@big.test," + "H" * 60_000 + ",2\n"
    (tmp_path / "recipients.csv").write_text(rows)
    sites = [SiteSpec("big", ("big.test",), "127.0.0.2")]
    with trio.fail_after(30):
        async with running(sites) as world:
            options = run_options(tmp_path, world, journal=tmp_path / "j.sqlite3")
            summary = await run_campaign(Campaign.load(path, {}), options)
            received = world.received()
    assert summary.complete
    assert received == dict.fromkeys(small, 1)
    with Journal.open(tmp_path / "j.sqlite3", None) as journal:
        states = {s.address: s for s in journal.iter_states()}
    assert all(states[a].status is Status.DELIVERED for a in small)
    assert states["huge@big.test"].status is not Status.DELIVERED
    assert "max_message_size" in (states["huge@big.test"].text or "")


def test_validate_renders_previews_within_the_cap(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("body.txt", "{{ 'x' * 1000000000 }}\n")
    done = CliRunner().invoke(
        main, ["validate", str(campaign_dir.toml()), "--no-dns", "--previews", "2"]
    )
    # Every sampled row fails within the cap, so the load-time check stops it (exit 1).
    assert done.exit_code == 1, done.output
    assert "body.txt: the template's output exceeds max_message_size" in done.output


def test_validate_keeps_only_the_previews_in_memory(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("brochure.pdf", os.urandom(1_000_000))  # 1.4 MB in every message
    rows = "".join(f"r{i}@example.com,R{i},S,tulips,t{i}\n" for i in range(60))
    campaign_dir.write("recipients.csv", "email,first_name,last_name,offer,token\n" + rows)
    toml = _with_campaign_keys(campaign_dir, "", 'attachments = ["brochure.pdf"]')
    tracemalloc.start()
    try:
        done = CliRunner().invoke(
            main, ["validate", str(campaign_dir.toml(toml)), "--no-dns", "--sample", "60"]
        )
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "ok: recipients: 60 of the first 60 rendered" in done.output, done.output
    assert peak < 20_000_000  # 60 messages kept would be 85 MB


def test_max_message_size_is_checked(campaign_dir: CampaignDir) -> None:
    for bad, problem in (
        ('"lots"', "'lots' is not a size"),
        ("0", "0: a size must be greater than zero"),
        ('"5 parsecs"', "'5 parsecs' is not a size"),
        ("true", "expected a size"),
    ):
        toml = _with_campaign_keys(campaign_dir, f"max_message_size = {bad}")
        with pytest.raises(ConfigError, match=rf"campaign\.max_message_size: {problem}"):
            campaign_dir.campaign(toml)
    toml = _with_campaign_keys(campaign_dir, 'max_message_size = "10 MiB"')
    assert campaign_dir.campaign(toml).config.max_message_size == 10 * 1024 * 1024


# --- paths outside the campaign directory ---------------------------------------------------


def _nested(campaign_dir: CampaignDir) -> CampaignDir:
    """A campaign directory one level down, so that its parent is "outside"."""
    (campaign_dir.root / "campaign").mkdir()
    return type(campaign_dir)(campaign_dir.root / "campaign")


def test_templates_and_attachments_outside_the_campaign_directory_are_refused(
    campaign_dir: CampaignDir,
) -> None:
    outside = campaign_dir.write("secret.txt", "not for recipients\n")
    campaign_dir = _nested(campaign_dir)
    (campaign_dir.root / "link.txt").symlink_to(outside)
    cases = [
        ('text = "body.txt"', 'text = "../secret.txt"', "message.text", "'../secret.txt'"),
        ('html = "body.html"', f'html = "{outside}"', "message.html", repr(str(outside))),
        ('text = "body.txt"', 'text = "link.txt"', "message.text", "'link.txt'"),
        (
            'html = "body.html"',
            'html = "body.html"\nattachments = ["../secret.txt"]',
            "message.attachments[0].path",
            "'../secret.txt'",
        ),
    ]
    for old, new, key, shown in cases:
        toml = campaign_dir.base.replace(old, new)
        with pytest.raises(ConfigError) as caught:
            campaign_dir.campaign(toml)
        assert f"{key}: {shown} is outside the campaign directory" in str(caught.value)
        assert "allow_outside_paths = true" in str(caught.value)
        allowed = toml.replace(
            'id = "spring-2025"', 'id = "spring-2025"\nallow_outside_paths = true'
        )
        campaign_dir.campaign(allowed)  # loads


def test_lists_and_secrets_may_live_anywhere(campaign_dir: CampaignDir, ed25519_pem: str) -> None:
    lists = campaign_dir.root / "lists"
    lists.mkdir()
    (lists / "all.csv").write_text(
        "email,first_name,last_name,offer,token\na@example.com,A,B,C,D\n"
    )
    (lists / "suppressed.txt").write_text("nobody@example.com\n")
    key = lists / "dkim.pem"
    key.write_text(ed25519_pem)
    key.chmod(0o600)
    campaign_dir = _nested(campaign_dir)
    toml = campaign_dir.base.replace(
        'file = "recipients.csv"',
        f'file = "../lists/all.csv"\nsuppression = "{lists / "suppressed.txt"}"',
    )
    toml += (
        '\n[dkim]\ndomain = "example.org"\nselector = "s1"\nalgorithm = "ed25519-sha256"\n'
        f'key_file = "{key}"\n'
    )
    campaign = campaign_dir.campaign(toml)
    assert [r.address for r in campaign.recipients()] == ["a@example.com"]


# --- [tls] ca_file --------------------------------------------------------------------------


async def _send_to_private_ca_mx(tmp_path: Path, ca: trustme.CA, tls: str) -> dict[str, object]:
    server_ctx = server_context(ca, "mx1.internal.test")
    ca.cert_pem.write_to_path(str(tmp_path / "internal-ca.pem"))
    toml = campaign_toml(policy='[policy.defaults]\ntls = "required"\n', extra=tls)
    path = _write(tmp_path, toml, ["a@internal.test", "b@internal.test"])
    site = SiteSpec(
        "internal", ("internal.test",), "127.0.0.2", ServerScript(tls_context=server_ctx)
    )
    with trio.fail_after(30):
        async with running([site]) as world:
            options = run_options(  # no ssl_verified: the context is built from the campaign
                tmp_path, world, journal=tmp_path / "j.sqlite3"
            )
            with trio.move_on_after(5):
                await run_campaign(Campaign.load(path, {}), options)
            transactions = world.servers["internal"].transactions
    with Journal.open(tmp_path / "j.sqlite3", None) as journal:
        states = list(journal.iter_states())
    return {"transactions": transactions, "states": states}


async def test_tls_required_to_a_private_ca_mx_with_ca_file(tmp_path: Path, ca: trustme.CA) -> None:
    result = await _send_to_private_ca_mx(tmp_path, ca, '[tls]\nca_file = "internal-ca.pem"\n')
    transactions = result["transactions"]
    assert isinstance(transactions, list)
    assert sorted(r for t in transactions for r in t.rcpt_to) == [
        "a@internal.test",
        "b@internal.test",
    ]
    assert all(t.tls for t in transactions)


async def test_tls_required_to_a_private_ca_mx_without_ca_file_defers(
    tmp_path: Path, ca: trustme.CA
) -> None:
    result = await _send_to_private_ca_mx(tmp_path, ca, "")
    assert result["transactions"] == []
    states = result["states"]
    assert isinstance(states, list)
    assert {s.status for s in states} == {Status.PENDING}  # deferred, not lost
    assert all("certificate" in (s.text or "").lower() for s in states), states


def test_a_ca_file_that_holds_no_certificate_is_refused(campaign_dir: CampaignDir) -> None:
    campaign_dir.write("ca.pem", "not a certificate\n")
    with pytest.raises(ConfigError, match=r"tls\.ca_file: cannot load CA certificates"):
        campaign_dir.campaign(extra='[tls]\nca_file = "ca.pem"\n')


# --- the DKIM record to publish ---------------------------------------------------------------


def test_the_dkim_record_to_publish_is_split_into_255_byte_strings(
    campaign_dir: CampaignDir, rsa_pem: str
) -> None:
    key = campaign_dir.write("dkim.pem", rsa_pem)
    os.chmod(key, 0o600)
    dkim = '[dkim]\ndomain = "example.org"\nselector = "s1"\nkey_file = "dkim.pem"\n'
    (signer,) = campaign_dir.campaign(extra=dkim).signers
    record = signer.public_txt_record()
    assert len(record) > 255  # a 2048-bit key: one string cannot hold it
    (finding,) = judge_dkim("s1._domainkey.example.org", [], record)
    publish = finding.text.split("publish: ", 1)[1]
    name, rdata = publish.split(" IN TXT ", 1)
    assert name == "s1._domainkey.example.org."
    txt = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, rdata)
    assert all(len(s) <= 255 for s in txt.strings)  # type: ignore[attr-defined]
    assert b"".join(txt.strings).decode() == record  # type: ignore[attr-defined]
