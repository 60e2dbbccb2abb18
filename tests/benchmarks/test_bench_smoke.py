"""The benchmark commands, run small, so that they cannot silently rot.

Runs ``benchmarks/run.py`` (what ``make bench`` runs, plus the scale and long-tail sections)
with a tiny N against bulksend's own sink and checks the JSON it writes: every repetition of
every sender counted in full by the sink, in interleaved rounds, the per-round ratios and the
targets computed from them. Then ``benchmarks/profile_layers.py`` at a tiny N: its layers
add up to the send's measured CPU. A peer that is not installed is skipped by the runner
(``make bench`` installs aiosmtplib).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N = 200
REPS = 2


def test_runner_small(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "run.py"),
        "--n", str(N), "--reps", str(REPS), "--domains", "2", "--dkim-n", "40",
        "--sections", "compare,dkim,longtail,scale,micro", "--longtail-domains", "20",
        "--peers", "trio-raw,aiosmtplib,smtp-source", "--sign-seconds", "0.05",
        "--scale-n", "400", "--scale-domains", "200", "--scale-send", "100",
        "--micro-seconds", "0.02", "--sink-speed-n", "200",
        "--timeout", "60", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())

    assert {"machine", "command", "config", "compare", "dkim", "analysis", "targets"} <= (
        results.keys()
    )
    runs = results["compare"]["bulksend"]
    assert len(runs["bulksend"]) == REPS
    for rep in runs["bulksend"]:
        assert "error" not in rep, rep
        assert rep["delivered"] == rep["sink_count"] == N
        assert rep["send_cpu_seconds"] > 0
    for peer in ("trio-raw", "aiosmtplib", "smtp-source"):
        reps = runs[peer]
        assert "skipped" in reps or [r["sink_count"] for r in reps] == [N] * REPS, (peer, reps)
    summaries = results["analysis"]["summaries"]
    ours = summaries["bulksend sink: bulksend"]
    assert ours["cpu_us_per_msg"]["count"] == REPS
    assert ours["cpu_us_per_msg"]["min"] <= ours["cpu_us_per_msg"]["median"]
    assert ours["cpu_us_per_msg"]["median"] <= ours["cpu_us_per_msg"]["max"]
    ratio = results["analysis"]["ratios"]["bulksend sink: bulksend CPU efficiency / trio-raw"]
    assert len(ratio["rounds"]) == REPS
    assert all(r > 0 for r in ratio["rounds"])
    assert "bulksend sink: CPU efficiency >= 50% of the bare trio loop" in results["targets"]

    dkim = results["dkim"]
    for name in ("unsigned", "ed25519", "rsa-2048"):
        assert [r["sink_count"] for r in dkim[name]] == [40] * REPS, (name, dkim[name])
    assert all(r["signs_per_cpu_s"] > 0 for r in dkim["openssl rsa-2048 sign"])
    assert "dkim rsa-2048: >= 80% of OpenSSL's raw sign rate" in results["targets"]

    tail = results["longtail"]["long tail"]
    assert tail["delivered"] == tail["sink_count"] == tail["messages"] == 39  # 1-3 each

    scale = results["scale"]
    assert scale["import large"]["imported"] == 400
    send = scale["bounded send"]
    assert send["delivered"] >= 100  # --limit: in-flight transactions may finish after it
    assert send["sink_count"] == send["delivered"]

    micro = results["micro"]
    for key in (
        "reply_parse_us",
        "encode_data_us",
        "render_plain_us",
        "render_rsa_us",
        "render_ed25519_us",
        "openssl_rsa2048_sign_us",
        "journal_apply_us",
        "sink_capacity_msgs_per_s",
    ):
        assert micro[key] > 0, key
    text = out.with_suffix(".md").read_text()
    assert text.startswith("### compare: 200 messages per rep, 2 domains x 1 connection(s)")
    assert "| bulksend | " in text


def test_profile_layers_small(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "profile_layers.py"),
        "--n", str(N), "--domains", "2", "--timeout", "60", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    layers = result["layers_us_per_msg"]
    assert set(layers) >= {"rendering", "smtp protocol", "trio machinery", "journal"}
    assert layers["rendering"] > 0
    # SQLite runs in the journal's worker thread: seen only if every thread is profiled.
    assert any("sqlite3.Connection" in name for name, _ in result["top"]["journal"])
    assert abs(sum(layers.values()) - result["cpu_us_per_msg"]) < 0.05 * result["cpu_us_per_msg"]
    assert "| rendering | " in done.stdout


def test_workers_small(tmp_path: Path) -> None:
    """``benchmarks/workers.py`` (issue 17): embedded vs workers on PostgreSQL + Redis."""
    try:
        from tests.helpers.postgres import find_bindir  # noqa: PLC0415
    except ImportError as e:
        pytest.skip(f"psycopg is not installed ({e}): pip install -e '.[test]'")
    from tests.helpers.redis import server_binary  # noqa: PLC0415

    if find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine")
    if server_binary() is None:
        pytest.skip("neither redis-server nor valkey-server is installed")
    out = tmp_path / "workers.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "workers.py"),
        "--n", str(N), "--reps", "1", "--workers", "1,2", "--timeout", "60", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["runs"]) == {"embedded", "shared-1", "shared-2"}
    for config, runs in results["runs"].items():
        (run,) = runs
        assert "error" not in run and "idle_error" not in run, (config, run)
        assert run["sink_count"] == N
        assert sum(run["delivered_per_process"]) == N
        assert run["cpu_us_per_msg"] > 0
    assert results["runs"]["shared-1"][0]["postgres_cpu_s"] > 0  # /proc read it
    ratios = results["analysis"]["ratios"]
    assert ratios["shared-1 / embedded: bulksend CPU per msg"]["median"] > 0
    assert ratios["shared-2 / shared-1: msgs/s"]["median"] > 0
    assert "| shared-2 | " in out.with_suffix(".md").read_text()
