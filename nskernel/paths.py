"""Where nskernel keeps per-user runtime state, and the only ways the host touches it.

Unix socket paths are limited to 107 bytes, so the base is short: the user's
$XDG_RUNTIME_DIR when it is usable, else /tmp. Each user gets a private 0700
directory ``nsk-<uid>``; everything nskernel creates at run time lives below it, so
stale state is easy to find and sweep (and the test suite's leak check looks there).

A sandboxed kernel's directory, ``nsk-<uid>/kern-XXXXXXXX`` (the names below), is
split by who may write what, because a sandbox writes its socket directory and
everything a sandbox can write is hostile input (symlinks to host files, FIFOs that
block an open, ``/dev/zero`` that never ends, entries owned by ids the user cannot
remove):

- ``kern-XXXXXXXX/`` (0700) and its ``owner`` file: host only, never bound into a
  sandbox;
- ``ro/``: what the sandbox may read (connection file, host facts, its own status),
  bound read-only; fresh for every start;
- ``sock/``: where the kernel binds its ZMQ unix sockets, bound read-write; fresh
  for every start;
- ``ep/``: host only, what the server connects to: a hard link to each socket the
  kernel bound, made by the launcher once it has checked that the entry in ``sock/`` is
  a socket (``link_socket``). The server's ZMQ sockets (and any other client that reads
  the connection file) connect here, so a symlink planted in ``sock/`` is never
  followed; the paths stay the same across restarts, so they reconnect.

The hazard is the host following what a sandbox planted. So the host side writes and
reads these files only through the functions below: relative to a directory
descriptor, ``O_NOFOLLOW``, created with ``O_EXCL`` (never reused), read with
``O_NONBLOCK`` and a size bound, removed without following anything (``remove_tree``).
Standard library only: the launcher and the sandbox server import this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

# Layout of a sandboxed kernel's directory (the provisioner and the launcher share it).
KERNEL_DIR_PREFIX = "kern-"
KERNEL_DIR_NEW_PREFIX = "new-"  # being made: renamed to kern-* once its owner file exists
OWNER_FILE = "owner"
SOCKET_SUBDIR = "sock"
ENDPOINT_SUBDIR = "ep"
SHARED_SUBDIR = "ro"
TRASH_PREFIX = "trash-"

# Set by the sandboxed kernel's launcher in the kernel's environment: the base holding
# that kernel's own directory, whose connection file and sockets are bound into the
# kernel's sandbox at their host paths. Sandboxes made inside the kernel (``%%sandbox``,
# ``!nskernel run``) cover it too, whatever their own $XDG_RUNTIME_DIR says: without it,
# a nested cell read the kernel's key and ran code in it (15th red-team pass).
RUNTIME_BASE_ENV = "NSKERNEL_RUNTIME_BASE"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# Directories held open at once while removing a tree; deeper ones are moved up first.
_REMOVE_DEPTH = 32


def _base() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
        base = "/tmp"
    return base


def _host_uid() -> int:
    """Our uid as the parent user namespace sees it (the same in the host's namespace)."""
    uid = os.geteuid()
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return outside + uid - inside
    except (OSError, ValueError):
        pass
    return uid


def _candidate_bases() -> list[str]:
    """Every directory a runtime dir of this user may be under: ours (``_base``), and
    those another process of the same user would choose (Jupyter started without
    $XDG_RUNTIME_DIR, as services and containers are, uses /tmp while a login shell
    has /run/user/UID), and inside a sandboxed kernel, the base of the kernel's own
    directory (:data:`RUNTIME_BASE_ENV`). By real path: a base reached through a link is
    covered where it really is."""
    bases = [_base(), "/tmp", os.environ.get("XDG_RUNTIME_DIR") or "", f"/run/user/{_host_uid()}"]
    bases.append(os.environ.get(RUNTIME_BASE_ENV) or "")
    return list(dict.fromkeys(os.path.realpath(b) for b in bases if os.path.isabs(b)))


def existing_runtime_dirs(bases: list[str] | None = None) -> list[str]:
    """The runtime directories of this user that exist, under any base this user's
    processes may choose, by real path, without creating or checking any.

    Inside a user namespace (the rootless sandbox server) the effective uid is 0, but
    the state on disk is under the host uid: both are considered.
    """
    found = []
    for base in _candidate_bases() if bases is None else bases:
        for uid in dict.fromkeys((os.geteuid(), _host_uid())):
            path = os.path.join(base, f"nsk-{uid}")
            if os.path.isdir(path):
                found.append(os.path.realpath(path))
    return list(dict.fromkeys(found))


def runtime_dir_path() -> str:
    """Where the per-user directory is (or would be); nothing is created."""
    return os.path.join(_base(), f"nsk-{os.geteuid()}")


def runtime_dirs_to_hide() -> list[str]:
    """The runtime directories every sandbox with mounts covers, this user's made first.

    A sandbox covers the directory with a mount on it: one made after the sandbox
    started, or made again after it was removed, would not be covered, and a sandbox
    that binds its parent (``--bind /tmp``) would see later kernels' connection files
    and sockets. So it is made before any sandbox (0700) and never removed, under every
    base another process of this user may choose (a kernel started by a Jupyter that
    has no $XDG_RUNTIME_DIR, a sandbox started from a login shell that has one: 14th
    red-team pass). Only the one of our host uid is made (inside the rootless server's
    user namespace, uid 0 is the host user: an ``nsk-0`` made there would squat on
    root's).
    """
    bases = _candidate_bases()
    for base in bases:
        if not os.path.isdir(base):
            continue
        try:
            os.mkdir(os.path.join(base, f"nsk-{_host_uid()}"), 0o700)
        except OSError:
            pass  # there already (checked where it is used), or nowhere to make it
    return existing_runtime_dirs(bases)


def remove_runtime_entry(path: str) -> list[OSError]:
    """Remove ``path`` (below the runtime dir); the runtime dir itself stays, always.

    Running sandboxes cover it with a mount on that very directory: a new one in its
    place would be uncovered for all of them (``runtime_dirs_to_hide``). Returns what
    could not be removed (empty when everything went).
    """
    return remove_tree(path)


def runtime_dir() -> str:
    """The private per-user directory, created 0700 on first use."""
    path = runtime_dir_path()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or (st.st_mode & 0o077):
            msg = f"{path} exists but is not a private directory of this user; remove it"
            raise PermissionError(msg) from None
    return path


# ---------------------------------------------------------------- descriptor-relative I/O


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink in its last component (or blocking)."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def create_file(
    dir_fd: int, name: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Create ``name`` in ``dir_fd``, which must not exist yet, and write ``data``.

    ``O_EXCL|O_NOFOLLOW``: whatever is at ``name`` already (a planted symlink, a FIFO) is
    never opened; the call fails instead. ``owner``: given with fchown on the new file's
    descriptor, never by path.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def replace_file(
    dir_fd: int, name: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Atomically give ``name`` in ``dir_fd`` new content: a fresh file renamed over it
    (rename replaces the entry itself, whatever it is, and follows nothing)."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    create_file(dir_fd, tmp, data, mode, owner)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def make_dir(
    dir_fd: int, name: str, mode: int = 0o700, owner: tuple[int, int] | None = None
) -> int:
    """Create the directory ``name`` in ``dir_fd`` (it must not exist); its descriptor.

    ``mkdirat`` never follows: a symlink at ``name`` makes it fail (EEXIST).
    """
    os.mkdir(name, mode, dir_fd=dir_fd)
    fd = open_dir(name, dir_fd)
    if owner is not None:
        os.fchown(fd, *owner)
    return fd


def read_small_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of the regular file ``name``; None if it is anything else.

    Never blocks and never reads without bound: ``O_NONBLOCK`` (a FIFO opens at once),
    ``O_NOFOLLOW`` (a link to /dev/zero is not opened), a regular-file check on the
    descriptor, one bounded read.
    """
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def link_socket(src_dir_fd: int, name: str, dst_dir_fd: int, uid: int) -> bool:
    """Publish the unix socket ``name`` of ``src_dir_fd`` (a directory a sandbox writes) as
    ``name`` in ``dst_dir_fd`` (one it cannot), as a hard link to the same inode.

    True once linked; False while there is nothing at ``name`` yet. Raises OSError when
    what is there is not a socket owned by ``uid`` (a symlink, a FIFO, a file, another
    user's socket): connecting to a path in ``src_dir_fd`` would follow whatever the
    sandbox put there, the link cannot. The entry is opened ``O_PATH|O_NOFOLLOW`` and
    checked on that descriptor, and the link is made from the descriptor
    (``/proc/self/fd``), so what was checked is what gets linked. The new link replaces
    the old one in a single rename: a client never sees the name missing.
    """
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir_fd)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
            what = f"a socket of uid {st.st_uid}" if stat.S_ISSOCK(st.st_mode) else "no socket"
            raise OSError(errno.EPERM, f"{name} in the sandbox's socket directory is {what}")
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
        # linkat(AT_SYMLINK_FOLLOW) on the descriptor's magic link: the checked inode.
        os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=dst_dir_fd, follow_symlinks=True)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, name, src_dir_fd=dst_dir_fd, dst_dir_fd=dst_dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dst_dir_fd)
        raise
    return True


# ---------------------------------------------------------------- removal


def retire_start_dirs(kernel_dir: str) -> list[OSError]:
    """Take a finished start's ``sock/`` and ``ro/`` away (renamed, so that the next start
    can make new ones at the same paths at once), then remove every ``trash-*``."""
    try:
        fd = open_dir(kernel_dir)
    except FileNotFoundError:
        return []
    except OSError as e:
        return [e]
    errors: list[OSError] = []
    try:
        for sub in (SOCKET_SUBDIR, SHARED_SUBDIR):
            try:
                os.rename(sub, trash_name(sub), src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as e:
                errors.append(_named(e, sub))
        for name in os.listdir(fd):
            if name.startswith(TRASH_PREFIX):
                errors += remove_tree_at(fd, name)
    finally:
        os.close(fd)
    return errors


def trash_name(sub: str) -> str:
    return f"{TRASH_PREFIX}{sub}-{os.urandom(4).hex()}"


def remove_tree(path: str) -> list[OSError]:
    """Remove ``path`` and everything below it without following any symlink; see
    :func:`remove_tree_at`. Every component above ``path`` must be the host's own."""
    parent, name = os.path.split(os.path.normpath(path))
    try:
        pfd = open_dir(parent or ".")
    except FileNotFoundError:
        return []
    except OSError as e:
        return [e]
    try:
        return remove_tree_at(pfd, name)
    finally:
        os.close(pfd)


def remove_tree_at(dir_fd: int, name: str) -> list[OSError]:
    """Remove ``name`` in ``dir_fd``, recursively; what could not be removed (empty: all).

    What a sandbox may have left there is hostile: symlinks (unlinked, never followed),
    FIFOs and devices (unlinked, never opened), trees deeper than Python's recursion
    limit (this walks iteratively, and moves subtrees deeper than ``_REMOVE_DEPTH`` up to
    the top before descending, so the number of descriptors held stays bounded), entries
    a dying sandbox adds meanwhile (a directory is listed again, a few times, until it is
    empty). Nothing on another filesystem is entered. Entries the caller may not remove
    (owned by a sandbox's other ids, without permissions) are reported, not retried: the
    caller may run this again where it has the rights (``nskernel.kernel.launch --remove``).
    """
    errors: list[OSError] = []
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return errors
    except OSError as e:
        return [e]
    if not stat.S_ISDIR(st.st_mode):
        _unlink(dir_fd, name, errors)
        return errors
    try:
        top = open_dir(name, dir_fd)
    except FileNotFoundError:
        return errors  # someone else (another sweep) was quicker
    except OSError as e:
        return [_named(e, name)]
    device = os.fstat(top).st_dev
    stack = [_Frame(top, name)]
    try:
        while stack:
            frame = stack[-1]
            if frame.pending is None:
                frame.passes += 1
                frame.pending = _clear_files(frame.fd, errors)
                if frame.pending is None:  # cannot even list it (reported)
                    os.close(stack.pop().fd)
                    continue
            if not frame.pending:
                parent = stack[-2].fd if len(stack) > 1 else dir_fd
                try:
                    os.rmdir(frame.name, dir_fd=parent)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno == errno.ENOTEMPTY and frame.passes < 3:
                        frame.pending = None  # something was added meanwhile: again
                        continue
                    errors.append(_named(e, frame.name))
                os.close(stack.pop().fd)
                continue
            sub = frame.pending.pop()
            if len(stack) >= _REMOVE_DEPTH:
                # Too deep to hold another descriptor: move the subtree up into the top
                # directory (a rename: same filesystem) and visit it from there.
                up = f".nsk-deep-{os.urandom(6).hex()}"
                try:
                    os.rename(sub, up, src_dir_fd=frame.fd, dst_dir_fd=top)
                    stack[0].pending.append(up)  # type: ignore[union-attr]
                except OSError as e:
                    errors.append(_named(e, sub))
                continue
            try:
                sfd = open_dir(sub, frame.fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):  # no longer a directory
                    _unlink(frame.fd, sub, errors)
                else:
                    errors.append(_named(e, sub))
                continue
            if os.fstat(sfd).st_dev != device:
                os.close(sfd)
                errors.append(OSError(errno.EXDEV, "another filesystem is mounted here", sub))
                continue
            stack.append(_Frame(sfd, sub))
    finally:
        for frame in stack:
            os.close(frame.fd)
    return errors


class _Frame:
    """A directory being removed: its descriptor, its name in the parent, and the
    subdirectories still to visit (None: not listed yet)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        self.pending: list[str] | None = None
        self.passes = 0


def _clear_files(fd: int, errors: list[OSError]) -> list[str] | None:
    """Unlink every non-directory in ``fd``; the names of its subdirectories (None if it
    cannot be listed)."""
    subdirs: list[str] = []
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                # Files go at once; a directory (or what turned into one) is visited.
                if is_dir or _unlink(fd, entry.name, errors) == errno.EISDIR:
                    subdirs.append(entry.name)
    except OSError as e:
        errors.append(e)
        return None
    return subdirs


def _unlink(dir_fd: int, name: str, errors: list[OSError]) -> int:
    """unlinkat; 0, or the errno (ENOENT is fine, EISDIR left to the caller)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    except IsADirectoryError:
        return errno.EISDIR
    except OSError as e:
        errors.append(_named(e, name))
        return e.errno or -1
    return 0


def _named(e: OSError, name: str) -> OSError:
    if e.filename is None:
        e.filename = name
    return e
