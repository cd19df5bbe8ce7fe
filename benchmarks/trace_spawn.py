"""Where the time of one ``Sandbox.spawn(spec, ["true"]).wait()`` goes, measured.

Wraps the steps of ``nskernel._linux.contain`` and the launcher with timestamps
(CLOCK_MONOTONIC, comparable across processes) written to a shared anonymous mapping,
so the setup child, init and the command record their steps too (after fork, across
close_fds and pivot_root). No strace: its overhead per syscall (20-50 µs) would dwarf
the steps it measures. Prints the median time of each step, relative to the start of
``spawn``, over N runs; the wrappers themselves cost about 1 µs each.

    python benchmarks/trace_spawn.py [N] [--server]

``--server``: as the ``%%sandbox`` server does it: a warm IPython shell in the launcher
(``gc.freeze()`` after), and a callable instead of ``true`` (the step marks stop at
"ready": the callable starts on its own).
"""

from __future__ import annotations

import functools
import mmap
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nskernel import Sandbox, SandboxSpec
from nskernel import sandbox as sandbox_mod
from nskernel._linux import (
    confine,
    contain,
    init,
    limits,
    mntns,
    syscalls,
    userns,
)

ROLES = ("launcher", "setup", "init", "command")
SLOTS = 64
REC = struct.Struct("q40s")
_shm = mmap.mmap(-1, len(ROLES) * SLOTS * REC.size)
_role = 0
_count = [0] * len(ROLES)


def mark(label: str) -> None:
    i = _count[_role]
    if i < SLOTS:
        off = (_role * SLOTS + i) * REC.size
        _shm[off : off + REC.size] = REC.pack(time.monotonic_ns(), label.encode()[:40])
        _count[_role] = i + 1


def _wrap(obj: Any, name: str, label: str | None = None, role: int | None = None) -> None:
    fn: Callable[..., Any] = getattr(obj, name)
    tag = label or name

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        global _role
        if role is not None:
            _role = role
            _count[role] = 0
        mark(f"{tag} >")
        try:
            return fn(*a, **kw)
        finally:
            mark(f"{tag} <")

    setattr(obj, name, wrapper)


_FLAGS = {v: k for k, v in syscalls.NAMESPACE_FLAGS.items()}


def install() -> None:
    _wrap(contain, "setup_child", role=1)
    _wrap(contain, "_init_main", role=2)
    _wrap(contain, "_command_main", role=3)
    real_unshare = syscalls.unshare

    def unshare(flags: int) -> None:
        name = _FLAGS.get(flags, hex(flags))
        mark(f"unshare {name} >")
        real_unshare(flags)
        mark(f"unshare {name} <")

    syscalls.unshare = unshare
    for mod, names in (
        (syscalls, ("fork_lean", "close_fds_except")),
        (userns, ("become_staging_from_child", "write_nested_maps_from_setup_child")),
        (userns, ("enter_nested_from_child", "write_id_maps_from_parent", "plan_id_maps")),
        (mntns, ("setup_mounts_from_child", "mount_namespace_views_from_child")),
        (contain, ("_name_and_loopback", "_adopted_by_launcher", "report")),
        (init, ("open_native", "prepare_signals", "exec_native", "reset_signals_for_command")),
        (confine, ("apply_from_child", "plan")),
        (limits, ("create_from_parent",)),
        (sandbox_mod, ("_plan_maps", "_masks", "sandbox_environment")),
        (sandbox_mod.Sandbox, ("facts",)),
        (sandbox_mod._Reports, ("next",)),
        (os, ("execvpe", "waitpid")),
    ):
        for n in names:
            _wrap(mod, n)


def collect() -> list[tuple[int, str, str]]:
    out = []
    for r in range(len(ROLES)):
        for i in range(SLOTS):
            off = (r * SLOTS + i) * REC.size
            t, label = REC.unpack(_shm[off : off + REC.size])
            if t == 0:
                break
            out.append((t, ROLES[r], label.rstrip(b"\0").decode()))
    return sorted(out)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 50
    server = "--server" in sys.argv
    spec = SandboxSpec()
    call: dict[str, Any] = {"argv": ["true"]}
    if server:
        import gc

        from nskernel.magics import cellrunner

        cellrunner.prepare()
        gc.freeze()
        call = {"target": lambda: 0}
    install()
    runs: list[list[tuple[float, str, str]]] = []
    totals = []
    for k in range(n + 3):
        global _role
        _role = 0
        for r in range(len(ROLES)):
            _count[r] = 0
        _shm[:] = bytes(len(_shm))
        t0 = time.monotonic_ns()
        mark("spawn >")
        sb = Sandbox.spawn(spec, **call)
        mark("spawn <")
        sb.wait()
        _role = 0
        mark("wait <")
        if k >= 3:
            ev = collect()
            runs.append([((t - t0) / 1e6, role, label) for t, role, label in ev])
            totals.append((ev[-1][0] - t0) / 1e6)
    # Align events by (role, label, occurrence) across runs; print medians.
    keyed: dict[tuple[str, str, int], list[float]] = {}
    order: dict[tuple[str, str, int], float] = {}
    for run in runs:
        seen: dict[tuple[str, str], int] = {}
        for t, role, label in run:
            occ = seen.get((role, label), 0)
            seen[(role, label)] = occ + 1
            keyed.setdefault((role, label, occ), []).append(t)
    for key, ts in keyed.items():
        order[key] = statistics.median(ts)
    with open("/proc/self/status") as f:
        rss = f.read().split("VmRSS:")[1].split()[0]
    print(f"launcher RSS {int(rss) // 1024} MiB")
    print(f"{n} runs, total median {statistics.median(totals):.2f} ms, load {os.getloadavg()}")
    for key in sorted(order, key=order.__getitem__):
        role, label, occ = key
        print(f"{order[key]:8.3f} ms  {role:8s} {label}{f' #{occ + 1}' if occ else ''}")


if __name__ == "__main__":
    main()
