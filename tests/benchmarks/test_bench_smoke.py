"""The benchmark runner, run small, so that it cannot silently rot.

Runs ``benchmarks/run.py`` with a tiny N against bulksend's own sink (peers that are not
installed are skipped by the runner itself) and checks the JSON it writes: every section
present, bulksend delivered all N as counted by the sink, the peers that ran did too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N = 200


def test_runner_small(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "run.py"),
        "--n", str(N), "--domains", "2", "--connections", "2",
        "--sections", "headline,longtail,scale,micro", "--sinks", "bulksend",
        "--longtail-domains", "20",
        "--peers", "trio-raw,aiosmtplib,smtp-source",
        "--scale-n", "400", "--scale-domains", "200", "--scale-send", "100",
        "--micro-seconds", "0.02", "--sink-speed-n", "200",
        "--timeout", "60", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())

    assert {"machine", "command", "config", "headline", "scale", "micro", "ratios", "targets"} <= (
        results.keys()
    )
    runs = results["headline"]["bulksend"]
    ours = runs["bulksend"]
    assert "error" not in ours, ours
    assert ours["delivered"] == N
    assert ours["sink_count"] == N
    assert {"msgs_per_s", "cpu_s_per_1k", "peak_rss_mb", "send_seconds"} <= ours.keys()
    for peer in ("trio-raw", "aiosmtplib", "smtp-source"):
        run = runs[peer]
        assert "skipped" in run or (run["sink_count"] == N and "error" not in run), (peer, run)
    assert "bulksend sink: bulksend / trio-raw" in results["ratios"]

    tail = results["longtail"]["long tail"]
    assert tail["delivered"] == tail["sink_count"] == tail["messages"] == 39  # 1-3 each
    assert "long tail / headline msgs/s" in results["ratios"]

    scale = results["scale"]
    assert scale["import large"]["imported"] == 400
    send = scale["bounded send"]
    assert send["delivered"] >= 100  # --limit: in-flight transactions may finish after it
    assert send["sink_count"] == send["delivered"]

    micro = results["micro"]
    for key in (
        "reply_parse_per_s",
        "encode_data_per_s",
        "render_plain_per_s",
        "render_rsa_per_s",
        "render_ed25519_per_s",
        "openssl_rsa2048_sign_per_s",
        "journal_commit_500_ms",
        "sink_capacity_msgs_per_s",
    ):
        assert micro[key] > 0, key
    assert (out.with_suffix(".md")).read_text().startswith("###")
