"""Mount namespace: the sandbox's view of the filesystem.

Runs in the sandbox's PID 1 (a fresh /proc must be mounted by a process inside the
new PID namespace). The result:

- the host's root, read-only (so Python and the usual tools work), recursively;
- a fresh /proc (with a PID namespace) and /sys (with a network namespace, so
  /sys/class/net lists only the sandbox's interfaces);
- private, writable /tmp and /dev/shm, and a fresh /dev/mqueue with an IPC namespace;
- host paths writable only through explicit binds, ``--ro-bind`` read-only.

Hazards: propagation must be made private first, or mounts would leak to the host;
/tmp is shadowed by the scratch tmpfs we build on, so every bind source is copied
(``open_tree``) before the scratch is mounted (a copy of /tmp made later would hold the
scratch); and sandbox root may lack access to a source the caller can read, so bind
sources arrive as O_PATH descriptors opened earlier by the setup child (see
``with_sources_opened``).
The new root is entered with ``pivot_root(".", ".")`` and the old root detached,
so nothing of the host's mount tree stays reachable except what is bound in.

Destinations are looked up inside the new root, never from the host's "/": a bind may
land inside another, writable bind, where a sandbox (an earlier one, or one running now
on the same directory) can have left symbolic links. Every destination, hidden path and
mask is opened with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` relative to the
new root (``_open_in_root``): a link there resolves as it would for the sandbox, inside
its own root. What is missing is created one component at a time beneath a descriptor
(``mkdirat``; a file with ``O_CREAT|O_EXCL|O_NOFOLLOW|O_NONBLOCK``, so a FIFO put there
cannot block us), and mounts are attached to the descriptor, never to a path looked up
again: a bind is a detached copy (``open_tree``), made read-only before it is attached
(``mount_setattr``) and moved onto the descriptor (``move_mount``).
"""

from __future__ import annotations

import errno
import os
import stat

from .._record import record, replace
from . import idmap
from . import syscalls as sc

_SCRATCH = "/tmp"
_NEWROOT = "/tmp/.nskernel-root"


@record(frozen=True)
class FixedDir:
    """A directory whose top level is fixed at start (``Bind.fixed_top_level``): a fresh
    tmpfs at ``path`` holding mount points for its binds (planned as any other bind),
    the ``dirs`` and ``files`` to hide (planned as hides), the ``links`` (name, text)
    made again; read-only once everything in it is attached."""

    path: str
    dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()


@record(frozen=True)
class MountPlan:
    fresh_proc: bool
    fresh_sys: bool
    fresh_mqueue: bool
    # (host source, fd or -1 until opened, sandbox destination, readonly, detached): the fd
    # is an O_PATH descriptor of the source, or, when ``detached``, a mount the launcher
    # made already (an idmapped clone, see :mod:`.idmap`), attached with move_mount.
    binds: tuple[tuple[str, int, str, bool, bool], ...]
    # Host directories covered by an empty tmpfs inside (the homes, nskernel's own
    # runtime state: other kernels' sockets and connection files). Binds may land inside.
    masks: tuple[str, ...] = ()
    # The sandbox's private, writable home: a directory made in a mask (or in /tmp).
    home: str | None = None
    # Paths inside binds covered again, each by something empty and private (a tmpfs
    # over a directory, an empty file over a file): the dot-files of a home bound as
    # the notebook's directory, nskernel's runtime directory under a --bind.
    hide: tuple[str, ...] = ()
    # A minimal /dev of its own (bwrap's --dev): no host terminal, disk or device is
    # reachable, only null, zero, full, random, urandom, tty and a new devpts instance.
    fresh_dev: bool = True
    # Opt-in degraded modes (--allow-degraded) for containers whose runtime refuses a
    # fresh /proc or /sys (masked paths): keep the container's own, read-only.
    degraded_ok: frozenset[str] = frozenset()
    # The size of each writable tmpfs (/tmp, /dev/shm, the home's, hides), in bytes: the
    # memory limit when there is one. Files in a tmpfs are memory that RLIMIT_AS (the
    # rootless fallback for --memory) does not count; a cgroup counts them anyway.
    tmpfs_size: int | None = None
    # Directories whose top level is fixed when the sandbox starts (a home shown as the
    # notebook's directory): see FixedDir.
    fixed: tuple[FixedDir, ...] = ()

    def with_sources_opened(self) -> MountPlan:
        """Open every bind source as O_PATH, in the new mount namespace.

        Called by the setup child after unshare(CLONE_NEWNS) (a descriptor from the
        host's mount namespace cannot be bound in the new one) and before it becomes
        sandbox root (which may be another host uid, without the caller's access).
        Sources are real paths, resolved when they were checked; no symbolic link is
        followed now (one that appeared since was put there by someone racing that
        check: the sandbox fails instead of mounting where it points).
        """
        opened = tuple(
            (src, fd if detached else sc.open_no_symlinks(src), dst, ro, detached)
            for src, fd, dst, ro, detached in self.binds
        )
        return replace(self, binds=opened)

    def detached_fds(self) -> set[int]:
        """The mounts made by the launcher, which the setup child must keep open."""
        return {fd for _src, fd, _dst, _ro, detached in self.binds if detached}


class MountStepError(OSError):
    def __init__(self, step: str, err: OSError) -> None:
        super().__init__(err.errno, f"{step}: {err.strerror or err}")
        self.step = step


def _step(what: str, fn, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except OSError as e:
        raise MountStepError(what, e) from e


def _make_readonly(path: str) -> None:
    try:
        sc.mount_setattr_recursive_readonly(path)
    except OSError as e:
        if e.errno != 38:  # ENOSYS: kernels before 5.12 lack mount_setattr
            raise
        _remount_readonly_one_by_one(path)


def _remount_readonly_one_by_one(path: str) -> None:
    # Fallback for old kernels: remount each mount below `path`, keeping the flags a
    # user namespace is not allowed to clear (nosuid, nodev, noexec are "locked").
    keep = {"nosuid": sc.MS_NOSUID, "nodev": sc.MS_NODEV, "noexec": sc.MS_NOEXEC}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")
            if target != path and not target.startswith(path + "/"):
                continue
            flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY
            for opt in fields[5].split(","):
                flags |= keep.get(opt, 0)
            try:
                sc.mount(None, target, None, flags)
            except OSError:
                continue  # a mount we may not touch stays as the host has it


def _mqueue(target: str) -> None:
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    _step("mount(mqueue) on /dev/mqueue", sc.mount, "mqueue", target, "mqueue", flags)


# What this sandbox runs without, by the caller's leave (--allow-degraded); init reports
# it before "ready" and the host side warns. Per process: only init's copy is used.
DEGRADED: list[str] = []


def _fresh_or_degraded(what: str, plan: MountPlan, fn, *args) -> None:  # type: ignore[no-untyped-def]
    """Mount a fresh /proc or /sys; where that is refused (EPERM: the runtime masks parts
    of the container's, and the kernel refuses a fresh one that would reveal them) and the
    caller allowed it, keep the container's own, read-only like the rest of the root."""
    try:
        fn(*args)
    except MountStepError as e:
        if e.errno != 1 or what not in plan.degraded_ok:
            raise
        if what not in DEGRADED:
            DEGRADED.append(what)


def _sysfs(target: str) -> None:
    # Read-only: a sysfs mounted in a user namespace may not be less restricted than the
    # locked one beneath it, and the sandbox has nothing to configure through /sys.
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    _step("mount(sysfs) on /sys", sc.mount, "sysfs", target, "sysfs", flags)


def mount_namespace_views_from_child(plan: MountPlan) -> None:
    """After the nested user namespace: /sys and /dev/mqueue for the namespaces made there,
    and /dev/pts, so that the sandbox's own user namespace owns its terminals."""
    if plan.fresh_sys and "sys" not in DEGRADED:
        _fresh_or_degraded("sys", plan, _sysfs, "/sys")
    if plan.fresh_mqueue and os.path.isdir("/dev/mqueue"):
        _mqueue("/dev/mqueue")
    if plan.fresh_dev:
        _devpts("/dev/pts")


# Device nodes a program may expect; bound from the host one by one (mknod is not
# allowed in a user namespace, and a bind carries no other device with it).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)


def _devpts(target: str) -> None:
    # A new instance: its ptys are the sandbox's own, none of the host's (the user's
    # other terminals) is listed or openable. ptmxmode: anyone inside may open ptmx.
    flags = sc.MS_NOSUID | sc.MS_NOEXEC
    _step(
        "mount(devpts) on /dev/pts",
        sc.mount,
        "devpts",
        target,
        "devpts",
        flags,
        "newinstance,ptmxmode=0666,mode=0620",
    )


def _minimal_dev(dev: str, *, devpts_now: bool) -> None:
    """A fresh /dev at ``dev`` (inside the new root): a tmpfs with the usual nodes bound
    from the host's, its own /dev/pts (now, or after the nested user namespace), and
    empty /dev/shm and /dev/mqueue for the private mounts that follow."""
    _step("mount(tmpfs) on /dev", _tmpfs, dev, "0755")
    for name in DEV_NODES:
        host = "/dev/" + name
        if not os.path.exists(host):
            continue
        # A mount point for the node. os.open, not open(): Python's file objects cost
        # this forked process allocations and four more syscalls per node.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        os.close(os.open(f"{dev}/{name}", flags, 0o666))
        _step(f"bind {host}", sc.mount, host, f"{dev}/{name}", None, sc.MS_BIND)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(f"{dev}/{name}", 0o755)
    if devpts_now:
        _devpts(f"{dev}/pts")


def _tmpfs(target: str, mode: str, size: int | None = None) -> None:
    options = f"mode={mode}" if size is None else f"mode={mode},size={size}"
    sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)


def _open_in_root(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """A descriptor of ``path`` as the sandbox will see it: looked up beneath the new root
    ``root_fd``, every symbolic link resolved inside it, no magic link (/proc/PID/fd/...)
    followed. Without openat2 (Linux < 5.6) no symbolic link is followed at all."""
    rel = path.strip("/") or "."
    try:
        return sc.openat2(root_fd, rel, flags, sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    return sc.open_no_symlinks_beneath(root_fd, rel, flags)


def _fd_path(fd: int) -> str:
    # What mount(2) takes for a target already opened: the magic link jumps to exactly
    # that directory or file, without another lookup of its path.
    return f"/proc/self/fd/{fd}"


def _hide(root_fd: int, path: str, serial: int, size: int | None = None) -> None:
    """Cover ``path`` (inside the new root) with something empty, private and writable:
    a fresh tmpfs over a directory, a fresh empty file over anything else."""
    try:
        fd = _open_in_root(root_fd, path, os.O_PATH | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there to hide
    except PermissionError:
        # We run with sandbox root's host ids: what we cannot reach, it cannot either.
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            _step(f"mount(tmpfs) over {path}", _tmpfs, _fd_path(fd), "0700", size)
            return
        if stat.S_ISLNK(st.st_mode):
            return  # a mount would follow it; what it points to is hidden or not on its own
        # An empty file of our own in the scratch tmpfs, bound over it (mount needs a file
        # of the same kind as its mount point).
        empty = f"{_SCRATCH}/.nskernel-hidden-{serial}"
        with open(empty, "w"):
            pass
        _step(f"hide {path}", sc.mount, empty, _fd_path(fd), None, sc.MS_BIND)
    finally:
        os.close(fd)


def _destination(root_fd: int, dst: str, *, directory: bool, may_create: bool) -> int:
    """An ``O_PATH`` descriptor of the bind destination ``dst`` inside the new root,
    created (a directory, or an empty file for a file) if it is missing and may be."""
    try:
        return _open_in_root(root_fd, dst)
    except FileNotFoundError:
        if not may_create:
            # Only inside the sandbox's own tmpfs may a missing destination be created;
            # elsewhere it would have to be created on the (read-only) host filesystem.
            msg = (
                f"bind destination {dst} does not exist inside the sandbox; "
                "bind onto an existing path, or under /tmp"
            )
            raise MountStepError(f"bind onto {dst}", FileNotFoundError(2, msg)) from None
    parts = [p for p in dst.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise MountStepError(f"bind onto {dst}", OSError(errno.EINVAL, "'..' in a destination"))
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            here = "/".join(parts[: i + 1])
            try:
                nxt = _open_in_root(root_fd, here)
            except FileNotFoundError:
                # One name beneath the directory just opened: mkdirat and openat with
                # O_EXCL never follow a link nor open what someone else put there.
                try:
                    if directory or i < len(parts) - 1:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    else:
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        os.close(
                            os.open(part, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=fd)
                        )
                except FileExistsError:
                    pass  # made meanwhile, by someone else: looked up as any other
                nxt = _open_in_root(root_fd, here)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _bind(source_fd: int, dest_fd: int, readonly: bool, detached: bool) -> None:
    """Attach a copy of the source (or the detached mount ``source_fd``) at ``dest_fd``,
    read-only before it is attached when ``readonly``."""
    try:
        tree = source_fd if detached else idmap.open_tree_clone("", dir_fd=source_fd)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        # Linux < 5.2: no detached mounts. Bind by descriptor, then make it read-only
        # where it now is (the descriptor names the directory beneath the new mount).
        sc.mount(_fd_path(source_fd), _fd_path(dest_fd), None, sc.MS_BIND | sc.MS_REC)
        if readonly:
            _remount_readonly_one_by_one(os.readlink(_fd_path(dest_fd)))
        return
    try:
        if readonly:
            try:
                sc.mount_setattr_readonly_fd(tree)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                # Linux 5.2-5.11: attach first, then remount each mount read-only.
                idmap.move_mount(tree, dest_fd)
                _remount_readonly_one_by_one(os.readlink(_fd_path(dest_fd)))
                return
        idmap.move_mount(tree, dest_fd)
    finally:
        if not detached:
            os.close(tree)


def _fixed_dir(root_fd: int, fixed: FixedDir, may_create: bool, size: int | None) -> int:
    """Cover ``fixed.path`` with a fresh tmpfs holding its links and the mount points of
    its dot-entries (hidden next, each by something private); return an ``O_PATH``
    descriptor of the tmpfs, to make it read-only once its binds are attached."""
    step = f"fix the top level of {fixed.path}"
    try:
        fd = _destination(root_fd, fixed.path, directory=True, may_create=may_create)
    except MountStepError:
        raise
    except OSError as e:
        raise MountStepError(step, e) from e
    try:
        _step(step, _tmpfs, _fd_path(fd), "0755", size)
    finally:
        os.close(fd)
    fd = _open_in_root(root_fd, fixed.path, os.O_PATH | os.O_DIRECTORY)
    try:
        # Names of one component, in a tmpfs no one else can write yet.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for name in fixed.dirs:
            _step(step, lambda n: os.mkdir(n, 0o700, dir_fd=fd), name)
        for name in fixed.files:
            _step(step, lambda n: os.close(os.open(n, flags, 0o600, dir_fd=fd)), name)
        for name, text in fixed.links:
            _step(step, lambda n, t: os.symlink(t, n, dir_fd=fd), name, text)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_home(root_fd: int, home: str, scratch: tuple[str, ...]) -> None:
    """The private home: a directory sandbox root owns, in a fresh tmpfs (a mask or /tmp).

    We run as sandbox root's host ids (or as root itself without a user namespace), so
    what we make here is sandbox root's. Nowhere else may it be made: it would land on
    the read-only host root. Looked up in the new root, as the sandbox will: a home
    reached through a link is made where the link leads inside.
    """
    if not any(home == d or home.startswith(d.rstrip("/") + "/") for d in scratch):
        return
    step = f"make the private home {home}"
    try:
        fd = _destination(root_fd, home, directory=True, may_create=True)
    except OSError as e:
        raise MountStepError(step, e) from e
    try:
        _step(step, os.chmod, _fd_path(fd), 0o700)
    finally:
        os.close(fd)


def setup_mounts_from_child(
    plan: MountPlan, cwd: str | None, cwd_required: bool = False, *, locked: bool = False
) -> None:
    """Build the sandbox's mount tree and enter it.

    ``locked``: the caller will next step into a nested user namespace that locks these
    mounts (``userns.enter_nested_from_child``) and create its network and IPC
    namespaces there. The /sys mounted now then shows a throwaway network namespace and
    /dev/mqueue gets an empty tmpfs: locked layers, so that unmounting the views mounted
    later (``mount_namespace_views_from_child``) uncovers nothing of the host's.
    """
    _step("mount(MS_REC|MS_PRIVATE) on /", sc.mount, None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    # Each source is copied now, before the scratch tmpfs goes onto /tmp: a copy of the
    # host's /tmp made later (recursive, as --bind is) would hold the scratch mounted on
    # it, not the host's files. A copy is taken of the mounts as they are at this moment.
    sources = [
        _detached_source(fd, dst, ro, idmapped) for _src, fd, dst, ro, idmapped in plan.binds
    ]
    _step(f"mount(tmpfs) on {_SCRATCH}", _tmpfs, _SCRATCH, "0700")
    os.mkdir(_NEWROOT, 0o755)
    _step("bind the host root", sc.mount, "/", _NEWROOT, None, sc.MS_BIND | sc.MS_REC)
    _step("make the host root read-only", _make_readonly, _NEWROOT)

    r = _NEWROOT
    if plan.fresh_proc:
        flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
        _fresh_or_degraded(
            "proc",
            plan,
            _step,
            "mount(proc) on /proc",
            sc.mount,
            "proc",
            r + "/proc",
            "proc",
            flags,
        )
    if plan.fresh_sys:
        _fresh_or_degraded("sys", plan, _sysfs, r + "/sys")
    if plan.fresh_dev:
        _minimal_dev(r + "/dev", devpts_now=not locked)
    size = plan.tmpfs_size
    _step("mount(tmpfs) on /tmp", _tmpfs, r + "/tmp", "1777", size)
    if os.path.isdir(r + "/dev/shm"):
        _step("mount(tmpfs) on /dev/shm", _tmpfs, r + "/dev/shm", "1777", size)
    if plan.fresh_mqueue and os.path.isdir(r + "/dev/mqueue"):
        if locked:
            _step("mount(tmpfs) on /dev/mqueue", _tmpfs, r + "/dev/mqueue", "0755")
        else:
            _mqueue(r + "/dev/mqueue")

    root_fd = os.open(r, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for mask in plan.masks:
        try:
            mask_fd = _open_in_root(root_fd, mask, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            continue  # not a directory there (or not reachable): nothing to cover
        try:
            # A skeleton for binds; the private home may live in one.
            _step(f"mount(tmpfs) over {mask}", _tmpfs, _fd_path(mask_fd), "0755", size)
        finally:
            os.close(mask_fd)
    if plan.home is not None:
        _make_home(root_fd, plan.home, ("/tmp", *plan.masks))

    # fresh tmpfs: a missing destination may be made here
    scratch = ("/tmp", *plan.masks, *plan.hide, *(f.path for f in plan.fixed))
    # Shallower first; at one depth a fixed directory, then binds, then hides: a bind
    # inside another (a venv in the notebook's directory) or inside a hidden path must
    # land on top of it.
    order = {"fixed": 0, "bind": 1, "hide": 2}
    ops: list[tuple[str, int, str, bool, bool]] = [
        ("bind", fd, dst, ro, idmapped) for fd, dst, ro, _detached, idmapped in sources
    ]
    bound = {dst for _fd, dst, _ro, _detached, _idmapped in sources}
    ops += [("hide", -1, p, False, False) for p in plan.hide if p not in bound]
    # A fixed directory's op carries its index in plan.fixed where a bind has its fd.
    ops += [("fixed", i, f.path, True, False) for i, f in enumerate(plan.fixed)]
    ops.sort(key=lambda op: (op[2].rstrip("/").count("/"), order[op[0]]))
    hidden: list[str] = []
    sealed: list[int] = []  # the fixed directories' tmpfs, made read-only at the end
    detached_fds = {fd for fd, _dst, _ro, detached, _idmapped in sources if detached}
    for kind, fd, dst, ro, idmapped in ops:
        if kind == "fixed":
            in_scratch = any(dst.startswith(d.rstrip("/") + "/") for d in scratch)
            sealed.append(_fixed_dir(root_fd, plan.fixed[fd], in_scratch, plan.tmpfs_size))
            continue
        if kind == "hide":
            _hide(root_fd, dst, len(hidden), plan.tmpfs_size)
            hidden.append(dst)
            continue
        in_scratch = any(dst == d or dst.startswith(d.rstrip("/") + "/") for d in scratch)
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        try:
            dest_fd = _destination(root_fd, dst, directory=is_dir, may_create=in_scratch)
        except MountStepError:
            raise
        except OSError as e:  # e.g. EROFS: a link led onto the read-only host root
            raise MountStepError(f"bind onto {dst}", e) from e
        try:
            what = f"attach the idmapped mount onto {dst}" if idmapped else f"bind onto {dst}"
            _step(what, _bind, fd, dest_fd, ro, fd in detached_fds)
        finally:
            os.close(dest_fd)
    for fd in sealed:
        # This mount alone: the binds and private dot-entries in it keep their own.
        flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
        _step("make a fixed directory read-only", sc.mount, None, _fd_path(fd), None, flags)
        os.close(fd)
    os.close(root_fd)

    os.chdir(r)
    _step("pivot_root", sc.pivot_root, ".", ".")
    _step("detach the old root", sc.umount2, ".", sc.MNT_DETACH)
    try:
        os.chdir(cwd or "/")
    except OSError as e:
        if not cwd_required:
            # The caller's own directory is not visible inside, or (made by the host's
            # root, sandbox root being an unprivileged host uid) may not be entered
            # there, like anything under /root: start at /.
            os.chdir("/")
        elif isinstance(e, PermissionError):
            msg = (
                f"working directory {cwd} is not accessible inside the sandbox: sandbox "
                "root is an unprivileged user on the host and may not enter it; bind it "
                "in (--bind DIR), which makes it reachable, or choose another"
            )
            raise MountStepError(f"chdir({cwd!r})", PermissionError(13, msg)) from None
        else:
            msg = (
                f"working directory {cwd} does not exist inside the sandbox; "
                "bind it in (--bind) or choose one that exists"
            )
            raise MountStepError(f"chdir({cwd!r})", FileNotFoundError(2, msg)) from None
    for fd, *_ in sources:
        os.close(fd)


def _detached_source(
    fd: int, dst: str, readonly: bool, idmapped: bool
) -> tuple[int, str, bool, bool, bool]:
    """``(fd, dst, readonly, detached, idmapped)`` for one bind: its source copied now
    into a detached mount tree (``open_tree``), which ``_bind`` attaches later as it is.
    An idmapped source is such a tree already (the launcher made it). Linux < 5.2 has
    no detached mounts: the source stays an ``O_PATH`` descriptor, bound by path later
    (there, a bind of /tmp itself shows the scratch tmpfs)."""
    if idmapped:
        return fd, dst, readonly, True, True
    try:
        tree = idmap.open_tree_clone("", dir_fd=fd)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return fd, dst, readonly, False, False
        raise MountStepError(f"copy the bind source for {dst}", e) from e
    os.close(fd)
    return tree, dst, readonly, True, False
