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

import os
import pwd

from .._record import record, replace

NOBODY = 65534


@record(frozen=True)
class IdMapPlan:
    uid_map: tuple[tuple[int, int, int], ...]
    gid_map: tuple[tuple[int, int, int], ...]
    # "newidmap": write through the setuid helpers; "direct": write /proc ourselves.
    method: str
    deny_setgroups: bool

    def staging(self) -> IdMapPlan:
        """The same host ids, each mapped to itself: the namespace mounts are set up in.

        The sandbox's own user namespace is then nested in it with this plan's maps (see
        ``enter_nested_from_child``), so inside, /proc/self/uid_map still shows the host ids.
        """
        return replace(
            self,
            uid_map=tuple((out, out, n) for _in, out, n in self.uid_map),
            gid_map=tuple((out, out, n) for _in, out, n in self.gid_map),
        )

    @property
    def root_on_host(self) -> tuple[int, int]:
        """The host uid and gid that sandbox root is (the first line of each map)."""
        return self.uid_map[0][1], self.gid_map[0][1]

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


CAP_SYS_ADMIN = 21


def holds_cap_sys_admin() -> bool:
    """CAP_SYS_ADMIN in the host's user namespace: what creating namespaces without a
    user namespace takes. Decided by capability, never by uid: root in a container
    usually lacks it, and a process with it need not be uid 0."""
    if not in_initial_user_namespace():
        return False
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return False


def is_host_root() -> bool:
    """Real root: uid 0 in the host's user namespace (root of some other user namespace
    has no privilege over the host's). Sandboxes it makes map their root elsewhere."""
    return os.geteuid() == 0 and in_initial_user_namespace()


def _identity_of_own_map(which: str) -> tuple[tuple[int, int, int], ...]:
    with open(f"/proc/self/{which}") as f:
        rows = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    return tuple((inside, inside, count) for inside, _outside, count in rows)


class GroupsStayUsable(Exception):
    """The caller's supplementary groups cannot be dropped inside the sandbox.

    An unprivileged caller that writes its own gid_map must first deny setgroups(2) in
    the new namespace; its supplementary groups then stay attached to every process of
    the sandbox, and the host checks permissions against them (a member of ``docker``
    reaches dockerd's socket). Only a gid map written through ``newgidmap`` (a range in
    /etc/subgid) leaves setgroups allowed, so that sandbox root can drop them.
    """

    def __init__(self, groups: list[int]) -> None:
        super().__init__(groups)
        self.groups = groups


def supplementary_groups() -> list[int]:
    """The caller's supplementary groups other than its own (effective) group."""
    egid = os.getegid()
    return sorted(g for g in set(os.getgroups()) if g != egid)


def plan_id_maps(
    *,
    map_root_to: int | None = None,
    use_subids: bool = True,
    single_uid: bool = False,
    keep_groups: bool = False,
) -> IdMapPlan:
    """The uid/gid maps of a new sandbox. ``single_uid``: map only sandbox root's uid,
    so every process of the sandbox is one uid (RLIMIT_NPROC counts per uid).
    Raises :class:`GroupsStayUsable` unless ``keep_groups``."""
    uid, gid = os.geteuid(), os.getegid()
    if not in_initial_user_namespace():
        # Nested (e.g. inside the rootless sandbox server's own user namespace): keep
        # every id the parent namespace has, unchanged, so sandbox root is still the
        # host user who started it. setgroups is inherited from the parent as it is.
        uid_map = _identity_of_own_map("uid_map")
        if single_uid:
            uid_map = ((0, 0, 1),)
        return IdMapPlan(uid_map, _identity_of_own_map("gid_map"), "direct", False)
    if uid == 0:
        if map_root_to is not None:
            return IdMapPlan(((0, map_root_to, 1),), ((0, map_root_to, 1),), "direct", False)
        subuid = _subid_range("/etc/subuid", 0) if use_subids else None
        subgid = _subid_range("/etc/subgid", 0) if use_subids else None
        if subuid and subgid:
            uid_row = (0, subuid[0], 1 if single_uid else subuid[1])
            return IdMapPlan((uid_row,), ((0, *subgid),), "direct", False)
        return IdMapPlan(((0, NOBODY, 1),), ((0, NOBODY, 1),), "direct", False)

    if use_subids and id_map_tool("newuidmap") and id_map_tool("newgidmap"):
        subuid = _subid_range("/etc/subuid", uid)
        subgid = _subid_range("/etc/subgid", uid)
        if subuid and subgid:
            uid_map = ((0, uid, 1),) if single_uid else ((0, uid, 1), (1, subuid[0], subuid[1]))
            return IdMapPlan(
                uid_map,
                ((0, gid, 1), (1, subgid[0], subgid[1])),
                "newidmap",
                False,
            )
    groups = supplementary_groups()
    if groups and not keep_groups:
        raise GroupsStayUsable(groups)
    return IdMapPlan(((0, uid, 1),), ((0, gid, 1),), "direct", True)


def id_map_tool(name: str) -> str | None:
    """``newuidmap``/``newgidmap`` by absolute path, searched in PATH's absolute entries
    only: a relative or empty one means the working directory, which may be a notebook's
    directory that a sandbox wrote (a planted ``newuidmap`` would run on the host)."""
    import shutil  # here: its imports cost `nskernel run` milliseconds

    path = os.environ.get("PATH", os.defpath)
    absolute = os.pathsep.join(p for p in path.split(os.pathsep) if os.path.isabs(p))
    return shutil.which(name, path=absolute)


def write_id_maps_from_parent(pid: int, plan: IdMapPlan) -> None:
    """Write ``pid``'s maps. Raises OSError (or CalledProcessError) on failure."""
    if plan.method == "newidmap":
        import subprocess  # only this path needs it; keep it off every sandbox's start

        for tool, m in (("newgidmap", plan.gid_map), ("newuidmap", plan.uid_map)):
            exe = id_map_tool(tool)
            if exe is None:
                raise FileNotFoundError(2, f"{tool} is not on PATH")
            args = [exe, str(pid)] + [str(x) for triple in m for x in triple]
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


def become_staging_from_child(final: IdMapPlan, *, setgroups_allowed: bool) -> None:
    """In the staging namespace (``IdMapPlan.staging``): become the host ids of sandbox root.

    The creator of a user namespace holds every capability in it whatever its uid, and a
    uid change here keeps them (this namespace has no uid 0 whose loss would drop them),
    so the mounts can still be made; files created meanwhile need a mapped owner.
    """
    if setgroups_allowed and _setgroups_allowed_here():
        os.setgroups([])
    gid = next(out for inside, out, _n in final.gid_map if inside == 0)
    uid = next(out for inside, out, _n in final.uid_map if inside == 0)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


@record
class NestingPipes:
    """init → setup child: "u" once init has unshared; setup child → init: "k" once the
    maps are written. Both ends exist in both processes until each closes its spare ones."""

    hop_r: int
    hop_w: int
    done_r: int
    done_w: int

    @classmethod
    def create(cls) -> NestingPipes:
        return cls(*os.pipe2(os.O_CLOEXEC), *os.pipe2(os.O_CLOEXEC))


def enter_nested_from_child(pipes: NestingPipes) -> None:
    """Init: unshare(CLONE_NEWUSER | CLONE_NEWNS) once more, into the sandbox's own user
    namespace, and wait for the setup child to write its maps.

    Why: sandbox root has CAP_SYS_ADMIN over a mount namespace its user namespace owns,
    so it could remount the read-only host root or a ``--ro-bind`` read-write, or unmount
    the fresh /proc to uncover the host's. A mount namespace copied into a *less
    privileged* user namespace gets every mount locked (MNT_LOCKED, MNT_LOCK_READONLY):
    flags that can no longer be cleared, mounts that can no longer be taken away. So the
    mounts are made in a staging namespace that maps the host ids to themselves, and init
    then steps into a child user namespace with the sandbox's real maps, together with a
    new, locked copy of the mount namespace.

    Only a process in the parent user namespace with CAP_SETUID there may write the
    child's maps: the setup child (outside the PID namespace, so the command stays PID 2)
    waits in ``write_nested_maps_from_setup_child``.
    """
    from . import syscalls as sc

    # Becoming sandbox root changed our euid, which made us non-dumpable, and then
    # /proc/PID/*_map belong to host root: the setup child could not open them.
    dumpable = sc.prctl_get(sc.PR_GET_DUMPABLE)
    sc.prctl(sc.PR_SET_DUMPABLE, 1)
    try:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        os.write(pipes.hop_w, b"u")
        os.close(pipes.hop_w)
        answer = os.read(pipes.done_r, 1)
        os.close(pipes.done_r)
    finally:
        sc.prctl(sc.PR_SET_DUMPABLE, dumpable)
    if answer != b"k":
        msg = "the setup process could not write the sandbox's user namespace maps"
        raise PermissionError(1, msg)


def write_nested_maps_from_setup_child(
    pipes: NestingPipes, init_proc_dir: int, final: IdMapPlan
) -> None:
    """Setup child: once init has unshared (``enter_nested_from_child``), write its maps.

    ``init_proc_dir`` is init's /proc directory, opened right after fork in the host's
    /proc: init's mounts replace /proc for both of us (pivot_root moves our root too).
    """
    os.close(pipes.hop_w)
    os.close(pipes.done_r)
    ok = False
    try:
        if os.read(pipes.hop_r, 1) == b"u":
            for which, m in (("gid_map", final.gid_map), ("uid_map", final.uid_map)):
                fd = os.open(which, os.O_WRONLY, dir_fd=init_proc_dir)
                try:  # one write(2): the kernel rejects a map split across writes
                    os.write(fd, "".join(f"{a} {b} {c}\n" for a, b, c in m).encode())
                finally:
                    os.close(fd)
            ok = True
    finally:
        try:
            os.write(pipes.done_w, b"k" if ok else b"x")
        except BrokenPipeError:
            pass  # init already failed (and reported why) before step 11b
        os.close(pipes.done_w)
        os.close(pipes.hop_r)


def _setgroups_allowed_here() -> bool:
    # os.open, not open(): this runs in a forked setup process, where each of Python's
    # file objects costs allocations (copy-on-write faults) and four more syscalls.
    try:
        fd = os.open("/proc/self/setgroups", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        return os.read(fd, 64).strip() == b"allow"
    except OSError:
        return True
    finally:
        os.close(fd)


def become_root_from_child(*, setgroups_allowed: bool) -> None:
    """Switch to sandbox root after the maps exist.

    When the caller was host root, its credentials are still host uid 0 (unmapped
    inside): switching to sandbox root makes them the mapped, unprivileged host uid.
    """
    if setgroups_allowed and _setgroups_allowed_here():
        os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
