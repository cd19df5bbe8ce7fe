"""Timing, statistics, the registry of cases and the results file.

Standard library only: this module is imported by the lean worker interpreters and by the
engine host (see ``engines.py``), whose timings must not pay for heavy imports, and it
must never start a thread (a user namespace cannot be created from a threaded process).

A *case* is a function ``measure(ctx, plan) -> Measurement`` registered with :func:`case`
under a *group* (one chart panel, one comparison). It returns samples, or raises
:class:`NotAvailable` (status "not available": the tool is absent or not permitted here)
or :class:`CaseFailed` (status "failed": it is present but did not work). Any other
exception is a bug in the benchmark (status "error"; the smoke test rejects it). Groups
name a reference case; every other case of the group gets a ratio to it. :func:`ratio`
declares any other ratio, optionally with a target. For example, in a new
``benchmarks/cases_kernel.py``::

    group("kernel-start", "start -> kernel_info reply", reference="kernel-start.ipykernel")

    @case("kernel-start", "ipykernel", "plain ipykernel", iterations=20)
    def plain(ctx: Context, plan: Plan) -> Measurement:
        return Measurement(time_calls(start_plain_kernel, plan))

    @case("kernel-start", "sandboxed", "Python 3 (sandboxed)", iterations=20)
    def sandboxed(ctx: Context, plan: Plan) -> Measurement: ...

    ratio("sandboxed kernel start", "kernel-start.sandboxed", "kernel-start.ipykernel",
          target=1.1)

Values other than times set ``unit`` (e.g. ``"MiB"``) and return them as samples; a
figure that is not a sample (growth from the 1st to the 200th sandbox, drift of the last
100 cycles against the first 100) goes in ``Measurement.details``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
SCHEMA = 1

T = TypeVar("T")


class NotAvailable(Exception):
    """What the case measures is absent or not permitted on this machine; says why."""


class CaseFailed(Exception):
    """What the case measures is present but did not work; carries the error."""


class CaseError(Exception):
    """The benchmark's own code broke (reported from a worker or the engine host)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many runs to time, after how many untimed ones that must succeed."""

    n: int
    warmup: int
    timeout: float = 120.0  # seconds for one run; a hung tool fails its case, not the run


@dataclasses.dataclass
class Measurement:
    samples: list[float]
    command: Sequence[str] | str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Group:
    id: str
    title: str
    reference: str | None = None  # case id every other case of the group is divided by


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    group: str
    label: str
    measure: Callable[[Context, Plan], Measurement]
    iterations: int
    unit: str = "ms"
    target: float | None = None  # the median should not exceed this (in ``unit``)


@dataclasses.dataclass(frozen=True)
class Ratio:
    name: str
    numerator: str
    denominator: str
    target: float | None = None  # the ratio should not exceed this


GROUPS: dict[str, Group] = {}
CASES: dict[str, Case] = {}
RATIOS: list[Ratio] = []


def group(group_id: str, title: str, *, reference: str | None = None) -> None:
    GROUPS[group_id] = Group(group_id, title, reference)


def case(
    group_id: str,
    name: str,
    label: str,
    *,
    iterations: int,
    unit: str = "ms",
    target: float | None = None,
) -> Callable[[Callable[[Context, Plan], Measurement]], Callable[[Context, Plan], Measurement]]:
    """Register ``measure`` as case ``<group_id>.<name>``; cases run in registration order."""

    def register(
        measure: Callable[[Context, Plan], Measurement],
    ) -> Callable[[Context, Plan], Measurement]:
        case_id = f"{group_id}.{name}"
        if group_id not in GROUPS:
            raise KeyError(f"case {case_id}: register group {group_id!r} first")
        if case_id in CASES:
            raise KeyError(f"case {case_id} is registered twice")
        CASES[case_id] = Case(case_id, group_id, label, measure, iterations, unit, target)
        return measure

    return register


def ratio(name: str, numerator: str, denominator: str, *, target: float | None = None) -> None:
    RATIOS.append(Ratio(name, numerator, denominator, target))


class Context:
    """What cases share during one run: the mode, a scratch directory, and fixtures.

    A fixture is an expensive shared resource (a container engine daemon, a warm server)
    set up by the first case that asks for it and torn down when the run ends. If setting
    it up fails, every case that asks for it gets the same error without retrying.
    """

    def __init__(self, *, quick: bool) -> None:
        self.quick = quick
        self._stack = ExitStack()
        self.workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="nskb-")))
        self._fixtures: dict[str, Any] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: this checkout's nskernel and benchmarks first."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env

    def fixture(self, key: str, factory: Callable[[Context], AbstractContextManager[T]]) -> T:
        if key not in self._fixtures:
            try:
                self._fixtures[key] = self._stack.enter_context(factory(self))
            except (NotAvailable, CaseFailed) as e:
                self._fixtures[key] = e
        value = self._fixtures[key]
        if isinstance(value, Exception):
            raise value
        return value

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], plan: Plan) -> list[float]:
    """Milliseconds per call of ``fn``, after ``plan.warmup`` untimed calls."""
    for _ in range(max(1, plan.warmup)):
        fn()
    samples = []
    for _ in range(plan.n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_command(
    argv: Sequence[str],
    plan: Plan,
    *,
    env: dict[str, str] | None = None,
    cwd: str = "/",
) -> list[float]:
    """Milliseconds from starting ``argv`` to reaping it; every run must exit 0.

    Warm-up runs capture output so a broken tool fails with its own message; timed runs
    discard it (reading pipes would add to the figure) and are re-run once with capture
    if one fails. ``cwd`` is ``/`` because a sandbox's user may not reach the caller's.
    """
    argv = list(argv)

    def check(run_output: subprocess.CompletedProcess[bytes]) -> None:
        if run_output.returncode != 0:
            tail = (run_output.stderr or b"").decode(errors="replace").strip()[-600:]
            msg = f"`{shlex.join(argv)}` exited {run_output.returncode}: {tail or 'no output'}"
            raise CaseFailed(msg)

    def run_captured() -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                cwd=cwd,
                timeout=plan.timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise CaseFailed(f"`{shlex.join(argv)}` took over {plan.timeout:.0f} s") from e

    for _ in range(max(1, plan.warmup)):
        check(run_captured())
    samples = []
    for _ in range(plan.n):
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                timeout=plan.timeout,
            ).returncode
        except subprocess.TimeoutExpired as e:
            raise CaseFailed(f"`{shlex.join(argv)}` took over {plan.timeout:.0f} s") from e
        samples.append((time.perf_counter() - t0) * 1e3)
        if rc != 0:
            check(run_captured())
            raise CaseFailed(f"`{shlex.join(argv)}` exited {rc} once, then worked when re-run")
    return samples


def in_fresh_interpreter(target: str, plan: Plan, ctx: Context) -> list[float]:
    """Run ``module:function(plan) -> samples`` in a new, lean Python process.

    Used for in-process APIs: the caller must be single-threaded to create a user
    namespace, and fork costs grow with the caller's heap, so the timing loop runs in an
    interpreter that has imported nothing but the standard library and the code measured.
    """
    argv = [sys.executable, "-m", "benchmarks.worker", target, json.dumps(dataclasses.asdict(plan))]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=ctx.env,
            cwd="/",
            timeout=plan.timeout * (plan.n + plan.warmup),
        )
    except subprocess.TimeoutExpired as e:
        raise CaseFailed(f"{target} did not finish in time") from e
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip()[-600:]
        raise CaseFailed(f"worker for {target} exited {proc.returncode}: {tail or 'no output'}")
    reply = json.loads(lines[-1])
    raise_packed(reply)
    return [float(s) for s in reply["samples"]]


def pack_error(e: BaseException) -> dict[str, str]:
    """The JSON form of a case's outcome when it has no samples (for helper processes)."""
    if isinstance(e, NotAvailable):
        return {"not_available": str(e)}
    if isinstance(e, CaseFailed):
        return {"failed": str(e)}
    return {"error": "".join(traceback.format_exception(e)[-3:]).strip()}


def raise_packed(reply: dict[str, Any]) -> None:
    """Raise what :func:`pack_error` packed, if the reply is an error."""
    if "not_available" in reply:
        raise NotAvailable(reply["not_available"])
    if "failed" in reply:
        raise CaseFailed(reply["failed"])
    if "error" in reply:
        raise CaseError(reply["error"])


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    def r(x: float) -> float:
        return round(x, 4)

    return {
        "n": len(samples),
        "median": r(statistics.median(samples)),
        "p95": r(percentile(samples, 95)),
        "mean": r(statistics.fmean(samples)),
        "stdev": r(statistics.stdev(samples)) if len(samples) > 1 else 0.0,
        "min": r(min(samples)),
        "max": r(max(samples)),
        "samples": [r(s) for s in samples],
    }


# ---------------------------------------------------------------- running


def plan_for(c: Case, *, quick: bool) -> Plan:
    if quick:
        return Plan(n=3, warmup=1)
    return Plan(n=c.iterations, warmup=3)


def run_case(c: Case, ctx: Context) -> dict[str, Any]:
    plan = plan_for(c, quick=ctx.quick)
    entry: dict[str, Any] = {"group": c.group, "label": c.label, "unit": c.unit}
    if c.target is not None:
        entry["target"] = c.target
    t0 = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    try:
        m = c.measure(ctx, plan)
    except NotAvailable as e:
        return entry | {"status": "not available", "reason": str(e)}
    except CaseFailed as e:
        return entry | {"status": "failed", "reason": str(e)}
    except CaseError as e:
        return entry | {"status": "error", "reason": str(e)}
    except Exception as e:
        # A bug in the benchmark itself: report it and keep measuring the rest.
        traceback.print_exc()
        return entry | {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    if not m.samples:
        return entry | {"status": "failed", "reason": "the case returned no samples"}
    entry |= {"status": "ok", "warmup": plan.warmup, **summarize(m.samples)}
    # The machine may be shared: the 1-minute load when the case started helps judge a p95.
    entry["load_average_1min"] = load_at_start
    if c.target is not None:
        entry["meets_target"] = entry["median"] <= c.target
    if m.command is not None:
        entry["command"] = m.command if isinstance(m.command, str) else shlex.join(m.command)
    if m.details:
        entry["details"] = m.details
    entry["seconds"] = round(time.monotonic() - t0, 2)
    return entry


def all_ratios(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each case over its group's reference (medians), then the declared ratios."""
    wanted: list[Ratio] = []
    for g in GROUPS.values():
        if g.reference is None or g.reference not in cases:
            continue
        ref_label = cases[g.reference]["label"]
        for cid, entry in cases.items():
            if entry["group"] == g.id and cid != g.reference:
                wanted.append(Ratio(f"{g.id}: {entry['label']} / {ref_label}", cid, g.reference))
    wanted += [r for r in RATIOS if r.numerator in cases and r.denominator in cases]

    out: dict[str, dict[str, Any]] = {}
    for r in wanted:
        num, den = cases[r.numerator], cases[r.denominator]
        item: dict[str, Any] = {"numerator": r.numerator, "denominator": r.denominator}
        missing = [c for c in (num, den) if c["status"] != "ok"]
        if missing:
            item["value"] = None
            item["reason"] = f"{missing[0]['label']} is {missing[0]['status']}"
        else:
            item["value"] = round(num["median"] / den["median"], 3)
            if r.target is not None:
                item["target"] = r.target
                item["meets_target"] = item["value"] <= r.target
        out[r.name] = item
    return out


# ---------------------------------------------------------------- the machine


def _first_line(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        return platform.system()


def cgroup_mounts() -> list[tuple[str, str]]:
    """``(fstype, mountpoint)`` of every cgroup (v1) and cgroup2 mount this process sees."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fstype = line.split(" - ", 1)[1].split()[0]
            if fstype in ("cgroup", "cgroup2"):
                found.append((fstype, line.split()[4]))
    return found


def cgroup_layout() -> str:
    """``v2``, ``v1`` or ``hybrid`` (v1 controllers plus a v2 tree), from the mount table."""
    kinds = {fstype for fstype, _ in cgroup_mounts()}
    if kinds == {"cgroup2"}:
        return "v2"
    if kinds == {"cgroup"}:
        return "v1"
    return "hybrid" if kinds else "none"


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}" if head else None


def _nskernel_version() -> str | None:
    # Read, not imported: this process stays free of the code it measures.
    try:
        text = (REPO / "nskernel" / "__init__.py").read_text()
    except OSError:
        return None
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else None


def compile_bytecode() -> str:
    """Compile this checkout's ``nskernel`` to bytecode, as installing a wheel does.

    Every timed process that starts an interpreter (``nskernel run``, the kernel
    launcher, the sandbox server) imports nskernel from this checkout. Without valid
    ``__pycache__`` files (a fresh clone, edited sources, or ``PYTHONDONTWRITEBYTECODE``
    set) each of them would compile it from source first: ~30 ms more per kernel start
    and per ``nskernel run`` here, a cost no installed copy pays. The plain ipykernel it
    is compared with always starts from installed bytecode.
    """
    import compileall
    import io

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        ok = compileall.compile_dir(str(REPO / "nskernel"), quiet=1)
    if ok:
        return "compiled up front (as installing does)"
    return (
        "could not be compiled up front: imports may compile from source: "
        + (quiet.getvalue().strip().splitlines() or ["no reason given"])[-1]
    )


def describe_machine() -> dict[str, Any]:
    uname = platform.uname()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "os": _os_name(),
        "kernel": f"{uname.system} {uname.release} {uname.machine}",
        "cgroups": cgroup_layout(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "euid": os.geteuid(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "nskernel_version": _nskernel_version(),
        "nskernel_commit": _git_commit(),
        # Container engines report their versions from inside the engine host (in their
        # cases' details): even `crun --version` creates /run/crun.
        "tools": {
            "unshare": _first_line(["unshare", "--version"]),
            "bwrap": _first_line(["bwrap", "--version"]),
        },
    }


def iter_results_lines(results: dict[str, Any]) -> Iterator[str]:
    """A Markdown table of every case: what the README shows next to the chart."""
    yield "| group | case | median | p95 | n | vs reference |"
    yield "|---|---|---:|---:|---:|---:|"
    for cid, entry in results["cases"].items():
        grp = results["groups"][entry["group"]]
        name = f"| {grp['title']} | {entry['label']} |"
        if entry["status"] != "ok":
            yield f"{name} {entry['status']} | | | |"
            continue
        if cid == grp["reference"]:
            vs = "reference"
        else:
            r = next(
                (
                    r
                    for r in results["ratios"].values()
                    if r["numerator"] == cid and r["denominator"] == grp["reference"]
                ),
                None,
            )
            vs = f"{r['value']:.2f}x" if r and r["value"] is not None else ""
        unit = entry["unit"]
        yield (
            f"{name} {entry['median']:.2f} {unit} | {entry['p95']:.2f} {unit} "
            f"| {entry['n']} | {vs} |"
        )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
