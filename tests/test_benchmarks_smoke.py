"""A quick run of the benchmarks, so they cannot rot unnoticed.

The figures are not judged here (the benchmark is not part of pass/fail); what is checked
is that one command still produces the whole report: the machine, every registered case
with numbers or a reason, the ratios, a PNG chart, and nothing left behind. As an
unprivileged user the container engines report "not available"; that is a valid result.
With NSKERNEL_MUST_WORK=1 (CI) a tool that is installed but fails is a failure here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import load_cases

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MUST_WORK = os.environ.get("NSKERNEL_MUST_WORK") == "1"


@pytest.mark.slow
def test_quick_benchmark_run_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        # The run's scratch directory goes here, so that its removal can be checked.
        env=dict(os.environ, TMPDIR=str(scratch)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())

    machine = results["machine"]
    for key in ("date", "cpu", "cores", "kernel", "python", "os"):
        assert machine[key], f"machine.{key} is empty"
    assert results["mode"] == "quick"
    # Timed interpreters must not compile nskernel from source (see compile_bytecode).
    if os.access(REPO / "nskernel" / "__pycache__", os.W_OK):
        assert machine["nskernel_bytecode"].startswith("compiled"), machine["nskernel_bytecode"]
    else:
        assert machine["nskernel_bytecode"], "the bytecode step says nothing"

    registered = load_cases()
    assert set(results["cases"]) == set(registered)
    for cid, entry in results["cases"].items():
        if entry["status"] == "ok":
            assert entry["n"] == 3 == len(entry["samples"]), cid
            assert entry["median"] <= entry["p95"] <= entry["max"], cid
            # An overhead is a difference of two timings: with 3 samples on a loaded
            # machine its median may fall below zero. Every other figure is a time.
            assert "overhead" in cid or entry["median"] > 0, cid
        else:
            # "failed" is a tool failing on this machine, acceptable unless the machine must
            # work (CI's NSKERNEL_MUST_WORK=1); "error" is a bug in the benchmark, never.
            allowed = ("not available",) if MUST_WORK else ("not available", "failed")
            assert entry["status"] in allowed, f"{cid}: {entry['status']}: {entry['reason']}"
            assert entry["reason"].strip(), f"{cid} is {entry['status']} without a reason"
    # Timing a plain command needs nothing special: if this fails, the harness is broken.
    assert results["cases"]["true.host"]["status"] == "ok"

    for gid, group in results["groups"].items():
        reference = group["reference"]
        others = {c for c, e in results["cases"].items() if e["group"] == gid} - {reference}
        ratios = [r for r in results["ratios"].values() if r["denominator"] == reference]
        assert {r["numerator"] for r in ratios} == others, gid
        for r in ratios:
            assert (r["value"] is not None and r["value"] > 0) or r["reason"], r

    chart = out.parent / results["chart"]["path"]
    assert chart.read_bytes()[:8] == PNG_MAGIC
    assert "| group | case | median |" in proc.stdout
    assert list(scratch.iterdir()) == [], "the benchmark left files in its scratch directory"
