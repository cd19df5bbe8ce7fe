"""Resource limits: memory, number of processes, CPU share.

The choice, per resource, in order of preference:

1. cgroup v2, where our own cgroup's subtree is writable and delegates the controller;
2. cgroup v1, where the controller's hierarchy is writable at our own cgroup (as root
   on a machine that still mounts v1 controllers, like this project's CI);
3. an rlimit where one approximates the resource (memory → RLIMIT_AS,
   processes → RLIMIT_NPROC, counted per user namespace since Linux 5.14);
4. otherwise the limit is not enforced, and the plan says so (no silent no-op).

Sandbox cgroups are only ever created *beneath the cgroup the launcher already lives
in*, never elsewhere in the hierarchy, named ``nsk-<launcher pid>-<n>`` so that a
launcher killed with SIGKILL leaves a directory the next launcher can recognise as
stale (its PID is gone) and remove once empty.

The limits are written on ``nsk-<pid>-<n>`` and the sandbox lives in a leaf child of
it, ``nsk-<pid>-<n>/sandbox``. Every file of a cgroup made with mkdir belongs to its
maker: rootless, that is the user, i.e. sandbox root. A sandbox in the very cgroup that
holds its limits could make a cgroup namespace of its own (rooted at the cgroup it is
in), mount cgroup2 there and rewrite ``memory.max``, ``pids.max`` or ``cpu.max`` (red
team 18). Any namespace it makes is rooted at the leaf or below, so the limits are
never in reach of a mount it can make; limits are hierarchical, so they bound the leaf
and whatever the sandbox makes beneath it. The same layout is used for v1, where it
costs nothing and keeps one shape to kill, read and remove.

The launcher creates the cgroups and writes the limits (``create_from_parent``); the
setup child moves itself into the leaves before creating any namespace
(``join_from_child``), so the init and every process of the sandbox are accounted; the
command applies the rlimits just before exec (``apply_rlimits_from_child``), so the
init is not limited.
"""

from __future__ import annotations

import itertools
import os
import resource

from .._record import record

_V1_ROOT = "/sys/fs/cgroup"
LEAF = "sandbox"  # the child of nsk-<pid>-<n> that the sandbox's processes live in
_counter = itertools.count()


@record(frozen=True)
class Limits:
    """What to limit. Sizes in bytes; ``cpus`` as a fraction of one CPU (0.5 = half)."""

    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory, self.pids, self.cpus))


@record
class AppliedLimits:
    """Where each limit is enforced; JSON-ready through :meth:`describe`."""

    limits: Limits
    mechanism: dict[
        str, str
    ]  # resource -> "cgroup v2", "cgroup v1", "rlimit ...", "not enforced: why"
    cgroup_dirs: list[str]  # the nsk-<pid>-<n> cgroups holding the limits (not the leaves)
    rlimits: list[tuple[int, int]]

    def describe(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name in ("memory", "pids", "cpus"):
            value = getattr(self.limits, name)
            if value is not None:
                out[name] = {"value": value, "mechanism": self.mechanism[name]}
        return out

    def _with_leaves(self) -> list[str]:
        # v2 counts an event in the cgroup whose limit was hit and its ancestors; v1
        # counts it where the process was (oom_kill) or the fork failed (pids): the leaf.
        return [p for d in self.cgroup_dirs for p in (d, os.path.join(d, LEAF))]

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer fired inside the memory cgroup."""
        for d in self._with_leaves():
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    with open(os.path.join(d, name)) as f:
                        for line in f:
                            k, _, v = line.partition(" ")
                            if k == key and int(v) > 0:
                                return True
                except OSError:
                    continue
        return False

    def pids_limit_hit(self) -> bool:
        """Whether a fork failed because the pids cgroup was full."""
        for d in self._with_leaves():
            try:
                with open(os.path.join(d, "pids.events")) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == "max" and int(v) > 0:
                            return True
            except OSError:
                continue
        return False

    def kill_from_parent(self) -> None:
        """SIGKILL every process in the sandbox's cgroups (it needs no cooperation).

        cgroup v2 has ``cgroup.kill`` (Linux 5.14+), atomic against forks, which kills
        the whole subtree (the leaf, and any cgroup the sandbox made below it); in a v1
        hierarchy the members of the leaf (and of the limit cgroup, for good measure) are
        killed one by one until none is left.
        """
        import signal

        for d in self.cgroup_dirs:
            try:
                _write(os.path.join(d, "cgroup.kill"), 1)
                continue
            except OSError:
                pass
            for member in (os.path.join(d, LEAF), d):
                for _ in range(100):
                    try:
                        with open(os.path.join(member, "cgroup.procs")) as f:
                            pids = [int(x) for x in f.read().split()]
                    except OSError:
                        break
                    if not pids:
                        break
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass

    def remove_from_parent(self) -> None:
        for d in self.cgroup_dirs:
            _remove_cgroup(d)
        self.cgroup_dirs = []


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> our own cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _v2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4]
    return None


def _writable(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


CGROUP_REMOVE_MAX = 10_000  # child cgroups removed at most, bottom-up
CGROUP_REMOVE_DEPTH = 64  # levels looked into below a sandbox's cgroup


def _remove_cgroup(path: str) -> None:
    """Remove a sandbox's cgroup and, first, any child cgroups it made in it (where the
    hierarchy is delegated to it, a sandbox may: its cgroup would be left behind, EBUSY).
    Deepest first, relative to directory descriptors, following nothing; bounded in
    number and in depth (os.fwalk recursed once per level: a chain of 1,000 cgroups raised
    RecursionError in the %%sandbox server, red team 18). What lies deeper stays, and so
    does the cgroup above it, empty and harmless."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top = os.open(path, flags)
    except OSError:
        return
    try:
        _remove_children(top, CGROUP_REMOVE_DEPTH, [CGROUP_REMOVE_MAX])
    finally:
        os.close(top)
    _rmdir_quietly(path)


def _remove_children(dir_fd: int, depth: int, budget: list[int]) -> None:
    if depth <= 0:
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with os.scandir(dir_fd) as entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        if budget[0] <= 0:
            return
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            _remove_children(fd, depth - 1, budget)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass
        budget[0] -= 1


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def sweep_stale(base: str) -> None:
    """Remove ``nsk-<pid>-<n>`` cgroups left by launchers that were killed."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for name in entries:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "nsk" or not parts[1].isdigit():
            continue
        if not os.path.exists(f"/proc/{parts[1]}"):
            _remove_cgroup(os.path.join(base, name))  # fails, harmlessly, if processes remain


def _write(path: str, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def create_from_parent(limits: Limits) -> AppliedLimits:
    """Create the cgroups and write the limits; decide the fallbacks."""
    applied = AppliedLimits(limits, {}, [], [])
    if not limits:
        return applied
    own = _own_cgroups()
    name = f"nsk-{os.getpid()}-{next(_counter)}"
    wanted = {
        "memory": limits.memory is not None,
        "pids": limits.pids is not None,
        "cpu": limits.cpus is not None,
    }
    enforced: dict[str, str] = {}

    # cgroup v2: a delegated, writable subtree with the controllers enabled for children.
    v2 = _v2_mount()
    if v2 is not None and "" in own:
        base = os.path.join(v2, own[""].lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                delegated = set(f.read().split())
        except OSError:
            delegated = set()
        usable = [c for c, w in wanted.items() if w and c in delegated]
        if usable and _writable(base):
            sweep_stale(base)
            d = os.path.join(base, name)
            _make(d)
            applied.cgroup_dirs.append(d)
            try:
                for c in usable:
                    if c == "memory":
                        _write(os.path.join(d, "memory.max"), limits.memory)
                        try:  # no swap either, where the kernel accounts it (as for v1)
                            _write(os.path.join(d, "memory.swap.max"), 0)
                        except FileNotFoundError:
                            pass  # no swap accounting: nothing to limit there
                    elif c == "pids":
                        _write(os.path.join(d, "pids.max"), limits.pids)
                    elif c == "cpu":
                        period = 100_000
                        quota = f"{int(limits.cpus * period)} {period}"
                        _write(os.path.join(d, "cpu.max"), quota)
                    enforced[c] = "cgroup v2"
            except OSError:
                # A limit that cannot be written: no half-limited cgroup is left behind
                # (it was, with its leaf), and v1 or an rlimit take over below.
                applied.cgroup_dirs.remove(d)
                _remove_cgroup(d)
                enforced.clear()

    # cgroup v1: one hierarchy per controller.
    for c, w in wanted.items():
        if not w or c in enforced or c not in own:
            continue
        base = os.path.join(_V1_ROOT, c, own[c].lstrip("/"))
        if not _writable(base):
            continue
        sweep_stale(base)
        d = os.path.join(base, name)
        try:
            _make(d)
        except OSError:
            continue
        applied.cgroup_dirs.append(d)
        try:
            if c == "memory":
                _write(os.path.join(d, "memory.limit_in_bytes"), limits.memory)
                try:  # no swap either, where the kernel accounts it
                    _write(os.path.join(d, "memory.memsw.limit_in_bytes"), limits.memory)
                except OSError:
                    pass
            elif c == "pids":
                _write(os.path.join(d, "pids.max"), limits.pids)
            elif c == "cpu":
                period = 100_000
                _write(os.path.join(d, "cpu.cfs_period_us"), period)
                _write(os.path.join(d, "cpu.cfs_quota_us"), int(limits.cpus * period))
        except OSError:
            applied.cgroup_dirs.remove(d)
            _remove_cgroup(d)
            continue
        enforced[c] = "cgroup v1"

    # rlimits where a cgroup was not available.
    if wanted["memory"] and "memory" not in enforced:
        applied.rlimits.append((resource.RLIMIT_AS, limits.memory))  # type: ignore[arg-type]
        enforced["memory"] = "rlimit RLIMIT_AS (address space, no writable memory cgroup)"
    if wanted["pids"] and "pids" not in enforced:
        applied.rlimits.append((resource.RLIMIT_NPROC, limits.pids))  # type: ignore[arg-type]
        enforced["pids"] = "rlimit RLIMIT_NPROC (no writable pids cgroup)"
    if wanted["cpu"] and "cpu" not in enforced:
        enforced["cpu"] = "not enforced: no writable cpu cgroup (v1 or delegated v2) here"

    applied.mechanism = {("cpus" if k == "cpu" else k): v for k, v in enforced.items()}
    return applied


def _make(d: str) -> None:
    """The limit cgroup ``d`` and its leaf, where the sandbox will live (module comment)."""
    os.mkdir(d)
    try:
        os.mkdir(os.path.join(d, LEAF))
    except OSError:
        _rmdir_quietly(d)
        raise


def join_from_child(cgroup_dirs: list[str]) -> None:
    """Move this process into the leaf of each limit cgroup, below the limits."""
    pid = str(os.getpid())
    for d in cgroup_dirs:
        _write(os.path.join(d, LEAF, "cgroup.procs"), pid)


def apply_rlimits_from_child(rlimits: list[tuple[int, int]]) -> None:
    for which, value in rlimits:
        resource.setrlimit(which, (value, value))
