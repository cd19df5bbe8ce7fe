"""What a test run must leave behind: nothing.

A snapshot of the host's state that nskernel could leak into, taken at the start of
the session and compared at the end: processes started by this session (found by an
environment tag every child inherits), mount points, network links, entries in the
per-user runtime directory (socket directories), and nskernel cgroups under our own.
Network namespaces are torn down asynchronously by the kernel, so the comparison is
retried for a few seconds before anything counts as a leak.
"""

from __future__ import annotations

import dataclasses
import os
import time

from nskernel.paths import runtime_dir_path

TAG_VAR = "NSKERNEL_TEST_SESSION"


def _tagged_processes(tag: str) -> dict[int, str]:
    needle = f"{TAG_VAR}={tag}".encode()
    found = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        state = stat.rsplit(")", 1)[1].split()[0]
        if needle in env.split(b"\0") and state != "Z":
            with open(f"/proc/{name}/cmdline", "rb") as f:
                found[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    return found


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _runtime_entries() -> set[str]:
    """The per-user runtime dir itself and what is in it (looked at, never created)."""
    d = runtime_dir_path()
    try:
        return {d} | {os.path.join(d, e) for e in os.listdir(d)}
    except FileNotFoundError:
        return set()


def _own_cgroup_dirs() -> set[str]:
    found: set[str] = set()
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        name = controllers.split(",")[0].removeprefix("name=") or "unified"
        base = f"/sys/fs/cgroup/{name}{path}"
        if not os.path.isdir(base):
            continue
        for root, dirs, _ in os.walk(base):
            for d in dirs:
                if d.startswith("nsk"):
                    found.add(os.path.join(root, d))
    return found


@dataclasses.dataclass
class Snapshot:
    mounts: set[str]
    links: set[str]
    runtime: set[str]
    cgroups: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(_mount_points(), _links(), _runtime_entries(), _own_cgroup_dirs())


def leaks(
    before: Snapshot, tag: str, timeout: float = 10.0, *, processes_only: bool = False
) -> list[str]:
    """What exists now that did not before; empty when nothing leaked."""
    deadline = time.monotonic() + timeout
    while True:
        problems = [f"process {pid}: {cmd}" for pid, cmd in _tagged_processes(tag).items()]
        if processes_only:
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.2)
            continue
        now = Snapshot.take()
        problems += [f"mount {m}" for m in sorted(now.mounts - before.mounts)]
        problems += [f"link {n}" for n in sorted(now.links - before.links)]
        problems += [f"runtime entry {e}" for e in sorted(now.runtime - before.runtime)]
        problems += [f"cgroup {c}" for c in sorted(now.cgroups - before.cgroups)]
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.2)
