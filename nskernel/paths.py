"""Where nskernel keeps per-user runtime state (socket directories, server sockets).

Unix socket paths are limited to 107 bytes, so the base is short: the user's
$XDG_RUNTIME_DIR when it is usable, else /tmp. Each user gets a private 0700
directory ``nsk-<uid>``; everything nskernel creates at run time lives below it, so
stale state is easy to find and sweep (and the test suite's leak check looks there).
"""

from __future__ import annotations

import os


def runtime_dir() -> str:
    """The private per-user directory, created 0700 on first use."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
        base = "/tmp"
    path = os.path.join(base, f"nsk-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or (st.st_mode & 0o077):
            msg = f"{path} exists but is not a private directory of this user; remove it"
            raise PermissionError(msg) from None
    return path
