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

import os
import stat

from .._linux import idmap
from .._linux import syscalls as sc
from .._record import factory, record
from ..spec import blocked_ancestor


@record(frozen=True)
class Expose:
    """Make ``path`` reachable at the same path; idmap its owner to ``owner_to`` ids.

    ``writable``: the caller wants to bind it read-write; then a tree of root's is never
    idmapped (sandbox root must not write as host root), which the result reports.
    """

    path: str
    owner_to: tuple[int, int] | None = None  # (host uid, host gid) the owner should become
    writable: bool = False


@record
class Exposed:
    warnings: list[str] = factory(list)
    # Paths asked for writable that must be bound read-only: what the clone showed (one
    # lookup, checked on the clone itself) is root's or not idmappable.
    read_only: set[str] = factory(set)


def expose_in_private_mount_namespace(items: list[Expose], sandbox_uid: int) -> Exposed:
    """Enter a private mount namespace and prepare ``items`` there."""
    result = Exposed()
    warnings = result.warnings
    sc.unshare(sc.CLONE_NEWNS)
    # Before anything else: nothing mounted here may propagate back to the host.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)

    clones: list[tuple[str, int]] = []
    for item in items:
        fd = -1
        if item.owner_to is not None:
            try:
                # Read-only use may show root's tree as sandbox root's (so it can enter
                # and read it); the sandbox binds it read-only.
                fd = idmap.owned_clone(item.path, item.owner_to, read_only=not item.writable)
            except idmap.IdmapRefused as e:
                warnings.append(
                    f"nskernel: {e}: it stays read-only inside (sandbox root is never host "
                    "root); to write next to the notebooks, give the directory to an "
                    "unprivileged user (chown) or run Jupyter as that user"
                )
                result.read_only.add(item.path)
            except OSError as e:
                warnings.append(idmap.refused(item.path, e, "run Jupyter as the notebook's owner"))
                result.read_only.add(item.path)
        if fd < 0:
            fd = idmap.open_tree_clone(item.path)
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
            idmap.move_mount(fd, path)
        finally:
            os.close(fd)
    return result
