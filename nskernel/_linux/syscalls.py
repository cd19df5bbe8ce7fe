"""Raw Linux syscalls that Python 3.10/3.11 does not expose.

Design note: this module is imported between fork and exec, so it uses only the
standard library. ``os.unshare``/``os.setns`` exist from Python 3.12; before that we
call libc through ctypes. Syscalls that glibc does not wrap (``pivot_root``,
``mount_setattr``) go through ``syscall(2)`` with the x86_64/aarch64 numbers.
Every wrapper raises ``OSError`` with errno set, so callers can explain failures.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import os
import select
import stat

# clone(2) namespace flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# The six namespace types nskernel creates, in the order /proc/PID/ns lists them.
NAMESPACE_FLAGS: dict[str, int] = {
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "mnt": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
}

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2

# mount_setattr(2) (Linux 5.12+).
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1

# prctl(2).
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_SYSCALL_NUMBERS = {
    # The new mount API (open_tree, move_mount, mount_setattr) and close_range have the
    # same numbers on both: they came after the syscall tables were unified.
    "x86_64": {
        "pivot_root": 155,
        "open_tree": 428,
        "move_mount": 429,
        "mount_setattr": 442,
        "close_range": 436,
        "openat2": 437,
    },
    "aarch64": {
        "pivot_root": 41,
        "open_tree": 428,
        "move_mount": 429,
        "mount_setattr": 442,
        "close_range": 436,
        "openat2": 437,
    },
}


def _load_libc() -> ctypes.CDLL:
    # find_library() runs `ldconfig -p` in a subprocess (milliseconds on every start):
    # try glibc's soname first, and only search when that is not it (e.g. musl).
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


_libc = _load_libc()
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


# openat2(2) (Linux 5.6+): how a path may be resolved.
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
SYSFS_MAGIC = 0x62656572


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    nr = _syscall_number("openat2")
    ret = _libc.syscall(nr, dirfd, _enc(path), ctypes.byref(how), ctypes.sizeof(how))
    return _check(ret, f"openat2({path!r})")


def open_no_symlinks(path: str) -> int:
    """An ``O_PATH`` descriptor of the absolute ``path``, opened without following any
    symbolic link on the way (ELOOP if one is there).

    For bind sources, resolved to real paths when they were checked: a sandbox that can
    write a directory on the way may swap it for a link between that check and this
    open, which must then fail rather than mount where the link points. Walked one
    component at a time (``O_NOFOLLOW`` each), which crosses mount points as a path
    lookup does and needs no openat2.
    """
    if not os.path.isabs(path):
        raise OSError(errno.EINVAL, f"{path}: not an absolute path")
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_no_symlinks_beneath(root, path, os.O_PATH, shown=path)
    finally:
        os.close(root)


def open_no_symlinks_beneath(dir_fd: int, path: str, flags: int, *, shown: str = "") -> int:
    """``path`` opened (with ``flags``, e.g. ``O_PATH``) beneath the directory ``dir_fd``,
    one component at a time, refusing any symbolic link and any ``..`` (ELOOP, EINVAL)."""
    shown = shown or path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    fd = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            if part == "..":
                raise OSError(errno.EINVAL, f"{shown}: not a resolved path ('..')")
            last = i == len(parts) - 1
            how = (flags if last else os.O_PATH) | os.O_NOFOLLOW | os.O_CLOEXEC
            nxt = os.open(part, how, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                msg = (
                    f"{shown}: {part} is a symbolic link now (it changed after the path "
                    "was checked); nothing is mounted from it"
                )
                raise OSError(errno.ELOOP, msg)
    except BaseException:
        os.close(fd)
        raise
    return fd


def filesystem_type(fd: int) -> int:
    """``fstatfs(fd).f_type``: which kind of filesystem ``fd`` is on (e.g. SYSFS_MAGIC)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    _check(_libc.fstatfs(fd, buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _enc(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


@functools.cache  # the machine does not change; uname(2) per call showed in every spawn
def _syscall_number(name: str) -> int:
    try:
        return _SYSCALL_NUMBERS[os.uname().machine][name]
    except KeyError:
        msg = f"{name}: unsupported architecture {os.uname().machine!r}"
        raise OSError(38, msg) from None  # ENOSYS


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
        return
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, nstype)
        return
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    ret = _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data))
    _check(ret, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_enc(target), flags), f"umount2({target!r}, {flags:#x})")


def pivot_root(new_root: str, put_old: str) -> None:
    ret = _libc.syscall(_syscall_number("pivot_root"), _enc(new_root), _enc(put_old))
    _check(ret, f"pivot_root({new_root!r}, {put_old!r})")


def mount_setattr_recursive_readonly(path: str) -> None:
    """Make the mount at ``path`` and every mount below it read-only in one step."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    ret = _libc.syscall(
        _syscall_number("mount_setattr"),
        ctypes.c_int(AT_FDCWD),
        _enc(path),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, f"mount_setattr({path!r}, AT_RECURSIVE, MOUNT_ATTR_RDONLY)")


def mount_setattr_readonly_fd(mount_fd: int) -> None:
    """Make the mount tree ``mount_fd`` refers to (e.g. a detached one from open_tree)
    read-only, every mount in it, before it is attached anywhere."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    ret = _libc.syscall(
        _syscall_number("mount_setattr"),
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_uint(AT_RECURSIVE | AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr(fd, AT_RECURSIVE, MOUNT_ATTR_RDONLY)")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option}, {arg2})")


def prctl_get(option: int) -> int:
    """A ``PR_GET_*`` prctl: the value is the return value."""
    return _check(_libc.prctl(option, 0, 0, 0, 0), f"prctl({option})")


def set_process_name(name: str) -> None:
    """Name shown by ``ps -o comm`` (at most 15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0)


def close_fds_except(keep: set[int]) -> None:
    """Close every descriptor above 2 not in ``keep``: a forked helper must not hold
    its parent's other descriptors (a sandbox's lifeline held there keeps it alive).

    With close_range(2) over the gaps between the kept ones (Linux 5.9+): a sandbox
    server holds a few descriptors per sandbox, and closing a thousand one by one made
    every new sandbox ~15 ms slower once ~500 were alive."""
    lo = 3
    try:
        for fd in sorted(k for k in keep if k >= lo):
            if fd > lo:
                _close_range(lo, fd - 1)
            lo = fd + 1
        _close_range(lo, 0xFFFFFFFF)
        return
    except OSError:
        pass  # no close_range here (ENOSYS, or a seccomp filter): one by one
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, already closed


def install_stdio(stdio: tuple[int, int, int]) -> None:
    """Make ``stdio`` this process's fds 0, 1 and 2 (inheritable), whatever their numbers.

    Each is first duplicated above 2, so that one moving onto 0-2 cannot overwrite
    another before it was moved itself.
    """
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # dup2 leaves the new descriptor inheritable
    for fd in high:
        os.close(fd)


TIOCSCTTY = 0x540E


def take_controlling_tty(fd: int) -> None:
    """Make the terminal ``fd`` this session leader's controlling terminal."""
    import fcntl

    fcntl.ioctl(fd, TIOCSCTTY, 0)


def readable(fds: list[int] | tuple[int, ...], timeout: float | None = None) -> list[int]:
    """Those of ``fds`` that are readable, at EOF or in error within ``timeout`` seconds
    (None: wait for one). poll(2), never select(2): select fails outright for descriptor
    numbers of 1024 and up, which a server holding hundreds of sandboxes reaches (and so
    can any process whose user code opened many files)."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return poll_ready(p, timeout)


# poll(2) takes an int of milliseconds: a longer wait (`--timeout 3000000`, 1e308) would
# overflow it (red team 23 F2). Waiting this long at most, a caller with a deadline
# looks at it again (or gives up a little early, after 24 days).
POLL_MAX_MS = (1 << 31) - 1


def poll_ms(timeout: float | None) -> int | None:
    """``timeout`` seconds (None: for ever) as poll(2)'s milliseconds, rounded up."""
    if timeout is None:
        return None
    return math.ceil(min(max(0.0, timeout) * 1000, POLL_MAX_MS))


def poll_ready(poller: select.poll, timeout: float | None) -> list[int]:
    """The descriptors ``poller`` reports within ``timeout`` seconds (None: wait)."""
    return [fd for fd, _ in poller.poll(poll_ms(timeout))]


def _close_range(first: int, last: int) -> None:
    nr = _syscall_number("close_range")
    _check(
        _libc.syscall(nr, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(0)),
        "close_range",
    )


# fork(2) straight from libc, holding the GIL (PyDLL does not release it).
_libc_gil = ctypes.PyDLL(_libc._name, use_errno=True)


def fork_lean() -> int:
    """``fork()`` without Python's at-fork machinery; for setup processes only.

    ``os.fork()`` runs every handler registered with ``os.register_at_fork`` (logging,
    threading, random, IPython...) and re-initialises the runtime in the child. In a
    warm sandbox server that is over a millisecond per fork, and the child dirties the
    pages those handlers touch (memory it then holds privately). The setup child and
    init run only nskernel's own setup code, then exec or fork the command with
    ``os.fork()``, so they need none of it. The caller must be single-threaded (every
    sandbox launcher is: user namespaces require it), so no lock can be held by a thread
    that the child lacks.
    """
    pid = _libc_gil.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork: {os.strerror(err)}")
    return pid
