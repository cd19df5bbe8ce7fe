"""A user's launcher in a delegated cgroup v2 subtree, with a sandbox that tries to lift
the limit of the cgroup it runs under (red team 18 F2).

    python delegated_cgroup.py MOUNT DELEGATED limits|starter SECCOMP

Run by ``tests/test_limits.py`` as an unprivileged user, after root made ``DELEGATED``
(a cgroup beneath the test's own, its ``cgroup.procs``, ``cgroup.subtree_control`` and
``cgroup.threads`` chowned to the user, as systemd delegates one) and moved this process
into it (it waits for "go" on stdin). ``MOUNT`` is where cgroup2 is mounted. Prints one
JSON line: the limit as the host reads it after the sandbox had its go, the mechanism
nskernel reported, and what the sandbox printed.

- ``limits``: ``nskernel``'s own limit cgroup, made by ``limits.create_from_parent``. This
  machine binds pids/memory/cpu to cgroup v1, so the v2 mount has no such controller:
  the discovery is pointed at ``DELEGATED`` and ``pids.max`` is stood in for by
  ``cgroup.max.descendants``, a core file of every cgroup, of the same kind (made with
  the cgroup, owned by its maker, i.e. the user = sandbox root). ``--pids 3``.
- ``starter``: no limit asked; the sandbox stays in its starter's cgroup, one the user
  made (``DELEGATED/app``, as a systemd user manager makes every unit's), whose
  ``cgroup.max.descendants`` the user set to 3.

Inside, the sandbox makes a cgroup namespace of its own, mounts cgroup2, moves into a
child and makes a second cgroup namespace (so that ``nsdelegate`` would not stop the
write either) and writes 1000 into the file at the root of its mount.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

INSIDE = r"""
mkdir -p /tmp/cg
unshare -C sh -ec '
  mount -t cgroup2 none /tmp/cg
  mkdir /tmp/cg/deeper
  echo $$ > /tmp/cg/deeper/cgroup.procs
  unshare -C sh -c "echo 1000 > /tmp/cg/cgroup.max.descendants"
  echo "wrote 1000; the root of the mount now says $(cat /tmp/cg/cgroup.max.descendants)"
'
"""


def _patch_discovery(mount: str, delegated: str) -> None:
    from nskernel._linux import limits

    rel = "/" + os.path.relpath(delegated, mount)
    limits._v2_mount = lambda: mount  # type: ignore[attr-defined]
    limits._own_cgroups = lambda: {"": rel}  # type: ignore[attr-defined]
    real_open = open

    def open_(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        path = os.fspath(path)
        if path == os.path.join(delegated, "cgroup.subtree_control") and "r" in mode:
            return io.StringIO("pids\n")  # as if the pids controller were delegated
        if os.path.basename(path) == "pids.max":
            path = os.path.join(os.path.dirname(path), "cgroup.max.descendants")
        return real_open(path, mode, *args, **kwargs)

    limits.open = open_  # type: ignore[attr-defined]


def _run_sandbox(spec, limit_file_of) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from nskernel import Sandbox

    r, w = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        sb = Sandbox.spawn(
            spec, ["sh", "-c", INSIDE + "echo done; exec sleep 60"], stdio=(null, w, w)
        )
    finally:
        os.close(w)
        os.close(null)
    try:
        out = b""
        deadline = time.monotonic() + 30
        while b"done\n" not in out and time.monotonic() < deadline:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            out += chunk
        with open(limit_file_of(sb)) as f:
            limit = f.read().strip()
        mechanism = sb.limits.mechanism.get("pids")
    finally:
        sb.kill()
        os.close(r)
    return {"limit": limit, "mechanism": mechanism, "inside": out.decode(errors="replace")}


def main(argv: list[str]) -> int:
    mount, delegated, mode, seccomp = argv
    if sys.stdin.readline() != "go\n":  # root moves this process into DELEGATED first
        return 1
    from nskernel import SandboxSpec
    from nskernel.spec import make_limits

    if mode == "limits":
        _patch_discovery(mount, delegated)
        spec = SandboxSpec.from_flags((), limits=make_limits(pids="3"), seccomp=seccomp)

        def limit_file_of(sb):  # type: ignore[no-untyped-def]
            (d,) = sb.limits.cgroup_dirs
            return os.path.join(d, "cgroup.max.descendants")

        result = _run_sandbox(spec, limit_file_of)
    else:
        app = os.path.join(delegated, "app")
        os.mkdir(app)
        try:
            with open(os.path.join(app, "cgroup.max.descendants"), "w") as f:
                f.write("3")
            with open(os.path.join(app, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            spec = SandboxSpec.from_flags((), seccomp=seccomp)
            result = _run_sandbox(spec, lambda sb: os.path.join(app, "cgroup.max.descendants"))
        finally:
            with open(os.path.join(delegated, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            # What the sandbox made in it, and ``app`` itself, the test removes.
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
