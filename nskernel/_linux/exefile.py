"""The one host file a forked sandbox still holds: its executable (``/proc/self/exe``).

A process forked into a sandbox (every ``%%sandbox`` cell from the sandbox server, the
in-process sandboxed kernel, ``Sandbox.spawn(target=...)``) keeps its parent's
executable, and ``/proc/self/exe`` opens that file on the mount it was started from: the
host's, past the sandbox's read-only root. Its content cannot be written while it runs
(ETXTBSY), but whoever owns it may chmod, chown, set its extended attributes and times.
Rootless, sandbox root is the user, so an interpreter the user owns (conda, uv, pyenv,
``venv --copies``) was the sandbox's to make setuid, world-writable or unusable
(fourteenth red-team pass). ``exec`` inside the sandbox is not affected: the file is
then opened through the sandbox's read-only root.

So a process forks sandboxes only when :func:`safe_to_fork` says so; the sandbox server
otherwise re-executes itself once through a read-only view of its interpreter
(:func:`reexec_read_only`), and the kernel launcher execs the kernel inside instead of
forking it.
"""

from __future__ import annotations

import functools
import os
import sys

from . import idmap, syscalls, userns

_EXE = "/proc/self/exe"


def safe_to_fork() -> bool:
    """Whether a sandbox forked from this process cannot change this process's
    executable: it lies on a read-only mount (every change fails with EROFS), or, seen
    from the host's user namespace, it belongs to host root, which sandbox root never is.
    Anything else (another owner, or a user namespace where the owner cannot be told
    for sure) is not."""
    try:
        if os.statvfs(_EXE).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return _owned_by_host_root()


def look_before_entering_a_user_namespace() -> None:
    """Whoever enters a user namespace of its own (the sandbox server) looks first: in
    there, host root's files show as the overflow uid, and the owner cannot be told."""
    _owned_by_host_root()


@functools.cache
def _owned_by_host_root() -> bool:
    # Remembered from the first look (the sandbox server looks before it enters its user
    # namespace, where host root's files show as the overflow uid): a process's
    # executable stays the same file until it execs, which starts this module afresh.
    try:
        return userns.in_initial_user_namespace() and os.stat(_EXE).st_uid == 0
    except OSError:
        return False


def reexec_read_only(argv: list[str]) -> None:
    """Run this program again, from a read-only view of its executable: in a new mount
    namespace (which this process, root of its own user namespace, may make), the
    executable's file is bound read-only over itself, and ``argv`` is executed. Every
    sandbox later forked from it holds that read-only mount. Does not return."""
    exe = os.path.realpath(_EXE)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    # Mounts made on the host later still reach this view (a slave); none go back.
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_SLAVE)
    tree = idmap.open_tree_clone(exe)
    try:
        syscalls.mount_setattr_readonly_fd(tree)
        idmap.move_mount(tree, exe)
    finally:
        os.close(tree)
    # sys.executable is the path as started (a venv's bin/python, a link to ``exe``):
    # Python finds its environment from it. It leads to the file just covered.
    os.execv(sys.executable, argv)
