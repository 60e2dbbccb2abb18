"""Where bulksend's CPU goes per message, by layer: a cProfile of a send, summed by module.

    .venv/bin/python benchmarks/profile_layers.py [--n 20000] [--domains 10] [--connections 1]

Runs the ``compare`` section's bulksend send (``benchmarks/run.py``: the same campaign,
sites and sink, journal + metrics on) twice in a row: once plain, for the CPU µs per message
(``getrusage``), and once under cProfile in every thread (``sender.py --profile``, per-thread
CPU time). Each function's self time goes to the layer its module belongs to:

* rendering: ``bulksend.campaign``, jinja2, markupsafe, the standard library's ``email``
  and ``quopri``;
* smtp protocol / smtp client: ``bulksend.smtp`` (``client*`` modules apart);
* trio machinery: trio and its helpers (outcome, sniffio);
* delivery: ``bulksend.delivery``, ``bulksend.routing``, ``bulksend.metrics``,
  prometheus_client, dnspython;
* journal: ``bulksend.journal``, sqlite3 (its module and its C methods);
* kernel / socket: the C calls into socket, select and epoll, and the ``socket`` and
  ``selectors`` modules.

A function in none of them (a builtin such as ``len``, a standard-library helper such as
``re`` or ``dataclasses``, a compiled Jinja2 template) is charged to the layers of its
callers, in proportion to the time each caller spent in it; what stays unattributed is
"other". The profiler inflates a layer by its number of calls (4-5x overall): the table
shows the calls per message (Python + C functions) and the profiled µs, then an estimate
("≈ µs/msg") with the profiler's cost removed: its cost per Python call and per C call,
calibrated in this process on empty calls, is subtracted from each layer, and what is left
is scaled to the send's CPU measured without the profiler (the scale factor, printed, is
the in-situ slowdown the calibration does not see). Estimates, from the same method every
time: compare runs of this script, not this column with micro-benchmarks.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import make_campaign, run_bulksend, sink, site_layout  # noqa: E402

Func = tuple[str, int, str]  # pstats' (file, line, function)

LAYERS = (
    "rendering",
    "smtp protocol",
    "smtp client",
    "trio machinery",
    "delivery",
    "journal",
    "kernel / socket",
)
_PATHS = (  # (path fragment, layer), first match wins
    ("/bulksend/campaign/", "rendering"),
    ("/jinja2/", "rendering"),
    ("/markupsafe/", "rendering"),
    ("/email/", "rendering"),
    ("/quopri.py", "rendering"),
    ("/bulksend/smtp/client", "smtp client"),
    ("/bulksend/smtp/", "smtp protocol"),
    ("/trio/", "trio machinery"),
    ("/outcome/", "trio machinery"),
    ("/sniffio/", "trio machinery"),
    ("/bulksend/delivery/", "delivery"),
    ("/bulksend/routing/", "delivery"),
    ("/bulksend/metrics", "delivery"),
    ("/prometheus_client/", "delivery"),
    ("/dns/", "delivery"),
    ("/bulksend/journal/", "journal"),
    ("/sqlite3/", "journal"),
    ("/socket.py", "kernel / socket"),
    ("/selectors.py", "kernel / socket"),
)
_BUILTINS = (  # (fragment of a C function's name, layer)
    ("sqlite3.", "journal"),
    ("_socket.", "kernel / socket"),
    ("select.", "kernel / socket"),
    ("binascii.", "rendering"),
    ("markupsafe", "rendering"),
)


def layer_of(func: Func) -> str | None:
    """The layer a function's own module belongs to, None if it belongs to none."""
    path, _line, name = func
    if path == "~":  # a C function: "<method 'send' of '_socket.socket' objects>" and such
        return next((layer for part, layer in _BUILTINS if part in name), None)
    return next((layer for part, layer in _PATHS if part in path), None)


class Layer(NamedTuple):
    seconds: float  # self time under the profiler
    py_calls: float  # calls of Python functions
    c_calls: float  # calls of C functions (builtins, methods of C types)


def attribute(stats: dict[Func, Any]) -> dict[str, Layer]:
    """Self time and calls per layer; unclassified functions charged to their callers."""
    memo: dict[Func, dict[str, float]] = {}

    def shares(func: Func, seen: frozenset[Func]) -> dict[str, float]:
        if func in memo:
            return memo[func]
        own = layer_of(func)
        if own is not None:
            return {own: 1.0}
        callers = stats[func][4] if func in stats else {}
        weights = {c: v[2] or v[0] for c, v in callers.items() if c not in seen}
        total = sum(weights.values())
        if not total:
            result = {"other": 1.0}
        else:
            result = {}
            for caller, weight in weights.items():
                for layer, share in shares(caller, seen | {func}).items():
                    result[layer] = result.get(layer, 0.0) + share * weight / total
        if not seen:  # only a result computed without a cycle cut is complete
            memo[func] = result
        return result

    out = {layer: [0.0, 0.0, 0.0] for layer in (*LAYERS, "other")}
    for func, (_cc, nc, tt, _ct, _callers) in stats.items():
        for layer, share in shares(func, frozenset()).items():
            out[layer][0] += tt * share
            out[layer][2 if func[0] == "~" else 1] += nc * share
    return {layer: Layer(*values) for layer, values in out.items()}


def overhead() -> tuple[float, float]:
    """The profiler's own CPU cost per Python call and per C call (seconds), measured here.

    What ``profile.Profile.calibrate`` does for the pure-Python profiler: a loop of empty
    calls, with and without cProfile (timed in thread CPU time, as ``sender.py`` profiles).
    """
    n = 100_000

    def empty() -> None:
        pass

    def python_calls() -> None:
        for _ in range(n):
            empty()

    def c_calls() -> None:
        for _ in range(n):
            len(())

    def cost(loop: Callable[[], None]) -> float:
        best = float("inf")
        for _ in range(3):
            plain = time.thread_time()
            loop()
            plain = time.thread_time() - plain
            profiler = cProfile.Profile(time.thread_time)
            profiled = time.thread_time()
            profiler.runcall(loop)
            profiled = time.thread_time() - profiled
            best = min(best, (profiled - plain) / n)
        return max(best, 0.0)

    return cost(python_calls), cost(c_calls)


def corrected(
    layers: dict[str, Layer], per_call: tuple[float, float], true_total: float
) -> dict[str, float]:
    """Each layer's seconds without the profiler's own cost, scaled to the unprofiled total.

    ``profiled = true + k_py * Python calls + k_c * C calls`` per layer, with the ``k``s
    from :func:`overhead`; what is left is then scaled so that the layers add up to the
    send's CPU measured without the profiler (the scale factor is reported: near 1 means the
    correction accounts for the profiler's cost).
    """
    k_py, k_c = per_call
    left = {n: max(x.seconds - k_py * x.py_calls - k_c * x.c_calls, 0.0) for n, x in layers.items()}
    total = sum(left.values())
    return {n: v * true_total / total if total else 0.0 for n, v in left.items()}


def top_functions(stats: dict[Func, Any], count: int) -> dict[str, list[tuple[str, float]]]:
    """The ``count`` functions with the most self time in each layer (seconds)."""
    by_layer: dict[str, list[tuple[str, float]]] = {}
    for func, (_cc, _nc, tt, _ct, _callers) in stats.items():
        path, line, name = func
        label = name if path == "~" else f"{Path(path).name}:{line}({name})"
        by_layer.setdefault(layer_of(func) or "unattributed (charged to callers)", []).append(
            (label, tt)
        )
    return {k: sorted(v, key=lambda x: -x[1])[:count] for k, v in by_layer.items()}


def table(layers: dict[str, Layer], true: dict[str, float], messages: int) -> str:
    """The layers in µs per message: as profiled, and with the profiler's cost removed."""
    lines = [
        "| layer | calls/msg (Python + C) | profiled µs/msg | ≈ µs/msg | share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    total = sum(true.values())
    for name, x in layers.items():
        lines.append(
            f"| {name} | {x.py_calls / messages:,.0f} + {x.c_calls / messages:,.0f} | "
            f"{x.seconds / messages * 1e6:,.0f} | {true[name] / messages * 1e6:,.0f} | "
            f"{true[name] / total if total else 0:.0%} |"
        )
    py = sum(x.py_calls for x in layers.values()) / messages
    c = sum(x.c_calls for x in layers.values()) / messages
    profiled = sum(x.seconds for x in layers.values()) / messages * 1e6
    lines.append(
        f"| total | {py:,.0f} + {c:,.0f} | {profiled:,.0f} | {total / messages * 1e6:,.0f} | 100% |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="messages (default 20000)")
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--connections", type=int, default=1, help="per site (default 1)")
    parser.add_argument("--top", type=int, default=4, help="top functions shown per layer")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--stats", type=Path, help="also keep the pstats file here")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "profile.json")
    args = parser.parse_args()
    layout = site_layout(args.domains, 1)
    with tempfile.TemporaryDirectory(prefix="bulksend-profile-") as tmp:
        work = Path(tmp)
        toml = make_campaign(work / "compare", layout, args.n, args.connections)
        stats_file = args.stats or work / "send.pstats"
        with sink("bulksend", layout, work) as s:
            plain = run_bulksend(s, toml, work / "plain.db", seconds=args.timeout)
            profiled = run_bulksend(
                s, toml, work / "profiled.db", profile=stats_file, seconds=args.timeout
            )
        for name, run in (("plain", plain), ("profiled", profiled)):
            if "error" in run or run.get("sink_count") != args.n:
                raise SystemExit(f"{name} send failed: {run}")
        stats: dict[Func, Any] = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    cpu_us = plain["send_cpu_seconds"] / plain["delivered"] * 1e6
    layers = attribute(stats)
    per_call = overhead()
    true = corrected(layers, per_call, cpu_us * args.n / 1e6)
    left = sum(
        max(x.seconds - per_call[0] * x.py_calls - per_call[1] * x.c_calls, 0.0)
        for x in layers.values()
    )
    result = {
        "command": " ".join(["benchmarks/profile_layers.py", *sys.argv[1:]]),
        "messages": args.n,
        "cpu_us_per_msg": cpu_us,
        "profiled_cpu_us_per_msg": profiled["send_cpu_seconds"] / profiled["delivered"] * 1e6,
        "profiler_cost_us_per_call": {"python": per_call[0] * 1e6, "c": per_call[1] * 1e6},
        "scale_factor": cpu_us * args.n / 1e6 / left if left else None,
        "layers": {k: v._asdict() for k, v in layers.items()},
        "layers_us_per_msg": {k: v / args.n * 1e6 for k, v in true.items()},
        "top": top_functions(stats, args.top),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"### bulksend CPU per message by layer: {args.n:,} messages, {args.domains} domains x "
        f"{args.connections} connection(s); unprofiled {cpu_us:,.0f} µs/msg, profiled "
        f"{result['profiled_cpu_us_per_msg']:,.0f}; profiler's cost per call "
        f"{per_call[0] * 1e6:.2f} µs (Python) / {per_call[1] * 1e6:.2f} µs (C), "
        f"scale factor {result['scale_factor'] or 0:.2f}\n"
    )
    print(table(layers, true, args.n))
    print("\n### top functions by self time per layer (profiled µs/msg)\n")
    for layer, funcs in result["top"].items():
        listed = ", ".join(f"{name} {tt / args.n * 1e6:.1f}" for name, tt in funcs)
        print(f"- {layer}: {listed}")
    print(f"\nresults: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
