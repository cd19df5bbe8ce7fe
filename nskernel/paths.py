"""Where nskernel keeps per-user runtime state (socket directories, server sockets).

Unix socket paths are limited to 107 bytes, so the base is short: the user's
$XDG_RUNTIME_DIR when it is usable, else /tmp. Each user gets a private 0700
directory ``nsk-<uid>``; everything nskernel creates at run time lives below it, so
stale state is easy to find and sweep (and the test suite's leak check looks there).
"""

from __future__ import annotations

import os


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


def existing_runtime_dirs() -> list[str]:
    """The runtime directories of this user that exist, without creating or checking any.

    Inside a user namespace (the rootless sandbox server) the effective uid is 0, but
    the state on disk is under the host uid: both are considered.
    """
    base = _base()
    found = []
    for uid in dict.fromkeys((os.geteuid(), _host_uid())):
        path = os.path.join(base, f"nsk-{uid}")
        if os.path.isdir(path):
            found.append(path)
    return found


def runtime_dir_path() -> str:
    """Where the per-user directory is (or would be); nothing is created."""
    return os.path.join(_base(), f"nsk-{os.geteuid()}")


def remove_runtime_entry(path: str) -> None:
    """Remove ``path`` (below the runtime dir), then the runtime dir if that left it empty.

    Nothing of nskernel's stays behind once its last kernel or server is gone.
    """
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # not empty: another kernel still uses it (or it is already gone)


def runtime_dir() -> str:
    """The private per-user directory, created 0700 on first use."""
    path = runtime_dir_path()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or (st.st_mode & 0o077):
            msg = f"{path} exists but is not a private directory of this user; remove it"
            raise PermissionError(msg) from None
    return path
