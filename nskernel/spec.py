"""What a sandbox should be: a plain, validated description.

Everything that can be decided without privileges is decided here, before any fork:
which namespaces, the hostname, the binds and their paths. The privileged layer
(``nskernel._linux``) only carries out a spec that is already known to be valid.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

from ._linux.limits import Limits
from ._record import factory, record, replace
from .errors import SpecError

ALL_NAMESPACES: tuple[str, ...] = ("pid", "net", "mnt", "uts", "ipc", "user")

# Directories a sandbox with its own mounts gets fresh and empty.
PRIVATE_DIRS: tuple[str, ...] = ("/tmp", "/dev/shm")
# Where people keep what code in a sandbox must not read (SSH keys, tokens, browser
# profiles, other kernels' connection files, session sockets): covered by an empty
# tmpfs inside, unless the caller asks to share them (--share-home). The caller's own
# $HOME gets a fresh, private, writable directory there.
HOME_DIRS: tuple[str, ...] = ("/home", "/root", "/run/user")
# Local accounts from this uid up are people (login.defs' UID_MIN); root is one too.
UID_MIN = 1000
# Never masked, whatever an account names as its home: the system itself lives there.
_SYSTEM_DIRS = frozenset(
    {"/", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr", "/etc", "/var", "/opt",
     "/srv", "/proc", "/sys", "/dev", "/boot", "/run", "/tmp", "/mnt", "/media"}
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _local_account_homes() -> tuple[str, ...]:
    """The homes of root and of the local accounts of people (``/etc/passwd``)."""
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    homes = []
    for line in lines:
        fields = line.split(":")
        if len(fields) < 7 or not fields[2].isdigit():
            continue
        uid = int(fields[2])
        if uid == 0 or UID_MIN <= uid < 65534:
            homes.append(fields[5])
    return tuple(homes)


def user_homes(home: str | None = None) -> tuple[str, ...]:
    """Every home a sandbox must not see, beyond :data:`HOME_DIRS`: the caller's (``home``,
    else its passwd entry's) and every local person's (a home outside /home, such as
    /srv/alice, or another user's when root runs the sandbox), each both as named and as
    its real path (a home reached through a symlink is the directory it points to)."""
    if not home:
        home = _passwd_home()
    found: list[str] = []
    for h in (*HOME_DIRS, *_local_account_homes(), *((home,) if home else ())):
        if not os.path.isabs(h):
            continue
        for p in (os.path.normpath(h), os.path.realpath(h)):
            if p not in _SYSTEM_DIRS and p not in found and not _holds_system(p):
                found.append(p)
    return tuple(d for d in found if d not in HOME_DIRS)


def _holds_system(path: str) -> bool:
    """Whether hiding ``path`` would hide this Python (a home that is an ancestor of it)."""
    prefix = path.rstrip("/") + "/"
    return any(p.startswith(prefix) for p in {sys.prefix, sys.base_prefix})


def _dirs_holding_links(path: str) -> list[str]:
    """The real directories holding each symbolic link met while ``path`` is resolved,
    links inside links' targets included (at most 40, the kernel's own limit)."""
    out: list[str] = []
    for _ in range(40):
        parts = os.path.normpath(path).split("/")[1:]
        cur = "/"
        for i, name in enumerate(parts):
            nxt = os.path.join(cur, name)
            if os.path.islink(nxt):
                out.append(cur)  # no link before it: a real path
                try:
                    target = os.readlink(nxt)
                except OSError:
                    return out
                path = os.path.normpath(os.path.join(cur, target, *parts[i + 1 :]))
                break
            cur = nxt
        else:
            return out
    return out


def _python_place(path: str) -> bool:
    """Whether hiding ``path`` would hide some of this Python: it is its environment, lies
    in it, or holds it (red team 27 F4: a token file in the venv's own directory hid
    the whole environment)."""
    prefixes = {sys.prefix, sys.base_prefix}
    inside = any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)
    return inside or _holds_system(path)


def _passwd_home() -> str | None:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return None


@record(frozen=True)
class Lookup:
    """How ``path`` resolves: ``dirs``, the directories (real paths) its components are
    looked up in, symbolic links followed; ``links``, those among them where a link was
    found; ``real``, what it resolves to."""

    dirs: tuple[str, ...]
    links: tuple[str, ...]
    real: str


def lookup(path: str, max_links: int = 40) -> Lookup:
    """Resolve ``path`` component by component (see :class:`Lookup`).

    Whoever can write one of ``dirs`` can replace what is found there: a link to the
    environment a host-side Python runs from (``.venv -> /opt/env``) is as much a place
    that Python loads code from as the environment itself, though neither ``realpath``
    nor the path as written shows it.
    """
    pending = [p for p in os.path.abspath(path).split("/") if p][::-1]
    current, dirs, links, hops = "/", [], [], 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        dirs.append(current)
        nxt = os.path.join(current, name)
        try:
            target = os.readlink(nxt)
        except OSError:  # not a link (or not there): go on below it
            current = nxt
            continue
        links.append(current)
        hops += 1
        if hops > max_links:
            break
        if target.startswith("/"):
            current = "/"
        pending += [p for p in target.split("/") if p][::-1]
    return Lookup(tuple(dirs), tuple(links), current)


def jupyter_code_places() -> list[tuple[str, str]]:
    """Where Jupyter and IPython take code and config from (kernelspecs, server and kernel
    config files, startup files), each entry of their search paths: what is planted there
    runs at the next kernel or server start."""
    places: list[tuple[str, str]] = []
    with contextlib.suppress(Exception):  # Jupyter or IPython not installed: none
        from jupyter_core.paths import jupyter_config_path, jupyter_path

        places += [(p, "Jupyter's config path: server and kernel config") for p in
                   jupyter_config_path()]  # fmt: skip
        places += [(p, "Jupyter's data path: kernelspecs") for p in jupyter_path()]
    with contextlib.suppress(Exception):  # Jupyter or IPython not installed: none
        from IPython.paths import get_ipython_dir

        places.append((get_ipython_dir(), "the IPython directory: startup files, config"))
    if os.environ.get("PYTHONSTARTUP"):
        places.append((os.environ["PYTHONSTARTUP"], "PYTHONSTARTUP"))
    return places


def code_places(extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Where this process's Python, and the Jupyter and IPython it belongs to, load code
    from, with why: ``extra`` (the caller's own, e.g. a kernel's start directory) first;
    and where it, and the user's shell, run programs from by name (:func:`path_code_places`)."""
    places = list(extra)
    places += [(sys.executable, "its Python"), (sys.prefix, "its environment")]
    places += [(entry, "on sys.path") for entry in sys.path if entry]
    pythonpath = os.environ.get("PYTHONPATH", "")
    places += [(entry, "on PYTHONPATH") for entry in pythonpath.split(os.pathsep) if entry]
    with contextlib.suppress(Exception):  # even one not made yet: Python reads it at start
        import site

        places.append((site.getusersitepackages(), "the user site: .pth and usercustomize"))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    places.append((cache, "the cache directory: completion caches are unpickled from it"))
    places += jupyter_code_places()
    places += path_code_places()
    return places


# Marks the places programs are run from by name (``!git``, ``subprocess.run(["pip"])``,
# the user's shell), so that a refusal says "runs programs from", not "imports code from".
ON_PATH = "on PATH"
# What Debian's and Ubuntu's ~/.profile put first on a login shell's PATH when they exist:
# a kernel started from a desktop launcher may not have them, the user's terminal does.
PROFILE_BIN_DIRS: tuple[str, ...] = ("~/bin", "~/.local/bin")


def path_code_places(path: str | None = None) -> list[tuple[str, str]]:
    """Where this process runs programs from by name: each entry of ``path`` (default: its
    own $PATH), and the user's ``~/bin`` and ``~/.local/bin``, each with why.

    A program planted there (``git``, ``pip``, ``ls``) runs outside every sandbox the next
    time the kernel runs ``!git status``, a library calls ``subprocess.run(["git", ...])``
    or the user types the name in a shell (15th red-team pass, F4). A relative or empty
    entry is looked up from whatever directory the process is in: it counts from the
    present one (the kernel's others are code places already). System directories count
    too: ``--bind /usr/local/bin`` as root would let a sandbox replace root's programs.
    """
    entries = (os.environ.get("PATH", "") if path is None else path).split(os.pathsep)
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # removed under it: relative entries lead nowhere
        cwd = None
    places: list[tuple[str, str]] = []
    for entry in entries:
        if os.path.isabs(entry):
            places.append((os.path.normpath(entry), ON_PATH))
        elif cwd is not None:
            why = f"{ON_PATH} as {entry or '(empty)'!r}, relative to where it runs"
            places.append((os.path.normpath(os.path.join(cwd, entry)), why))
    for d in PROFILE_BIN_DIRS:
        full = os.path.expanduser(d)
        if os.path.isabs(full):
            places.append((full, f"{ON_PATH} of a login shell: {d}, from ~/.profile"))
    return places


# The walk below a writable bind's source for ``.git``: at most this many directory entries
# and this many levels. 10,000 entries (1,000 directories of 9 files, warm cache) took 17 ms
# on the 2-core test VM: 20,000 keeps a cell with such a bind within ~35 ms and covers a
# directory of a few source checkouts (their .git makes it refused first anyway);
# a tree of datasets beyond it suits --ro-bind, or a subdirectory for the output, better.
# Depth bounds the descriptors held open (one per level).
GIT_WALK_BUDGET = 20_000
GIT_WALK_DEPTH = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class GitWalkTooBig(Exception):
    """A writable bind's source holds more (or deeper) entries than the ``.git`` walk
    looks through."""


def git_below(
    source: str, budget: int = GIT_WALK_BUDGET, depth: int = GIT_WALK_DEPTH
) -> str | None:
    """The first ``.git`` (directory, file or link) at or below the directory ``source``;
    None when there is none. Raises :class:`GitWalkTooBig` when ``source`` holds more than
    ``budget`` entries or directories ``depth`` levels down: then there is no answer.

    git runs the config and hooks of the repository a command runs in (``core.fsmonitor``,
    ``core.pager``, ``hooks/``) for whoever runs it, outside any sandbox; a ``.git`` file
    (a submodule's, a worktree's) names the directory it takes them from. Links are never
    followed: the source is opened one component at a time, each directory below relative
    to its parent, all ``O_NOFOLLOW``, so one swapped for a link meanwhile is skipped, not
    entered. Another filesystem mounted below is not walked, only its top is looked at
    (the bind carries it, but a mounted dataset or network share must not make every cell
    slow). A directory that cannot be listed is looked into by name, as git does.
    """
    from ._linux import syscalls as sc  # ctypes: only when there is a writable bind

    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        top = sc.open_no_symlinks_beneath(root, source, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a file, gone, or a link now: nothing to walk (the mount fails)
        return None
    finally:
        os.close(root)
    dev = os.fstat(top).st_dev
    seen = 0

    def look(fd: int, path: str) -> list[str]:
        """The subdirectories of ``fd`` to walk; returns after counting its entries."""
        nonlocal seen
        try:
            with os.scandir(fd) as it:
                entries = list(it)
        except OSError:  # not listable, maybe searchable: git finds .git by name
            if _has_git(fd):
                raise _Found(os.path.join(path, ".git")) from None
            return []
        seen += len(entries)
        if seen > budget:
            raise GitWalkTooBig(f"more than {budget} entries")
        names = [e.name for e in entries]
        if ".git" in names:
            raise _Found(os.path.join(path, ".git"))
        if _GIT_DIR_ENTRIES.issubset(names) and ("refs" in names or "commondir" in names):
            raise _Found(path)  # a git directory itself: a bare repository, a gitdir
        subs = []
        for e in entries:
            with contextlib.suppress(OSError):  # gone meanwhile: nothing below it
                if e.is_dir(follow_symlinks=False):
                    subs.append(e.name)
        return subs

    stack: list[tuple[int, str, Iterator[str]]] = []
    try:
        try:
            first = look(top, source)
        except BaseException:
            os.close(top)  # not on the stack yet: closed here, found or not
            raise
        stack.append((top, source, iter(first)))
        while stack:
            fd, path, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(stack.pop()[0])
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # swapped for a link, or removed, meanwhile
                continue
            sub = os.path.join(path, name)
            if os.fstat(child).st_dev != dev:
                git = _has_git(child)
                os.close(child)
                if git:
                    raise _Found(os.path.join(sub, ".git"))
                continue
            if len(stack) >= depth:
                os.close(child)
                raise GitWalkTooBig(f"directories more than {depth} levels down")
            try:
                subs = look(child, sub)
            except BaseException:
                os.close(child)
                raise
            stack.append((child, sub, iter(subs)))
    except _Found as found:
        return found.path
    finally:
        for fd, _path, _names in stack:
            os.close(fd)
    return None


def home_dot_entry_holding(path: str) -> str | None:
    """The top-level dot-entry of a home (``~/.config``, ``~/.cargo``) that ``path`` is or
    lies in, or the home itself when ``path`` is one; None otherwise. Homes as
    :func:`is_a_home` knows them, by real path (16th red-team pass, F8: a writable bind
    of ``~/.cargo`` let a sandbox plant the ``env`` file a login shell sources)."""
    real = os.path.realpath(path)
    home = os.environ.get("HOME")
    homes = {os.path.realpath(h) for h in (*user_homes(home), "/root", home or "") if h}
    ids = set()
    for h in homes:
        if not os.path.isabs(h):
            continue
        if real == h:
            return h
        prefix = h.rstrip("/") + "/"
        if real.startswith(prefix) and real[len(prefix) :].startswith("."):
            return prefix + real[len(prefix) :].split("/")[0]
        with contextlib.suppress(OSError):
            st = os.stat(h)
            ids.add((st.st_dev, st.st_ino))
    # And by identity: a bind mount shows a home at a second path, which no realpath
    # leads back to (16th red-team pass, F10).
    below = ""
    d = real
    while True:
        try:
            st = os.stat(d)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) in ids:
            if not below:
                return d
            return os.path.join(d, below) if below.startswith(".") else None
        parent = os.path.dirname(d)
        if parent == d:
            return None
        below = os.path.basename(d)
        d = parent


# What makes a directory a git directory to git itself (setup.c, is_git_directory):
# HEAD, objects/, and refs/ (or a commondir file): a bare repository (a local backup
# remote), a `--separate-git-dir`, a repository's own .git (16th red-team pass, F3).
_GIT_DIR_ENTRIES = frozenset({"HEAD", "objects"})


def git_dir_holding(path: str) -> str | None:
    """The git directory ``path`` is, or lies in (an ancestor named .git, or one git
    takes for a git directory), looked up by name without following links; or None."""
    d = os.path.normpath(path)
    while True:
        if os.path.basename(d) == ".git" or _is_git_dir(d):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _is_git_dir(d: str) -> bool:
    def there(name: str) -> bool:
        return os.path.lexists(os.path.join(d, name))

    return there("HEAD") and there("objects") and (there("refs") or there("commondir"))


class _Found(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


def _has_git(fd: int) -> bool:
    """Whether the directory ``fd`` has a ``.git``, looked up by name, no link followed."""
    try:
        os.stat(".git", dir_fd=fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def writable_bind_over_code(
    binds: Iterable[Bind], places: Callable[[], Iterable[tuple[str, str]]], who: str
) -> str | None:
    """Why a writable bind must be refused: the sandbox could plant code that ``who`` (or
    a later Python, git, Jupyter) runs outside every sandbox; None when it may be made.

    Each bind's source (a real path) is compared with what every place resolves to and
    with every directory it is looked up in on the way (:func:`lookup`: a link there,
    e.g. ``.venv -> /opt/env``, could be replaced by one of the sandbox's); a source that
    holds a ``.git`` at any depth is refused too (git runs its hooks and config on the
    host; :func:`git_below`), and so is one too big to look through (what cannot be
    checked is not handed to a sandbox to write).
    ``places`` is asked only when there is a writable bind: most sandboxes have none, and
    finding the places costs imports (Jupyter's, IPython's) and a lookup each.
    """
    writable = [b for b in binds if not b.readonly]
    if not writable:
        return None
    checks = [(p, lookup(p), why) for p, why in places()]
    for b in writable:
        src = b.source
        advice = (
            "Bind a subdirectory for what the sandbox writes (e.g. --bind ./output), or use "
            f"--ro-bind {src}"
        )
        for place, found, why in checks:
            if not any(within(d, src) for d in (*found.dirs, found.real)):
                continue
            if why.startswith(ON_PATH):
                return (
                    f"--bind {src}: {who}, or your shell, runs programs from {place} ({why}), "
                    "so a program a sandbox put there (a `git`, a `pip`) would run outside "
                    "any sandbox the next time either runs that name. Use --ro-bind "
                    f"{src}, or bind a directory that is not on PATH and holds none for "
                    "what the sandbox writes (e.g. --bind ./output)"
                )
            return (
                f"--bind {src}: {who} imports code from {place} ({why}), so code a "
                f"sandbox wrote there would run outside any sandbox. {advice}"
            )
        dot = home_dot_entry_holding(src)
        if dot is not None:
            return (
                f"--bind {src}: it is, or lies in, {dot}, a home's dot-entry, where programs "
                "keep what they run or load on the host (a login shell's start-up files, "
                "~/.cargo/env, ~/.ssh/config, ~/.config/git/config, pickled caches), so what "
                f"a sandbox wrote there would run outside any sandbox. Use --ro-bind {src}, "
                "or bind a directory of your own for what the sandbox writes"
            )
        inside = git_dir_holding(src)
        if inside is not None:
            return (
                f"--bind {src}: it is, or lies in, a git directory ({inside}), whose hooks "
                f"and config git runs for whoever uses it, outside any sandbox. {advice}"
            )
        try:
            git = git_below(src, GIT_WALK_BUDGET, GIT_WALK_DEPTH)
        except GitWalkTooBig as e:
            return (
                f"--bind {src}: it holds {e}, too many to look through for git "
                "repositories (.git), whose hooks and config git runs for whoever uses "
                f"them, outside any sandbox; so it is not made writable. {advice}"
            )
        if git is not None:
            return (
                f"--bind {src}: it holds a git repository ({git}), whose hooks and config "
                f"git runs for whoever uses it, outside any sandbox. {advice}"
            )
    return None


def within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or lies below it (both real, absolute paths)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def is_a_home(path: str, home: str | None = None) -> bool:
    """Whether ``path`` is a home (the caller's or a local person's), by its real path.

    /root too, and ``home`` even when it is one of :data:`HOME_DIRS` (which
    ``user_homes`` leaves out, as they are masked whole): a notebook kept in /root (a
    container's Jupyter running as root) is a home like any other, its dot-files and all
    (15th red-team pass: as root, such a cell did not start; as root of a rootless
    container, it would have seen every dot-file)."""
    real = os.path.realpath(path)
    homes = (*user_homes(home), "/root", *((home,) if home and os.path.isabs(home) else ()))
    if any(real == os.path.realpath(h) for h in homes):
        return True
    # And by identity: a bind mount shows a home at a second path (/data/home/u for
    # /home/u), which no realpath leads back to (16th red-team pass, F1).
    try:
        st = os.stat(real)
    except OSError:
        return False
    for h in homes:
        try:
            if os.path.samestat(st, os.stat(h)):
                return True
        except OSError:
            continue
    return False


def holds_a_home(path: str, home: str | None = None) -> bool:
    """Whether a home lies below ``path`` (``/``, ``/home``, ``/srv`` holding /srv/alice)."""
    real = os.path.realpath(path).rstrip("/") + "/"
    return any(
        os.path.realpath(h).startswith(real) or h.startswith(real)
        for h in (*HOME_DIRS, *user_homes(home))
    )


def private_runtime_dirs() -> tuple[str, ...]:
    """$XDG_RUNTIME_DIR, by real path, where it is what the XDG spec says it is: a
    directory of this user's alone (0700). It holds the session's sockets (D-Bus, whose
    systemd --user runs commands on the host; ssh-agent, gpg-agent, keyrings), as
    /run/user/UID does, and is hidden as that is, wherever a site puts it (15th red-team
    pass: XDG_RUNTIME_DIR=/var/tmp/...). One that is not private (/tmp) is not."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg or not os.path.isabs(xdg):
        return ()
    real = os.path.realpath(xdg)
    if real in _SYSTEM_DIRS:
        return ()
    try:
        st = os.stat(real)
    except OSError:
        return ()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return ()
    return (real,)


def jupyter_runtime_dirs(
    also: Sequence[str] = (), bind_sources: Sequence[str] = ()
) -> tuple[tuple[str, ...], list[str]]:
    """Jupyter's runtime directories, by real path, and warnings for those left visible.

    They hold a server's token and URL (``jpserver-PID.json``), the secret that signs its
    login cookies, and every kernel's connection file with its key: a sandbox must not
    read them. Under a home they are hidden with it, but Jupyter puts them wherever
    ``JUPYTER_RUNTIME_DIR`` or ``JUPYTER_DATA_DIR`` say (containers and hubs set them to
    /srv, /opt, /work...), where they were visible read-only (red team 22). So every
    sandbox hides them as it hides nskernel's own runtime directory: each place
    ``jupyter_core.paths.jupyter_runtime_dir()`` may choose from this environment, and
    ``also`` (the sandboxed kernel's launcher passes the server's, whose environment it
    does not have). A system directory, or one holding this Python, is never hidden:
    a warning says so instead. /tmp and /dev/shm themselves (jupyter_client writes a
    connection file to /tmp when it was given none, as nbclient and papermill do) are
    private inside: a warning only when one of ``bind_sources`` (real paths) shows them.
    """
    env = os.environ
    data_home = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or "/", ".local/share")
    candidates = [
        env.get("JUPYTER_RUNTIME_DIR"),
        os.path.join(env["JUPYTER_DATA_DIR"], "runtime") if env.get("JUPYTER_DATA_DIR") else None,
        os.path.join(data_home, "jupyter", "runtime"),
        *also,
    ]
    found: list[str] = []
    warnings: list[str] = []
    # What the environment names explicitly (relative: from the working directory).
    named = {os.path.abspath(c) for c in candidates[:2] if c}
    for path in candidates:
        if not path:
            continue
        path = os.path.abspath(path)  # relative: as Jupyter, from the working directory
        if path in named and not os.path.lexists(path):
            # Made now (0700, as Jupyter makes it), so that the cover is on the directory
            # a server started later writes its token into (red team 28 F3), as with
            # nskernel's own runtime directory.
            with contextlib.suppress(OSError):
                os.makedirs(path, mode=0o700)
        real = os.path.realpath(path)
        if not os.path.isdir(real) or real in found:
            continue
        if real in PRIVATE_DIRS:
            shown_by = [b for b in bind_sources if within(real, b)]
            if shown_by:
                warnings.append(
                    f"{real} is Jupyter's runtime directory (servers' tokens, kernels' keys) "
                    f"and the bind of {shown_by[0]} shows it inside. Point "
                    "JUPYTER_RUNTIME_DIR at a directory of its own."
                )
            continue  # else private inside: a fresh one at its path, and no bind shows it
        # Under /tmp too: private at its own path inside, but a bind of a directory
        # there (a notebook's directory /tmp/proj) shows it again (red team 26 F1).
        if real in _SYSTEM_DIRS or _python_place(real):
            warnings.append(
                f"{real} is Jupyter's runtime directory (servers' tokens, kernels' keys) and "
                "is not hidden inside: it is a system directory or holds this Python. Point "
                "JUPYTER_RUNTIME_DIR at a directory of its own."
            )
            continue
        found.append(real)
    return tuple(found), warnings


def jupyter_secret_files(
    also: Sequence[str] = (),
) -> tuple[dict[str, list[str]], tuple[str, ...], list[str]]:
    """Where a Jupyter server's secret files are, to hide: (directories, each with the
    secret files in it; files to hide alone; warnings).

    The files: the token file this environment names (``JUPYTER_TOKEN_FILE``) and
    ``also`` (the sandboxed kernel's launcher passes the server's cookie secret file,
    token file and unix socket; the %%sandbox server, the kernel's token file). Each is
    hidden with its directory, by real path, both the one it is named in and the one it
    really lies in (red teams 24 F3, 25, 26): an empty file on the file alone went away
    when the file was replaced (a rename over it), and Kubernetes, which mounts secrets
    as links into ``..data/``, moves them to a new directory on every update. A
    directory that cannot be hidden whole (a system directory, one holding this
    Python) leaves the file hidden alone, with a warning that says so.
    """
    dirs: dict[str, list[str]] = {}
    files: list[str] = []
    warnings: list[str] = []
    for path in (os.environ.get("JUPYTER_TOKEN_FILE"), *also):
        if not path:
            continue
        # Relative: as jupyter_server reads it, from the working directory (red team 28
        # F5; the provisioner passes the server's made absolute).
        path = os.path.abspath(path)
        real = os.path.realpath(path)
        try:
            if stat.S_ISDIR(os.stat(real).st_mode):
                continue
        except FileNotFoundError:
            pass  # not written yet (a server started later): its directory is hidden
        except OSError:
            continue
        # Also every directory holding a link on the way to it, through the links' own
        # targets, which the host may point elsewhere later (current -> v1, then v2: red
        # teams 27 F4, 28 F2).
        named = [os.path.realpath(os.path.dirname(path)), os.path.dirname(real)]
        named += _dirs_holding_links(path)
        for d in dict.fromkeys(named):
            if not os.path.isdir(d):
                continue
            if d in _SYSTEM_DIRS or d in PRIVATE_DIRS or _python_place(d):
                if real not in files and os.path.lexists(real):
                    files.append(real)
                    warnings.append(
                        f"{real} holds a Jupyter server's secret and lies in {d}, which is "
                        "not hidden whole inside: the file is, until it is replaced. Keep "
                        "such files in a directory of their own."
                    )
            elif real not in dirs.setdefault(d, []):
                dirs[d].append(real)
    return dirs, tuple(files), warnings


def hidden_dirs(
    home: str | None = None, *, share_home: bool = False, homes: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """Host directories a sandbox with its own mounts does not see (fresh and empty
    inside): the private ones, the session's runtime directory wherever it is, and
    unless ``share_home``, every home (and ``home``). ``homes``: ``user_homes(home)``,
    when the caller has it already (it resolves every home's real path)."""
    if share_home:  # the session's sockets stay hidden: read-only does not stop a connect
        return (*PRIVATE_DIRS, "/run/user", *private_runtime_dirs())
    homes = user_homes(home) if homes is None else homes
    return PRIVATE_DIRS + HOME_DIRS + homes + private_runtime_dirs()


def hidden_inside(path: str, *, share_home: bool = False) -> bool:
    """Whether ``path`` lies in a directory that is private (empty) inside a sandbox."""
    dirs = hidden_dirs(os.environ.get("HOME"), share_home=share_home)
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def blocked_ancestor(path: str, uid: int = -1, gid: int = -1) -> str | None:
    """The topmost directory above ``path`` that host ``uid``/``gid`` may not search
    (enter), or None. The default ids match no owner: the "other" bits decide.

    When the host's root makes a sandbox, sandbox root is an unprivileged host uid (65534
    by default), and a path under /root (mode 0700) is out of its reach inside even
    though the host root, read-only, is visible there.
    """
    parts = os.path.normpath(path).split("/")[1:-1]
    d = ""
    for part in parts:
        d += "/" + part
        try:
            st = os.stat(d)
        except OSError:
            return None  # the bind itself reports what is wrong with the path
        if not access_bits(st, uid, gid) & 0o1:
            return d
    return None


def access_bits(st: os.stat_result, uid: int = -1, gid: int = -1) -> int:
    """The rwx bits (0-7) of ``st``'s mode that apply to host ``uid``/``gid``: the owner's,
    the group's or the others' (no supplementary groups, no ACLs, as for sandbox root)."""
    if st.st_uid == uid:
        return (st.st_mode >> 6) & 0o7
    if st.st_gid == gid:
        return (st.st_mode >> 3) & 0o7
    return st.st_mode & 0o7


DEGRADED_MODES = frozenset({"proc", "sys", "hostname"})
# Read by `nskernel run`, %%sandbox and the kernel's installer as the default.
DEGRADED_ENV = "NSKERNEL_ALLOW_DEGRADED"


def parse_degraded(text: str | None) -> frozenset[str]:
    """``proc,sys,hostname`` (or the empty string) -> the modes; unknown names are kept
    for SandboxSpec to refuse with the list of valid ones."""
    return frozenset(m.strip() for m in (text or "").split(",") if m.strip())


# RFC 1123 label, as sethostname(2) users (and `hostname(1)`) expect.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@record(frozen=True)
class Bind:
    """A host path made visible inside the sandbox (``--bind`` / ``--ro-bind``)."""

    source: str
    dest: str
    readonly: bool = False
    # The source is a real path already, resolved when the request was checked (the
    # %%sandbox kernel does): taken as it is, never resolved again, opened without
    # following a link (one that appears meanwhile makes the sandbox fail).
    resolved: bool = False
    # Its top level is fixed when the sandbox starts (a home shown as the notebook's
    # directory): each entry not starting with "." is bound on its own (what is below
    # it stays live), each dot-entry is private and empty, a link is made again as it
    # is, and nothing made there later appears. Binding the directory itself would show
    # every dot-file the host makes (or rewrites by rename) while the sandbox lives:
    # keys and tokens made after it started. See ``sandbox._fixed_top_levels``.
    fixed_top_level: bool = False

    @classmethod
    def parse(cls, text: str, *, readonly: bool = False) -> Bind:
        """Parse ``SRC[:DST]`` as the command line and the magic accept it."""
        src, sep, dst = text.partition(":")
        if not src or (sep and not dst):
            flag = "--ro-bind" if readonly else "--bind"
            msg = f"{flag} {text!r}: expected SRC or SRC:DST, e.g. {flag} ./data:/data"
            raise SpecError(msg)
        return cls(source=src, dest=dst or src, readonly=readonly)


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``256M``, ``1.5G``, ``512MiB``, ``1000000`` → bytes (K/M/G/T are powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.fullmatch(text)
        if not m:
            msg = f"invalid size {text!r}: use a number and K, M, G or T, e.g. 256M"
            raise SpecError(msg)
        value = int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))
    if value < 1024 * 1024:
        msg = f"size {text!r} is too small for a sandbox: give at least 1M"
        raise SpecError(msg)
    return value


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def make_limits(
    memory: str | int | None = None, pids: int | str | None = None, cpus: float | str | None = None
) -> Limits:
    """Validate user-given limits (from the command line, the magic, a kernelspec)."""
    mem = parse_size(memory) if memory is not None else None
    n = None
    if pids is not None:
        try:
            n = int(pids)
        except ValueError:
            n = 0
        if n < 1:
            msg = f"invalid --pids {pids!r}: give a whole number of processes, at least 1"
            raise SpecError(msg)
    c = None
    if cpus is not None:
        try:
            c = float(cpus)
        except ValueError:
            c = 0.0
        if not 0.01 <= c <= (os.cpu_count() or 1):
            msg = f"invalid --cpus {cpus!r}: give a number of CPUs from 0.01 to {os.cpu_count()}"
            raise SpecError(msg)
    return Limits(memory=mem, pids=n, cpus=c)


def too_broad_to_bind(path: str) -> bool:
    """Whether binding ``path`` whole would undo what hides the homes: a home (its
    dot-files are the secrets), a directory holding homes (``/``, ``/home``), a home's
    top-level dot-directory (``~/.local``: the Jupyter server's token, keyrings), the
    session's runtime directory, the host's /tmp or /dev/shm themselves (every user's
    files and sockets there: X11's, agents'). Python environments found there are bound by a
    narrower path, or not at all (15th red-team pass: ``PYTHONPATH=$HOME``, a kernelspec
    whose Python is ``~/.local/bin/python3.12``)."""
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    home = os.environ.get("HOME")  # as ``hidden_inside`` has it: the one masked
    return (
        real in PRIVATE_DIRS
        or is_a_home(real, home)
        or holds_a_home(real, home)
        or (os.path.basename(real).startswith(".") and is_a_home(parent, home))
        or any(real == d or d.startswith(real.rstrip("/") + "/") for d in private_runtime_dirs())
    )


def python_environment_binds() -> tuple[Bind, ...]:
    """Read-only binds that keep this Python's modules importable inside a sandbox.

    /tmp and /dev/shm are private inside, so a virtualenv or an editable install that
    lives there (throwaway environments, CI checkouts) would vanish, and a kernel or cell
    runner started inside could no longer import what the host side just imported.
    As the host's root, the same goes for one under a directory that sandbox root (an
    unprivileged host uid) cannot enter, such as /root: bound in, it becomes reachable
    (see ``Sandbox.spawn``, which lays a skeleton over that directory). An entry that is
    :func:`too_broad_to_bind` (``PYTHONPATH=$HOME``) is left out: modules kept at the top
    of a home are not importable inside, as the rest of the home is not visible.
    """
    paths = list(sys.path)
    # `python -m` and `-c` put the working directory first: that is the caller's
    # (the notebook's) directory, not this Python's environment, and whether a sandbox
    # sees it is decided elsewhere (notebook_dir_binds, --bind).
    try:
        here = os.getcwd()
    except OSError:
        here = None
    if paths and paths[0] in ("", here):
        paths = paths[1:]
    candidates = [sys.prefix, sys.exec_prefix, *paths]
    hidden = sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)}, key=len)
    from ._linux.userns import is_host_root

    as_root = is_host_root()
    tops: list[str] = []
    for p in hidden:
        unreachable = hidden_inside(p) or (as_root and blocked_ancestor(p) is not None)
        if not unreachable or any(p == t or p.startswith(t + "/") for t in tops):
            continue
        if not too_broad_to_bind(p):
            tops.append(p)
    return tuple(Bind(p, p, readonly=True) for p in tops)


# A home shown as the notebook's directory costs one mount per entry (see
# Bind.fixed_top_level): more than this is refused with a note.
MAX_FIXED_ENTRIES = 1000
# Top-level directories of a home that hold other programs' homes, dot-files and all:
# each snap's $HOME is ~/snap/<app>/<revision> (Ubuntu's Firefox and Chromium profiles,
# the gh and doctl tokens). Private in a home shown as the notebook's directory, as a
# dot-entry is (15th red-team pass).
APP_HOMES_IN_A_HOME = frozenset({"snap"})


def private_in_a_home(name: str) -> bool:
    """Whether the top-level entry ``name`` of a home shown as the notebook's directory
    is private inside (empty): settings, keys and tokens live there."""
    return name.startswith(".") or name in APP_HOMES_IN_A_HOME


def notebook_dir_binds(
    cwd: str, *, readonly: bool, home: str | None = None
) -> tuple[list[Bind], tuple[str, ...], str | None]:
    """What makes the notebook's directory ``cwd`` reachable inside: (binds, paths to
    hide again, a note for the user or None).

    Sandboxes do not see the homes (keys, tokens, browser profiles). The notebook's
    directory is bound all the same, except where that would undo it:

    - ``cwd`` is the home itself (a notebook in ~, JupyterHub's default): its top level
      as it is at start, without its dot-files and dot-directories, where settings, keys
      and tokens live (``.ssh``, ``.aws``, ``.config``, ``.local/share/jupyter``...), nor
      other programs' homes (``snap``): see ``Bind.fixed_top_level``. The paths returned
      to hide are those entries (what the caller must not look for code in);
    - ``cwd`` holds a home (``/home``, ``/``), or is the host's /tmp or /dev/shm: not
      bound; the note says why.
    """
    home = home if home is not None else os.path.expanduser("~")
    cwd = os.path.normpath(cwd)
    if cwd == "/":
        return [], (), None
    if os.path.realpath(cwd) in PRIVATE_DIRS:
        note = (
            f"the notebook's directory {cwd} is the host's shared temporary directory "
            "(every user's files and sockets), so it is not made reachable inside: the "
            "sandbox gets a private, writable one there; keep notebooks in a directory "
            "of their own (or --bind/--ro-bind what the code needs)"
        )
        return [], (), note
    if home and os.path.isabs(home) and home != "/":
        if is_a_home(cwd, home):  # the caller's or another person's, by its real path
            try:
                entries = os.listdir(cwd)
            except OSError:
                entries = []
            if len(entries) > MAX_FIXED_ENTRIES:
                note = (
                    f"the notebook's directory {cwd} is a home with {len(entries)} entries; "
                    f"a home is shown entry by entry, at most {MAX_FIXED_ENTRIES}, so it is "
                    "not made reachable inside; keep notebooks in a directory of their own "
                    "(or --bind/--ro-bind what the code needs)"
                )
                return [], (), note
            dots = sorted(e for e in entries if private_in_a_home(e))
            bind = Bind(cwd, cwd, readonly, fixed_top_level=True)
            return [bind], tuple(os.path.join(cwd, d) for d in dots), None
        if holds_a_home(cwd, home):
            note = (
                f"the notebook's directory {cwd} holds home directories, which sandboxes "
                "do not see, so it is not made reachable inside; keep notebooks in a "
                "directory of their own (or --bind/--ro-bind what the code needs)"
            )
            return [], (), note
    return [Bind(cwd, cwd, readonly)], (), None


def _hostname_error(name: str) -> str | None:
    if not _HOSTNAME_RE.fullmatch(name):
        return (
            f"invalid hostname {name!r}: use 1-63 letters, digits and '-', "
            "not starting or ending with '-'"
        )
    return None


@record(frozen=True)
class SandboxSpec:
    """Which namespaces to create and how to set them up.

    ``namespaces`` is the set the caller asked for; :meth:`effective_namespaces` is
    what is created: always a user namespace too (sandbox root is never host root),
    unless ``no_userns`` opts out explicitly, and with ``pid`` a mount namespace for a
    fresh /proc (as ``unshare --mount-proc``). ``map_root_to`` is the host uid that
    sandbox root becomes when the caller is real root (never 0); for an unprivileged
    caller sandbox root is always the caller. ``keep_groups``: run even where the
    caller's supplementary groups cannot be dropped inside (see ``userns``).
    ``share_home``: the homes stay visible (read-only) instead of a private, empty one.
    """

    namespaces: frozenset[str] = frozenset(ALL_NAMESPACES)
    hostname: str | None = None
    binds: tuple[Bind, ...] = ()
    cwd: str | None = None
    env: dict[str, str] | None = None
    map_root_to: int | None = None
    use_subids: bool = True
    limits: Limits = factory(Limits)
    timeout: float | None = None
    no_userns: bool = False
    keep_groups: bool = False
    share_home: bool = False
    # The command's syscall filter ("default", "unconfined" or a Docker/OCI JSON profile),
    # and changes to the default capability set (see nskernel._linux.confine).
    # Paths inside binds to cover again with something empty and private (see
    # ``notebook_dir_binds``: a home bound as the notebook's directory keeps its
    # dot-files hidden).
    hide: tuple[str, ...] = ()
    # More of Jupyter's runtime directories to hide, wherever they show (see
    # ``jupyter_runtime_dirs``): the sandboxed kernel's launcher passes the server's.
    jupyter_runtime_dirs: tuple[str, ...] = ()
    # More files of a Jupyter server's secrets to hide (see ``jupyter_secret_files``).
    secret_files: tuple[str, ...] = ()
    seccomp: str = "default"
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    # Opt-in degraded modes for containers that refuse parts of a sandbox: "proc" and
    # "sys" keep the container's own (read-only) where a fresh one is refused, "hostname"
    # keeps the inherited name where sethostname is refused. Each is warned about.
    allow_degraded: frozenset[str] = frozenset()
    # The sandbox may create user namespaces of its own (the sandboxed kernel's, so that
    # %%sandbox works in it); every other sandbox's filter refuses them.
    allow_new_userns: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespaces", frozenset(self.namespaces))
        object.__setattr__(self, "binds", tuple(self.binds))
        object.__setattr__(self, "hide", tuple(self.hide))
        object.__setattr__(self, "jupyter_runtime_dirs", tuple(self.jupyter_runtime_dirs))
        object.__setattr__(self, "secret_files", tuple(self.secret_files))
        object.__setattr__(self, "allow_degraded", frozenset(self.allow_degraded))
        unknown_modes = self.allow_degraded - DEGRADED_MODES
        if unknown_modes:
            msg = (
                f"--allow-degraded {','.join(sorted(unknown_modes))}: choose from "
                f"{', '.join(sorted(DEGRADED_MODES))}"
            )
            raise SpecError(msg)
        object.__setattr__(self, "cap_add", tuple(self.cap_add))
        object.__setattr__(self, "cap_drop", tuple(self.cap_drop))
        unknown = self.namespaces - set(ALL_NAMESPACES)
        if unknown:
            msg = (
                f"unknown namespace type(s): {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(ALL_NAMESPACES)}"
            )
            raise SpecError(msg)
        if self.hostname is not None:
            if "uts" not in self.namespaces:
                msg = "a hostname needs a UTS namespace: add --uts (or drop --hostname)"
                raise SpecError(msg)
            err = _hostname_error(self.hostname)
            if err:
                raise SpecError(err)
        if self.binds and "mnt" not in self.effective_namespaces():
            msg = "--bind/--ro-bind need a mount namespace: add --mnt"
            raise SpecError(msg)
        if self.timeout is not None and not self.timeout > 0:
            msg = f"invalid timeout {self.timeout!r}: give a positive number of seconds"
            raise SpecError(msg)
        if self.map_root_to == 0:
            msg = "map_root_to=0 would make sandbox root the host's root; pick an unprivileged uid"
            raise SpecError(msg)
        if self.no_userns and "user" in self.namespaces:
            msg = "--no-userns and --user contradict each other: drop one"
            raise SpecError(msg)

    @classmethod
    def from_flags(cls, namespaces: Iterable[str] = (), **kwargs: object) -> SandboxSpec:
        """No namespace named means all six, as on the command line."""
        chosen = frozenset(namespaces) or frozenset(ALL_NAMESPACES)
        return cls(namespaces=chosen, **kwargs)  # type: ignore[arg-type]

    def effective_namespaces(self) -> frozenset[str]:
        """The namespaces that will actually be created.

        A user namespace always: it is what keeps sandbox root from being host root (and
        without CAP_SYS_ADMIN the kernel allows the other types only inside one). With a
        PID namespace, a mount namespace too, so that /proc shows the sandbox's own
        processes. ``no_userns`` drops the user namespace: the command keeps the caller's
        host identity, which only a caller holding CAP_SYS_ADMIN may ask for
        (:meth:`check_privileges`).
        """
        chosen = set(self.namespaces)
        if "pid" in chosen:
            chosen.add("mnt")
        if not self.no_userns:
            chosen.add("user")
        return frozenset(chosen)

    def check_privileges(self) -> None:
        """Refuse, before anything is created, what this caller cannot have."""
        if not self.no_userns:
            return
        from ._linux.userns import holds_cap_sys_admin

        if not holds_cap_sys_admin():
            msg = (
                "--no-userns needs CAP_SYS_ADMIN (root on the host): without a user "
                "namespace, the kernel lets only a privileged caller create the others. "
                "Drop --no-userns (a user namespace is what keeps sandbox root from being "
                "host root anyway)"
            )
            raise SpecError(msg)

    def validate_host_paths(self) -> None:
        """Check bind sources exist, before anything is created."""
        for b in self.binds:
            flag = "--ro-bind" if b.readonly else "--bind"
            if not os.path.exists(b.source):
                msg = f"{flag} {b.source}: no such file or directory on the host"
                raise SpecError(msg)
            if not os.path.isabs(b.dest):
                msg = f"{flag} {b.source}:{b.dest}: the destination must be an absolute path"
                raise SpecError(msg)
        if self.cwd is not None and not os.path.isabs(self.cwd):
            msg = f"working directory {self.cwd!r} must be an absolute path"
            raise SpecError(msg)

    def resolved_binds(self) -> tuple[Bind, ...]:
        """Binds with absolute, symlink-free sources (the sandbox sees the host root at /)."""
        return tuple(
            replace(
                b,
                source=os.path.normpath(b.source) if b.resolved else os.path.realpath(b.source),
                dest=os.path.normpath(b.dest),
            )
            for b in self.binds
        )
