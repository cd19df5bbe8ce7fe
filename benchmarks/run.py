"""nskernel benchmarks: one command reproduces every figure of the comparison.

Run::

    python benchmarks/run.py                 # full run, a few minutes on 2 cores
    python benchmarks/run.py --quick         # 3 timed runs per case, seconds (smoke test)
    python benchmarks/run.py --only 'true.*' # cases whose id matches a glob
    python benchmarks/run.py --list          # the registered cases

Use the interpreter nskernel is installed for (e.g. ``/opt/nsk-venv/bin/python``); this
checkout's ``nskernel`` package is put first on the path in every process. Run as root to
include crun, podman and docker (see ``engines.py``); nothing is fetched from the network.

Output: ``--out`` (default ``benchmarks/results/latest.json``) and a PNG chart beside it
(``--chart`` to choose). The JSON holds

- ``machine``: date, CPU, cores, memory, OS, kernel, cgroup layout, Python, euid, load
  average at the start (``load_average_end`` at the end), nskernel's version and commit,
  the versions of unshare and bwrap (the engines' are in their cases' details), and
  whether this checkout's bytecode was compiled up front (``nskernel_bytecode``: it is,
  before any case runs, so that no timed interpreter compiles nskernel from source);
- ``groups``: one comparison each, with its reference case;
- ``cases``: per case id (``<group>.<name>``) either ``status: ok`` with ``median``,
  ``p95``, ``mean``, ``stdev``, ``min``, ``max``, ``n`` and all ``samples`` (in ``unit``,
  milliseconds for times), the 1-minute load average when the case started, the exact
  ``command`` and ``details`` (namespaces created, engine versions); or ``status``
  ``not available`` (tool absent or not permitted), ``failed`` (the tool did not work)
  or ``error`` (a bug in the benchmark) with a ``reason``;
- ``ratios``: each case's median over its group's reference median (above 1: slower
  than the reference), and any declared ratio with its target.

Reading it: medians are the figure to quote; p95 shows the tail on a busy machine (the
load averages say how busy). Every timed run came after untimed warm-up runs that had to
succeed; commands' output was discarded.

Adding a case: create ``benchmarks/cases_<topic>.py`` with a ``group(...)`` and functions
decorated with ``@case(...)`` (see ``harness.py``); it is picked up automatically.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's directory is on sys.path but the checkout root is not; the
# root makes both `benchmarks` and this checkout's `nskernel` importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latest.json"


def load_cases() -> dict[str, harness.Case]:
    """Import every ``benchmarks/cases_*.py``, which registers its groups and cases.

    Cases run, and groups are shown, in import order: the launch comparison (the headline,
    and timed before any case has started Jupyter's threads in this process) comes first,
    then the other modules by name.
    """
    names = sorted(i.name for i in pkgutil.iter_modules([str(ROOT / "benchmarks")]))
    cases = [n for n in names if n.startswith("cases_")]
    for name in sorted(cases, key=lambda n: (n != "cases_launch", n)):
        importlib.import_module(f"benchmarks.{name}")
    return harness.CASES


def _selected(cases: dict[str, harness.Case], patterns: list[str]) -> list[harness.Case]:
    if not patterns:
        return list(cases.values())
    return [c for cid, c in cases.items() if any(fnmatch.fnmatch(cid, p) for p in patterns)]


def _progress(cid: str, entry: dict[str, Any]) -> str:
    if entry["status"] == "ok":
        u = entry["unit"]
        figures = f"median {entry['median']:9.2f} {u}  p95 {entry['p95']:9.2f} {u}"
        return f"{cid:34} {figures}  n={entry['n']}"
    return f"{cid:34} {entry['status']}: {entry['reason'].splitlines()[0][:150]}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases = _selected(load_cases(), args.only)
    started = time.monotonic()
    bytecode = harness.compile_bytecode()
    results: dict[str, Any] = {
        "schema": harness.SCHEMA,
        "mode": "quick" if args.quick else "full",
        "command": " ".join(sys.argv),
        "machine": harness.describe_machine() | {"nskernel_bytecode": bytecode},
        "groups": {
            gid: {"title": g.title, "reference": g.reference}
            for gid, g in harness.GROUPS.items()
            if any(c.group == gid for c in cases)
        },
        "cases": {},
    }
    with harness.Context(quick=args.quick) as ctx:
        for c in cases:
            entry = harness.run_case(c, ctx)
            results["cases"][c.id] = entry
            print(_progress(c.id, entry), file=sys.stderr, flush=True)
    results["ratios"] = harness.all_ratios(results["cases"])
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Reproduce nskernel's benchmark comparison (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="3 timed runs per case")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    parser.add_argument("--chart", type=Path, help="PNG chart (default: --out with .png)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="GLOB", help="case ids to run"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)

    if args.list:
        for cid, c in load_cases().items():
            print(f"{cid:34} {c.label}")
        return 0

    results = run(args)
    chart = args.chart or args.out.with_suffix(".png")
    try:
        from benchmarks import chart as chart_module
    except ImportError as e:
        results["chart"] = {"path": None, "reason": f"matplotlib is not installed: {e}"}
    else:
        chart_module.render(results, chart)
        results["chart"] = {"path": os.path.relpath(chart, args.out.parent)}
    harness.write_json(args.out, results)
    print("\n".join(harness.iter_results_lines(results)))
    made = results["chart"]["path"] or f"no chart ({results['chart']['reason']})"
    print(f"\nwrote {args.out} and {made}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
