"""Idmapped mounts: show a host directory's owner as sandbox root, for host root only.

When the caller is real root, sandbox root is an unprivileged host uid R (never 0), so a
writable bind of a directory owned by another user would be read-only in practice: R may
not write it. An *idmapped* clone of the directory fixes that without giving the sandbox
anybody's identity elsewhere: through the clone, files whose on-disk owner is the
directory's owner appear owned by R (sandbox root), and what R creates is stored on disk
owned by that owner. Nothing else on the host changes. Which trees get one is the
callers' policy (``Sandbox.spawn`` never idmaps a tree owned by root).

The clone is made by a process in the host's user namespace with CAP_SYS_ADMIN (the
filesystem's own user namespace must grant it): ``open_tree(OPEN_TREE_CLONE)`` gives a
detached mount, ``mount_setattr(MOUNT_ATTR_IDMAP)`` sets the mapping from a throwaway user
namespace, and ``move_mount`` attaches it: in the launcher's private mount namespace
(the kernel's notebook directory, :mod:`nskernel.kernel.staging`) or in the sandbox's
own (a writable bind, :meth:`nskernel.Sandbox.spawn`).

Filesystems without idmapped-mount support (NFS, tmpfs before Linux 6.3, ...) refuse
with EINVAL: callers then keep the plain bind and say so.
"""

from __future__ import annotations

import ctypes
import os

from . import syscalls as sc

OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_IDMAP = 0x00100000


def _sys(name: str, *args: object) -> int:
    ret = sc._libc.syscall(sc._syscall_number(name), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return int(ret)


def open_tree_clone(path: str, *, dir_fd: int = sc.AT_FDCWD) -> int:
    """A detached copy of the mount tree at ``path`` (or, for ``""``, at ``dir_fd``), with
    the mounts below it (like ``mount --rbind``), not yet attached anywhere."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE
    if not path:
        flags |= AT_EMPTY_PATH
    return _sys("open_tree", ctypes.c_int(dir_fd), os.fsencode(path), ctypes.c_uint(flags))


def set_idmap(mount_fd: int, userns_fd: int) -> None:
    """Idmap the top mount of ``mount_fd`` only: mounts below it (other filesystems,
    which may not support idmapping) stay as they are."""
    attr = sc._MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    _sys(
        "mount_setattr",
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_uint(AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )


def move_mount(mount_fd: int, target: str | int) -> None:
    """Attach the detached mount ``mount_fd`` at ``target`` (in this mount namespace): a
    path, or an ``O_PATH`` descriptor of the mount point (nothing is looked up again)."""
    if isinstance(target, int):
        to_fd, to_path, flags = target, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    else:
        to_fd, to_path, flags = sc.AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH
    _sys(
        "move_mount",
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_int(to_fd),
        to_path,
        ctypes.c_uint(flags),
    )


def idmap_userns(uid_pair: tuple[int, int], gid_pair: tuple[int, int]) -> int:
    """An fd for a throwaway user namespace mapping on-disk id -> host id (one of each).

    An idmapped mount shows a file whose on-disk owner is ``k`` as owned by the id that
    this namespace maps ``k`` to, and stores files created through it the other way round.
    """
    r_go, w_go = os.pipe2(os.O_CLOEXEC)
    r_ready, w_ready = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # callers are single-threaded (the launcher, the server): fork is safe
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
            raise OSError(1, "could not create a user namespace for the idmapped mount")
        for which, (inside, outside) in (("gid_map", gid_pair), ("uid_map", uid_pair)):
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


class IdmapRefused(Exception):
    """The tree at a path must not be idmapped; the message says why and what to do."""


def owned_clone(path: str, owner_to: tuple[int, int], *, read_only: bool = False) -> int:
    """A detached clone of ``path`` whose owner appears as ``owner_to``.

    One path lookup: the checks and the mapping use ``fstat`` of the clone itself, so a
    path swapped for a link meanwhile (by a user who controls a directory on the way)
    gets the checks of what is really mounted. For writing (not ``read_only``: the
    caller binds it read-only), :class:`IdmapRefused` for a tree whose owner or group is
    root (sandbox root must never act as host root), and for one whose group is not its
    owner's own primary group (sandbox root could then make setgid files of a group the
    owner is not in). Raises OSError (EINVAL where the filesystem cannot be idmapped);
    closes what it made.
    """
    # No symbolic link followed on the way (``path`` is resolved; one that appears since
    # was put there by someone racing the check), and the clone is made of what was opened.
    found = sc.open_no_symlinks(path)
    try:
        fd = open_tree_clone("", dir_fd=found)
    finally:
        os.close(found)
    try:
        st = os.fstat(fd)
        if not read_only:
            if 0 in (st.st_uid, st.st_gid):
                raise IdmapRefused(f"{path} belongs to root (owner or group)")
            if _owners_group(st.st_uid, st.st_gid) != st.st_gid:
                raise IdmapRefused(
                    f"{path} has a group ({st.st_gid}) that is not its owner's own "
                    f"(uid {st.st_uid}): sandbox root would act as that group"
                )
        userns_fd = idmap_userns((st.st_uid, owner_to[0]), (st.st_gid, owner_to[1]))
        try:
            set_idmap(fd, userns_fd)
        finally:
            os.close(userns_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _owners_group(uid: int, dir_gid: int) -> int | None:
    """The gid to map for an owner: its primary group; for a uid without a passwd entry,
    the directory's group if no group of that id exists (nobody else is in it); else None."""
    import grp
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        pass
    try:
        grp.getgrgid(dir_gid)
    except KeyError:
        return dir_gid
    return None


def refused(path: str, err: OSError, alternative: str) -> str:
    """The warning when ``path`` cannot be made writable for sandbox root."""
    return (
        f"nskernel: cannot make {path} writable for the sandbox (idmapped mount refused: "
        f"{err.strerror}); it stays as the host has it. Use a filesystem that supports "
        f"idmapped mounts (ext4, xfs, btrfs, tmpfs on Linux >= 6.3) or {alternative}."
    )
