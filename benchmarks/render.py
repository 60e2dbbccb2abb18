"""Renders per second on one core: plain, DKIM rsa-sha256 (2048) and ed25519-sha256.

Also measures the raw signing rate of ``cryptography`` in the same run, so the cost of
rendering itself can be told from the cost of the signature, and the recipient reader's rate.

    .venv/bin/python benchmarks/render.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from bulksend.campaign import Campaign, Recipient, RecipientReader

TOML = """
[campaign]
id = "bench"

[message]
from = "news@example.org"
from_name = "Example News"
subject = "Spring offers for {{ first_name }}"
to_name = "{{ first_name }} {{ last_name }}"
text = "body.txt"
html = "body.html"

[envelope]
sender = "bounces+{token}@example.org"

[recipients]
file = "recipients.csv"

[unsubscribe]
url = "https://example.org/u?c={{ campaign_id }}&t={{ token }}"
"""

TEXT = """Hi {{ first_name }},

Spring is here, and so are our offers. This month: {{ offer }}.
{% for i in range(8) %}Line {{ i }} of a typical newsletter paragraph with some words in it.
{% endfor %}
Unsubscribe: {{ unsubscribe_url }}
"""

HTML = """<!doctype html><html><body>
<h1>Hi {{ first_name }},</h1><p>Spring is here. This month: <b>{{ offer }}</b>.</p>
{% for i in range(8) %}<p>Paragraph {{ i }} of a typical newsletter, with a few words.</p>
{% endfor %}<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>
"""


def rate(fn: Callable[[int], object], seconds: float) -> float:
    """Calls per second of ``fn(i)`` over about ``seconds``."""
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    data = b"x" * 600

    def rsa_sign(_: int) -> bytes:
        return rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def ed_sign(_: int) -> bytes:
        return ed_key.sign(hashlib.sha256(data).digest())

    print(f"raw cryptography rsa-2048 sign : {rate(rsa_sign, args.seconds):10.0f} /s")
    print(f"raw cryptography ed25519 sign  : {rate(ed_sign, args.seconds):10.0f} /s")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "body.txt").write_text(TEXT)
        (root / "body.html").write_text(HTML)
        (root / "rsa.pem").write_text(pem(rsa_key))
        (root / "ed.pem").write_text(pem(ed_key))
        with (root / "recipients.csv").open("w") as out:
            out.write("email,first_name,last_name,offer,token\n")
            for i in range(100_000):
                out.write(f"user{i}@domain{i % 500}.example.com,Ann{i},Lee,tulips,tok{i}\n")
        variants = {
            "plain": "",
            "dkim rsa-2048": '[dkim]\ndomain = "example.org"\nselector = "r"\n'
            'key_file = "rsa.pem"\n',
            "dkim ed25519": '[dkim]\ndomain = "example.org"\nselector = "e"\n'
            'algorithm = "ed25519-sha256"\nkey_file = "ed.pem"\n',
        }
        people = [
            Recipient(
                f"user{i}@example.com",
                {"first_name": f"Ann{i}", "last_name": "Lee", "offer": "tulips", "token": f"t{i}"},
            )
            for i in range(1000)
        ]
        size = 0
        for name, extra in variants.items():
            (root / "campaign.toml").write_text(TOML + extra)
            campaign = Campaign.load(root / "campaign.toml", {})
            size = len(campaign.render(people[0]).data)
            per_second = rate(lambda i, c=campaign: c.render(people[i % 1000]), args.seconds)
            print(f"render {name:<24}: {per_second:10.0f} /s   ({size} bytes/message)")

        reader = RecipientReader(root / "recipients.csv")
        start = time.perf_counter()
        count = sum(1 for _ in reader)
        elapsed = time.perf_counter() - start
        print(f"read+validate recipients       : {count / elapsed:10.0f} /s   ({count} rows)")


if __name__ == "__main__":
    main()
