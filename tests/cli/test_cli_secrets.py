"""A run that uses an SMTP password and a DKIM key leaves neither in any output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from bulksend.testing.smtp import ServerScript
from tests.cli.cli_helpers import bulksend, run_bulksend, scrape
from tests.helpers.tls import server_context

PASSWORD = "Pw-0f-the-relay-XYZZY"


async def test_no_secret_in_any_output(tmp_path: Path, ca: trustme.CA) -> None:
    server_ctx = server_context(ca, "127.0.0.2")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_line = pem.splitlines()[1]  # the base64 of the private key
    campaign_dir = tmp_path / "c"
    campaign_dir.mkdir()
    key_file = campaign_dir / "dkim.pem"
    key_file.write_text(pem)
    key_file.chmod(0o600)
    relay = SiteSpec(
        "relay",
        (),
        "127.0.0.2",
        ServerScript(
            tls_context=server_ctx, auth_credentials={"bulk": PASSWORD}, require_auth=True
        ),
    )
    outputs = tmp_path / "out"
    outputs.mkdir()
    journal = outputs / "j.sqlite3"
    env = {**os.environ, "RELAY_PASSWORD": PASSWORD, "SSL_CERT_FILE": str(ca_file)}
    with trio.fail_after(120):
        async with running([relay]) as world:
            extra = f"""
[[dkim]]
domain = "sender.test"
selector = "s1"
algorithm = "ed25519-sha256"
key_file = "dkim.pem"

[routing.smarthost]
host = "127.0.0.2"
port = {world.smtp_port}
username = "bulk"
password_env = "RELAY_PASSWORD"
"""
            toml = write_campaign(
                campaign_dir, addresses(["far.example"], 20), toml=campaign_toml(extra=extra)
            )
            async with bulksend(
                tmp_path,
                "send",
                str(toml),
                "--journal",
                str(journal),
                "--accounting",
                str(outputs / "accounting.jsonl"),
                "--metrics-port",
                "0",
                "--keep-serving",
                "--debug",
                "--ehlo-hostname",
                "sender.test",
                name="send",
                env=env,
            ) as proc:
                await proc.wait_for(lambda: "until SIGINT" in proc.stderr(), 90, "the run's end")
                url = proc.stderr().split("metrics at ")[1].split()[0]
                (outputs / "metrics.txt").write_text(repr(await scrape(url)))
                proc.signal()
                assert await proc.wait(20) == 0, proc
            assert [t.authenticated_as for t in world.servers["relay"].transactions] == [
                "bulk"
            ] * 20
            # A wrong password: the failure is reported, the password still nowhere.
            bad_env = {**env, "RELAY_PASSWORD": PASSWORD + "-wrong"}
            failed = await run_bulksend(
                tmp_path,
                "send",
                str(toml),
                "--journal",
                str(outputs / "bad.sqlite3"),
                "--send-again",
                "--limit",
                "3",
                "--debug",
                "--grace",
                "1",
                "--ehlo-hostname",
                "sender.test",
                name="bad",
                env=bad_env,
            )
    for fmt in ("table", "csv", "jsonl"):
        report = await run_bulksend(
            tmp_path,
            "report",
            str(journal),
            "--format",
            fmt,
            "-o",
            str(outputs / f"r.{fmt}"),
            name=f"report-{fmt}",
        )
        assert report.process.returncode == 0, report
    status = await run_bulksend(tmp_path, "status", str(journal), "--json", name="status")
    # A config error with --debug prints a traceback: still no secret in it.
    broken = campaign_dir / "broken.toml"
    broken.write_text(toml.read_text() + "\n[oops]\n")
    await run_bulksend(tmp_path, "send", str(broken), "--debug", name="broken", env=env)

    texts = [*outputs.iterdir(), *tmp_path.glob("*.out"), *tmp_path.glob("*.err")]
    texts += [p for p in campaign_dir.iterdir() if p.name != "dkim.pem"]
    assert len(texts) > 10
    for path in texts:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data, path
        assert key_line.encode() not in data, path
    assert "Traceback" in (tmp_path / "broken.err").read_text()
    assert failed.process.returncode == 3, failed
    assert status.process.returncode == 0
    # Everything that holds addresses is private.
    for name in ("j.sqlite3", "accounting.jsonl", "r.csv", "r.jsonl", "r.table"):
        assert stat.S_IMODE((outputs / name).stat().st_mode) == 0o600, name
