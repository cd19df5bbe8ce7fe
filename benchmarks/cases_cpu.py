"""The CPU time one sandbox costs the machine: create, run, tear down (issue 19).

Wall time hides how much work a sandbox is when the machine has a core to spare; it does
not when sandboxes come back to back on a busy machine ("Run All" of ``%%sandbox``
cells on 2 cores is bound by this figure, not by any one sandbox's latency). Each sample
is the CPU time (user + system, ``getrusage``) of one create -> run -> tear down: the
caller's own and that of every process of the sandbox's tree, all reaped by the end of
the call. Not counted: the kernel's worker threads (tearing a network namespace down is
finished by one of them; a system-wide ``perf record`` of these loops put it at well
under a millisecond per sandbox).

- ``cpu.unshare``: ``unshare --user --map-root-user --pid --fork --mount-proc --net
  --uts --ipc --mount true`` started from a lean interpreter (``subprocess.run``);
- ``cpu.nskernel-api``: ``Sandbox.spawn(SandboxSpec(), ["true"]).wait()``, from a lean
  interpreter;
- ``cpu.nskernel-server``: ``Sandbox.spawn(SandboxSpec(), target=noop).wait()`` from an
  interpreter holding a warm IPython shell (``cellrunner.prepare()``, ``gc.freeze()``),
  as the ``%%sandbox`` server makes every cell's sandbox: each process of the setup is
  a copy of that bigger heap.

The loops run in fresh interpreters (``in_fresh_interpreter``), as ``cases_confine``'s do.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from collections.abc import Callable

from benchmarks.harness import (
    CaseFailed,
    Context,
    Measurement,
    NotAvailable,
    Plan,
    case,
    group,
    in_fresh_interpreter,
    ratio,
)

CPU = "cpu"
UNSHARE = [
    "unshare",
    "--user",
    "--map-root-user",
    "--pid",
    "--fork",
    "--mount-proc",
    "--net",
    "--uts",
    "--ipc",
    "--mount",
    "true",
]

group(
    CPU, "CPU time per sandbox: create, run, tear down (all its processes)", reference="cpu.unshare"
)


@case(CPU, "unshare", "unshare(1), true", iterations=100)
def unshare(ctx: Context, plan: Plan) -> Measurement:
    if shutil.which("unshare") is None:
        raise NotAvailable("unshare(1) is not installed (util-linux)")
    samples = in_fresh_interpreter("benchmarks.cases_cpu:unshare_loop", plan, ctx)
    return Measurement(samples, UNSHARE)


@case(CPU, "nskernel-api", "nskernel API, true", iterations=100)
def api(ctx: Context, plan: Plan) -> Measurement:
    samples = in_fresh_interpreter("benchmarks.cases_cpu:api_loop", plan, ctx)
    return Measurement(samples, 'Sandbox.spawn(SandboxSpec(), ["true"]).wait()')


@case(CPU, "nskernel-server", "nskernel API from a warm IPython heap, callable", iterations=100)
def server(ctx: Context, plan: Plan) -> Measurement:
    samples = in_fresh_interpreter("benchmarks.cases_cpu:server_loop", plan, ctx)
    return Measurement(
        samples,
        "Sandbox.spawn(SandboxSpec(), target=noop).wait()  # after cellrunner.prepare(), "
        "gc.freeze(), as the %%sandbox server",
    )


ratio("CPU per sandbox: nskernel API / unshare", "cpu.nskernel-api", "cpu.unshare")
ratio("CPU per sandbox: %%sandbox server's / unshare", "cpu.nskernel-server", "cpu.unshare")


# ---------------------------------------------------------------- timing loops (workers)


def _cpu_ms() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime) * 1e3


def _cpu_calls(fn: Callable[[], None], plan: Plan) -> list[float]:
    """CPU milliseconds per call of ``fn`` (its process and everything it reaped)."""
    for _ in range(max(1, plan.warmup)):
        fn()
    samples = []
    for _ in range(plan.n):
        before = _cpu_ms()
        fn()
        samples.append(_cpu_ms() - before)
    return samples


def unshare_loop(plan: Plan) -> list[float]:
    def once() -> None:
        proc = subprocess.run(UNSHARE, stdin=subprocess.DEVNULL, capture_output=True)
        if proc.returncode != 0:
            raise CaseFailed(f"unshare exited {proc.returncode}: {proc.stderr.decode()[-300:]}")

    return _cpu_calls(once, plan)


def _spawn_loop(plan: Plan, call: Callable[[object, object], object]) -> list[float]:
    try:
        from nskernel import NskernelError, Sandbox, SandboxSpec
    except ImportError as e:
        raise NotAvailable(f"nskernel cannot be imported: {e}") from e
    spec = SandboxSpec()

    def once() -> None:
        try:
            status = call(Sandbox, spec).wait()  # type: ignore[attr-defined]
        except NskernelError as e:
            raise CaseFailed(f"{type(e).__name__}: {e}") from e
        if status != 0:
            raise CaseFailed(f"the sandbox exited with status {status}")

    return _cpu_calls(once, plan)


def api_loop(plan: Plan) -> list[float]:
    return _spawn_loop(plan, lambda sandbox, spec: sandbox.spawn(spec, ["true"]))  # type: ignore[attr-defined]


def server_loop(plan: Plan) -> list[float]:
    import gc

    from nskernel.magics import cellrunner

    cellrunner.prepare()  # the server's warm shell: what every cell's sandbox is a copy of
    gc.freeze()
    return _spawn_loop(plan, lambda sandbox, spec: sandbox.spawn(spec, target=lambda: 0))  # type: ignore[attr-defined]
