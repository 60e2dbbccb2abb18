"""Micro-benchmarks of the hot pieces: CPU µs per operation on one core (``*_us``).

    .venv/bin/python benchmarks/micro.py [--seconds 1]

* reply parsing (``ReplyParser``), per reply, and one whole pipelined transaction through
  the sans-IO ``ClientProtocol`` (MAIL, RCPT, DATA, data encoding, four replies);
* ``encode_data`` on a ~2.3 KB message;
* rendering the benchmark campaign's personalised message, per message: plain, DKIM
  rsa-2048 and DKIM ed25519, next to OpenSSL's raw signing (through ``cryptography``) of
  that message's header block with the same keys, measured in the same run;
* the journal applying outcomes, per outcome: a batch of 500 ``delivered`` outcomes
  (claimed with ``fetch_due``), and the batch's commit in ms.

Times are CPU time (``time.process_time``), so that other work on a shared machine inflates
them less than it would wall time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from bulksend.campaign import Campaign, Recipient
from bulksend.journal import Journal, NewRecipient, Outcome
from bulksend.smtp.encoding import encode_data
from bulksend.smtp.protocol import ClientProtocol, ReplyParser
from bulksend.testing.scenario import addresses, campaign_toml, write_campaign


def per_call_us(fn: Callable[[int], object], seconds: float) -> float:
    """CPU µs per call of ``fn(i)``, over about ``seconds`` of CPU time."""
    n, start = 0, time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn(n)
            n += 1
        now = time.process_time()
        if now >= deadline:
            return (now - start) / n * 1e6


def sign_rate(key_pem: bytes, data: bytes, seconds: float) -> float:
    """OpenSSL's raw signing rate (``private_key.sign`` in a loop), signs per CPU second.

    rsa: PKCS#1 v1.5 over SHA-256 of ``data``, as DKIM's rsa-sha256; ed25519: of the SHA-256
    digest, as DKIM's ed25519-sha256 (RFC 8463).
    """
    key = serialization.load_pem_private_key(key_pem, None)
    if isinstance(key, rsa.RSAPrivateKey):
        return 1e6 / per_call_us(
            lambda _: key.sign(data, padding.PKCS1v15(), hashes.SHA256()), seconds
        )
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return 1e6 / per_call_us(lambda _: key.sign(hashlib.sha256(data).digest()), seconds)


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def write_keys(directory: Path) -> None:
    """An RSA-2048 and an Ed25519 key, as ``rsa.pem`` and ``ed.pem``."""
    (directory / "rsa.pem").write_text(
        pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    )
    (directory / "ed.pem").write_text(pem(ed25519.Ed25519PrivateKey.generate()))


DKIM = {
    "rsa": '[[dkim]]\ndomain = "sender.test"\nselector = "r"\nkey_file = "rsa.pem"\n',
    "ed25519": '[[dkim]]\ndomain = "sender.test"\nselector = "e"\n'
    'algorithm = "ed25519-sha256"\nkey_file = "ed.pem"\n',
}


def protocol_rates(seconds: float, message: bytes) -> dict[str, float]:
    replies = b"250 2.0.0 Ok: queued as 4ZxYk2abcd\r\n" * 100

    def parse(_: int) -> None:
        parser = ReplyParser()
        parser.feed(replies)
        while parser.next_reply() is not None:
            pass

    proto = ClientProtocol("client.test")
    proto.receive_data(b"220 mx.test ESMTP\r\n")
    proto.next_reply()
    proto.send_ehlo()
    proto.receive_data(b"250-mx.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    proto.next_reply()
    envelope_replies = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"

    def transaction(i: int) -> None:
        proto.send_mail("bounces@sender.test", size=len(message))
        proto.send_rcpt(f"user{i}@example.test")
        proto.send_data()
        proto.receive_data(envelope_replies)
        for _ in range(3):
            proto.next_reply()
        proto.send_body(message)
        proto.receive_data(b"250 2.0.0 Ok: queued as 4ZxYk2abcd\r\n")
        proto.next_reply()

    return {
        "reply_parse_us": per_call_us(parse, seconds) / 100,
        "protocol_transaction_us": per_call_us(transaction, seconds),
        "encode_data_us": per_call_us(lambda _: encode_data(message), seconds),
    }


def render_rates(seconds: float, root: Path) -> dict[str, Any]:
    write_keys(root)
    people = [
        Recipient(a, {"first_name": f"Reader{i}", "code": f"{i:06d}"})
        for i, a in enumerate(addresses(["example.test"], 1000))
    ]
    out: dict[str, Any] = {}
    for name, extra in {"plain": "", **DKIM}.items():
        write_campaign(root, [], toml=campaign_toml(extra=extra))
        campaign = Campaign.load(root / "campaign.toml", {})
        data = campaign.render(people[0]).data
        out[f"render_{name}_bytes"] = len(data)
        out[f"render_{name}_us"] = per_call_us(
            lambda i, c=campaign: c.render(people[i % 1000]), seconds
        )
    block = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"  # the last (signed) message's headers
    for name, key in (("rsa2048", "rsa.pem"), ("ed25519", "ed.pem")):
        out[f"openssl_{name}_sign_us"] = 1e6 / sign_rate((root / key).read_bytes(), block, seconds)
    return out


def journal_apply(root: Path, batches: int = 20) -> dict[str, float]:
    path = root / "journal.db"
    now = time.time()
    journal = Journal.open(path, "micro", now=now)
    journal.import_recipients(
        NewRecipient(f"user{i}@d{i % 20}.test", {"first_name": f"R{i}"})
        for i in range(500 * batches)
    )
    now = time.time() + 60  # everyone imported is due by then
    total = 0.0
    for b in range(batches):
        batch = journal.fetch_due(f"d{b % 20}.test", 500, now=now)
        assert len(batch) == 500, len(batch)
        records = [(d.id, Outcome.delivered(250, "2.0.0", "Ok"), now) for d in batch]
        started = time.process_time()
        journal.apply(records)  # what the journal writer does with a batch during a run
        total += time.process_time() - started
    journal.close()
    per_commit = total / batches
    return {"journal_apply_us": per_commit / 500 * 1e6, "journal_commit_500_ms": per_commit * 1000}


def run(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_campaign(root, [])
        campaign = Campaign.load(root / "campaign.toml", {})
        message = campaign.render(
            Recipient("user1@example.test", {"first_name": "Reader1", "code": "000001"})
        ).data
        result: dict[str, Any] = {"message_bytes": len(message)}
        result.update(protocol_rates(seconds, message))
        result.update(render_rates(seconds, root))
        result.update(journal_apply(root))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds)))  # one line: run.py reads the last JSON line


if __name__ == "__main__":
    main()
