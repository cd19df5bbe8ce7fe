"""Scale, memory and drift of ``%%sandbox``, through a real kernel.

Every figure comes from a plain ipykernel (this interpreter's, ``%load_ext nskernel``)
driven by jupyter_client, as a notebook would drive it. Memory is read from the host side:
PSS from ``/proc/PID/smaps_rollup``, summed over every process of a sandbox (its init, its
cell runner and anything they started). PSS divides each shared page among the processes
that map it, so sandboxes forked from the same warm server (and sharing its pages
copy-on-write) look smaller the more of them there are; USS (pages nobody else maps) is
in ``details`` as the cost that sharing cannot hide.

Groups (``--only 'scale*'`` runs them all):

- ``scale-memory`` (MiB): a fresh plain ipykernel process (reference), one idle named
  sandbox (target <= 5 MiB; created, left idle, measured, removed, once per sample) and
  each sandbox while N named ones are alive at once (N = 200, ``--quick``: 10; the total
  is in ``details``);
- ``scale-named`` (ms): creating the 1st..Nth named sandbox while all earlier ones stay
  alive (a cell ``%%sandbox --name sK`` + ``pass``): the first and the last ones, so the
  group ratio is how creation grows from the 1st to the Nth; then ``%sandbox rm --all``,
  checked to leave none of their processes;
- ``scale-drift`` / ``scale-drift-cold`` (ms): 1000 unnamed ``%%sandbox`` + ``pass``
  cells in a row (``--quick``: 50), the first and the last 100 (``--quick``: 3), so each
  group's ratio is the drift (target <= 1.1: the same speed, give or take a busy
  machine). ``scale-drift`` is the default server, with a short pause between cells so
  that it makes the next sandbox ahead of time; ``scale-drift-cold`` sets
  ``NSKERNEL_MAGIC_PREWARM=0`` in the kernel, so every cell pays for a real create. The
  open fds and threads of the kernel and the server before and after are in ``details``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.harness import (
    CaseFailed,
    Context,
    Measurement,
    NotAvailable,
    Plan,
    case,
    group,
    ratio,
)
from benchmarks.kernelcells import timed_cell

MIB = 2**20
TARGET_IDLE_MIB = 5.0
TARGET_DRIFT = 1.1
NAMED_FULL, NAMED_QUICK = 200, 10
CYCLES_FULL, CYCLES_QUICK = 1000, 50
# Between cells of the default drift run: longer than the server's idle spell before it
# makes the next sandbox ahead of time (WARM_AFTER_IDLE, 20 ms), so that path is measured.
DRIFT_PAUSE = 0.06
SETTLE = 0.3  # seconds an idle sandbox is left alone before its memory is read

_COMMAND = "jupyter_client execute_request -> execute_reply, plain ipykernel + %load_ext nskernel"

group("scale-memory", "memory (PSS) per process tree", reference="scale-memory.ipykernel")
group("scale-named", "creating named sandboxes while all stay alive", reference="scale-named.first")
group("scale-drift", "drift: unnamed %%sandbox cells in a row", reference="scale-drift.first")
group(
    "scale-drift-cold",
    "drift, NSKERNEL_MAGIC_PREWARM=0 (every cell creates)",
    reference="scale-drift-cold.first",
)


# ---------------------------------------------------------------- host-side readings


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children files are per thread: read every task)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """Pss, Rss and USS (Private_Clean + Private_Dirty) of one process, in KiB."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    fields[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {"Pss": 0, "Rss": 0, "Uss": 0}  # exited meanwhile
    except PermissionError as e:
        raise NotAvailable(f"cannot read /proc/{pid}/smaps_rollup as this user: {e}") from e
    return {
        "Pss": fields.get("Pss", 0),
        "Rss": fields.get("Rss", 0),
        "Uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def tree_memory_mib(pid: int) -> dict[str, float]:
    """PSS, RSS and USS summed over ``pid`` and its descendants, in MiB."""
    procs = process_tree(pid)
    total = {"Pss": 0, "Rss": 0, "Uss": 0}
    for p in procs:
        for k, v in memory_kib(p).items():
            total[k] += v
    return {
        "pss": total["Pss"] / 1024,
        "rss": total["Rss"] / 1024,
        "uss": total["Uss"] / 1024,
        "processes": len(procs),
    }


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# ---------------------------------------------------------------- the kernel


class Kernel:
    """A plain ipykernel with ``%load_ext nskernel``, its host PID and its server's."""

    def __init__(self, km: Any, kc: Any) -> None:
        self.km = km
        self.kc = kc
        self.pid: int = self.value("__import__('os').getpid()")
        self.server_pid: int | None = None

    def cell(self, code: str, timeout: float = 60.0) -> tuple[float, str]:
        """Run one cell; (milliseconds until its execute_reply, its stdout)."""
        return timed_cell(self.kc, code, timeout)

    def value(self, expr: str) -> Any:
        """The JSON value of ``expr`` evaluated in the kernel."""
        _, out = self.cell(f"import json as _j; print(_j.dumps({expr}))")
        return json.loads(out.strip().splitlines()[-1])

    def start_server(self) -> None:
        for _ in range(3):
            self.cell("%%sandbox\npass")  # starts the server; every path is warm after
        self.server_pid = self.value(
            "__import__('nskernel.magics.client', fromlist=['x']).get_client().server_pid"
        )

    def named_pids(self) -> dict[str, int]:
        """Host PID of each named sandbox's init, from ``%sandbox ls``."""
        # `x = %magic` is the only way a line magic's value lands in a variable.
        self.cell("_nsk_ls = %sandbox ls")
        listed = self.value("{i['name']: i['pid'] for i in _nsk_ls}")
        return {name: int(pid) for name, pid in listed.items()}

    def counts(self) -> dict[str, int]:
        assert self.server_pid is not None
        return {
            "kernel_fds": fd_count(self.pid),
            "kernel_threads": thread_count(self.pid),
            "server_fds": fd_count(self.server_pid),
            "server_children": len(_children(self.server_pid)),
        }


@contextlib.contextmanager
def kernel(ctx: Context, *, extra_env: dict[str, str] | None = None) -> Iterator[Kernel]:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError as e:
        raise NotAvailable(f"jupyter_client is not installed: {e}") from e
    env = ctx.env | (extra_env or {})
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd="/")
    try:
        k = Kernel(km, kc)
        k.cell("%load_ext nskernel")
        k.start_server()
        yield k
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _scale_kernel(ctx: Context) -> contextlib.AbstractContextManager[Kernel]:
    return kernel(ctx)


# ---------------------------------------------------------------- memory


@case("scale-memory", "ipykernel", "fresh plain ipykernel", iterations=5, unit="MiB")
def plain_kernel_memory(ctx: Context, plan: Plan) -> Measurement:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError as e:
        raise NotAvailable(f"jupyter_client is not installed: {e}") from e
    samples: list[float] = []
    readings: list[dict[str, float]] = []
    for _ in range(plan.n):
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60, env=ctx.env, cwd="/")
        try:
            time.sleep(SETTLE)
            m = tree_memory_mib(km.provisioner.process.pid)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        samples.append(m["pss"])
        readings.append(m)
    return Measurement(
        samples,
        "python -m ipykernel_launcher (started by jupyter_client), after kernel_info",
        {"uss_mib_median": _median(readings, "uss"), "rss_mib_median": _median(readings, "rss")},
    )


@case(
    "scale-memory",
    "sandbox-idle",
    "idle named sandbox",
    iterations=10,
    unit="MiB",
    target=TARGET_IDLE_MIB,
)
def idle_sandbox_memory(ctx: Context, plan: Plan) -> Measurement:
    k = ctx.fixture("scale-kernel", _scale_kernel)
    samples: list[float] = []
    readings: list[dict[str, float]] = []
    by_process: list[dict[str, Any]] = []
    for i in range(plan.warmup + plan.n):
        k.cell(f"%%sandbox --name idle{i}\nx = {i}")
        pid = k.named_pids()[f"idle{i}"]
        time.sleep(SETTLE)
        m = tree_memory_mib(pid)
        if i == plan.warmup:
            by_process = [_process_row(p) for p in process_tree(pid)]
        k.cell(f"%sandbox rm idle{i}")
        if i >= plan.warmup:
            samples.append(m["pss"])
            readings.append(m)
    assert k.server_pid is not None
    return Measurement(
        samples,
        "%%sandbox --name idleK (all six namespaces) + one trivial cell, then idle",
        {
            "what": "PSS summed over the sandbox's processes (init + cell runner)",
            "processes": readings[0]["processes"],
            "uss_mib_median": _median(readings, "uss"),
            "rss_mib_median": _median(readings, "rss"),
            "by_process": by_process,
            "server": _process_row(k.server_pid),
        },
    )


def _process_row(pid: int) -> dict[str, Any]:
    """One process's memory in MiB, named by its comm (nskernel-init, python, ...)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = "?"
    m = memory_kib(pid)
    return {"comm": comm} | {k.lower() + "_mib": round(v / 1024, 2) for k, v in m.items()}


# ---------------------------------------------------------------- N named sandboxes


def _many_named(ctx: Context, plan: Plan) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """Create N named sandboxes, all alive at once; measure; remove them all; check."""
    from nskernel._linux.procfs import alive

    k = ctx.fixture("scale-kernel", _scale_kernel)
    count = NAMED_QUICK if ctx.quick else NAMED_FULL
    times = []
    for i in range(count):
        ms, _ = k.cell(f"%%sandbox --name s{i}\npass")
        times.append(ms)
    pids = k.named_pids()
    missing = [f"s{i}" for i in range(count) if f"s{i}" not in pids]
    if missing:
        raise CaseFailed(f"{len(missing)} named sandboxes are not listed: {missing[:5]}")
    time.sleep(SETTLE)
    memory = [tree_memory_mib(pids[f"s{i}"]) for i in range(count)]
    trees = {p: process_tree(p) for p in pids.values()}
    t0 = time.perf_counter()
    k.cell("%sandbox rm --all")
    rm_ms = (time.perf_counter() - t0) * 1e3
    deadline = time.monotonic() + 30
    left = [p for tree in trees.values() for p in tree]
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.05)
    if left:
        raise CaseFailed(f"{len(left)} processes of removed sandboxes remain, e.g. {left[:5]}")
    if k.named_pids():
        raise CaseFailed("`%sandbox ls` still lists sandboxes after `%sandbox rm --all`")
    return contextlib.nullcontext(
        {
            "count": count,
            "times": times,
            "memory": memory,
            "rm_all_ms": round(rm_ms, 1),
            "processes": sum(len(t) for t in trees.values()),
        }
    )


def _named(ctx: Context, plan: Plan) -> dict[str, Any]:
    return ctx.fixture("scale-many-named", lambda c: _many_named(c, plan))


def _tenths(values: list[float]) -> list[list[float]]:
    size = max(1, len(values) // 10)
    return [values[i : i + size] for i in range(0, len(values), size)]


def _named_details(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "sandboxes": run["count"],
        "cell": "%%sandbox --name sK\\npass (all six namespaces), K = 0..N-1, all kept alive",
        "median_all_ms": round(statistics.median(run["times"]), 2),
        # Growth or noise? A trend shows across all tenths, a busy spell in one or two.
        "median_by_tenth_ms": [round(statistics.median(part), 2) for part in _tenths(run["times"])],
        "rm_all_ms": run["rm_all_ms"],
        "processes_removed": run["processes"],
    }


@case("scale-named", "first", "first named sandboxes", iterations=20)
def named_first(ctx: Context, plan: Plan) -> Measurement:
    run = _named(ctx, plan)
    return Measurement(run["times"][: plan.n], _COMMAND, _named_details(run))


@case("scale-named", "last", "last named sandboxes (N alive)", iterations=20)
def named_last(ctx: Context, plan: Plan) -> Measurement:
    run = _named(ctx, plan)
    return Measurement(run["times"][-plan.n :], _COMMAND, _named_details(run))


@case("scale-memory", "sandbox-of-many", "each named sandbox, N alive", iterations=200, unit="MiB")
def many_memory(ctx: Context, plan: Plan) -> Measurement:
    run = _named(ctx, plan)
    memory = run["memory"]
    # Full run: every sandbox (iterations == N). Quick: plan.n of them, evenly spread.
    step = max(1, len(memory) // plan.n)
    picked = memory[::step][: plan.n]
    return Measurement(
        [m["pss"] for m in picked],
        "%%sandbox --name sK\\npass, K = 0..N-1, all alive, then idle",
        {
            "sandboxes": run["count"],
            "total_pss_mib": round(sum(m["pss"] for m in memory), 1),
            "total_uss_mib": round(sum(m["uss"] for m in memory), 1),
            "total_rss_mib": round(sum(m["rss"] for m in memory), 1),
        },
    )


# ---------------------------------------------------------------- drift


def _drift(ctx: Context, *, cold: bool) -> dict[str, Any]:
    cycles = CYCLES_QUICK if ctx.quick else CYCLES_FULL
    pause = 0.0 if cold else DRIFT_PAUSE
    env = {"NSKERNEL_MAGIC_PREWARM": "0"} if cold else {}
    with kernel(ctx, extra_env=env) as k:
        time.sleep(SETTLE)
        before = k.counts()
        times = []
        for _ in range(cycles):
            if pause:
                time.sleep(pause)
            ms, _ = k.cell("%%sandbox\npass")
            times.append(ms)
        time.sleep(SETTLE + (DRIFT_PAUSE if not cold else 0))
        after = k.counts()
    return {"cycles": cycles, "times": times, "before": before, "after": after, "pause": pause}


def _drift_run(ctx: Context, *, cold: bool) -> dict[str, Any]:
    key = "scale-drift-cold" if cold else "scale-drift"
    return ctx.fixture(key, lambda c: contextlib.nullcontext(_drift(c, cold=cold)))


def _drift_details(run: dict[str, Any], window: int) -> dict[str, Any]:
    first = statistics.median(run["times"][:window])
    last = statistics.median(run["times"][-window:])
    return {
        "cycles": run["cycles"],
        "window": window,
        "pause_ms": run["pause"] * 1e3,
        "drift_last_over_first": round(last / first, 3),
        "median_all_ms": round(statistics.median(run["times"]), 2),
        "before": run["before"],
        "after": run["after"],
        "kernel_fd_leak": run["after"]["kernel_fds"] - run["before"]["kernel_fds"],
        "server_fd_leak": run["after"]["server_fds"] - run["before"]["server_fds"],
    }


def _drift_case(ctx: Context, plan: Plan, *, cold: bool, last: bool) -> Measurement:
    run = _drift_run(ctx, cold=cold)
    times = run["times"][-plan.n :] if last else run["times"][: plan.n]
    return Measurement(times, _COMMAND, _drift_details(run, plan.n))


@case("scale-drift", "first", "first 100 cells", iterations=100)
def drift_first(ctx: Context, plan: Plan) -> Measurement:
    return _drift_case(ctx, plan, cold=False, last=False)


@case("scale-drift", "last", "last 100 of 1000 cells", iterations=100)
def drift_last(ctx: Context, plan: Plan) -> Measurement:
    return _drift_case(ctx, plan, cold=False, last=True)


@case("scale-drift-cold", "first", "first 100 cells", iterations=100)
def drift_cold_first(ctx: Context, plan: Plan) -> Measurement:
    return _drift_case(ctx, plan, cold=True, last=False)


@case("scale-drift-cold", "last", "last 100 of 1000 cells", iterations=100)
def drift_cold_last(ctx: Context, plan: Plan) -> Measurement:
    return _drift_case(ctx, plan, cold=True, last=True)


ratio(
    "drift: last 100 over first 100 cells",
    "scale-drift.last",
    "scale-drift.first",
    target=TARGET_DRIFT,
)
ratio(
    "drift without prewarm: last 100 over first 100 cells",
    "scale-drift-cold.last",
    "scale-drift-cold.first",
    target=TARGET_DRIFT,
)
ratio(
    "idle named sandbox over a fresh ipykernel (PSS)",
    "scale-memory.sandbox-idle",
    "scale-memory.ipykernel",
)


def _median(readings: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in readings), 2)
