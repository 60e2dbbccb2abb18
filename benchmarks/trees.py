"""bulksend of two checkouts side by side: CPU per message, interleaved rounds, one sink.

    git worktree add --detach /tmp/bench-base 0d53a66 && make -C /tmp/bench-base .venv/.installed
    .venv/bin/python benchmarks/trees.py /tmp/bench-base --n 20000 --reps 5

Each round runs the other checkout's ``benchmarks/sender.py`` under its own ``.venv`` (its
bulksend, "base") and this checkout's ("head"), in turn first (base-head, head-base, ...),
then aiosmtplib (if installed), on the compare campaign of
``run.py`` (same messages, same sink process, fresh journal per repetition). The campaign,
the sink and aiosmtplib's plan come from this checkout. Reports each sender's CPU µs/msg
(median and range), and per round: this checkout / the other (CPU per message) and each
one's CPU efficiency against aiosmtplib. Writes ``benchmarks/out/trees.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    _confirmed,
    _cpu_us,
    _progress,
    _spread,
    make_campaign,
    peer_plan,
    per_round,
    run_bulksend,
    run_peer,
    sink,
    site_layout,
    summary,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the other checkout (with its .venv)")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "trees.json")
    args = parser.parse_args()
    base = args.base.resolve()
    if not (base / ".venv" / "bin" / "python").exists():
        raise SystemExit(f"{base}: no .venv (run `make .venv/.installed` there)")

    with tempfile.TemporaryDirectory(prefix="bulksend-trees-") as tmp:
        work = Path(tmp)
        layout = site_layout(args.domains, 1)
        toml = make_campaign(work / "compare", layout, args.n, args.connections)
        with sink("bulksend", layout, work) as s:

            def bulksend(tree: Path | None, name: str) -> Callable[[int], dict[str, Any]]:
                def one(round_: int) -> dict[str, Any]:
                    journal = work / f"{name}-{round_}.db"
                    run = run_bulksend(s, toml, journal, seconds=args.timeout, tree=tree)
                    for leftover in work.glob(f"{journal.name}*"):
                        leftover.unlink()
                    return _confirmed(run, args.n)

                return one

            senders = {"base": bulksend(base, "base"), "head": bulksend(None, "head")}
            if importlib.util.find_spec("aiosmtplib") is not None:
                plan = work / "plan.json"
                plan.write_text(
                    json.dumps(peer_plan(toml, layout, args.n, args.connections, s.smtp_port))
                )
                senders["aiosmtplib"] = lambda _r: run_peer(
                    "aiosmtplib", s, plan, args.n, args.timeout
                )
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in senders}
            for round_ in range(args.reps):
                # base first in odd rounds, head first in even ones (ABBA): neither always
                # runs right after aiosmtplib or in the same place of the round.
                order = ["base", "head"] if round_ % 2 == 0 else ["head", "base"]
                for name in order + [n for n in senders if n not in order]:
                    runs[name].append(senders[name](round_))
                    _progress(f"trees round {round_ + 1}/{args.reps}", {name: runs[name][-1]})

    ratios = {"head / base CPU µs/msg": per_round(runs["head"], runs["base"], _cpu_us)}
    if "aiosmtplib" in runs:
        for name in ("base", "head"):
            ratios[f"{name} CPU efficiency / aiosmtplib"] = per_round(
                runs["aiosmtplib"], runs[name], _cpu_us
            )
    results = {
        "base": str(base),
        "config": vars(args) | {"base": str(base), "out": str(args.out)},
        "runs": runs,
        "summaries": {name: summary(reps) for name, reps in runs.items()},
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))

    lines = [
        "| sender | CPU µs/msg, median (range) | msgs/s, median (range) | reps counted |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, s_ in results["summaries"].items():
        counted = s_["cpu_us_per_msg"]["count"] if s_["cpu_us_per_msg"] else 0
        lines.append(
            f"| {name} | {_spread(s_['cpu_us_per_msg'])} | {_spread(s_['msgs_per_s'])} | "
            f"{counted} of {s_['reps']} |"
        )
    lines += ["", "| round | " + " | ".join(runs) + " | " + " | ".join(ratios) + " |"]
    lines.append("| ---: |" + " ---: |" * (len(runs) + len(ratios)))
    for i in range(args.reps):
        cells = [_spread({"median": _cpu_us(runs[n][i])}) for n in runs]
        cells += [_spread({"median": (r or {}).get("rounds", [None] * args.reps)[i]}, 2)
                  for r in ratios.values()]  # fmt: skip
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | median (range) |", "| --- | ---: |"]
    lines += [f"| {k} | {_spread(v, 2)} |" for k, v in ratios.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
