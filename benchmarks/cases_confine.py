"""What the syscall filter, no_new_privs and the capability drop cost (issue 15).

``confine-spawn``: the API's whole create -> run -> tear down, with the default
confinement (what every sandbox gets) and with the least of it (``--seccomp unconfined``,
every capability: no_new_privs only), for a Python callable and a callable that execs
``true`` as a command would, side by side in one run. ``confine-install``:
installing it (capability drop, no_new_privs, PR_SET_SECCOMP), timed inside the sandbox's
command process; target at most 0.5 ms per sandbox. ``confine-compile``: compiling the
default profile with libseccomp in the launcher, uncached (the first sandbox of a process;
the very first load, which also loads the binding, and a cached load, which every later
sandbox pays, are in the details).

The loops run in fresh interpreters (``in_fresh_interpreter``): creating a user namespace
needs a single-threaded caller, and the first load of the binding must be a real one.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
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
    time_calls,
)

SPAWN = "confine-spawn"
INSTALL = "confine-install"
COMPILE = "confine-compile"
INSTALL_TARGET_MS = 0.5

group(SPAWN, "sandbox with and without filter + capability drop", reference=f"{SPAWN}.callable")
group(
    INSTALL, "install caps + no_new_privs + filter (in the sandbox)", reference=f"{INSTALL}.install"
)
group(COMPILE, "compile the default filter (in the launcher)", reference=f"{COMPILE}.compile")

DETAILS = {
    "seccomp": "nskernel's default profile (profiles/default.json), compiled by libseccomp",
    "capabilities": "caps.DEFAULT: Docker's default set + SYS_ADMIN, NET_ADMIN",
}


def _spawn_case(name: str, label: str, loop: str, call: str) -> None:
    @case(SPAWN, name, label, iterations=100)
    def measure(ctx: Context, plan: Plan) -> Measurement:
        samples = in_fresh_interpreter(f"benchmarks.cases_confine:{loop}", plan, ctx)
        return Measurement(samples, call, DETAILS)


_spawn_case(
    "callable",
    "callable",
    "spawn_callable",
    "Sandbox.spawn(SandboxSpec(seccomp='unconfined', cap_add=('ALL',)), target=noop).wait()",
)
_spawn_case(
    "callable-confined",
    "callable, confined",
    "spawn_callable_confined",
    "Sandbox.spawn(SandboxSpec(), target=noop).wait()  # the default confinement",
)
_spawn_case(
    "exec-true",
    "exec true",
    "spawn_exec_true",
    "Sandbox.spawn(SandboxSpec(seccomp='unconfined', cap_add=('ALL',)), target=execv('true'))",
)
_spawn_case(
    "exec-true-confined",
    "exec true, confined",
    "spawn_exec_true_confined",
    "Sandbox.spawn(SandboxSpec(), target=execv('true')).wait()  # the default confinement",
)


@case(COMPILE, "compile", "compile default profile (uncached)", iterations=50)
def compile_uncached(ctx: Context, plan: Plan) -> Measurement:
    samples = in_fresh_interpreter("benchmarks.cases_confine:compile_loop", plan, ctx)
    # The worker reports the first load (binding import + compile) first and the median of
    # cached loads (every later sandbox of the process: a dictionary lookup) last.
    first, rest, cached = samples[0], samples[1:-1], samples[-1]
    details = {
        **DETAILS,
        "first_load_ms_including_binding_import": round(first, 3),
        "cached_load_median_us": round(cached * 1e3, 3),
    }
    return Measurement(rest, 'seccomp.load("default", capabilities=caps.DEFAULT)', details)


@case(
    INSTALL,
    "install",
    "install caps + no_new_privs + filter",
    iterations=100,
    target=INSTALL_TARGET_MS,
)
def install(ctx: Context, plan: Plan) -> Measurement:
    samples = in_fresh_interpreter("benchmarks.cases_confine:install_loop", plan, ctx)
    return Measurement(samples, "confine.apply_from_child(plan), inside the sandbox", DETAILS)


ratio(
    "confined / plain sandbox (callable)",
    f"{SPAWN}.callable-confined",
    f"{SPAWN}.callable",
)
ratio(
    "confined / plain sandbox (exec true)",
    f"{SPAWN}.exec-true-confined",
    f"{SPAWN}.exec-true",
)


# ---------------------------------------------------------------- timing loops (workers)


def _imports():  # type: ignore[no-untyped-def]
    try:
        from nskernel import NskernelError, Sandbox, SandboxSpec
        from nskernel._linux import confine, seccomp
    except ImportError as e:
        raise NotAvailable(f"nskernel cannot be imported: {e}") from e
    return NskernelError, Sandbox, SandboxSpec, confine, seccomp


def _confinement():  # type: ignore[no-untyped-def]
    *_, confine, seccomp = _imports()
    try:
        return confine.plan()
    except seccomp.SeccompError as e:
        raise NotAvailable(str(e)) from e


def _spawn_loop(plan: Plan, target: Callable[[], None], *, confined: bool) -> list[float]:
    error, sandbox, spec_cls, *_ = _imports()
    # Every sandbox is confined by default (Sandbox.spawn installs it as the command's last
    # step); the closest to none: no filter, every capability (no_new_privs stays).
    spec = spec_cls() if confined else spec_cls(seccomp="unconfined", cap_add=("ALL",))

    def once() -> None:
        try:
            status = sandbox.spawn(spec, target=target).wait()
        except error as e:
            raise CaseFailed(f"{type(e).__name__}: {e}") from e
        if status != 0:
            raise CaseFailed(f"the sandboxed payload exited with status {status}")

    return time_calls(once, plan)


def _exec_true() -> None:
    os.execv("/bin/true", ["true"])


def spawn_callable(plan: Plan) -> list[float]:
    return _spawn_loop(plan, lambda: None, confined=False)


def spawn_callable_confined(plan: Plan) -> list[float]:
    return _spawn_loop(plan, lambda: None, confined=True)


def spawn_exec_true(plan: Plan) -> list[float]:
    return _spawn_loop(plan, _exec_true, confined=False)


def spawn_exec_true_confined(plan: Plan) -> list[float]:
    return _spawn_loop(plan, _exec_true, confined=True)


def compile_loop(plan: Plan) -> list[float]:
    *_, seccomp = _imports()
    from nskernel._linux import caps

    def once() -> None:
        seccomp._load_default.cache_clear()
        seccomp.load("default", capabilities=caps.DEFAULT)

    t0 = time.perf_counter()
    try:
        once()  # the first load in this interpreter: imports and loads libseccomp too
    except seccomp.SeccompError as e:
        raise NotAvailable(str(e)) from e
    first = (time.perf_counter() - t0) * 1e3
    timed = time_calls(once, plan)
    cached = time_calls(lambda: seccomp.load("default", capabilities=caps.DEFAULT), Plan(1000, 10))
    return [first, *timed, statistics.median(cached)]


def install_loop(plan: Plan) -> list[float]:
    """The install's own time, measured in the sandbox's command process and sent back."""
    error, sandbox, spec_cls, confine, _ = _imports()
    c = _confinement()
    spec = spec_cls()

    def once() -> float:
        r, w = os.pipe()

        def target() -> None:
            t0 = time.perf_counter()
            confine.apply_from_child(c)
            os.write(w, struct.pack("d", (time.perf_counter() - t0) * 1e3))

        try:
            sb = sandbox.spawn(spec, target=target, pass_fds=[w])
        except error as e:
            raise CaseFailed(f"{type(e).__name__}: {e}") from e
        finally:
            os.close(w)
        try:
            data = os.read(r, 8)
        finally:
            os.close(r)
        if sb.wait() != 0 or len(data) != 8:
            raise CaseFailed("the sandbox could not install the confinement")
        return struct.unpack("d", data)[0]

    for _ in range(max(1, plan.warmup)):
        once()
    return [once() for _ in range(plan.n)]
