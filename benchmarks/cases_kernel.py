"""The sandboxed kernel next to plain ipykernel, in the same run, through jupyter_client.

- ``kernel-start``: wall time from ``KernelManager.start_kernel()`` to the first
  ``kernel_info_reply`` (what a notebook waits for before it can run a cell). Plain and
  sandboxed starts alternate (plain, sandboxed, plain, ...) so machine load hits both
  alike; each kernel is shut down (untimed) before the next start. The sandboxed figure
  includes host-facts capture and sandbox creation, and the launcher: the spare one the
  previous start left waiting (nskernel/kernel/spare.py), as every start but a server's
  first gets; the provisioner's one-time capability probe and that first start are paid
  in the untimed warm-up.
- ``kernel-exec``: ``execute("pass")`` to its ``execute_reply``, one long-lived kernel of
  each kind, alternating; ZMQ over TCP loopback (plain) against unix sockets (sandboxed).

Both kernels are this interpreter's ipykernel; the kernelspecs are throwaway (in the run's
scratch directory). Targets (issue 3): start within 1.1x of plain, execute within 1.05x.
"""

from __future__ import annotations

import contextlib
import json
import sys
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

SANDBOXED = "nsk-bench"
PLAIN = "python3-bench"
TIMEOUT = 90.0

group("kernel-start", "kernel start -> kernel_info reply", reference="kernel-start.ipykernel")
group("kernel-exec", 'execute("pass") round trip', reference="kernel-exec.ipykernel")


@contextlib.contextmanager
def _kernelspecs(ctx: Context) -> Iterator[Any]:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        from nskernel.kernel import install
    except ImportError as e:
        raise NotAvailable(f"jupyter_client / nskernel.kernel cannot be imported: {e}") from e
    prefix = ctx.workdir / "kernel-prefix"
    install.install(name=SANDBOXED, prefix=str(prefix))
    plain = ctx.workdir / "plain-spec"
    plain.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (plain / "kernel.json").write_text(json.dumps(spec))
    KernelSpecManager().install_kernel_spec(str(plain), PLAIN, prefix=str(prefix))
    cwd = ctx.workdir / "notebook"
    cwd.mkdir()
    yield KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")]), cwd


def _start(ctx: Context, name: str) -> tuple[Any, Any, float]:
    """Start kernel ``name``; (manager, client, milliseconds to kernel_info_reply)."""
    from jupyter_client.manager import KernelManager

    ksm, cwd = ctx.fixture("kernel-specs", _kernelspecs)
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    t0 = time.perf_counter()
    try:
        km.start_kernel(cwd=str(cwd))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=TIMEOUT)
    except Exception as e:
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=True)
        raise CaseFailed(f"kernel {name} did not start: {type(e).__name__}: {e}") from e
    return km, kc, (time.perf_counter() - t0) * 1e3


def _stop(km: Any, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def _starts(ctx: Context, plan: Plan) -> dict[str, list[float]]:
    def make(c: Context) -> contextlib.AbstractContextManager[dict[str, list[float]]]:
        out: dict[str, list[float]] = {PLAIN: [], SANDBOXED: []}
        for i in range(plan.warmup + plan.n):
            for name in (PLAIN, SANDBOXED):
                km, kc, ms = _start(c, name)
                _stop(km, kc)
                if i >= plan.warmup:
                    out[name].append(ms)
        return contextlib.nullcontext(out)

    return ctx.fixture("kernel-starts", make)


def _execute(kc: Any) -> float:
    t0 = time.perf_counter()
    msg_id = kc.execute("pass")
    while True:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    ms = (time.perf_counter() - t0) * 1e3
    while True:  # untimed: let the idle status arrive before the next request
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    if reply["content"]["status"] != "ok":
        raise CaseFailed(f"execute('pass') failed: {reply['content']}")
    return ms


def _executes(ctx: Context, plan: Plan) -> dict[str, list[float]]:
    @contextlib.contextmanager
    def make(c: Context) -> Iterator[dict[str, list[float]]]:
        kernels = {}
        try:
            for name in (PLAIN, SANDBOXED):
                km, kc, _ = _start(c, name)
                kernels[name] = (km, kc)
            out: dict[str, list[float]] = {PLAIN: [], SANDBOXED: []}
            for i in range(plan.warmup + plan.n):
                for name in (PLAIN, SANDBOXED):
                    ms = _execute(kernels[name][1])
                    if i >= plan.warmup:
                        out[name].append(ms)
            yield out
        finally:
            for km, kc in kernels.values():
                _stop(km, kc)

    return ctx.fixture("kernel-executes", make)


_START_CMD = "KernelManager.start_kernel() -> client.wait_for_ready() (first kernel_info_reply)"
_EXEC_CMD = 'client.execute("pass") -> execute_reply'


@case("kernel-start", "ipykernel", "plain ipykernel (tcp)", iterations=20)
def start_plain(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(_starts(ctx, plan)[PLAIN], _START_CMD, {"transport": "tcp"})


@case("kernel-start", "sandboxed", "Python 3 (sandboxed) (ipc)", iterations=20)
def start_sandboxed(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(
        _starts(ctx, plan)[SANDBOXED],
        _START_CMD,
        {"transport": "ipc", "namespaces": "user, pid, net, mnt, uts, ipc"},
    )


@case("kernel-exec", "ipykernel", "plain ipykernel (tcp)", iterations=200)
def exec_plain(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(_executes(ctx, plan)[PLAIN], _EXEC_CMD, {"transport": "tcp"})


@case("kernel-exec", "sandboxed", "Python 3 (sandboxed) (ipc)", iterations=200)
def exec_sandboxed(ctx: Context, plan: Plan) -> Measurement:
    return Measurement(_executes(ctx, plan)[SANDBOXED], _EXEC_CMD, {"transport": "ipc"})


ratio("sandboxed kernel start", "kernel-start.sandboxed", "kernel-start.ipykernel", target=1.1)
ratio("sandboxed execute round trip", "kernel-exec.sandboxed", "kernel-exec.ipykernel", target=1.05)
