"""Facts about a process's namespaces, read from /proc. Standard library only."""

from __future__ import annotations

import os

# Every namespace type /proc/PID/ns shows that nskernel reports on.
NS_TYPES: tuple[str, ...] = ("pid", "net", "mnt", "uts", "ipc", "user", "cgroup")


def namespace_ids(pid: int | str = "self") -> dict[str, int]:
    """Namespace inode ids, by type. Two processes share a namespace iff the ids match."""
    ids: dict[str, int] = {}
    for t in NS_TYPES:
        try:
            ids[t] = os.stat(f"/proc/{pid}/ns/{t}").st_ino
        except OSError:
            continue
    return ids


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie.

    A process may exit between opening its stat file and reading it, which reads as
    ESRCH (ProcessLookupError): that too means gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def id_map(pid: int | str, which: str) -> list[list[int]]:
    """``uid_map`` or ``gid_map`` as ``[[inside, outside, count], ...]``."""
    with open(f"/proc/{pid}/{which}") as f:
        return [[int(x) for x in line.split()] for line in f if line.strip()]


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the PID, its identity."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` now (children of each of its threads, recursively)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def kill_tree(root: int) -> list[tuple[int, int]]:
    """SIGKILL every descendant of ``root`` (not ``root``), without their cooperation.

    Each is stopped first (SIGSTOP), until no new one appears: a stopped process can no
    longer fork, so the tree cannot grow faster than it is taken down; a tracer that
    would swallow a tracee's stop is itself a descendant and stopped in turn. Returns
    (pid, start time) of each process killed, for :func:`reap_killed`.
    """
    import signal

    seen: dict[int, int] = {}
    for _ in range(1000):
        new = [p for p in descendants(root) if p not in seen]
        if not new:
            break
        for p in new:
            seen[p] = start_time(p) or 0
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return list(seen.items())


def reap_killed(killed: list[tuple[int, int]]) -> None:
    """Reap those of ``killed`` that were re-parented to us (a child subreaper) as zombies
    when their parent died: the same process (start time), a zombie, and our child."""
    me = os.getpid()
    for pid, started in killed:
        if _state_and_parent(pid) == ("Z", me) and start_time(pid) == started:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
