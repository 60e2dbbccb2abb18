"""bulksend beside its peers, CPU per message, interleaved repetitions, in one command.

    make bench                                       # compare + dkim + micro, ~5-10 minutes
    .venv/bin/python benchmarks/run.py --n 20000 --reps 3
    .venv/bin/python benchmarks/run.py --sections scale          # 1M recipients / 10k domains
    .venv/bin/python benchmarks/profile_layers.py           # where the CPU goes, per layer

Everything runs on this machine, on loopback (127.0.x.y, port 0 where we bind), in separate
processes: the sink (DNS + SMTP servers, ``benchmarks/sink.py``), the sender under test
(``benchmarks/sender.py`` for bulksend, ``benchmarks/peers.py`` for the others) and this
runner, which only waits. The figure is CPU per message: the sender process's user + system
time (``getrusage``, all its threads) for the send, divided by the messages the sink counted;
msgs/s stands beside it. The machines here are shared and noisy, so the senders run in
interleaved rounds (ABC ABC ABC ...), and each ratio is computed within a round, then
summarised as median and range (min-max) over the rounds. A repetition counts only if the
sink's own counter saw every one of its messages.

Sections (``--sections``, comma separated; ``make bench`` runs ``compare,dkim,micro``):

* ``compare``: ``--n`` personalised ~2.3 KB messages per repetition, one recipient per
  transaction, over ``--domains`` domains (one site each, ``--connections`` connections per
  site: 10 x 1 by default) from bulksend as a user runs it (journal + metrics + Jinja2
  rendering, ``run_campaign``), aiosmtplib (the same messages pre-built, ``sendmail`` in a
  loop per connection) and the bare deep-pipelined trio loop (``trio-raw``); ``--peers`` adds
  ``smtplib`` or Postfix ``smtp-source``, ``--sinks postfix`` Postfix's ``smtp-sink``.
  Ratios: bulksend's CPU efficiency (the peer's CPU per message / bulksend's) per round.
* ``dkim``: bulksend unsigned, ed25519-signed and rsa-2048-signed (``--dkim-n`` messages
  each), interleaved with OpenSSL's raw rsa-2048 sign rate on the same header block
  (``cryptography``'s ``private_key.sign`` in a loop, per CPU second): rsa-2048 signed
  messages per core-second / raw signs per core-second, and ed25519 / unsigned.
* ``micro``: ``benchmarks/micro.py`` (render per message, reply parsing per reply, one
  sans-IO transaction, ``encode_data``, journal apply per outcome) and the sink's own
  capacity (``benchmarks/sink_speed.py``).
* ``scale`` (not in ``make bench``: several minutes): a 1M-recipient list over 10k domains:
  import seconds and peak RSS (and a list 10x smaller, to show RSS does not grow with it),
  then a bounded send of ``--scale-send`` recipients from the 1M journal with the sender's
  RSS sampled as it goes (flat: the quarters stay level).
* ``variants``, ``workers``, ``isolation``, ``longtail``: one site vs many sites and
  multi-recipient transactions; ``send --workers N``; a fast site beside a black hole; a
  long tail of one-site domains (``--longtail-domains``, 1-3 recipients each).

Writes ``benchmarks/out/results.json`` (``--out``) and ``results.md`` beside it, and prints
the tables (markdown). A peer that is not installed is skipped with a note (``make bench``
installs aiosmtplib; ``make bench-tools`` adds Postfix's tools).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from micro import DKIM, sign_rate, write_keys  # noqa: E402

from bulksend.campaign import Campaign, Recipient  # noqa: E402
from bulksend.testing.scenario import (  # noqa: E402
    addresses,
    campaign_toml,
    write_campaign,
    write_shared_campaign,
)

PY = sys.executable
PEERS = ("aiosmtplib", "smtplib", "smtp-source", "trio-raw")
DEFAULT_SECTIONS = "compare,dkim,micro"


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


def _rss_mb(pid: int) -> float | None:
    """The resident set of a running process (Linux ``/proc``), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _run_json(command: list[str], seconds: float, rss: list[float] | None = None) -> dict[str, Any]:
    """Run ``command``, return the last JSON line it printed; append its RSS (MB), sampled
    every 0.25 s, to ``rss`` if given."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + seconds
        while process.poll() is None and time.monotonic() < deadline:
            sample = _rss_mb(process.pid) if rss is not None else None
            if sample is not None and rss is not None:
                rss.append(sample)
            time.sleep(0.25 if rss is not None else 0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
            return {"error": f"timed out after {seconds:.0f}s"}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit {process.returncode}: {stderr.strip()[-800:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    if process.returncode:
        result["error"] = f"exit {process.returncode}: {stderr.strip()[-400:]}"
    return result


def run_bulksend(
    s: Sink,
    toml: Path,
    journal: Path,
    *,
    limit: int | None = None,
    profile: Path | None = None,
    seconds: float = 600,
    workers: int | None = None,
    rss: list[float] | None = None,
    tree: Path | None = None,
) -> dict[str, Any]:
    """``tree``: another checkout's ``benchmarks/sender.py`` under its own ``.venv``."""
    before = s.settled_count()
    python, here = (PY, HERE) if tree is None else (f"{tree}/.venv/bin/python", tree / "benchmarks")
    command = [
        python, str(here / "sender.py"), str(toml), str(journal),
        "--dns-port", str(s.dns_port), "--smtp-port", str(s.smtp_port),
    ]  # fmt: skip
    if limit is not None:
        command += ["--limit", str(limit)]
    if workers is not None:
        command += ["--workers", str(workers)]
    if profile is not None:
        command += ["--profile", str(profile)]
    result = _run_json(command, seconds, rss)
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


def _cpu_us(run: dict[str, Any]) -> float | None:
    """CPU µs per message of a repetition that the sink confirmed, else None."""
    if not run or "error" in run or "skipped" in run or not run.get("cpu_s_per_1k"):
        return None
    return float(run["cpu_s_per_1k"]) * 1000


def _confirmed(run: dict[str, Any], n: int) -> dict[str, Any]:
    """``run`` with an error unless the sink counted exactly ``n`` of its messages."""
    if "error" not in run and run.get("sink_count") != n:
        run["error"] = f"sink counted {run.get('sink_count')} of {n}"
    return run


def interleaved(
    senders: dict[str, Callable[[int], dict[str, Any]]], reps: int, label: str
) -> dict[str, list[dict[str, Any]]]:
    """Run every sender once per round, in order, for ``reps`` rounds (ABC ABC ...)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in senders}
    for round_ in range(reps):
        for name, send in senders.items():
            run = send(round_)
            runs[name].append(run)
            _progress(f"{label} round {round_ + 1}/{reps}", {name: run})
    return runs


def compare(args: argparse.Namespace, work: Path, have: dict[str, bool]) -> dict[str, Any]:
    layout = site_layout(args.domains, 1)
    toml = make_campaign(work / "compare", layout, args.n, args.connections)
    out: dict[str, Any] = {}
    peers = [p for p in args.peers.split(",") if p]
    for kind in args.sinks.split(","):
        if kind == "postfix" and not have["smtp-sink"]:
            out[kind] = {"skipped": "smtp-sink not installed (make bench-tools)"}
            continue
        with sink(kind, layout, work) as s:
            plan = work / f"plan-{kind}.json"
            plan.write_text(
                json.dumps(peer_plan(toml, layout, args.n, args.connections, s.smtp_port))
            )

            def ours(round_: int, s: Sink = s, kind: str = kind) -> dict[str, Any]:
                journal = work / f"compare-{kind}-{round_}.db"
                run = run_bulksend(s, toml, journal, seconds=args.timeout)
                for leftover in work.glob(f"{journal.name}*"):
                    leftover.unlink()
                return _confirmed(run, args.n)

            senders: dict[str, Callable[[int], dict[str, Any]]] = {"bulksend": ours}
            for peer in peers:
                if have[peer]:
                    senders[peer] = lambda _r, p=peer, s=s, plan=plan: run_peer(
                        p, s, plan, args.n, args.timeout
                    )
            runs: dict[str, Any] = interleaved(senders, args.reps, f"compare, {kind} sink")
            for peer in peers:
                if not have[peer]:
                    runs[peer] = {"skipped": f"{peer} not installed (make bench-tools)"}
        out[kind] = runs
    return out


def dkim(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Unsigned, ed25519 and rsa-2048 bulksend sends, and OpenSSL's raw rsa-2048 sign rate on
    the same header block, interleaved."""
    layout = site_layout(args.domains, 1)
    tomls = {
        name: make_campaign(work / f"dkim-{name}", layout, args.dkim_n, args.connections, key)
        for name, key in (("unsigned", ""), ("ed25519", "ed25519"), ("rsa-2048", "rsa"))
    }
    # The header block bulksend signs: the headers of a signed message, as sent.
    signed = Campaign.load(tomls["rsa-2048"], {})
    first = next(iter(signed.recipients()))
    data = signed.render(Recipient(first.address, dict(first.fields))).data
    block = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    key = (work / "dkim-rsa-2048" / "rsa.pem").read_bytes()

    with sink("bulksend", layout, work) as s:

        def send(name: str) -> Callable[[int], dict[str, Any]]:
            def one(round_: int) -> dict[str, Any]:
                journal = work / f"dkim-{name}-{round_}.db"
                run = run_bulksend(s, tomls[name], journal, seconds=args.timeout)
                for leftover in work.glob(f"{journal.name}*"):
                    leftover.unlink()
                return _confirmed(run, args.dkim_n)

            return one

        def openssl(_round: int) -> dict[str, Any]:
            per_cpu_s = sign_rate(key, block, args.sign_seconds)
            return {"signs_per_cpu_s": per_cpu_s, "cpu_s_per_1k": 1000 / per_cpu_s}

        senders = {name: send(name) for name in tomls}
        senders["openssl rsa-2048 sign"] = openssl
        runs: dict[str, Any] = interleaved(senders, args.reps, "dkim")
    runs["header_block_bytes"] = len(block)
    return runs


def variants(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """bulksend with one site, with many sites, and with several recipients per transaction."""
    out: dict[str, Any] = {}
    cases = {
        "1 site": site_layout(1, args.domains),
        f"{args.many_sites} sites": site_layout(args.many_sites, 1),
    }
    for name, layout in cases.items():
        slug = name.replace(" ", "-")
        toml = make_campaign(work / slug, layout, args.n, args.connections)
        with sink("bulksend", layout, work) as s:
            out[name] = run_bulksend(s, toml, work / f"{slug}.db", seconds=args.timeout)
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
    rss: list[float] = []
    with sink("bulksend", layout, work) as s:
        out["bounded send"] = run_bulksend(
            s,
            work / "scale-large" / "campaign.toml",
            work / "scale-large.db",
            limit=args.scale_send,
            seconds=args.timeout,
            rss=rss,
        )
    if len(rss) >= 4:
        # The largest sample in each quarter of the run: flat if memory does not grow.
        q = len(rss) // 4
        out["bounded send"]["rss_quarters_mb"] = [
            max(rss[i * q : (i + 1) * q if i < 3 else len(rss)]) for i in range(4)
        ]
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


# -- summaries, ratios, targets, tables ---------------------------------------------------


def _rate(run: dict[str, Any] | None) -> float | None:
    if not run or "error" in run or "skipped" in run:
        return None
    value = run.get("msgs_per_s")
    return float(value) if value else None


def spread(values: list[float | None]) -> dict[str, Any] | None:
    """Median and range of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "count": len(present),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU µs/msg and msgs/s over a sender's repetitions, counting only confirmed ones."""
    return {
        "cpu_us_per_msg": spread([_cpu_us(r) for r in runs]),
        "msgs_per_s": spread([_rate(r) for r in runs]),
        "peak_rss_mb": spread([r.get("peak_rss_mb") for r in runs if _cpu_us(r) is not None]),
        "reps": len(runs),
        "errors": [r["error"] for r in runs if "error" in r],
    }


def per_round(
    top: list[dict[str, Any]], bottom: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any]
) -> dict[str, Any] | None:
    """``value(top) / value(bottom)`` in each round where both exist; median and range."""
    ratios = []
    for a, b in zip(top, bottom, strict=False):
        x, y = value(a), value(b)
        ratios.append(x / y if x and y else None)
    result = spread(ratios)
    if result is not None:
        result["rounds"] = ratios
    return result


def _sections(results: dict[str, Any]) -> dict[str, Any]:
    """The results without sections that failed as a whole."""
    return {k: v for k, v in results.items() if not (isinstance(v, dict) and set(v) == {"error"})}


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """Per-sender summaries and the per-round ratios of every interleaved section."""
    results = _sections(results)
    out: dict[str, Any] = {"summaries": {}, "ratios": {}}
    for kind, runs in results.get("compare", {}).items():
        if "skipped" in runs:
            continue
        for name, reps in runs.items():
            if isinstance(reps, list):
                out["summaries"][f"{kind} sink: {name}"] = summary(reps)
        for peer, reps in runs.items():
            if peer != "bulksend" and isinstance(reps, list):
                # CPU efficiency: the peer's CPU per message over bulksend's.
                out["ratios"][f"{kind} sink: bulksend CPU efficiency / {peer}"] = per_round(
                    reps, runs["bulksend"], _cpu_us
                )
    d = results.get("dkim", {})
    if d:
        for name in ("unsigned", "ed25519", "rsa-2048"):
            out["summaries"][f"dkim {name}"] = summary(d[name])
        out["ratios"]["dkim rsa-2048: signed msgs per core-second / OpenSSL raw signs"] = per_round(
            d["openssl rsa-2048 sign"], d["rsa-2048"], _cpu_us
        )
        out["ratios"]["dkim ed25519: signed / unsigned msgs per core-second"] = per_round(
            d["unsigned"], d["ed25519"], _cpu_us
        )
    tail = _rate(results.get("longtail", {}).get("long tail"))
    head = out["summaries"].get("bulksend sink: bulksend", {}).get("msgs_per_s")
    if tail and head:
        out["ratios"]["long tail / compare msgs/s"] = {"median": tail / head["median"]}
    w = results.get("workers", {})
    one = _rate(w.get("workers-1"))
    for name, run in w.items():
        rate = _rate(run)
        if one and rate and name != "workers-1":
            out["ratios"][f"{name} / workers-1 msgs/s"] = {"median": rate / one}
    iso = results.get("isolation", {})
    if "ratio" in iso:
        out["ratios"]["fast site beside a black hole / alone msgs/s"] = {"median": iso["ratio"]}
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 16's targets against the medians (ratios within rounds)."""
    results = _sections(results)
    r = results.get("analysis", {}).get("ratios", {})
    out: dict[str, Any] = {}

    def check(name: str, value: float | None, goal: float, higher: bool = True) -> None:
        met = None if value is None else (value >= goal if higher else value < goal)
        out[name] = {"value": value, "goal": goal, "met": met}

    def median(key: str) -> float | None:
        found = r.get(key)
        return found["median"] if found else None

    for kind in results.get("compare", {}):
        ratio = median(f"{kind} sink: bulksend CPU efficiency / aiosmtplib")
        check(f"{kind} sink: CPU efficiency >= 2.5x aiosmtplib (must-have)", ratio, 2.5)
        check(f"{kind} sink: CPU efficiency >= 4x aiosmtplib", ratio, 4.0)
        check(
            f"{kind} sink: CPU efficiency >= 50% of the bare trio loop",
            median(f"{kind} sink: bulksend CPU efficiency / trio-raw"),
            0.5,
        )
    if "dkim" in results:
        check(
            "dkim rsa-2048: >= 80% of OpenSSL's raw sign rate",
            median("dkim rsa-2048: signed msgs per core-second / OpenSSL raw signs"),
            0.8,
        )
        check(
            "dkim ed25519: >= 80% of the unsigned path",
            median("dkim ed25519: signed / unsigned msgs per core-second"),
            0.8,
        )
    if "scale" in results:
        large = results["scale"].get("import large", {})
        small = results["scale"].get("import small", {})
        check("1M import < 10 s", large.get("import_seconds"), 10.0, higher=False)
        check("1M import peak RSS < 200 MB", large.get("peak_rss_mb"), 200.0, higher=False)
        send = results["scale"].get("bounded send", {})
        check("send from the 1M journal: peak RSS < 200 MB", send.get("peak_rss_mb"), 200.0, False)
        quarters = send.get("rss_quarters_mb") or []
        if len(quarters) == 4:
            out["send RSS, last quarter / first quarter"] = {"value": quarters[3] / quarters[0]}
        if large.get("peak_rss_mb") and small.get("peak_rss_mb"):
            out["import RSS growth, 10x list"] = {
                "value": large["peak_rss_mb"] / small["peak_rss_mb"]
            }
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _spread(s: dict[str, Any] | None, digits: int = 0) -> str:
    """``median (min-max)``."""
    if not s:
        return "-"
    if "min" not in s:
        return _fmt(s["median"], digits)
    return f"{_fmt(s['median'], digits)} ({_fmt(s['min'], digits)}-{_fmt(s['max'], digits)})"


def _row(name: str, run: dict[str, Any]) -> str:
    if "skipped" in run:
        return f"| {name} | skipped: {run['skipped']} | | | |"
    note = f" ({run['error']})" if "error" in run else ""
    return (
        f"| {name}{note} | {_fmt(_cpu_us(run))} | {_fmt(_rate(run))} | "
        f"{_fmt(run.get('peak_rss_mb'), 0)} | {_fmt(run.get('sink_count'))} |"
    )


def _summary_rows(names: dict[str, str], summaries: dict[str, Any]) -> list[str]:
    rows = [
        "| sender | CPU µs/msg, median (range) | msgs/s, median (range) | peak RSS MB |"
        " reps counted by the sink |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key in names.items():
        s = summaries[key]
        counted = s["cpu_us_per_msg"]["count"] if s["cpu_us_per_msg"] else 0
        errors = f" ({'; '.join(sorted(set(s['errors'])))})" if s["errors"] else ""
        rows.append(
            f"| {label} | {_spread(s['cpu_us_per_msg'])} | {_spread(s['msgs_per_s'])} | "
            f"{_spread(s['peak_rss_mb'])} | {counted} of {s['reps']}{errors} |"
        )
    return rows


def tables(results: dict[str, Any]) -> str:
    failed = [
        f"### {k}: failed ({v['error']})\n"
        for k, v in results.items()
        if k not in _sections(results)
    ]
    results = _sections(results)
    parts = failed
    c = results["config"]
    a = results.get("analysis", {"summaries": {}, "ratios": {}})
    for kind, runs in results.get("compare", {}).items():
        if "skipped" in runs:
            parts.append(f"### compare, {kind} sink: skipped ({runs['skipped']})\n")
            continue
        lines = [
            f"### compare: {c['n']:,} messages per rep, {c['domains']} domains x "
            f"{c['connections']} connection(s), {c['reps']} interleaved rounds, {kind} sink\n",
            *_summary_rows(
                {n: f"{kind} sink: {n}" for n, r in runs.items() if isinstance(r, list)},
                a["summaries"],
            ),
        ]
        lines += [
            f"| {n} | skipped: {r['skipped']} | | | |" for n, r in runs.items() if "skipped" in r
        ]
        parts.append("\n".join(lines) + "\n")
    if "dkim" in results:
        d = results["dkim"]
        raw = spread([r.get("signs_per_cpu_s") for r in d["openssl rsa-2048 sign"]])
        lines = [
            f"### dkim: {c['dkim_n']:,} messages per rep, {c['reps']} interleaved rounds "
            f"(header block {d['header_block_bytes']} bytes)\n",
            *_summary_rows({n: f"dkim {n}" for n in ("unsigned", "ed25519", "rsa-2048")},
                           a["summaries"]),
            f"| OpenSSL rsa-2048 raw sign, same header block | "
            f"{_spread(spread([_cpu_us(r) for r in d['openssl rsa-2048 sign']]))} | "
            f"{_spread(raw)} signs per CPU second | | |",
        ]  # fmt: skip
        parts.append("\n".join(lines) + "\n")
    if a["ratios"]:
        lines = [
            "### ratios (within a round; median (range) over rounds)\n",
            "| ratio | median (range) |",
            "| --- | ---: |",
        ]
        lines += [f"| {k} | {_spread(v, 2)} |" for k, v in a["ratios"].items() if v]
        parts.append("\n".join(lines) + "\n")
    head = "| sender | CPU µs/msg | msgs/s | peak RSS MB | sink count |\n"
    head += "| --- | ---: | ---: | ---: | ---: |\n"
    for section, title in (
        ("variants", "bulksend variants (bulksend sink)"),
        ("isolation", "isolation: the fast site alone and beside a black hole"),
        ("workers", "send --workers N (bulksend sink; import included)"),
    ):
        if section in results:
            rows = [_row(n, r) for n, r in results[section].items() if isinstance(r, dict)]
            parts.append(f"### {title}\n\n" + head + "\n".join(rows) + "\n")
    if "longtail" in results:
        run = results["longtail"]["long tail"]
        note = f" ({run['error']})" if "error" in run else ""
        lines = [
            "### long tail: one site per domain, 1-3 recipients each, default limits\n",
            "| run | domains | messages | sink count | seconds | msgs/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            f"| long tail{note} | {_fmt(run.get('domains'))} | {_fmt(run.get('messages'))} | "
            f"{_fmt(run.get('sink_count'))} | {_fmt(run.get('wall_seconds'), 1)} | "
            f"{_fmt(_rate(run) or run.get('partial_msgs_per_s'))} |",
        ]
        parts.append("\n".join(lines) + "\n")
    if "scale" in results:
        lines = [
            "### scale\n",
            "| step | recipients | seconds | peak RSS MB | RSS MB by quarter of the send |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, run in results["scale"].items():
            if name.startswith("import"):
                lines.append(
                    f"| {name} | {_fmt(run.get('imported'))} | "
                    f"{_fmt(run.get('import_seconds'), 2)} | {_fmt(run.get('peak_rss_mb'))} | |"
                )
            else:
                quarters = " / ".join(_fmt(q) for q in run.get("rss_quarters_mb") or [])
                lines.append(
                    f"| {name} ({_fmt(run.get('msgs_per_s'))} msgs/s) | "
                    f"{_fmt(run.get('delivered'))} of {_fmt(run.get('of'))} | "
                    f"{_fmt(run.get('send_seconds'), 2)} | {_fmt(run.get('peak_rss_mb'))} | "
                    f"{quarters} |"
                )
        parts.append("\n".join(lines) + "\n")
    if "micro" in results:
        lines = ["### micro-benchmarks (one core)\n", "| measure | value |", "| --- | ---: |"]
        for key, value in results["micro"].items():
            lines.append(f"| {key} | {_fmt(value, 1 if key.endswith(('_us', '_ms')) else 0)} |")
        parts.append("\n".join(lines) + "\n")
    if results.get("targets"):
        lines = ["### targets (issue 16)\n", "| target | measured | met |", "| --- | ---: | --- |"]
        for k, v in results["targets"].items():
            met = {True: "yes", False: "**no**", None: "-"}[v.get("met")] if "met" in v else ""
            lines.append(f"| {k} | {_fmt(v.get('value'), 2)} | {met} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _progress(label: str, runs: dict[str, Any]) -> None:
    for name, run in runs.items():
        brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.items()
                 if k in ("msgs_per_s", "cpu_s_per_1k", "peak_rss_mb", "sink_count", "error",
                          "skipped", "import_seconds", "delivered", "signs_per_cpu_s")}  # fmt: skip
        print(f"[{label}] {name}: {brief}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny N everywhere (a smoke run)")
    parser.add_argument("--n", type=int, help="messages per compare repetition (20000)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--domains", type=int, default=10, help="domains = sites (default 10)")
    parser.add_argument("--connections", type=int, default=1, help="per site (default 1)")
    parser.add_argument("--dkim-n", type=int, help="messages per dkim repetition (n/4)")
    parser.add_argument(
        "--sign-seconds", type=float, default=1.0, help="CPU seconds per raw-sign measurement"
    )
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
    parser.add_argument("--sections", default=DEFAULT_SECTIONS)
    parser.add_argument("--workers", type=int, default=2, help="measure 1..N worker processes")
    parser.add_argument("--sinks", default="bulksend", help="bulksend and/or postfix")
    parser.add_argument("--peers", default="aiosmtplib,trio-raw", help=",".join(PEERS))
    parser.add_argument("--timeout", type=float, default=900, help="per process, seconds")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "results.json")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "n": 2000 if quick else 20_000,
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
        args.dkim_n = max(args.n // 4, 100)
    if args.sink_speed_n is None:
        args.sink_speed_n = max(args.n, 1000)
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
            "reps": args.reps,
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
        "compare": lambda work: compare(args, work, have),
        "dkim": lambda work: dkim(args, work),
        "variants": lambda work: variants(args, work),
        "workers": lambda work: workers(args, work),
        "isolation": lambda work: isolation(args, work),
        "longtail": lambda work: longtail(args, work),
        "scale": lambda work: scale(args, work),
        "micro": lambda _work: micro(args),
    }
    unknown = sections - steps.keys()
    if unknown:
        raise SystemExit(
            f"--sections: unknown {', '.join(sorted(unknown))} (one of {', '.join(steps)})"
        )
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
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["analysis"] = analyse(results)
    results["targets"] = targets(results)
    args.out.write_text(json.dumps(results, indent=2))
    text = tables(results)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"results: {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
