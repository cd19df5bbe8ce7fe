"""User namespace: who sandbox root is on the host.

The constraint: ``uid_map`` and ``gid_map`` can each be written once, by a process
outside the new namespace (the parent side), and an unprivileged writer must first
write ``deny`` to ``setgroups``. The choice of mapping:

- Unprivileged caller: sandbox root is the caller. With ``newuidmap``/``newgidmap``
  and an /etc/subuid (subgid) entry, sandbox ids 1..N map to the caller's subordinate
  range, so tools that switch users inside work; otherwise a single-id map.
- Real root: sandbox root must never be host uid 0. It maps to root's subordinate range
  from /etc/subuid when there is one, else to ``nobody`` (65534), or to an explicit uid.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil

NOBODY = 65534


@dataclasses.dataclass(frozen=True)
class IdMapPlan:
    uid_map: tuple[tuple[int, int, int], ...]
    gid_map: tuple[tuple[int, int, int], ...]
    # "newidmap": write through the setuid helpers; "direct": write /proc ourselves.
    method: str
    deny_setgroups: bool

    def describe(self) -> str:
        return f"uid_map {list(self.uid_map)} gid_map {list(self.gid_map)} via {self.method}"


def _subid_range(path: str, uid: int) -> tuple[int, int] | None:
    """The first /etc/subuid-style range for ``uid`` (by name or number)."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) != 3 or parts[0].startswith("#"):
                    continue
                if parts[0] in (name, str(uid)):
                    start, count = int(parts[1]), int(parts[2])
                    if count > 0:
                        return start, count
    except (OSError, ValueError):
        return None
    return None


def in_initial_user_namespace() -> bool:
    """True in the host's user namespace (its uid_map covers every id)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def _identity_of_own_map(which: str) -> tuple[tuple[int, int, int], ...]:
    with open(f"/proc/self/{which}") as f:
        rows = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    return tuple((inside, inside, count) for inside, _outside, count in rows)


def plan_id_maps(*, map_root_to: int | None = None, use_subids: bool = True) -> IdMapPlan:
    uid, gid = os.geteuid(), os.getegid()
    if not in_initial_user_namespace():
        # Nested (e.g. inside the rootless sandbox server's own user namespace): keep
        # every id the parent namespace has, unchanged, so sandbox root is still the
        # host user who started it. setgroups is inherited from the parent as it is.
        return IdMapPlan(
            _identity_of_own_map("uid_map"), _identity_of_own_map("gid_map"), "direct", False
        )
    if uid == 0:
        if map_root_to is not None:
            return IdMapPlan(((0, map_root_to, 1),), ((0, map_root_to, 1),), "direct", False)
        subuid = _subid_range("/etc/subuid", 0) if use_subids else None
        subgid = _subid_range("/etc/subgid", 0) if use_subids else None
        if subuid and subgid:
            return IdMapPlan(((0, *subuid),), ((0, *subgid),), "direct", False)
        return IdMapPlan(((0, NOBODY, 1),), ((0, NOBODY, 1),), "direct", False)

    if use_subids and shutil.which("newuidmap") and shutil.which("newgidmap"):
        subuid = _subid_range("/etc/subuid", uid)
        subgid = _subid_range("/etc/subgid", uid)
        if subuid and subgid:
            return IdMapPlan(
                ((0, uid, 1), (1, subuid[0], subuid[1])),
                ((0, gid, 1), (1, subgid[0], subgid[1])),
                "newidmap",
                False,
            )
    return IdMapPlan(((0, uid, 1),), ((0, gid, 1),), "direct", True)


def write_id_maps_from_parent(pid: int, plan: IdMapPlan) -> None:
    """Write ``pid``'s maps. Raises OSError (or CalledProcessError) on failure."""
    if plan.method == "newidmap":
        import subprocess  # only this path needs it; keep it off every sandbox's start

        for tool, m in (("newgidmap", plan.gid_map), ("newuidmap", plan.uid_map)):
            args = [tool, str(pid)] + [str(x) for triple in m for x in triple]
            subprocess.run(args, check=True, capture_output=True, text=True)
        return
    if plan.deny_setgroups:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    for which, m in (("gid_map", plan.gid_map), ("uid_map", plan.uid_map)):
        text = "".join(f"{a} {b} {c}\n" for a, b, c in m)
        # One write(2) call: the kernel rejects a map split across writes.
        fd = os.open(f"/proc/{pid}/{which}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _setgroups_allowed_here() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return True


def become_root_from_child(*, setgroups_allowed: bool) -> None:
    """Switch to sandbox root after the maps exist.

    When the caller was host root, its credentials are still host uid 0 (unmapped
    inside): switching to sandbox root makes them the mapped, unprivileged host uid.
    """
    if setgroups_allowed and _setgroups_allowed_here():
        os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
