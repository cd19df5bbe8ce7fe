"""Where the CPU time of a sandbox goes, by kind of work: ``perf record`` of a spawn loop.

    python benchmarks/where_cpu_goes.py [N] [--server]

Records (``perf record -g``, this process tree only) ``N`` (default 200)
``Sandbox.spawn(SandboxSpec(), ["true"]).wait()``, or with ``--server`` a callable from
a warm IPython heap as the ``%%sandbox`` server makes them, and sorts every sample by the
first of these its call stack contains: the kernel forking (copying page tables), exec,
exit, creating namespaces, mounting, handling page faults (copy-on-write copies, first
touches), any other system call; else user space (Python or ``nskernel-init``). Needs
``perf`` (Debian: linux-perf) and the rights to use it (root, or
``kernel.perf_event_paranoid`` <= 1). Shares, not times: read them next to
``benchmarks/run.py --only 'cpu.*'``, which measures the CPU time itself.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = (
    ("kernel: fork, copying the address space", ("copy_process", "dup_mmap", "copy_page_range")),
    ("kernel: exec (dropping the old address space)", ("bprm_execve", "begin_new_exec")),
    ("kernel: exit (unmapping)", ("do_exit", "exit_mmap", "mmput")),
    (
        "kernel: creating namespaces",
        ("ksys_unshare", "create_new_namespaces", "copy_net_ns", "copy_mnt_ns", "create_user_ns"),
    ),
    (
        "kernel: mounts",
        (
            "path_mount",
            "do_mount",
            "__x64_sys_move_mount",
            "__x64_sys_open_tree",
            "__x64_sys_pivot_root",
            "__x64_sys_mount_setattr",
            "__x64_sys_fsmount",
            "do_umount",
        ),
    ),
    ("kernel: page faults (copy-on-write, first touch)", ("exc_page_fault", "handle_mm_fault")),
    ("kernel: other system calls", ("do_syscall_64",)),
)


def loop(n: int, server: bool) -> None:
    from nskernel import Sandbox, SandboxSpec

    spec = SandboxSpec()
    if server:
        import gc

        from nskernel.magics import cellrunner

        cellrunner.prepare()
        gc.freeze()
    for _ in range(n):
        sb = Sandbox.spawn(spec, target=lambda: 0) if server else Sandbox.spawn(spec, ["true"])
        sb.wait()


def classify(script: str) -> collections.Counter[str]:
    """Samples per kind, from ``perf script -F comm,ip,sym`` output."""
    counts: collections.Counter[str] = collections.Counter()
    for block in script.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        comm = lines[0].split()[0]
        frames = {parts[1] for ln in lines[1:] if len(parts := ln.split()) > 1}
        for kind, names in KINDS:
            if frames.intersection(names):
                counts[kind] += 1
                break
        else:
            where = "nskernel-init" if comm == "nskernel-init" else "Python and its libraries"
            counts[f"user space: {where}"] += 1
    return counts


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 200
    server = "--server" in sys.argv
    if "--loop" in sys.argv:
        loop(n, server)
        return 0
    if shutil.which("perf") is None:
        print("perf is not installed (Debian: apt install linux-perf)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        me = [sys.executable, os.path.abspath(__file__), str(n), "--loop"]
        subprocess.run(
            [
                "perf",
                "record",
                "-q",
                "-g",
                "-o",
                data,
                "--",
                *me,
                *(["--server"] if server else []),
            ],
            check=True,
        )
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "comm,ip,sym"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    counts = classify(script)
    total = sum(counts.values())
    what = "callable from a warm IPython heap" if server else '["true"]'
    print(f"{n} x Sandbox.spawn({what}).wait(): {total} samples")
    for kind, c in counts.most_common():
        print(f"{100 * c / total:5.1f}%  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
