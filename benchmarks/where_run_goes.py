"""Where the time of one ``nskernel run -- true`` goes, measured, step by step.

Runs ``nskernel run -- true`` N times in fresh interpreters (the one nskernel is installed
for, as its console script does), each timing its own steps with ``time.perf_counter``:
importing ``nskernel.cli``, building the parser, the options made a spec (``spec``),
``Sandbox.spawn`` (planning: environment, masks, id maps, the filter; then creating the
sandbox until the command was exec'd), waiting for the command and the sandbox's end
(``wait``), and what is left until ``main`` returns (``rest``). The interpreter's own
start is measured apart, as ``python -c pass`` and ``/usr/bin/python3 -I -c pass`` (issue
19's reference). Medians::

    python benchmarks/where_run_goes.py [N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the measured interpreter: wraps the steps of `nskernel run` with timestamps.
PROBE = r"""
import time
t0 = time.perf_counter()
import json, os, sys
import nskernel.cli as cli
t_import = time.perf_counter()
from nskernel import sandbox
marks = {}
build, spawn, wait = cli.build_parser, sandbox.Sandbox.spawn.__func__, sandbox.Sandbox.wait
def build_parser(*a, **k):
    p = build(*a, **k); marks["parser"] = time.perf_counter(); return p
def spawn_(cls, *a, **k):
    marks["spec"] = time.perf_counter(); sb = spawn(cls, *a, **k)
    marks["spawn"] = time.perf_counter(); return sb
def wait_(self, *a, **k):
    r = wait(self, *a, **k); marks["wait"] = time.perf_counter(); return r
cli.build_parser, sandbox.Sandbox.wait = build_parser, wait_
sandbox.Sandbox.spawn = classmethod(spawn_)
code = cli.main(["run", "--", "true"])
t_end = time.perf_counter()
print(json.dumps({"import": t_import - t0, "parser": marks["parser"] - t_import,
    "spec": marks["spec"] - marks["parser"], "spawn": marks["spawn"] - marks["spec"],
    "wait": marks["wait"] - marks["spawn"], "rest": t_end - marks["wait"], "code": code}))
"""


def _wall(argv: list[str], n: int) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    env = {**os.environ, "PYTHONPATH": ROOT}
    steps: dict[str, list[float]] = {}
    walls = []
    for i in range(n + 3):
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - t
        if i < 3:
            continue  # warm-up
        walls.append(wall)
        for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
            if k != "code":
                steps.setdefault(k, []).append(v)
    start = _wall([sys.executable, "-c", "pass"], n)
    reference = _wall(["/usr/bin/python3", "-I", "-c", "pass"], n)
    print(f"nskernel run -- true, whole (this probe): {statistics.median(walls) * 1e3:6.1f} ms")
    print(f"  interpreter start ({sys.executable} -c pass): {start:6.1f} ms")
    for k, v in steps.items():
        print(f"  {k:8s} {statistics.median(v) * 1e3:6.2f} ms")
    print(f"reference: /usr/bin/python3 -I -c pass: {reference:6.1f} ms")


if __name__ == "__main__":
    main()
