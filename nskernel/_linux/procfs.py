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
