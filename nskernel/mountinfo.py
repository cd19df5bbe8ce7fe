"""Other paths that show a directory again: its aliases through bind mounts.

Homes and nskernel's runtime directories are hidden inside a sandbox by a mask on their
*path*. A bind mount shows the same directory at a second path (/home bound from
/data/home in fstab, ``mount --bind /home /var/tmp/x``, a scratch file system bound onto
/tmp); it is no symlink, so ``realpath`` does not see it, and a mask on the first path
leaves the second one open (15th red-team pass, F7; 14th, F4b). Here the aliases are
found by identity, from the host's /proc/self/mountinfo, read once per sandbox in the
launcher, before the sandbox's mount namespace is made (its copy of the mount tree is
the host's at that moment):

- the mount a path lies in gives its device (``major:minor``) and where it lies in that
  file system (the mount's root plus the rest of the path);
- every other mount of that device whose root is that location or above it shows the
  directory again, at its mount point plus the rest: mask there too;
- every other mount of that device whose root lies below it shows a part of the
  directory: mask its mount point whole;
- what is mounted below the path (an NFS home at /home/alice) is hidden by the mask
  too, so its other mounts are looked for the same way. (So a directory bound *into* a
  home, /srv/shared onto ~/shared, is hidden at its source too: mountinfo cannot tell
  which of two paths of one directory is the "real" one, and hiding errs on the safe side.)

Nothing is cached across sandboxes: a mount made or removed between two sandboxes
changes the answer. Measured: ~55 µs per sandbox with 20 mounts (~37 µs of it the
kernel writing mountinfo), ~1 ms with 500 (~0.6 ms of it the kernel's).

Every candidate is checked on the host before it is used: the alias of a directory must
be a directory (never a link: a mount onto a link would follow it) and the *same*
directory (``st_dev``/``st_ino``), so a mount hidden under another one stacked on top of
it, or under an ancestor mounted over later, yields nothing. What is masked is decided by
the caller (``sandbox._masks``): it never masks a system directory or the Python the
sandbox runs.

An overlayfs has a device of its own: its lower and upper directories (in its super
options) are compared with the masked paths instead.

Not covered: a mount made on the host after the sandbox started (the sandbox's mount
tree is private: nothing propagates into it), and other file systems that show a
directory of another one (a FUSE file system such as bindfs, an NFS export of a home
mounted back on the same host through the server).
Standard library only: the launcher imports this.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import namedtuple  # not typing.NamedTuple: typing costs ~2 ms to import
from collections.abc import Iterable, Sequence

MOUNTINFO = "/proc/self/mountinfo"

# The kernel writes space, tab, newline and backslash in paths as \ooo (show_path,
# mangle()); nothing else is escaped there.
_ESCAPE = re.compile(r"\\([0-7]{3})")
_BACKSLASHED = re.compile(r"\\(.)")


class Mount(namedtuple("Mount", "mount_id parent_id dev root mount_point layers", defaults=((),))):
    """One line of mountinfo, the fields that matter here (paths unescaped): ``dev`` is
    the file system's "major:minor" (btrfs: the same for every subvolume), ``root`` the
    directory of that file system shown at ``mount_point``, ``layers`` an overlayfs's
    lower and upper directories."""

    __slots__ = ()


class Alias(namedtuple("Alias", "path of whole")):
    """A path that shows (part of) ``of`` through another mount. ``of``: the masked
    directory, or the mount point below it, that it shows again. ``whole``: True when it
    shows a part of ``of`` (a mount point to cover whole), or ``of`` merged with other
    layers (overlayfs): checked to be a directory or file, not a link; False when it
    shows ``of`` itself, checked to be that very directory."""

    __slots__ = ()


def unescape(field: str) -> str:
    """A mountinfo path field as the path it is (``\\040`` is a space)."""
    if "\\" not in field:
        return field
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    """The mounts of a mountinfo text, in its order (a mount after its parent)."""
    # Per spawn, on every line (hundreds on a container host): kept to one split and
    # one tuple per line (tuple.__new__ skips the namedtuple constructor's Python code).
    new = tuple.__new__
    out = []
    # Lines end at "\n" only: the kernel escapes it (and space, tab, backslash) in paths,
    # but not "\x0b", "\x1c" or U+0085, where splitlines() would cut a line (and drop a
    # mount point named so: 16th red-team pass, F6).
    for line in text.split("\n"):
        if not line:
            continue
        f = line.split(" ", 5)
        if len(f) < 6:
            raise OSError(errno.EINVAL, f"a line of {MOUNTINFO} that is not one: {line!r}")
        if "\\" in line:
            f[3], f[4] = unescape(f[3]), unescape(f[4])
        layers = _overlay_layers(f[5]) if " - overlay " in f[5] else ()
        out.append(new(Mount, (f[0], f[1], f[2], f[3], f[4], layers)))
    return out


def _overlay_layers(rest: str) -> tuple[str, ...]:
    """The lowerdir and upperdir paths in an overlayfs line's super options (the kernel
    shows the option as given, with ``,``, white space and ``\\`` as ``\\ooo``)."""
    try:
        opts = rest.split(" - ", 1)[1].split(" ", 2)[2]
    except IndexError:
        return ()
    out: list[str] = []
    for opt in opts.split(","):
        key, _, value = opt.partition("=")
        if key in ("lowerdir", "upperdir", "lowerdir+", "datadir+"):
            # As given to mount(2), escaped for mountinfo: a "\\" in it escapes the
            # next character (a ":" within a path) there.
            if "\\" not in value:  # the common case, kept cheap (hundreds on a container host)
                out += value.split(":") if key != "upperdir" else [value]
                continue
            raw = unescape(value)
            parts = [raw] if key == "upperdir" else re.split(r"(?<!\\):", raw)
            out += [_BACKSLASHED.sub(r"\1", v) for v in parts if v]
    return tuple(out)


def _under(path: str, top: str) -> str | None:
    """The rest of ``path`` below ``top`` ("" for ``top`` itself), or None if not below."""
    if path == top:
        return ""
    if top == "/":
        return path[1:]
    if path.startswith(top) and path[len(top)] == "/":
        return path[len(top) + 1 :]
    return None


def _join(top: str, rest: str) -> str:
    if not rest:
        return top
    return top.rstrip("/") + "/" + rest


class _Tree:
    """Resolves which mount a path shows, as the kernel does: from the root mount, at
    each prefix of the path, step onto what is mounted there on the current mount (and
    onto what is stacked on that, at the same mount point: only the top one shows)."""

    def __init__(self, mounts: Sequence[Mount]) -> None:
        self.children: dict[tuple[str, str], Mount] = {}
        at_root: list[Mount] = []
        for m in mounts:
            self.children[(m[1], m[4])] = m  # (parent_id, mount_point)
            if m[4] == "/":
                at_root.append(m)
        # The root mount: the one at / whose parent is not listed (not another mount at
        # /, which it would be if it were stacked on that one).
        ids = {m.mount_id for m in at_root}
        self.root: Mount | None = next((m for m in at_root if m.parent_id not in ids), None)

    def resolve(self, path: str) -> Mount | None:
        cur = self.root
        if cur is None:
            return None
        prefixes = ["/"]
        acc = ""
        for part in path.split("/"):
            if part:
                acc += "/" + part
                prefixes.append(acc)
        for p in prefixes:
            while (nxt := self.children.get((cur.mount_id, p))) is not None:
                cur = nxt
        return cur


def alias_candidates(mounts: Sequence[Mount], paths: Iterable[str]) -> list[Alias]:
    """Every other path that shows one of ``paths`` (absolute, normalized, no links)
    or a mount below one of them again, from ``mounts`` alone (unchecked).

    An alias that lies in one of ``paths`` is left out: the mask there covers it.
    """
    paths = tuple(dict.fromkeys(paths))
    if not paths:
        return []
    tree = _Tree(mounts)
    # (device, location in that file system, the host path that shows it, the mount
    # it is seen through)
    secrets: list[tuple[str, str, str, Mount]] = []
    for p in paths:
        m = tree.resolve(p)
        if m is None:
            continue
        rest = _under(p, m.mount_point)
        if rest is None:  # cannot be: the mount was found along this path
            continue
        secrets.append((m.dev, _join(m.root, rest), p, m))
    covered = tuple(p.rstrip("/") + "/" for p in paths)
    overlays: list[Mount] = []
    for m in mounts:  # what is mounted below a masked path is masked with it
        if m[4].startswith(covered) and tree.resolve(m[4]) is m:
            secrets.append((m.dev, m.root, m.mount_point, m))
        elif m[5]:
            overlays.append(m)
    devs = {s[0] for s in secrets}
    by_dev: dict[str, list[Mount]] = {d: [] for d in devs}
    for m in mounts:
        if m[2] in devs:
            by_dev[m[2]].append(m)

    out: dict[str, Alias] = {}
    for dev, loc, shown_at, seen_through in secrets:
        for n in by_dev[dev]:
            if n is seen_through or n.mount_point in paths:
                continue
            if n.mount_point.startswith(covered):
                continue  # lies in a masked directory: covered by that mask
            rest = _under(loc, n.root)
            if rest is not None:
                alias = Alias(_join(n.mount_point, rest), shown_at, whole=False)
            elif _under(n.root, loc) is not None:
                alias = Alias(n.mount_point, shown_at, whole=True)
            else:
                continue
            if alias.path in paths or alias.path.startswith(covered):
                continue
            if tree.resolve(n.mount_point) is not n:
                continue  # under another mount: not seen there
            out.setdefault(alias.path, alias)
    # An overlayfs has a device of its own, but shows its layers: one whose lower or
    # upper directory is (in) a masked directory shows (a part of) it; one whose layer
    # lies above a masked directory shows it, merged, at its mount point plus the rest.
    shown = tuple(dict.fromkeys(s[2] for s in secrets))
    above: dict[str, list[str]] = {}  # each proper ancestor of a shown path -> those paths
    for p in shown:
        a = p
        while a != "/":
            a = os.path.dirname(a)
            above.setdefault(a, []).append(p)
    for o in overlays:
        if o.mount_point in paths:
            continue
        for layer in o.layers:
            if layer in shown or layer.startswith(covered):
                found = [Alias(o.mount_point, layer, whole=True)]
            elif layer in above:
                found = [
                    Alias(_join(o.mount_point, p[len(layer) :].lstrip("/")), p, whole=True)
                    for p in above[layer]
                ]
            else:
                continue
            if tree.resolve(o.mount_point) is o:
                for a in found:
                    out.setdefault(a.path, a)
    return list(out.values())


def _kind(path: str, ref: os.stat_result | None) -> str | None:
    """ "dir" or "file" for what is at ``path`` on the host, never following it; None
    for a link (a mount onto it would follow it), or, given ``ref``, anything other than
    that very inode. "file" is any other kind: a regular file, and a socket, a FIFO or a
    device bound out of a hidden directory (an agent's or the session bus's socket: 16th
    red-team pass, F9), each covered inside by an empty file."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    if ref is not None and (st.st_dev, st.st_ino) != (ref.st_dev, ref.st_ino):
        return None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


class Found(namedtuple("Found", "path of is_dir")):
    """An alias checked on the host: what to cover inside. ``of``: the masked directory,
    or the mount point below it, that it shows again; ``is_dir`` False: one file (or
    socket...) of ``of`` bound there, or bound into it."""

    __slots__ = ()


def aliases(paths: Iterable[str], mountinfo: str = MOUNTINFO) -> list[Found]:
    """The aliases of ``paths`` (host directories, absolute, no links) on this host now,
    each checked on the host: never a link, and a directory that shows a whole masked
    directory must be that very directory (``st_dev`` and ``st_ino``). A file is a bind
    mount of one file from a masked directory (a key bound elsewhere).

    Raises OSError when mountinfo cannot be read: the caller fails closed.
    """
    paths = [os.path.normpath(p) for p in paths]
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    out: list[Found] = []
    refs: dict[str, os.stat_result | None] = {}
    for a in alias_candidates(parse(text), paths):
        if a.whole:
            kind = _kind(a.path, None)
        else:
            if a.of not in refs:
                try:
                    refs[a.of] = os.stat(a.of)
                except OSError:
                    refs[a.of] = None
            ref = refs[a.of]
            kind = _kind(a.path, ref) if ref is not None else None
        if kind is not None:
            out.append(Found(a.path, a.of, kind == "dir"))
    return out
