"""Sandbox create -> run a trivial payload -> teardown, nskernel next to the usual tools.

Two groups, one per payload: ``true`` and a Python snippet (``python3 -I -c pass`` with the
host's real interpreter; the API also runs a Python callable, which needs no new
interpreter). Each figure is the wall time from starting the command (or calling the API)
until its sandbox is gone and reaped. The reference is ``nskernel run``: the other
command-line tools are measured the same way, from the same parent process.

The first runs of every case are untimed and must succeed; a case whose tool is missing
or not permitted says "not available" and why.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import engines
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
    time_calls,
    time_command,
)

PAYLOAD_ARGV: dict[str, list[str]] = {"true": ["true"], "python": list(engines.PYTHON_SNIPPET)}
PAYLOAD_TEXT = {"true": "true", "python": "python3 -I -c pass"}

UNSHARE_FLAGS = ["--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
UNSHARE_FLAGS += ["--net", "--uts", "--ipc", "--mount"]
BWRAP_FLAGS = ["--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]

# What each tool creates, so the figures are read side by side with what they buy.
NAMESPACES = {
    "nskernel": "user, pid, net, mnt, uts, ipc (SandboxSpec() defaults)",
    "unshare": "user, pid, net, mnt, uts, ipc",
    "bwrap": "user (if it can), pid, net, mnt, uts, ipc, cgroup (--unshare-all)",
}


def nskernel_cli() -> list[str]:
    """The console script installed beside this interpreter, else ``python -m nskernel``."""
    script = Path(sys.executable).with_name("nskernel")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nskernel"]


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise NotAvailable(f"`{tool}` is not installed (Debian package: {package})")
    return path


# Full-run iterations per tool, the same for both payloads: about two minutes in all on a
# quiet 2-core machine, most of it spent in docker, podman and `nskernel run`.
ITERATIONS = {
    "host": 100,
    "nskernel-cli": 40,
    "nskernel-api": 100,
    "nskernel-api-callable": 100,
    "unshare": 100,
    "bwrap": 100,
    "crun": 60,
    "podman": 30,
    "docker": 30,
}
ENGINE_LABELS = {"crun": "crun run", "podman": "podman run", "docker": "docker run"}


def _register(payload: str) -> None:
    argv = PAYLOAD_ARGV[payload]
    group(
        payload,
        f"create, run `{PAYLOAD_TEXT[payload]}`, tear down",
        reference=f"{payload}.nskernel-cli",
    )

    @case(payload, "host", "no sandbox", iterations=ITERATIONS["host"])
    def host(ctx: Context, plan: Plan) -> Measurement:
        return Measurement(time_command(argv, plan), argv)

    @case(payload, "nskernel-cli", "nskernel run", iterations=ITERATIONS["nskernel-cli"])
    def cli(ctx: Context, plan: Plan) -> Measurement:
        if importlib.util.find_spec("nskernel") is None:
            raise NotAvailable("nskernel is not importable from this checkout or interpreter")
        cmd = [*nskernel_cli(), "run", "--", *argv]
        samples = time_command(cmd, plan, env=ctx.env)
        return Measurement(samples, cmd, {"namespaces": NAMESPACES["nskernel"]})

    def api_case(name: str, label: str, loop: str, call: str) -> None:
        @case(payload, name, label, iterations=ITERATIONS[name])
        def api(ctx: Context, plan: Plan) -> Measurement:
            samples = in_fresh_interpreter(f"benchmarks.cases_launch:{loop}", plan, ctx)
            return Measurement(samples, call, {"namespaces": NAMESPACES["nskernel"]})

    api_case(
        "nskernel-api",
        "nskernel API",
        f"api_{payload}",
        f"Sandbox.spawn(SandboxSpec(), {argv!r}).wait()",
    )
    if payload == "python":
        api_case(
            "nskernel-api-callable",
            "nskernel API, callable",
            "api_callable",
            "Sandbox.spawn(SandboxSpec(), target=noop).wait()",
        )

    @case(payload, "unshare", "unshare(1)", iterations=ITERATIONS["unshare"])
    def unshare(ctx: Context, plan: Plan) -> Measurement:
        cmd = [_need("unshare", "util-linux"), *UNSHARE_FLAGS, *argv]
        return Measurement(time_command(cmd, plan), cmd, {"namespaces": NAMESPACES["unshare"]})

    @case(payload, "bwrap", "bwrap", iterations=ITERATIONS["bwrap"])
    def bwrap(ctx: Context, plan: Plan) -> Measurement:
        cmd = [_need("bwrap", "bubblewrap"), *BWRAP_FLAGS, *argv]
        return Measurement(time_command(cmd, plan), cmd, {"namespaces": NAMESPACES["bwrap"]})

    for engine in engines.ENGINES:
        _register_engine(payload, engine)


def _register_engine(payload: str, engine: str) -> None:
    @case(payload, engine, ENGINE_LABELS[engine], iterations=ITERATIONS[engine])
    def measure(ctx: Context, plan: Plan) -> Measurement:
        host = ctx.fixture("engines", engines.EngineHost.open)
        reply = host.time(engine, payload, plan)
        return Measurement(reply["samples"], reply["command"], reply["details"])


# ---------------------------------------------------------------- in-process API
# Timing loops run by benchmarks.worker in a fresh interpreter (see in_fresh_interpreter).


def _api_loop(
    plan: Plan, *, argv: list[str] | None = None, target: Callable[[], None] | None = None
) -> list[float]:
    try:
        from nskernel import NskernelError, Sandbox, SandboxSpec
    except ImportError as e:
        raise NotAvailable(f"nskernel's Python API cannot be imported: {e}") from e
    spec = SandboxSpec()

    def once() -> None:
        try:
            status = Sandbox.spawn(spec, argv, target=target).wait()
        except NskernelError as e:
            raise CaseFailed(f"{type(e).__name__}: {e}") from e
        if status != 0:
            raise CaseFailed(f"the sandboxed payload exited with status {status}")

    return time_calls(once, plan)


def _noop() -> None:
    """The Python callable the API runs inside the sandbox."""


def api_true(plan: Plan) -> list[float]:
    return _api_loop(plan, argv=PAYLOAD_ARGV["true"])


def api_python(plan: Plan) -> list[float]:
    return _api_loop(plan, argv=PAYLOAD_ARGV["python"])


def api_callable(plan: Plan) -> list[float]:
    return _api_loop(plan, target=_noop)


for _payload in engines.PAYLOADS:
    _register(_payload)


# Issue 19's targets, as ratios computed in the same run.
ratio("Sandbox.spawn true / unshare true", "true.nskernel-api", "true.unshare", target=1.2)
ratio("nskernel run true / python3 -I -c pass", "true.nskernel-cli", "python.host", target=2.0)
