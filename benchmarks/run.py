"""bulksend against its peers: throughput, CPU and memory, side by side in one run.

    make bench                                  # the defaults below
    .venv/bin/python benchmarks/run.py --quick  # tiny N, a minute or so
    .venv/bin/python benchmarks/run.py --n 100000 --domains 10 --connections 4

Everything runs on this machine, on loopback (127.0.0.x), in separate processes so that no
two share a core more than the machine forces them to: the sink (DNS + SMTP servers,
``benchmarks/sink.py``), the sender under test (``benchmarks/sender.py`` for bulksend,
``benchmarks/peers.py`` for the others) and this orchestrator, which only waits. The sink
counts what it accepted; a run counts only if the sink saw every message.

Sections (``--sections``, comma separated):

* ``headline``: N personalised ~2 KB messages, one recipient per transaction, over K
  domains (one site each, ``--connections`` connections per site) from bulksend (journal
  and metrics on, ``run_campaign``), aiosmtplib, smtplib + threads, Postfix smtp-source
  and a bare pipelined trio loop; against bulksend's own test server and Postfix's
  smtp-sink (``--sinks``).
* ``variants``: bulksend with 1 site, with 1000 sites, DKIM rsa-2048 and ed25519;
  multi-recipient transactions are reported as not supported.
* ``longtail``: a long tail of small domains, each its own site (``--longtail-domains``,
  10k), with 1 to 3 recipients each, under bulksend's default connection limits (500 open
  in all, 30 s idle timeout); its msgs/s beside the headline's 10 sites. Bounded by
  ``--longtail-seconds``: a run that does not finish in time reports the sink's count.
* ``scale``: a 1M-recipient list over 10k domains: import time and peak RSS (and the same
  for a list 10x smaller, to show RSS does not grow with it), then a bounded send of the
  first ``--scale-send`` recipients out of the 1M journal.
* ``micro``: ``benchmarks/micro.py`` (reply parsing, ``encode_data``, rendering plain /
  DKIM next to OpenSSL's raw signing rate, journal commits) and the sink's own capacity
  (``benchmarks/sink_speed.py``).

Writes ``benchmarks/out/results.json`` (``--out``) and prints the tables (markdown).
A peer that is not installed (aiosmtplib, smtp-source, smtp-sink) is skipped with a note;
``make bench-tools`` installs them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from micro import DKIM, write_keys  # noqa: E402

from bulksend.campaign import Campaign, Recipient  # noqa: E402
from bulksend.testing.scenario import (  # noqa: E402
    addresses,
    campaign_toml,
    write_campaign,
    write_shared_campaign,
)

PY = sys.executable
PEERS = ("aiosmtplib", "smtplib", "smtp-source", "trio-raw")


# -- machine ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def available() -> dict[str, bool]:
    return {
        "aiosmtplib": importlib.util.find_spec("aiosmtplib") is not None,
        "smtplib": True,
        "trio-raw": True,
        "smtp-source": bool(shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()),
        "smtp-sink": bool(shutil.which("smtp-sink") or Path("/usr/sbin/smtp-sink").exists()),
    }


# -- the world: sites, the sink process ---------------------------------------------------


def site_layout(sites: int, domains_per_site: int, prefix: str = "s") -> list[dict[str, Any]]:
    """``sites`` sites on 127.0.x.y (never 127.0.0.1, where DNS is), their domains."""
    layout = []
    for i in range(sites):
        address = f"127.0.{10 + i // 250}.{1 + i % 250}"
        domains = [f"d{i}-{j}.{prefix}{i}.test" for j in range(domains_per_site)]
        layout.append({"name": f"{prefix}{i}", "address": address, "domains": domains})
    return layout


class Sink:
    """A sink process (``benchmarks/sink.py``): start, ask for the count, stop."""

    def __init__(self, kind: str, layout: list[dict[str, Any]], workdir: Path) -> None:
        spec = workdir / f"sites-{kind}-{len(layout)}.json"
        spec.write_text(json.dumps(layout))
        self.kind = kind
        self.process = subprocess.Popen(
            [PY, str(HERE / "sink.py"), str(spec), "--kind", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ports = json.loads(self._line(60))
        self.dns_port: int = ports["dns_port"]
        self.smtp_port: int = ports["smtp_port"]

    def _line(self, seconds: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], seconds)
        if not ready:
            raise TimeoutError(f"{self.kind} sink did not answer within {seconds}s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} sink exited ({self.process.poll()})")
        return line

    def count(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        return int(json.loads(self._line(10))["messages"])

    def settled_count(self) -> int:
        """The count once it stops moving (smtp-sink reports with a small lag)."""
        last = self.count()
        for _ in range(20):
            time.sleep(0.05)
            now = self.count()
            if now == last:
                return now
            last = now
        return last

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(10)


@contextmanager
def sink(kind: str, layout: list[dict[str, Any]], workdir: Path) -> Iterator[Sink]:
    s = Sink(kind, layout, workdir)
    try:
        yield s
    finally:
        s.close()


# -- campaigns ----------------------------------------------------------------------------


def policy(connections: int) -> str:
    # Connections are reused for as long as the peers reuse theirs (all their messages).
    return (
        "[policy]\nmax_total_connections = 1000\n\n"
        f"[policy.defaults]\nmax_connections = {connections}\n"
        "messages_per_connection = 1000000\n"
    )


def make_campaign(
    directory: Path,
    layout: list[dict[str, Any]],
    n: int,
    connections: int,
    dkim: str = "",
) -> Path:
    domains = [d for site in layout for d in site["domains"]]
    directory.mkdir(parents=True, exist_ok=True)
    if dkim:
        write_keys(directory)
    return write_campaign(
        directory,
        addresses(domains, n),
        toml=campaign_toml(
            campaign_id=directory.name, policy=policy(connections), extra=DKIM.get(dkim, "")
        ),
    )


def peer_plan(
    toml: Path, layout: list[dict[str, Any]], n: int, connections: int, port: int
) -> dict[str, Any]:
    """The same messages bulksend sends (rendered by bulksend), site by site."""
    campaign = Campaign.load(toml, {})
    site_of = {d: s["address"] for s in layout for d in s["domains"]}
    domains = [d for site in layout for d in site["domains"]]
    per_site: dict[str, int] = {}
    for i in range(n):
        address = site_of[domains[i % len(domains)]]
        per_site[address] = per_site.get(address, 0) + 1
    messages = []
    for i, recipient in enumerate(campaign.recipients()):
        if i >= max(1000, len(domains)):
            break
        rendered = campaign.render(Recipient(recipient.address, dict(recipient.fields)))
        messages.append(
            {
                "site": site_of[recipient.address.rpartition("@")[2]],
                "sender": rendered.envelope_sender,
                "recipient": rendered.recipient,
                "data": rendered.data.decode("latin-1"),
            }
        )
    return {"port": port, "connections": connections, "per_site": per_site, "messages": messages}


# -- running senders ----------------------------------------------------------------------


def _run_json(command: list[str], seconds: float) -> dict[str, Any]:
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {seconds:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    if done.returncode:
        result["error"] = f"exit {done.returncode}: {done.stderr.strip()[-400:]}"
    return result


def run_bulksend(
    s: Sink,
    toml: Path,
    journal: Path,
    *,
    limit: int | None = None,
    profile: Path | None = None,
    py_spy: Path | None = None,
    seconds: float = 600,
    workers: int | None = None,
) -> dict[str, Any]:
    before = s.settled_count()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    wrapper = [spy, "record", "-r", "200", "-f", "raw", "-o", str(py_spy), "--"] if py_spy else []
    command = [
        *wrapper,
        PY, str(HERE / "sender.py"), str(toml), str(journal),
        "--dns-port", str(s.dns_port), "--smtp-port", str(s.smtp_port),
    ]  # fmt: skip
    if limit is not None:
        command += ["--limit", str(limit)]
    if workers is not None:
        command += ["--workers", str(workers)]
    if profile is not None:
        command += ["--profile", str(profile)]
    result = _run_json(command, seconds)
    result["sink_count"] = s.settled_count() - before
    delivered = result.get("delivered", 0)
    if delivered and result.get("send_seconds"):
        result["msgs_per_s"] = delivered / result["send_seconds"]
        result["cpu_s_per_1k"] = result["send_cpu_seconds"] / delivered * 1000
    return result


def run_peer(peer: str, s: Sink, plan: Path, n: int, seconds: float) -> dict[str, Any]:
    before = s.settled_count()
    result = _run_json([PY, str(HERE / "peers.py"), peer, str(plan)], seconds)
    result["sink_count"] = s.settled_count() - before
    if result.get("sent") and result.get("seconds"):
        result["delivered"] = result["sent"]
        result["msgs_per_s"] = result["sent"] / result["seconds"]
        result["cpu_s_per_1k"] = result["cpu_seconds"] / result["sent"] * 1000
    if result.get("sink_count") != n and "error" not in result:
        result["error"] = f"sink counted {result.get('sink_count')} of {n}"
    return result


# -- sections -----------------------------------------------------------------------------


def headline(args: argparse.Namespace, work: Path, have: dict[str, bool]) -> dict[str, Any]:
    layout = site_layout(args.domains, 1)
    toml = make_campaign(work / "headline", layout, args.n, args.connections)
    out: dict[str, Any] = {}
    peers = [p for p in args.peers.split(",") if p]
    for kind in args.sinks.split(","):
        if kind == "postfix" and not have["smtp-sink"]:
            out[kind] = {"skipped": "smtp-sink not installed (make bench-tools)"}
            continue
        runs: dict[str, Any] = {}
        with sink(kind, layout, work) as s:
            journal = work / f"headline-{kind}.db"
            runs["bulksend"] = run_bulksend(
                s, toml, journal, seconds=args.timeout, profile=args.profile, py_spy=args.py_spy
            )
            plan = work / "plan.json"
            plan.write_text(
                json.dumps(peer_plan(toml, layout, args.n, args.connections, s.smtp_port))
            )
            for peer in peers:
                if not have[peer]:
                    runs[peer] = {"skipped": f"{peer} not installed (make bench-tools)"}
                    continue
                runs[peer] = run_peer(peer, s, plan, args.n, args.timeout)
        out[kind] = runs
        _progress(f"headline against {kind} sink", runs)
    return out


def variants(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases = {
        "1 site": (site_layout(1, args.domains), args.n, ""),
        f"{args.many_sites} sites": (site_layout(args.many_sites, 1), args.n, ""),
        "dkim rsa-2048": (site_layout(args.domains, 1), args.dkim_n, "rsa"),
        "dkim ed25519": (site_layout(args.domains, 1), args.dkim_n, "ed25519"),
    }
    for name, (layout, n, dkim) in cases.items():
        slug = name.replace(" ", "-")
        toml = make_campaign(work / slug, layout, n, args.connections, dkim)
        with sink("bulksend", layout, work) as s:
            out[name] = run_bulksend(s, toml, work / f"{slug}.db", seconds=args.timeout)
            out[name]["messages"] = n
        _progress(name, {name: out[name]})
    # A campaign whose message is the same for everyone: up to 10 recipients per transaction.
    layout = site_layout(args.domains, 1)
    domains = [d for site in layout for d in site["domains"]]
    toml = write_shared_campaign(
        work / "multi-recipient",
        addresses(domains, args.n),
        per_transaction=10,
        policy=f"max_connections = {args.connections}",
    )
    with sink("bulksend", layout, work) as s:
        out["multi-recipient (10 per transaction)"] = run_bulksend(
            s, toml, work / "multi-recipient.db", seconds=args.timeout
        )
    return out


def workers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """msgs/s with 1 and 2 (or --workers) processes, same campaign and sink; import included
    in both so that the ratio compares like with like."""
    layout = site_layout(args.domains, 1)
    out: dict[str, Any] = {}
    for count in range(1, args.workers + 1):
        slug = f"workers-{count}"
        toml = make_campaign(work / slug, layout, args.n, args.connections)
        with sink("bulksend", layout, work) as s:
            started = time.perf_counter()
            out[slug] = run_bulksend(
                s, toml, work / f"{slug}.db", seconds=args.timeout, workers=count
            )
            out[slug]["wall_seconds"] = time.perf_counter() - started
            out[slug]["messages"] = args.n
        _progress(slug, {slug: out[slug]})
    return out


def isolation(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The fast site's msgs/s alone, and beside a black-hole site (accepts TCP, never
    answers) in the same campaign: the black hole should only tie up its own connections."""
    fast = site_layout(1, 1, prefix="fast")
    hole = [{**site_layout(1, 1, prefix="hole")[0], "address": "127.0.11.1", "mode": "blackhole"}]
    n = args.n // 2
    out: dict[str, Any] = {}
    for name, layout, extra in (
        ("fast site alone", fast, 0),
        ("fast site + black hole", fast + hole, n // 10),
    ):
        domains = [d for site in layout for d in site["domains"]]
        slug = name.replace(" ", "-").replace("+", "and")
        directory = work / slug
        directory.mkdir(parents=True, exist_ok=True)
        recipients = (
            addresses(domains[:1], n) + addresses(domains[1:], extra)
            if extra
            else addresses(domains, n)
        )
        toml = write_campaign(
            directory,
            recipients,
            toml=campaign_toml(campaign_id=slug, policy=policy(args.connections)),
        )
        with sink("bulksend", layout, work) as s:
            out[name] = _time_until(s, toml, work / f"{slug}.db", n, args.timeout)
        _progress(name, {name: out[name]})
    alone = _rate(out.get("fast site alone"))
    beside = _rate(out.get("fast site + black hole"))
    if alone and beside:
        out["ratio"] = beside / alone
    return out


def _time_until(s: Sink, toml: Path, journal: Path, n: int, seconds: float) -> dict[str, Any]:
    """Run the sender until the sink has counted ``n`` messages; msgs/s over that time."""
    before = s.count()
    command = [
        PY, str(HERE / "sender.py"), str(toml), str(journal),
        "--dns-port", str(s.dns_port), "--smtp-port", str(s.smtp_port),
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while s.count() - before < n:
            if time.perf_counter() - started > seconds or process.poll() is not None:
                return {"error": f"sink counted {s.count() - before} of {n}"}
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    return {"delivered": n, "send_seconds": elapsed, "msgs_per_s": n / elapsed, "sink_count": n}


def longtail(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Many small sites: one domain each, 1 to 3 recipients each, default limits."""
    layout = site_layout(args.longtail_domains, 1, prefix="t")
    domains = [site["domains"][0] for site in layout]
    recipients = [f"user{j}@{d}" for i, d in enumerate(domains) for j in range(1 + i % 3)]
    toml = write_campaign(work / "longtail", recipients, toml=campaign_toml(campaign_id="longtail"))
    with sink("bulksend", layout, work) as s:
        started = time.perf_counter()
        run = run_bulksend(s, toml, work / "longtail.db", seconds=args.longtail_seconds)
        elapsed = time.perf_counter() - started
    run.update(domains=len(domains), messages=len(recipients), wall_seconds=elapsed)
    if "error" in run and run["sink_count"]:
        # Not finished in time: the rate so far (import and start-up included).
        run["partial_msgs_per_s"] = run["sink_count"] / elapsed
    _progress("long tail", {"long tail": run})
    return {"long tail": run}


def scale(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sites, per_site = args.scale_domains // 100, 100
    layout = site_layout(sites, per_site, prefix="x")
    small = args.scale_n // 10
    for label, n in (("small", small), ("large", args.scale_n)):
        started = time.perf_counter()
        toml = make_campaign(work / f"scale-{label}", layout, n, args.connections)
        written = time.perf_counter() - started
        journal = work / f"scale-{label}.db"
        result = _run_json(
            [PY, str(HERE / "sender.py"), str(toml), str(journal), "--import-only"], args.timeout
        )
        result["recipients"] = n
        result["csv_write_seconds"] = written
        result["journal_mb"] = journal.stat().st_size / 2**20 if journal.exists() else None
        out[f"import {label}"] = result
        _progress(f"import of {n} recipients", {label: result})
    with sink("bulksend", layout, work) as s:
        out["bounded send"] = run_bulksend(
            s,
            work / "scale-large" / "campaign.toml",
            work / "scale-large.db",
            limit=args.scale_send,
            seconds=args.timeout,
        )
    out["bounded send"]["of"] = args.scale_n
    _progress("bounded send", {"send": out["bounded send"]})
    return out


def micro(args: argparse.Namespace) -> dict[str, Any]:
    result = _run_json(
        [PY, str(HERE / "micro.py"), "--seconds", str(args.micro_seconds)], args.timeout
    )
    out = dict(result)
    speed = subprocess.run(
        [PY, str(HERE / "sink_speed.py"), "--messages", str(args.sink_speed_n)],
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    line = speed.stdout.strip().splitlines()[-1] if speed.stdout.strip() else speed.stderr
    out["sink_capacity"] = line.strip()
    with suppress(IndexError, ValueError):
        rate = line.split(" msgs/s")[0].split()[-1]
        out["sink_capacity_msgs_per_s"] = float(rate.replace(",", ""))
    return out


# -- ratios, targets, tables --------------------------------------------------------------


def _rate(run: dict[str, Any] | None) -> float | None:
    if not run or "error" in run or "skipped" in run:
        return None
    value = run.get("msgs_per_s")
    return float(value) if value else None


def _sections(results: dict[str, Any]) -> dict[str, Any]:
    """The results without sections that failed as a whole."""
    return {k: v for k, v in results.items() if not (isinstance(v, dict) and set(v) == {"error"})}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    results = _sections(results)
    out: dict[str, Any] = {}
    for kind, runs in results.get("headline", {}).items():
        ours = _rate(runs.get("bulksend"))
        for peer in PEERS:
            theirs = _rate(runs.get(peer))
            if ours and theirs:
                out[f"{kind} sink: bulksend / {peer}"] = ours / theirs
    m = results.get("micro", {})
    for name, key in (
        ("rsa-2048", "openssl_rsa2048_sign_per_s"),
        ("ed25519", "openssl_ed25519_sign_per_s"),
    ):
        ours = _rate(results.get("variants", {}).get(f"dkim {name}"))
        if ours and m.get(key):
            out[f"dkim {name}: bulksend msgs/s / OpenSSL raw signs/s"] = ours / m[key]
    iso = results.get("isolation", {})
    if "ratio" in iso:
        out["fast site beside a black hole / alone msgs/s"] = iso["ratio"]
    tail = _rate(results.get("longtail", {}).get("long tail"))
    head = _rate(results.get("headline", {}).get("bulksend", {}).get("bulksend"))
    if tail and head:
        out["long tail / headline msgs/s"] = tail / head
    w = results.get("workers", {})
    one = _rate(w.get("workers-1"))
    for name, run in w.items():
        rate = _rate(run)
        if one and rate and name != "workers-1":
            out[f"{name} / workers-1 msgs/s"] = rate / one
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    results = _sections(results)
    r = results.get("ratios", {})
    out: dict[str, Any] = {}

    def check(name: str, value: float | None, goal: float, higher: bool = True) -> None:
        if value is None:
            out[name] = {"value": None, "goal": goal, "met": None}
        else:
            out[name] = {
                "value": value,
                "goal": goal,
                "met": value >= goal if higher else value < goal,
            }

    for kind in ("bulksend", "postfix"):
        check(f"{kind} sink: >= 4x aiosmtplib", r.get(f"{kind} sink: bulksend / aiosmtplib"), 4.0)
        check(
            f"{kind} sink: >= 60% of bare trio loop",
            r.get(f"{kind} sink: bulksend / trio-raw"),
            0.6,
        )
    for name in ("rsa-2048", "ed25519"):
        check(
            f"dkim {name}: >= 80% of raw signing",
            r.get(f"dkim {name}: bulksend msgs/s / OpenSSL raw signs/s"),
            0.8,
        )
    large = results.get("scale", {}).get("import large", {})
    small = results.get("scale", {}).get("import small", {})
    check("1M import < 10 s", large.get("import_seconds"), 10.0, higher=False)
    check("1M import peak RSS < 200 MB", large.get("peak_rss_mb"), 200.0, higher=False)
    send = results.get("scale", {}).get("bounded send", {})
    check(
        "send from the 1M journal: peak RSS < 200 MB", send.get("peak_rss_mb"), 200.0, higher=False
    )
    if large.get("peak_rss_mb") and small.get("peak_rss_mb"):
        out["RSS growth, 10x list"] = {"value": large["peak_rss_mb"] / small["peak_rss_mb"]}
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _row(name: str, run: dict[str, Any], base: float | None) -> str:
    if "skipped" in run:
        return f"| {name} | skipped: {run['skipped']} | | | | |"
    rate = _rate(run)
    ratio = f"{base / rate:.2f}" if base and rate else "-"
    note = f" ({run['error']})" if "error" in run else ""
    return (
        f"| {name}{note} | {_fmt(rate)} | {_fmt(run.get('cpu_s_per_1k'), 3)} | "
        f"{_fmt(run.get('peak_rss_mb'), 0)} | {_fmt(run.get('sink_count'))} | {ratio} |"
    )


def tables(results: dict[str, Any]) -> str:
    head = "| sender | msgs/s | CPU s / 1k msgs | peak RSS MB | sink count | bulksend / this |\n"
    head += "| --- | ---: | ---: | ---: | ---: | ---: |\n"
    failed = [
        f"### {k}: failed ({v['error']})\n"
        for k, v in results.items()
        if k not in _sections(results)
    ]
    results = _sections(results)
    parts = failed
    c = results["config"]
    for kind, runs in results.get("headline", {}).items():
        if "skipped" in runs:
            parts.append(f"### {kind} sink: skipped ({runs['skipped']})\n")
            continue
        base = _rate(runs.get("bulksend"))
        title = (
            f"### {c['n']:,} messages, {c['domains']} domains/sites, "
            f"{c['connections']} connections per site, {kind} sink\n\n"
        )
        rows = [_row(name, run, base) for name, run in runs.items()]
        parts.append(title + head + "\n".join(rows) + "\n")
    if "variants" in results:
        rows = [_row(name, run, None) for name, run in results["variants"].items()]
        parts.append("### bulksend variants (bulksend sink)\n\n" + head + "\n".join(rows) + "\n")
    if "isolation" in results:
        rows = [
            _row(name, run, None) for name, run in results["isolation"].items() if name != "ratio"
        ]
        parts.append(
            "### isolation: the fast site alone and beside a black hole\n\n"
            + head
            + "\n".join(rows)
            + "\n"
        )
    if "workers" in results:
        rows = [_row(name, run, None) for name, run in results["workers"].items()]
        parts.append(
            "### send --workers N (bulksend sink; import included)\n\n"
            + head
            + "\n".join(rows)
            + "\n"
        )
    if "longtail" in results:
        run = results["longtail"]["long tail"]
        headline_run = results.get("headline", {}).get("bulksend", {}).get("bulksend")
        note = f" ({run['error']})" if "error" in run else ""
        lines = [
            "### long tail: one site per domain, 1-3 recipients each, default limits\n",
            "| run | domains | messages | sink count | seconds | msgs/s | headline msgs/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| long tail{note} | {_fmt(run.get('domains'))} | {_fmt(run.get('messages'))} | "
            f"{_fmt(run.get('sink_count'))} | {_fmt(run.get('wall_seconds'), 1)} | "
            f"{_fmt(_rate(run) or run.get('partial_msgs_per_s'))} | {_fmt(_rate(headline_run))} |",
        ]
        parts.append("\n".join(lines) + "\n")
    if "scale" in results:
        lines = [
            "### scale\n",
            "| step | recipients | seconds | peak RSS MB | journal MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, run in results["scale"].items():
            if "skipped" in run:
                lines.append(f"| {name} | skipped: {run['skipped']} | | | |")
            elif name.startswith("import"):
                lines.append(
                    f"| {name} | {_fmt(run.get('imported'))} | "
                    f"{_fmt(run.get('import_seconds'), 2)} | {_fmt(run.get('peak_rss_mb'))} | "
                    f"{_fmt(run.get('journal_mb'))} |"
                )
            else:
                lines.append(
                    f"| {name} ({_fmt(run.get('msgs_per_s'))} msgs/s) | "
                    f"{_fmt(run.get('delivered'))} of {_fmt(run.get('of'))} | "
                    f"{_fmt(run.get('send_seconds'), 2)} | {_fmt(run.get('peak_rss_mb'))} | |"
                )
        parts.append("\n".join(lines) + "\n")
    if "micro" in results:
        lines = ["### micro-benchmarks (one core)\n", "| measure | value |", "| --- | ---: |"]
        for key, value in results["micro"].items():
            lines.append(f"| {key} | {_fmt(value, 3 if 'ms' in key else 0)} |")
        parts.append("\n".join(lines) + "\n")
    if results.get("ratios"):
        lines = ["### ratios\n", "| ratio | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in results["ratios"].items()]
        parts.append("\n".join(lines) + "\n")
    if results.get("targets"):
        lines = ["### targets\n", "| target | measured | met |", "| --- | ---: | --- |"]
        for k, v in results["targets"].items():
            met = {True: "yes", False: "**no**", None: "-"}[v.get("met")] if "met" in v else ""
            lines.append(f"| {k} | {_fmt(v.get('value'), 2)} | {met} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _progress(label: str, runs: dict[str, Any]) -> None:
    for name, run in runs.items():
        brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.items()
                 if k in ("msgs_per_s", "cpu_s_per_1k", "peak_rss_mb", "sink_count", "error",
                          "skipped", "import_seconds", "delivered")}  # fmt: skip
        print(f"[{label}] {name}: {brief}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny N everywhere (a smoke run)")
    parser.add_argument("--n", type=int, help="messages in the headline (default 100000)")
    parser.add_argument("--domains", type=int, default=10, help="domains = sites (default 10)")
    parser.add_argument("--connections", type=int, default=4, help="per site (default 4)")
    parser.add_argument("--dkim-n", type=int, help="messages per DKIM run (default n/5)")
    parser.add_argument("--many-sites", type=int, default=1000)
    parser.add_argument("--scale-n", type=int, help="recipients in the scale test (1000000)")
    parser.add_argument("--scale-domains", type=int, help="their domains (10000)")
    parser.add_argument("--scale-send", type=int, help="bounded send from it (100000)")
    parser.add_argument("--longtail-domains", type=int, help="long tail: domains = sites (10000)")
    parser.add_argument(
        "--longtail-seconds", type=float, default=600, help="long tail: time bound (600)"
    )
    parser.add_argument("--micro-seconds", type=float, help="per micro-benchmark (1.0)")
    parser.add_argument("--sink-speed-n", type=int, help="messages for the sink capacity")
    parser.add_argument(
        "--sections", default="headline,variants,workers,isolation,longtail,scale,micro"
    )
    parser.add_argument("--workers", type=int, default=2, help="measure 1..N worker processes")
    parser.add_argument("--sinks", default="bulksend,postfix")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--timeout", type=float, default=900, help="per process, seconds")
    parser.add_argument("--profile", type=Path, help="cProfile the headline bulksend send")
    parser.add_argument("--py-spy", type=Path, help="py-spy (raw stacks) of that send")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "results.json")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "n": 2000 if quick else 100_000,
        "scale_n": 20_000 if quick else 1_000_000,
        "scale_domains": 200 if quick else 10_000,
        "scale_send": 2000 if quick else 100_000,
        "longtail_domains": 300 if quick else 10_000,
        "micro_seconds": 0.2 if quick else 1.0,
        "many_sites": 100 if quick and args.many_sites == 1000 else args.many_sites,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None or key == "many_sites":
            setattr(args, key, value)
    if args.dkim_n is None:
        args.dkim_n = max(args.n // 5, 100)
    if args.sink_speed_n is None:
        args.sink_speed_n = max(args.n // 5, 1000)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    have = available()
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join([Path(PY).name, "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "config": {
            "n": args.n,
            "domains": args.domains,
            "connections": args.connections,
            "dkim_n": args.dkim_n,
            "many_sites": args.many_sites,
            "scale_n": args.scale_n,
            "scale_domains": args.scale_domains,
            "scale_send": args.scale_send,
            "longtail_domains": args.longtail_domains,
        },
        "available": have,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    steps = {
        "headline": lambda work: headline(args, work, have),
        "variants": lambda work: variants(args, work),
        "workers": lambda work: workers(args, work),
        "isolation": lambda work: isolation(args, work),
        "longtail": lambda work: longtail(args, work),
        "scale": lambda work: scale(args, work),
        "micro": lambda _work: micro(args),
    }
    with tempfile.TemporaryDirectory(prefix="bulksend-bench-") as tmp:
        for name, step in steps.items():
            if name not in sections:
                continue
            try:
                results[name] = step(Path(tmp))
            except Exception as exc:  # one broken section must not lose the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"[{name}] failed: {exc!r}", file=sys.stderr)
            args.out.write_text(json.dumps(results, indent=2))  # a checkpoint per section
    results["ratios"] = ratios(results)
    results["targets"] = targets(results)
    args.out.write_text(json.dumps(results, indent=2))
    text = tables(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"results: {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
