"""Host-root only: make host directories usable by sandbox root, never mapping it to uid 0.

The hazard: when the server runs as real root, sandbox root maps to an unprivileged host
uid R (65534, or root's /etc/subuid range). The notebook directory is then usually owned
by root (or by some other user), so sandbox root could neither write it nor, when an
ancestor is ``0700`` (``/root``, ``/tmp/nsk-0``), even reach it. Mapping sandbox root to
host uid 0 would fix that and break the sandbox; mapping it to the directory's owner would
hand the sandbox that user's identity for every other file the host root shows it.

The choice: the launcher (host root, single-threaded) works in a private mount namespace
of its own, which the sandbox's mount namespace is then copied from:

- the notebook directory is replaced by an *idmapped* clone of itself
  (``open_tree(OPEN_TREE_CLONE)`` + ``mount_setattr(MOUNT_ATTR_IDMAP)`` + ``move_mount``)
  whose id mapping turns the directory owner's ids into R: inside, sandbox root owns the
  directory and what it writes lands on disk owned by the directory's owner. Nothing else
  of the host changes owner;
- an ancestor that R cannot traverse is covered with a small tmpfs holding only the path
  down to the exposed directory (which also hides the rest of, say, ``/root``).

Nothing propagates to the host: the namespace is made ``MS_REC|MS_PRIVATE`` first, and it
dies with the launcher. Rootless callers need none of this (sandbox root is the caller).
Standard library only (ctypes), like the rest of the privileged layer.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import stat

from .._linux import syscalls as sc
from ..spec import blocked_ancestor

OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000

# The new mount API's numbers are the same on x86_64 and aarch64 (unified table).
_NR = {"open_tree": 428, "move_mount": 429, "mount_setattr": 442}


class StagingError(OSError):
    """A directory could not be prepared for the sandbox; the message says which and why."""


def _sys(name: str, *args: object) -> int:
    ret = sc._libc.syscall(_NR[name], *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return int(ret)


def open_tree_clone(path: str) -> int:
    """A detached copy of the mount subtree at ``path`` (a bind mount not yet attached)."""
    return _sys(
        "open_tree",
        ctypes.c_int(sc.AT_FDCWD),
        os.fsencode(path),
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
    )


def set_idmap(mount_fd: int, userns_fd: int) -> None:
    attr = sc._MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    _sys(
        "mount_setattr",
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_uint(AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )


def move_mount(mount_fd: int, target: str) -> None:
    _sys(
        "move_mount",
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_int(sc.AT_FDCWD),
        os.fsencode(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )


def idmap_userns(uid_pairs: tuple[int, int], gid_pairs: tuple[int, int]) -> int:
    """An fd for a throwaway user namespace mapping on-disk id -> host id (one of each).

    An idmapped mount shows a file whose on-disk owner is ``k`` as owned by the id that
    this namespace maps ``k`` to, and stores files created through it the other way round.
    """
    r_go, w_go = os.pipe2(os.O_CLOEXEC)
    r_ready, w_ready = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # single-threaded launcher: fork is safe
        code = 1
        try:
            os.close(w_go)
            os.close(r_ready)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(w_ready, b"u")
            os.read(r_go, 1)  # hold the namespace alive until the parent has an fd
            code = 0
        finally:
            os._exit(code)
    os.close(r_go)
    os.close(w_ready)
    try:
        if os.read(r_ready, 1) != b"u":
            raise StagingError(1, "could not create a user namespace for the idmapped mount")
        for which, (inside, outside) in (("gid_map", gid_pairs), ("uid_map", uid_pairs)):
            fd = os.open(f"/proc/{pid}/{which}", os.O_WRONLY)
            try:
                os.write(fd, f"{inside} {outside} 1\n".encode())
            finally:
                os.close(fd)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w_go)
        os.close(r_ready)
        os.waitpid(pid, 0)


@dataclasses.dataclass(frozen=True)
class Expose:
    """Make ``path`` reachable at the same path; idmap its owner to ``owner_to`` ids."""

    path: str
    owner_to: tuple[int, int] | None = None  # (host uid, host gid) the owner should become


def expose_in_private_mount_namespace(items: list[Expose], sandbox_uid: int) -> list[str]:
    """Enter a private mount namespace and prepare ``items`` there. Returns warnings."""
    warnings: list[str] = []
    sc.unshare(sc.CLONE_NEWNS)
    # Before anything else: nothing mounted here may propagate back to the host.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)

    clones: list[tuple[str, int]] = []
    for item in items:
        fd = open_tree_clone(item.path)
        if item.owner_to is not None:
            st = os.stat(item.path)
            userns_fd = idmap_userns((st.st_uid, item.owner_to[0]), (st.st_gid, item.owner_to[1]))
            try:
                set_idmap(fd, userns_fd)
            except OSError as e:
                warnings.append(
                    f"nskernel: cannot make {item.path} writable for the sandbox "
                    f"(idmapped mount refused: {e.strerror}); it stays as the host has it. "
                    "Use a filesystem that supports idmapped mounts (ext4, xfs, btrfs, "
                    "tmpfs on Linux >= 6.3) or run Jupyter as the notebook's owner."
                )
            finally:
                os.close(userns_fd)
        clones.append((item.path, fd))

    blockers = {b for it in items if (b := blocked_ancestor(it.path, sandbox_uid))}
    # Only the outermost: a tmpfs over /root already covers /root/x.
    outer = sorted(b for b in blockers if not any(b.startswith(o + "/") for o in blockers))
    for b in outer:
        mode = stat.S_IMODE(os.stat(b).st_mode) | 0o055  # keep owner bits; let others search
        sc.mount("tmpfs", b, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode={mode:o},size=64k")
    for path, fd in clones:
        if any(path.startswith(b + "/") for b in outer):
            os.makedirs(path, mode=0o755, exist_ok=True)
        try:
            move_mount(fd, path)
        finally:
            os.close(fd)
    return warnings
