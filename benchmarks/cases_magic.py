"""``%%sandbox`` overhead: a trivial cell with and without the magic, through a real kernel.

One plain ipykernel (this interpreter's, ``%load_ext nskernel``) runs both kinds of cell
in the same run, interleaved (plain, sandboxed, plain, ...) so load changes hit both
alike. Each figure is the wall time from sending ``execute_request`` to receiving its
``execute_reply``, as a notebook front end sees it.

- ``magic.plain``: ``pass``, no sandbox;
- ``magic.sandbox``: ``%%sandbox`` + ``pass`` in a brand-new sandbox with all six
  namespaces, with 100 ms between cells (a person reading output): the server has made
  the next sandbox ahead of time, so the cell pays for running, not for creating it;
- ``magic.overhead``: per pair, sandboxed minus plain: the figure the issue targets
  (median <= 10 ms, goal 5 ms);
- ``magic.back-to-back``: ``%%sandbox`` cells with no pause, each sent when the previous
  one replied: no sandbox is made ahead while cells arrive, so each pays for creating its
  own;
- ``magic.named``: a cell in an existing named sandbox (``--name``);
- ``magic.run-all-plain`` / ``magic.run-all-sandbox``: what "Run All" does: a batch of
  ``RUN_ALL_BATCH`` execute requests sent at once, each sample the batch's time from the
  first request to the last reply divided by its cells, for ``pass`` and for
  ``%%sandbox`` + ``pass``, batches interleaved; ``magic.run-all-overhead``: per pair of
  batches, the per-cell difference. Issue 19's target: at most 2x ``true.unshare`` of
  the same run (goal 1x): every cell creates its sandbox, with no idle time to do it ahead.
"""

from __future__ import annotations

import contextlib
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

THINK_TIME = 0.1  # seconds between cells in the interleaved run
RUN_ALL_BATCH = 20  # cells per "Run All" batch, all requests sent at once
TARGET_OVERHEAD_MS = 10.0

group("magic", "trivial notebook cell, with and without %%sandbox", reference="magic.plain")


@contextlib.contextmanager
def _kernel(ctx: Context) -> Iterator[Any]:
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError as e:
        raise NotAvailable(f"jupyter_client is not installed: {e}") from e

    env = ctx.env
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd="/")
    try:
        _cell(kc, "%load_ext nskernel")
        for _ in range(3):
            _cell(kc, "%%sandbox\npass")  # starts the server; every path is warm after
        _cell(kc, "%%sandbox --name bench\npass")
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _cell(kc: Any, code: str, timeout: float = 60.0) -> float:
    """Run one cell; milliseconds until its execute_reply. Fails on an error reply."""
    return timed_cell(kc, code, timeout)[0]


def _repeat(ctx: Context, plan: Plan, code: str) -> list[float]:
    """Run ``code`` back to back; the timed samples after the warm-up."""
    kc = ctx.fixture("magic-kernel", _kernel)
    samples = [_cell(kc, code) for _ in range(plan.warmup + plan.n)]
    return samples[plan.warmup :]


def _interleaved(ctx: Context, plan: Plan) -> dict[str, list[float]]:
    def make(c: Context) -> contextlib.AbstractContextManager[dict[str, list[float]]]:
        kc = c.fixture("magic-kernel", _kernel)
        plain: list[float] = []
        boxed: list[float] = []
        for i in range(plan.warmup + plan.n):
            time.sleep(THINK_TIME)
            p = _cell(kc, "pass")
            time.sleep(THINK_TIME)
            s = _cell(kc, "%%sandbox\npass")
            if i >= plan.warmup:
                plain.append(p)
                boxed.append(s)
        overhead = [s - p for p, s in zip(plain, boxed, strict=True)]
        return contextlib.nullcontext({"plain": plain, "sandbox": boxed, "overhead": overhead})

    return ctx.fixture("magic-interleaved", make)


_COMMAND = "jupyter_client execute_request -> execute_reply, plain ipykernel + %load_ext nskernel"


@case("magic", "plain", "cell: pass", iterations=100)
def plain(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(_interleaved(ctx, plan)["plain"], _COMMAND, {"cell": "pass"})


@case("magic", "sandbox", "cell: %%sandbox pass", iterations=100)
def sandboxed(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(
        _interleaved(ctx, plan)["sandbox"],
        _COMMAND,
        {
            "cell": "%%sandbox\\npass",
            "namespaces": "user, pid, net, mnt, uts, ipc (no flag: all six)",
            "think_time_ms": THINK_TIME * 1e3,
        },
    )


@case("magic", "overhead", "%%sandbox overhead per cell", iterations=100, target=TARGET_OVERHEAD_MS)
def overhead(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(
        _interleaved(ctx, plan)["overhead"],
        _COMMAND,
        {"what": "per interleaved pair: %%sandbox cell minus plain cell", "goal_ms": 5.0},
    )


@case("magic", "back-to-back", "%%sandbox pass, no pause, one by one", iterations=60)
def back_to_back(ctx: Context, plan: Plan) -> Measurement:
    samples = _repeat(ctx, plan, "%%sandbox\npass")
    return Measurement(samples, _COMMAND, {"cell": "%%sandbox\\npass", "think_time_ms": 0})


@case("magic", "named", "%%sandbox --name: cell in a named sandbox", iterations=100)
def named(ctx: Context, plan: Plan) -> Measurement:
    samples = _repeat(ctx, plan, "%%sandbox --name bench\npass")
    return Measurement(samples, _COMMAND, {"cell": "%%sandbox --name bench\\npass"})


def _run_all_batch(kc: Any, code: str, cells: int, timeout: float = 120.0) -> float:
    """Send ``cells`` execute requests at once, as a front end's Run All does; the
    milliseconds from the first request to the last reply, per cell. Waits (untimed) for
    the kernel to go idle after the last one."""
    t0 = time.perf_counter()
    ids = [kc.execute(code) for _ in range(cells)]
    pending = set(ids)
    failed: list[str] = []
    while pending:
        reply = kc.get_shell_msg(timeout=timeout)
        mid = reply["parent_header"].get("msg_id")
        if mid in pending:
            pending.discard(mid)
            if reply["content"]["status"] != "ok":
                failed.append(f"{reply['content'].get('ename')}: {reply['content'].get('evalue')}")
    elapsed = (time.perf_counter() - t0) * 1e3
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if (
            msg["parent_header"].get("msg_id") == ids[-1]
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    if failed:
        raise CaseFailed(f"Run All of {code[:60]!r}: {failed[0]}")
    return elapsed / cells


def _run_all(ctx: Context, plan: Plan) -> dict[str, list[float]]:
    def make(c: Context) -> contextlib.AbstractContextManager[dict[str, list[float]]]:
        kc = c.fixture("magic-kernel", _kernel)
        plain: list[float] = []
        boxed: list[float] = []
        for i in range(plan.warmup + plan.n):
            time.sleep(THINK_TIME)
            p = _run_all_batch(kc, "pass", RUN_ALL_BATCH)
            time.sleep(THINK_TIME)
            # The first cell of a batch may find a sandbox made ahead during the pause;
            # the other RUN_ALL_BATCH - 1 create their own.
            s = _run_all_batch(kc, "%%sandbox\npass", RUN_ALL_BATCH)
            if i >= plan.warmup:
                plain.append(p)
                boxed.append(s)
        overhead = [s - p for p, s in zip(plain, boxed, strict=True)]
        return contextlib.nullcontext({"plain": plain, "sandbox": boxed, "overhead": overhead})

    return ctx.fixture("magic-run-all", make)


_RUN_ALL = f"{RUN_ALL_BATCH} execute_requests sent at once; first request -> last reply, per cell"


@case("magic", "run-all-plain", "Run All: cell: pass, per cell", iterations=15)
def run_all_plain(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(_run_all(ctx, plan)["plain"], _RUN_ALL, {"cell": "pass"})


@case("magic", "run-all-sandbox", "Run All: cell: %%sandbox pass, per cell", iterations=15)
def run_all_sandbox(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(_run_all(ctx, plan)["sandbox"], _RUN_ALL, {"cell": "%%sandbox\\npass"})


@case("magic", "run-all-overhead", "Run All: %%sandbox overhead per cell", iterations=15)
def run_all_overhead(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(
        _run_all(ctx, plan)["overhead"],
        _RUN_ALL,
        {"what": "per interleaved pair of batches: %%sandbox minus plain, per cell"},
    )


# Issue 19's targets, as ratios computed in the same run (the figures they compare are
# registered in cases_launch.py).
ratio(
    "Run All %%sandbox overhead / unshare true",
    "magic.run-all-overhead",
    "true.unshare",
    target=2.0,
)
