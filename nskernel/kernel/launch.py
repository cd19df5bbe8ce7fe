"""The kernel launcher: ``python -m nskernel.kernel.launch [options] -- IPYKERNEL-ARGV``.

Why a separate process: namespaces cannot be created from jupyter_server or any
KernelManager (they run threads; ``unshare(CLONE_NEWUSER)`` fails with EINVAL), and
``preexec_fn`` is unsafe there. So the provisioner starts this fresh, single-threaded
interpreter, which creates the sandbox and then *stays* as the process jupyter_client
watches:

- ``poll()`` on it reflects the kernel: it exits only when the sandbox's init does,
  with the kernel's status (128+N for signal N), so the restarter never sees a launcher
  that exited early and starts a duplicate;
- SIGINT is ignored here: jupyter_client interrupts with ``killpg``, which already
  reaches ipykernel and its subprocesses (they share this process group); the init
  does not forward it either, so nothing gets it twice;
- TERM, HUP, QUIT, USR1, USR2 are forwarded to the sandbox (whose init forwards them to
  ipykernel), so shutdown by SIGTERM is graceful;
- the server holds the write end of a pipe whose read end is ``--lifeline-fd``: when the
  server dies, even by SIGKILL, EOF arrives here and the whole sandbox is destroyed. The
  sandbox's own lifeline then covers this process dying.

Files: the launcher makes this start's fresh ``ro/`` (connection file copy, host facts,
sandbox status: bound read-only) and ``sock/`` (the kernel's unix sockets: bound
read-write) in the kernel's host-only directory (``--kernel-dir``, see
:mod:`nskernel.paths`), through directory descriptors, with ``O_EXCL|O_NOFOLLOW``, owned
by sandbox root through fchown on the new descriptors when the launcher is root. It
never reads or removes anything the sandbox could have written (the provisioner takes
the directories away after the sandbox is gone); the one thing it does with what the
kernel made is publish its sockets in the host-only ``ep/`` (``SocketLinker``: a hard
link, made only after checking on an ``O_PATH`` descriptor that the entry is a socket).

Standard streams: jupyter_client hands the kernel its own stdout/stderr: the terminal
``jupyter lab`` runs in, or the server's log file, a pipe, a journal socket. None of
them is ever the sandbox's: with a terminal it could retitle, rewrite or query it, or
push input with TIOCSTI; with a log file it could truncate it, rewrite the server's
earlier lines (the file offset is shared) or fill the disk. The sandbox gets /dev/null
as stdin and a pipe each as stdout and stderr, and the launcher relays what comes out
(``sandbox_stdio``, ``Relay``): control characters made visible and harmless
(``TerminalText``), at most ``--output-limit`` bytes per start (``OutputBudget``), and
without the supervising loop ever blocking on the destination (``_destination``).

ipykernel's parent poller would see PID 1 (the init) as its parent and ``JPY_PARENT_PID``
holds a host PID meaningless inside, so ``JPY_PARENT_PID`` is set to 1, which turns the
poller off; the lifelines replace it.

Exit status: the kernel's, or 125 when the sandbox could not be created (the reason,
with the likely cause and fix, goes to ``--status-fd`` as JSON and to stderr).
"""

from __future__ import annotations

import argparse
import atexit
import codecs
import contextlib
import ctypes
import errno
import gc
import json
import os
import select
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import Bind, Sandbox, SandboxError, SandboxSpec, SpecError, paths
from .._linux import exefile, syscalls, userns
from .._record import replace
from ..environ import cwd_on_sys_path, python_module_command
from ..errors import EXIT_SANDBOX_FAILED
from ..spec import (
    ALL_NAMESPACES,
    blocked_ancestor,
    code_places,
    format_size,
    hidden_inside,
    is_a_home,
    lookup,
    make_limits,
    notebook_dir_binds,
    parse_degraded,
    parse_size,
    python_environment_binds,
    too_broad_to_bind,
    within,
)
from . import HOST_FACTS_ENV, SANDBOX_FACTS_ENV, hints, spare

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
CONNECTION_FILE_MAX = 1 << 16  # bytes; a Jupyter connection file is a few hundred
# Bytes of a kernel's stdout and stderr passed on per start (--output-limit): far more than
# ipykernel's own messages and a library's warnings, far less than a disk.
OUTPUT_LIMIT = 16 << 20
# How Relay writes its destination (_destination): directly, never blocking (a non-blocking
# description of our own, a regular file); with MSG_DONTWAIT; from a ThreadWriter.
DIRECT, SOCKET, SHARED = "direct", "socket", "shared"
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nskernel.kernel.launch",
        description="Start a Jupyter kernel inside a fresh sandbox (used by the provisioner).",
    )
    p.add_argument(
        "--namespaces",
        default=",".join(ALL_NAMESPACES),
        help="comma-separated namespace types (user is always added)",
    )
    p.add_argument("--hostname", help="the sandbox's hostname")
    p.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 1G")
    p.add_argument("--pids", metavar="N", help="at most N processes at once")
    p.add_argument(
        "--seccomp",
        default="default",
        help="the syscall filter: default (with user namespaces allowed, for %%%%sandbox), "
        "unconfined, or a Docker/OCI JSON profile",
    )
    p.add_argument("--allow-degraded", default="", help="degraded modes allowed (proc,sys,...)")
    p.add_argument("--cap-add", action="append", default=[], help="an extra capability")
    p.add_argument("--cap-drop", action="append", default=[], help="a dropped capability")
    p.add_argument("--cpus", metavar="FRACTION", help="CPU share, e.g. 0.5")
    p.add_argument(
        "--output-limit",
        metavar="SIZE",
        default=str(OUTPUT_LIMIT),
        help="at most this much of the kernel's stdout and stderr (together, per start) is "
        "passed on to this process's own, e.g. the server's log (default: %(default)s bytes); "
        "the rest is dropped, and a line says so",
    )
    p.add_argument(
        "--kernel-dir",
        help="the kernel's host-only directory: this start's sock/ and ro/ are made in it",
    )
    p.add_argument(
        "--connection-file",
        help="the connection file named in the kernel command; a copy is made in ro/",
    )
    p.add_argument(
        "--jupyter-runtime-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="where the server's Jupyter keeps tokens and kernels' keys: hidden inside",
    )
    p.add_argument(
        "--secret-file",
        action="append",
        default=[],
        metavar="PATH",
        help="a file of the server's secrets (its cookie secret, token file): hidden inside",
    )
    p.add_argument(
        "--lifeline-fd",
        type=int,
        help="fd whose EOF means the server died: destroy the sandbox",
    )
    p.add_argument("--status-fd", type=int, help="fd to write one JSON status line to once started")
    p.add_argument(
        "--seccomp-filter-fd",
        type=int,
        help="a memfd with the syscall filter the provisioner compiled for these options",
    )
    p.add_argument(
        "--spare-fd",
        type=int,
        help="start as the spare launcher: wait on this socket for a start's orders "
        "(see nskernel/kernel/spare.py)",
    )
    p.add_argument("--room", help=argparse.SUPPRESS)  # spare.ARGV_ROOM: ignored
    p.add_argument(
        "--code-place",
        action="append",
        default=[],
        metavar="PATH",
        help="a place the server's side loads code or config from: kept read-only inside "
        "a writable notebook directory",
    )
    p.add_argument(
        "--no-bind-cwd",
        action="store_true",
        help="do not make the working directory reachable inside",
    )
    p.add_argument(
        "--writable-notebook-dir",
        action="store_true",
        help="bind the working directory read-write (default: read-only); never a home, "
        "never a directory of host root's",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="only check that such a sandbox can be created; exit 0, or 125 with the reason",
    )
    p.add_argument(
        "--remove",
        metavar="KERNEL_DIR",
        help="only remove a kernel directory, from a user namespace with the sandbox's ids "
        "if need be (what a sandbox gave its other ids); exit 0 once it is gone",
    )
    p.add_argument(
        "--only-retired",
        action="store_true",
        help="with --remove: only the previous starts' sock/ and ro/",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- the kernel command")
    return p


def _namespaces(text: str) -> frozenset[str]:
    return frozenset(n.strip() for n in text.split(",") if n.strip()) | {"user"}


def _report(fd: int | None, **msg: Any) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(msg) + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def probe(namespaces: frozenset[str]) -> int:
    try:
        sb = Sandbox.spawn(
            SandboxSpec(namespaces=namespaces), target=lambda: 0, trusted_target=True
        )
    except (SandboxError, SpecError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_SANDBOX_FAILED
    code = sb.wait(10)
    if code != 0:
        sb.kill()
        print(f"a probe sandbox did not exit cleanly (status {code})", file=sys.stderr)
        return EXIT_SANDBOX_FAILED
    return 0


class StartDirs:
    """This start's fresh directories in the kernel's host-only directory, as descriptors.

    ``ro/`` (bound read-only) and ``sock/`` (bound read-write) are made new for every
    start, never reused: whatever an earlier sandbox left at those names (normally the
    provisioner has taken it away already) is renamed to ``trash-*`` first, for the
    provisioner to remove. ``owner``: sandbox root's host ids when the launcher is root,
    given by fchown on descriptors of what was just made; None for a rootless launcher
    (sandbox root is the launcher's own uid then).
    """

    def __init__(self, kernel_dir: str, owner: tuple[int, int] | None) -> None:
        self.kernel_dir, self.owner = kernel_dir, owner
        self.shared = os.path.join(kernel_dir, paths.SHARED_SUBDIR)
        self.sockets = os.path.join(kernel_dir, paths.SOCKET_SUBDIR)
        top = paths.open_dir(kernel_dir)
        try:
            st = os.fstat(top)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                msg = f"{kernel_dir} is not a private directory of this user"
                raise PermissionError(msg)
            for sub in (paths.SHARED_SUBDIR, paths.SOCKET_SUBDIR):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(sub, paths.trash_name(sub), src_dir_fd=top, dst_dir_fd=top)
            self.shared_fd = paths.make_dir(top, paths.SHARED_SUBDIR, 0o700, owner)
            self.sockets_fd = paths.make_dir(top, paths.SOCKET_SUBDIR, 0o700, owner)
            try:
                self.endpoints_fd = paths.open_dir(paths.ENDPOINT_SUBDIR, top)
            except FileNotFoundError:  # a directory made by an older provisioner
                self.endpoints_fd = paths.make_dir(top, paths.ENDPOINT_SUBDIR)
        finally:
            os.close(top)

    def share(self, name: str, data: bytes, *, replace: bool = False) -> str:
        """Put a file the sandbox may read into ``ro/``; its path."""
        if replace:
            paths.replace_file(self.shared_fd, name, data, 0o600, self.owner)
        else:
            paths.create_file(self.shared_fd, name, data, 0o600, self.owner)
        return os.path.join(self.shared, name)

    def write_tree(self, under: str, files: dict[str, bytes]) -> None:
        """Files for the sandbox to own, in ``sock/UNDER`` (made now: the sandbox does not
        exist yet, so the directory holds nothing of its)."""
        for rel, data in files.items():
            parts = [p for p in os.path.join(under, rel).split("/") if p]
            fd = os.dup(self.sockets_fd)
            try:
                for part in parts[:-1]:
                    try:
                        nfd = paths.make_dir(fd, part, 0o700, self.owner)
                    except FileExistsError:
                        nfd = paths.open_dir(part, fd)
                    os.close(fd)
                    fd = nfd
                paths.create_file(fd, parts[-1], data, 0o600, self.owner)
            finally:
                os.close(fd)

    def socket_linker(self, connection: dict[str, Any]) -> SocketLinker | None:
        """What publishes the kernel's sockets in ``ep/`` (None: not an ipc kernel here)."""
        names = [f"k-{connection[p]}" for p in PORT_NAMES if isinstance(connection.get(p), int)]
        if len(names) != len(PORT_NAMES):
            return None
        uid = self.owner[0] if self.owner is not None else os.geteuid()
        return SocketLinker(os.dup(self.sockets_fd), os.dup(self.endpoints_fd), names, uid)

    def close(self) -> None:
        for fd in (self.shared_fd, self.sockets_fd, self.endpoints_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _sandbox_root_on_host() -> tuple[int, int] | None:
    """Sandbox root's host uid and gid when this launcher is real root, else None."""
    if not userns.is_host_root():
        return None
    return userns.plan_id_maps().root_on_host


def ipython_dir(in_process: bool, with_mnt: bool, dirs: StartDirs | None) -> str | None:
    """Where the kernel's IPYTHONDIR is inside the sandbox: writable and its own.

    Inside, the user's home is hidden (the sandbox gets a private, empty one), so the
    kernel gets its own IPython dir with a copy of the user's profile. The in-process
    kernel writes that copy itself, inside, in ~/.ipython of the private home.
    Otherwise (an exec'd kernel command, or no mount namespace, where /tmp is the
    host's) it lives in this start's fresh socket directory, removed with it, and the
    host writes the copy there before the sandbox exists. None: no kernel directory.
    """
    if in_process and with_mnt:
        return os.path.expanduser(SANDBOX_IPYTHONDIR)  # the same HOME as the kernel's
    if dirs is not None:
        return os.path.join(dirs.sockets, "ipython")
    return None


def start(
    args: argparse.Namespace,
    argv: list[str],
    pending: list[int],
    stdio: tuple[int, int, int] | None = None,
) -> tuple[Sandbox, SocketLinker | None]:
    """Prepare this start's directories, capture host facts, create the sandbox; it and
    what publishes its sockets to the server."""
    owner = _sandbox_root_on_host()
    dirs = StartDirs(args.kernel_dir, owner) if args.kernel_dir else None
    linkers: list[SocketLinker] = []
    try:
        return _start(args, argv, pending, stdio, owner, dirs, linkers), (
            linkers[0] if linkers else None
        )
    except BaseException:
        for linker in linkers:
            linker.close()
        raise
    finally:
        if dirs is not None:
            dirs.close()


def _start(
    args: argparse.Namespace,
    argv: list[str],
    pending: list[int],
    stdio: tuple[int, int, int] | None,
    owner: tuple[int, int] | None,
    dirs: StartDirs | None,
    linkers: list[SocketLinker],
) -> Sandbox:
    cwd = os.getcwd()
    namespaces = _namespaces(args.namespaces)
    # Without a mount namespace the sandbox sees the host's paths as they are: no binds.
    with_mnt = "mnt" in namespaces
    # The provisioner gave this process the kernel's environment already (an allow-list
    # of the server's): nothing else is in this process, so nothing else reaches the
    # kernel forked from it.
    env = dict(os.environ)
    env["JPY_PARENT_PID"] = "1"
    if dirs is not None:
        # nskernel's runtime directory (masked inside every sandbox) is the one holding
        # this kernel's directory, whatever this process's environment says.
        os.environ["XDG_RUNTIME_DIR"] = os.path.dirname(os.path.dirname(dirs.kernel_dir))
        if args.connection_file:
            # A private copy, readable inside: the original lives in Jupyter's runtime
            # dir, beside other kernels' files (and keys), and may be unreachable for
            # sandbox root.
            with open(args.connection_file, "rb") as f:
                connection = json.loads(f.read(CONNECTION_FILE_MAX))
            # The server connects in ep/ (host only); the kernel binds in sock/.
            ep_ip = os.path.join(dirs.kernel_dir, paths.ENDPOINT_SUBDIR, "k")
            if connection.get("transport") == "ipc" and connection.get("ip") == ep_ip:
                connection["ip"] = os.path.join(dirs.sockets, "k")
                linker = dirs.socket_linker(connection)
                if linker is not None:
                    linkers.append(linker)
            copy = dirs.share("kernel.json", json.dumps(connection, indent=1).encode())
            argv = [copy if a == args.connection_file else a for a in argv]
        # Sandboxes made inside the kernel cover this base too (see the variable).
        env[paths.RUNTIME_BASE_ENV] = os.path.dirname(os.path.dirname(dirs.kernel_dir))
        env[HOST_FACTS_ENV] = os.path.join(dirs.shared, "host.json")
        env[SANDBOX_FACTS_ENV] = os.path.join(dirs.shared, "sandbox.json")
    binds: list[Bind] = []
    facts_child = None
    if dirs is not None:
        # The host's facts are read by a child while this process imports ipykernel
        # (just below): both take the CPU for a while, and there is more than one core.
        facts_child = _capture_host_facts_in_child(dirs)
        if with_mnt:
            binds += [Bind(dirs.sockets, dirs.sockets), Bind(dirs.shared, dirs.shared, True)]
    in_process = _runs_in_process(argv) and _imported_as_for(env)
    profile: dict[str, bytes] = {}
    where = None if "IPYTHONDIR" in env else ipython_dir(in_process, with_mnt, dirs)
    if where is not None:
        # The user's own config and startup files are carried over into the kernel's
        # own IPython dir: by the kernel itself inside, or by us before it exists.
        env["IPYTHONDIR"] = where
        profile = read_user_profile(argv)
        if not (in_process and with_mnt) and dirs is not None:
            dirs.write_tree("ipython", profile)
            profile = {}
    target = _ipykernel_in_process(argv, env, profile) if in_process else None
    if facts_child is not None and dirs is not None:
        _wait_for_host_facts(facts_child, dirs)
    bind_cwd = not args.no_bind_cwd and cwd != "/"
    if bind_cwd and dirs is not None and _contains(cwd, os.path.dirname(dirs.kernel_dir)):
        # A writable bind of it would hand the sandbox nskernel's runtime directory:
        # other kernels' keys, this kernel's host-only files.
        print(
            f"nskernel: the notebook directory {cwd} contains nskernel's runtime directory "
            f"{os.path.dirname(dirs.kernel_dir)}, so it is not made writable inside the "
            "sandbox; start Jupyter from another directory (or set XDG_RUNTIME_DIR "
            "elsewhere) to write there",
            file=sys.stderr,
        )
        bind_cwd = False
    hide: tuple[str, ...] = ()
    cwd_inside = cwd
    writable, refusal = False, None
    code_inside: list[str] = []
    if bind_cwd and with_mnt and args.writable_notebook_dir:
        refusal = notebook_dir_write_refusal(cwd, env.get("HOME"), owner)
        if not refusal:
            code_inside = code_places_inside(cwd, argv, args.code_place)
            if os.path.realpath(cwd) in code_inside:
                refusal = (
                    f"the notebook's directory {cwd} is, or holds a link to, a place "
                    "Python outside the sandbox loads code from (on sys.path, or the "
                    "environment Jupyter runs from): it stays read-only inside; keep "
                    "notebooks in a subdirectory to write next to them"
                )
                code_inside = []
        if refusal:
            print(f"nskernel: {refusal}", file=sys.stderr)
        writable = not refusal
    if bind_cwd and with_mnt and not writable:
        env[hints.DIR_ENV] = cwd
        env[hints.HINT_ENV] = (
            f"nskernel: {refusal}"
            if refusal
            else (
                f"nskernel: the notebook's directory {cwd} is read-only inside the sandboxed "
                "kernel. Write to ~ instead (private to this kernel, gone when it stops), or "
                "install the kernel with `nskernel install --writable-notebook-dir` (its "
                "--help says what that risks)."
            )
        )
    if bind_cwd and with_mnt:
        # Not a directory holding homes; a home itself without its dot-files.
        nb_binds, hide, note = notebook_dir_binds(cwd, readonly=not writable, home=env.get("HOME"))
        if note:
            # The kernel starts in its private home instead.
            print(f"nskernel: {note}", file=sys.stderr)
            bind_cwd = False
            cwd_inside = env.get("HOME") or "/"
        binds += nb_binds
        if bind_cwd:
            # Read-only on top: what host-side Python loads code from, inside (below).
            binds += [Bind(p, p, True) for p in code_inside]
    if with_mnt:
        # Modules the kernel imports later (nskernel.widgets, the user's editable
        # packages) must stay importable when this environment lives under a directory
        # that is private inside (a venv or checkout under /tmp).
        taken = {b.dest for b in binds}
        binds += [b for b in python_environment_binds() if b.dest not in taken]
        if not in_process:
            # A kernel exec'd from another Python (pyenv's, conda's) that lives where
            # the sandbox cannot go (a home, /root): its environment, bound read-only.
            taken = {b.dest for b in binds}
            writes = [cwd] if bind_cwd and with_mnt else []
            found = interpreter_binds(argv, writes, hide)
            binds += [b for b in found if b.dest not in taken]

    # The staging mount namespace (idmapped notebook directory, skeletons over what
    # sandbox root cannot traverse) needs CAP_SYS_ADMIN, which root in a container
    # usually lacks: decided by capability, not by uid. Without it the binds still reach
    # the sandbox (their sources are opened with our rights), but a notebook directory
    # sandbox root may not write stays read-only for it.
    if owner is not None and userns.holds_cap_sys_admin():
        from . import staging

        items = []
        if dirs is not None:
            # Owned by sandbox root already (fchown when made); made reachable here.
            items += [staging.Expose(dirs.sockets), staging.Expose(dirs.shared)]
        if bind_cwd:
            # Its owner's ids become sandbox root's on this mount alone, so that sandbox
            # root may enter and read it; write only where it is writable, which is never
            # a directory of host root's (see notebook_dir_write_refusal).
            items.append(staging.Expose(cwd, owner_to=owner, writable=writable))
        # This Python's environment, when it lives where sandbox root cannot go (a venv
        # under /root): kept reachable, read-only and owned as it is.
        exposed = {it.path for it in items}
        items += [
            staging.Expose(b.source)
            for b in binds
            if b.source not in exposed and blocked_ancestor(b.source, *owner) is not None
        ]
        staged = staging.expose_in_private_mount_namespace(items, owner[0])
        for warning in staged.warnings:
            print(warning, file=sys.stderr)
        if writable and cwd in staged.read_only:
            # What the clone showed decides, not the earlier look by path.
            binds = [replace(b, readonly=True) if b.dest == cwd else b for b in binds]
            env[hints.DIR_ENV] = cwd
            env[hints.HINT_ENV] = f"nskernel: the notebook's directory {cwd} stays read-only inside"
        os.chdir(cwd)  # re-resolve through the idmapped mount

    spec = SandboxSpec(
        namespaces=namespaces,
        hostname=args.hostname,
        binds=tuple(binds),
        cwd=cwd_inside,
        env=env,
        hide=hide,
        jupyter_runtime_dirs=tuple(args.jupyter_runtime_dir),
        secret_files=tuple(args.secret_file),
        limits=make_limits(args.memory, args.pids, args.cpus),
        # %%sandbox in this kernel makes nested sandboxes: its filter lets it create user
        # namespaces (the cells' own filters, stacked on it, do not).
        allow_new_userns=True,
        seccomp=args.seccomp,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        allow_degraded=parse_degraded(args.allow_degraded),
    )
    if target is not None:
        # The imported modules are shared copy-on-write with the kernel process; without
        # this, the kernel's first garbage collections write to (and copy) all of them.
        gc.freeze()
    # jupyter_client started us as a session leader, and interrupts with killpg(SIGINT):
    # the kernel must stay in our process group. It never gets a terminal (see main).
    if target is not None:
        sb = Sandbox.spawn(spec, target=target, new_session=False, stdio=stdio)
    else:
        sb = Sandbox.spawn(spec, argv, new_session=False, stdio=stdio)
    for warning in sb.warnings:  # e.g. a degraded mode in force: in the server's log
        print(warning, file=sys.stderr)
    if dirs is not None:
        dirs.share("sandbox.json", (json.dumps(sb.facts(), indent=2) + "\n").encode())
    for sig in pending:
        sb.send_signal(sig)
    return sb


def interpreter_binds(
    argv: Sequence[str], writable: Sequence[str] = (), hidden: Sequence[str] = ()
) -> list[Bind]:
    """Read-only binds that make an exec'd kernel's interpreter reachable inside.

    A kernelspec whose Python lives under a home (hidden inside: every sandbox gets a
    private empty one), in /tmp, or, run by root, under /root (sandbox root is an
    unprivileged host uid and cannot enter it) would fail with "Permission denied inside
    the sandbox". Its prefix (``bin/..``) and, for a venv's link to its base Python, the
    base's prefix are bound in at the same path, read-only, as for this Python's own
    environment. Found from paths alone: the interpreter is never run or read on the
    host, and nothing is resolved under a directory a sandbox can write (``writable``,
    the notebook's directory, less what is ``hidden`` under it): a sandbox could have
    planted a link or a program there. A Python there is reachable inside anyway.
    """
    if not argv:
        return []
    exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
    if not exe:
        return []
    exe = os.path.abspath(exe)

    def sandbox_writes(path: str) -> bool:
        return any(_contains(w, path) for w in writable) and not any(
            _contains(h, path) for h in hidden
        )

    as_root = userns.is_host_root()

    def unreachable(path: str) -> bool:
        return hidden_inside(path) or (as_root and blocked_ancestor(path) is not None)

    real = _resolve_outside(exe, sandbox_writes)
    if real is None or not (unreachable(exe) or unreachable(real)):
        return []
    # The prefix, or where it would bare a home (~/bin/python, ~/.local/bin/python3.12,
    # a uv or pip --user link: ~ or ~/.local whole, the Jupyter server's token with it),
    # the interpreter's own directory only.
    prefixes = []
    for p in (exe, real):
        prefix = os.path.dirname(os.path.dirname(p))
        prefixes.append(os.path.dirname(p) if too_broad_to_bind(prefix) else prefix)
    found = {_resolve_outside(p, sandbox_writes) for p in prefixes}
    dirs = sorted((d for d in found if d is not None and os.path.isdir(d)), key=len)
    tops: list[str] = []
    for d in dirs:
        if unreachable(d) and not any(_contains(t, d) for t in tops) and not too_broad_to_bind(d):
            tops.append(d)
    return [Bind(t, t, readonly=True) for t in tops]


SYMLINK_HOPS = 40  # as the kernel's own limit (ELOOP)


def _resolve_outside(path: str, off_limits: Callable[[str], bool]) -> str | None:
    """``os.path.realpath(path)``, or None if resolving it would look at anything under a
    directory ``off_limits`` says a sandbox can write (where it may have planted links).

    Walked one component at a time, so that no ``lstat``/``readlink`` ever reaches into
    such a directory, wherever the links lead.
    """
    hops = 0
    todo = [p for p in path.split("/") if p]
    cur = "/"
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        nxt = os.path.dirname(cur) if part == ".." else os.path.join(cur, part)
        if off_limits(nxt):
            return None
        try:
            target = os.readlink(nxt)
        except OSError:  # not a link (or missing: realpath keeps such a name as it is)
            cur = nxt
            continue
        hops += 1
        if hops > SYMLINK_HOPS:
            return None
        if target.startswith("/"):
            cur = "/"
        todo[:0] = [p for p in target.split("/") if p]
    return cur


def notebook_dir_write_refusal(
    cwd: str, home: str | None, owner: tuple[int, int] | None
) -> str | None:
    """Why the notebook's directory ``cwd`` must stay read-only even though a writable one
    was asked for (None: it may be writable).

    Jupyter itself writes there, and so does the user's shell: whatever the sandbox
    plants in a writable notebook directory is met by host processes later. Two places
    would turn that into code running outside the sandbox: a home (a new
    ``.bash_profile``, ``.profile`` or ``~/bin/...`` runs at the next login), and, when
    Jupyter runs as root, a directory of host root's (through the idmapped mount the
    sandbox would write as host root: a setuid-root or setgid-root file, files root trusts).
    """
    cwd = os.path.normpath(cwd)
    if is_a_home(cwd, home):  # the caller's, or another person's (by its real path)
        return (
            f"the notebook's directory {cwd} is a home: it stays read-only inside (new "
            "dot-files there would run outside the sandbox at the next login); keep "
            "notebooks in a subdirectory to write next to them"
        )
    if owner is not None:
        try:
            st = os.stat(cwd)
        except OSError as e:
            return f"the notebook's directory {cwd} stays read-only inside: {e.strerror}"
        if 0 in (st.st_uid, st.st_gid):  # the idmapped mount maps both to sandbox root's
            return (
                f"the notebook's directory {cwd} is host root's (owner or group): it stays "
                "read-only "
                "inside (sandbox root is never host root, not even there); to write next "
                "to the notebooks, give the directory to an unprivileged user (chown) "
                "or run Jupyter as that user"
            )
    return None


def code_places_inside(directory: str, argv: Sequence[str], more: Sequence[str] = ()) -> list[str]:
    """What host-side Python loads code from inside ``directory``, by real path, outermost
    only: kept read-only inside when the notebook's directory is writable.

    A project directory often holds the environment Jupyter runs from (``.venv``), an
    editable checkout (on ``sys.path``, or found by an editable install's finder), the
    kernel's interpreter: a ``.pth`` file the sandbox left in their site-packages would
    run in the next launcher, probe or server started from them, outside every sandbox,
    with no one doing anything. ``.git`` too: git runs its hooks on the host.
    """
    real = os.path.realpath(directory)
    kernel_env = os.path.dirname(os.path.dirname(os.path.abspath(argv[0]))) if argv else ""
    # This Python's places (its environment, sys.path, PYTHONPATH as made absolute by the
    # provisioner, the user site...), and where else it and the kernel come from.
    candidates = [place for place, _why in code_places()]
    candidates += [
        sys.exec_prefix,
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # nskernel itself
        kernel_env,
    ]
    candidates += more  # the server's own (--code-place): Jupyter's paths, its Python
    git = os.path.join(real, ".git")  # only where there is one: a missing one is no code
    if os.path.lexists(git):
        candidates.append(git)
    # Modules loaded by a finder rather than from sys.path (an editable install's
    # __editable__ finder maps a package to a project directory): where they really are.
    candidates += {os.path.dirname(f) for m in list(sys.modules.values()) if (f := _file_of(m))}
    inside = set()
    for c in candidates:
        if not c:
            continue
        found = lookup(c)
        if any(within(d, real) for d in found.links):
            # Reached through a link inside (``.venv -> /opt/env``): the sandbox could put
            # its own in its place, and a mount cannot cover a link. All of it, then.
            inside.add(real)
        elif within(found.real, real):
            # Bound read-only on top (a mount point cannot be renamed); one that is not
            # there yet the sandbox could make, and nothing can be bound over it: all of it.
            inside.add(found.real if os.path.exists(found.real) else real)
    return [p for p in sorted(inside) if not any(p.startswith(o + "/") for o in inside)]


def _file_of(module: Any) -> str | None:
    f = getattr(module, "__file__", None)
    return f if isinstance(f, str) else None


FILTER_MAX = 1 << 20  # bytes; the default filter is a few kilobytes


def _preload_filter(args: argparse.Namespace) -> None:
    """Take the filter the provisioner compiled for exactly these options (a memfd it
    passed; compiling it again here cost ~9 ms of every kernel start). Anything wrong
    with it and the filter is compiled here as before."""
    from .._linux import caps, seccomp

    fd = args.seccomp_filter_fd
    try:
        data = os.pread(fd, FILTER_MAX, 0)
        seccomp.preload(
            data,
            args.seccomp,
            capabilities=caps.plan(args.cap_add, args.cap_drop),
            allow_new_userns=True,  # as _start asks for the kernel's own sandbox
        )
    except (OSError, ValueError, KeyError, TypeError, SpecError):
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _contains(ancestor: str, path: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _capture_host_facts_in_child(dirs: StartDirs) -> int:
    """Fork a child that writes the host's facts to ``ro/host.json``; its PID."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            from ..facts import host_facts  # imported here only: ~9 ms

            dirs.share("host.json", json.dumps(host_facts(arguments=False)).encode())
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait_for_host_facts(pid: int, dirs: StartDirs) -> None:
    """Reap the facts child; should it have failed, capture here to raise the reason."""
    _, status = os.waitpid(pid, 0)
    if status != 0:
        from ..facts import host_facts

        dirs.share("host.json", json.dumps(host_facts(arguments=False)).encode(), replace=True)


# The in-process kernel's IPython dir inside its sandbox: in its private, writable home
# (or, for a notebook in the home itself, in the private tmpfs over its dot-files).
SANDBOX_IPYTHONDIR = "~/.ipython"
PROFILE_FILE_MAX = 1 << 20  # bytes; a config or startup file larger than this is skipped


def read_user_profile(argv: list[str]) -> dict[str, bytes]:
    """The user's IPython profile, read on the host: ``{path under IPYTHONDIR: bytes}``.

    Its config files (``*_config.py``/``.json``) and ``startup/`` files, what a plain
    ipykernel would load from ``~/.ipython/profile_NAME``. Inside the sandbox that dir is
    read-only, or, for root, not readable at all by sandbox root; so the kernel gets a copy
    in its own IPython dir. History, databases and security files stay on the host.
    """
    name = "default"
    for i, arg in enumerate(argv):
        if arg.startswith("--profile="):
            name = arg.split("=", 1)[1]
        elif arg == "--profile" and i + 1 < len(argv):
            name = argv[i + 1]
    rel = f"profile_{name}"
    src = os.path.join(os.path.expanduser("~"), ".ipython", rel)
    wanted = []
    with contextlib.suppress(OSError):
        wanted += [e for e in os.scandir(src) if e.name.endswith(("_config.py", "_config.json"))]
    with contextlib.suppress(OSError):
        wanted += list(os.scandir(os.path.join(src, "startup")))
    files = {}
    for entry in wanted:
        path = os.path.relpath(entry.path, src)
        try:
            if not entry.is_file() or entry.stat().st_size > PROFILE_FILE_MAX:
                continue
            with open(entry.path, "rb") as f:
                files[os.path.join(rel, path)] = f.read()
        except OSError as e:
            print(f"nskernel: your IPython profile's {path} is not loaded: {e}", file=sys.stderr)
    return files


def _write_profile(ipython_dir: str, files: dict[str, bytes]) -> None:
    """Inside the sandbox, in the kernel's own process: the profile copy."""
    for path, data in files.items():
        dest = os.path.join(ipython_dir, path)
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)


def _runs_in_process(argv: list[str]) -> bool:
    """Whether the kernel command is this interpreter's ``-m ipykernel_launcher``, and
    this interpreter may be forked into a sandbox (``exefile.safe_to_fork``: a forked
    kernel would hold it on the host's mount, and could chmod it if it is the user's)."""
    if len(argv) < 3 or argv[1:3] != ["-m", "ipykernel_launcher"]:
        return False
    if not exefile.safe_to_fork():
        return False  # exec'd inside instead: the file is then the read-only view's
    try:
        # The same binary in another directory is another environment: a venv's python
        # is a link to its base interpreter, and Python finds the venv (pyvenv.cfg, so
        # sys.prefix and site-packages) from where it was started, not from the binary.
        return os.path.samefile(argv[0], sys.executable) and os.path.samefile(
            os.path.dirname(os.path.abspath(argv[0])),
            os.path.dirname(os.path.abspath(sys.executable)),
        )
    except OSError:
        return False


# What a spare read of os.environ while it imported ipykernel ahead of its orders (name
# -> value, None: unset); None when this launcher imported nothing ahead (not a spare).
_read_at_import: dict[str, str | None] | None = None


def _import_kernel_ahead() -> None:
    """A spare's head start: import ipykernel before a start's orders come.

    Importing it is most of what a start waits for (~0.2-0.4 s of the ~0.55 s to a
    kernel's first reply, before this); a spare has that time while it waits. But a few
    modules read the environment when they are imported (jupyter_client's Session takes
    USER as the username in every message header, ipykernel JPY_PARENT_PID, traitlets and
    IPython their error switches), and a kernel's environment is known only with its
    orders. So every read is recorded, by name and value (through ``os.environ`` and
    ``os.environb``; a C library's getenv is not seen, which matters only for names the
    allow-list passes but a spare lacks, such as SHELL or VIRTUAL_ENV), and a start whose
    environment differs in any of them does not run in this process
    (``_imported_as_for``): its kernel is exec'd inside instead, importing for itself, as
    when this interpreter cannot be forked. The spare imports with the environment it
    was started with (the names every kernel shares, see spare.spare_environment) and
    JPY_PARENT_PID=1, which every kernel gets (``_start``).
    """
    global _read_at_import
    reads: dict[str, str | None] = {}
    real_getitem, real_copy = os._Environ.__getitem__, os._Environ.copy
    environb = getattr(os, "environb", None)

    def note(env: Any, key: Any, value: Any) -> None:
        if env is os.environ:
            reads.setdefault(key, value)
        elif env is environb:  # the same variables, as bytes
            reads.setdefault(os.fsdecode(key), None if value is None else os.fsdecode(value))

    def getitem(self: Any, key: Any) -> Any:  # also what get, `in`, items, getenv use
        try:
            value = real_getitem(self, key)
        except KeyError:
            note(self, key, None)
            raise
        note(self, key, value)
        return value

    def copy(self: Any) -> Any:  # reads them all (through __getitem__ today: not relied on)
        whole = real_copy(self)
        for key, value in whole.items():
            note(self, key, value)
        return whole

    os.environ["JPY_PARENT_PID"] = "1"
    os._Environ.__getitem__ = getitem  # type: ignore[method-assign]
    os._Environ.copy = copy  # type: ignore[method-assign]
    try:
        import ipykernel_launcher  # noqa: F401
        from ipykernel import kernelapp  # noqa: F401

        from . import shell_inside  # noqa: F401
    except Exception:
        pass  # the start imports again, under its own environment, and says what failed
    finally:
        os._Environ.__getitem__ = real_getitem  # type: ignore[method-assign]
        os._Environ.copy = real_copy  # type: ignore[method-assign]
        _read_at_import = reads


def _imported_as_for(env: dict[str, str]) -> bool:
    """Whether what was imported ahead (if anything) saw the values ``env`` holds."""
    if _read_at_import is None:
        return True
    return all(env.get(k) == v for k, v in _read_at_import.items())


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _ipykernel_in_process(
    argv: list[str], env: dict[str, str], profile: dict[str, bytes]
) -> Callable[[], int]:
    """For this interpreter's ``-m ipykernel_launcher``: run it in the forked sandbox process.

    Why: the kernel's start time is dominated by interpreter start-up and imports. Exec'ing
    a second interpreter inside the sandbox would pay for both twice (this launcher's, then
    ipykernel's); importing ipykernel here, before the fork, pays once, and the sandbox's
    command process simply calls it. Imports start no threads, so spawning stays allowed.
    Any other kernel command is exec'd as given.
    """
    # ipykernel reads some environment at import time (JPY_PARENT_PID becomes a trait
    # default when its module is imported), so the kernel's environment comes first;
    # this process keeps its own (where nskernel's runtime directory is) for the rest.
    with _environment(env):
        import ipykernel_launcher
        from ipykernel import kernelapp

        from . import shell_inside  # noqa: F401 - the kernel's extension, shared copy-on-write

    # Our extensions, loaded like any (extra_extensions leaves the user's `extensions`
    # alone): hints explains "Read-only file system" in the notebook's directory (see
    # hints.py); shell_inside makes what a notebook user does work in the sandbox (%pip
    # installs into the private home, this Python first on PATH).
    args = [*argv[3:], f"--IPKernelApp.extra_extensions={list(KERNEL_EXTENSIONS)!r}"]

    def run_kernel() -> int:
        # `ps`/`top` show the kernel as the command it stands for, not as this launcher.
        show_as(argv)
        os.environ.clear()
        os.environ.update(env)
        if profile:
            _write_profile(env["IPYTHONDIR"], profile)
        sys.argv = [ipykernel_launcher.__file__, *args]
        # The notebook's directory on sys.path again, inside (this launcher ran without).
        cwd_on_sys_path()
        try:
            kernelapp.launch_new_instance(argv=args)
        finally:
            _let_the_control_thread_finish(kernelapp.IPKernelApp)
            # The command process ends with os._exit: run what a normal exit would
            # (IPython's history session end, ipykernel's cleanups).
            atexit._run_exitfuncs()
        return 0

    return run_kernel


KERNEL_EXTENSIONS = ("nskernel.kernel.hints", "nskernel.kernel.shell_inside")


def show_as(argv: Sequence[str]) -> None:
    """Rewrite this process's command line (what ``ps`` and ``top`` show) to ``argv``.

    The in-process kernel is a fork of this launcher, so it would show the launcher's
    command line (``python -m nskernel.kernel.launch --namespaces ... -- ...``); a person
    looking for their kernel expects the kernel command. Linux reads the command line
    from the memory between ``arg_start`` and ``arg_end`` (``/proc/self/stat`` fields 48
    and 49), which CPython no longer reads after start-up: the new text is written there,
    cut to fit and padded with NULs. Best effort: any failure leaves the old one.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])
        size = end - start
        if size <= 1:
            return
        data = b"\0".join(os.fsencode(a) for a in argv)[: size - 1]
        ctypes.memmove(start, data.ljust(size, b"\0"), size)
    except (OSError, ValueError, IndexError):
        pass


CONTROL_THREAD_GRACE = 2.0  # seconds; jupyter_client sends SIGTERM after 2.5


def _let_the_control_thread_finish(app_class: Any) -> None:
    """Before ipykernel's exit handlers run, let its control thread end by itself.

    After a shutdown_request, the control thread still publishes an "idle" status on
    IOPub, then stops its loop. ipykernel's exit handler (``IPKernelApp.close``) stops
    the IOPub thread first and then joins the control thread without a timeout: if the
    control thread had not published yet, its send blocks forever, and so does the
    join, until jupyter_client gives up and sends SIGTERM (exit 143 instead of 0). A
    known race upstream (ipykernel PR 1518, positron issue 7142); calling the exit
    handlers right away, as this process must, hit it about once in ten shutdowns on a
    busy machine, against never once the thread has finished.
    """
    if not app_class.initialized():
        return
    thread = getattr(app_class.instance(), "control_thread", None)
    if thread is not None and thread.is_alive():
        thread.join(CONTROL_THREAD_GRACE)


# ---------------------------------------------------------------- the caller's terminal


def _c0_c1_table() -> dict[int, str]:
    table = {c: "^" + chr(c + 0x40) for c in range(0x20) if chr(c) not in "\n\t"}
    table[0x7F] = "^?"
    table.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
    return table


class TerminalText:
    """Bytes from a sandbox made safe to show on a terminal: only text and line breaks.

    Every C0 control but newline and tab is shown in caret notation (ESC as ``^[``, so
    ``ESC ] 0 ; title BEL`` arrives as the visible text ``^[]0;title^G``), DEL as ``^?``,
    C1 controls (U+0080-U+009F, which some terminals obey as CSI and friends) as
    ``\\x9b``; a carriage return stays only as part of CRLF. Invalid UTF-8 becomes U+FFFD,
    so no raw 8-bit control byte gets through either. When the terminal's locale is not
    UTF-8, everything beyond ASCII is escaped too: such a terminal may read the bytes of
    a UTF-8 character as C1 controls.
    """

    _TABLE = _c0_c1_table()

    def __init__(self, utf8: bool) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._encoding = "utf-8" if utf8 else "ascii"
        self._cr = False  # a CR at the end of the last chunk, undecided yet

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = self._decoder.decode(data, final)
        if self._cr:
            text = "\r" + text
        self._cr = not final and text.endswith("\r")
        if self._cr:
            text = text[:-1]
        text = text.replace("\r\n", "\n").translate(self._TABLE)
        return text.encode(self._encoding, errors="backslashreplace")


def _locale_is_utf8(env: dict[str, str]) -> bool:
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        if env.get(name):
            return env[name].lower().replace("-", "").endswith("utf8")
    return False


class OutputBudget:
    """How much of the sandboxed kernel's stdout and stderr, together, this start passes on
    to the launcher's own (the server's log file, its terminal, a journal).

    That destination is the host's: a kernel writing without end would fill the disk the
    server logs to, beyond any memory or tmpfs limit of the sandbox. Past the limit the
    output is still read (slowly, ``Relay.DROP_RATE``: the kernel slows down but never
    stalls on it) and dropped; one line says where it was cut and, at the end, how much
    was dropped.

    What is charged is what reaches the destination, ``TerminalText``'s output, not the
    bytes read: one invalid byte shows as U+FFFD (3 bytes) or, under a locale that is not
    UTF-8, as ``\\ufffd`` (6), so counting bytes read let up to six times the limit through
    (red team 13 F2).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.passed = 0  # bytes shown
        self.dropped = 0  # bytes the kernel wrote that were not shown
        self.cut = False
        self.told = False

    def charge(self, shown: bytes, read: int) -> bytes:
        """What of ``shown`` (what ``read`` bytes of the kernel's became on the way) may
        pass: all of it, or the part that fits, cut on a UTF-8 character boundary."""
        if self.cut:
            self.dropped += read
            return b""
        room = self.limit - self.passed
        if len(shown) <= room:
            self.passed += len(shown)
            return shown
        keep = room
        while keep > 0 and shown[keep] & 0xC0 == 0x80:  # a character's continuation byte
            keep -= 1
        self.passed += keep
        self.cut = True
        # Of this read, the part beyond what was shown: in proportion (exact for text that
        # shows as itself; the count in the summary is for the user, nothing is cut by it).
        self.dropped += read - read * keep // len(shown)
        return shown[:keep]

    def cut_notice(self) -> bytes:
        return (
            f"\n[nskernel: the sandboxed kernel wrote more than {format_size(self.limit)} to "
            "its stdout/stderr; the rest of it is dropped here (a cap that keeps a kernel from "
            "filling the server's log; set it with limits.output in the provisioner config of "
            "the kernel's kernel.json)]\n"
        ).encode()

    def summary(self) -> bytes:
        return (
            f"[nskernel: {self.dropped} bytes of the sandboxed kernel's output dropped]\n".encode()
        )


class ThreadWriter:
    """Writes to a terminal or pipe that this process can reach only through the inherited,
    blocking descriptor, from a thread of its own: a write that waits stops that thread,
    never the supervising loop (the lifeline's watch, the sandbox's end).

    Why: the non-blocking description of our own that ``_destination`` prefers comes from
    reopening the destination through /proc/self/fd, which checks the inode's
    permissions: a pipe or terminal of another user (root's pipe under runuser or
    ``sudo -u``, a container runtime's FIFO, supervisord's) refuses it (red team 13 F4),
    and O_NONBLOCK set on the shared description would change it for the server and the
    user's shell too. (``RWF_NOWAIT`` would make single writes non-blocking, but only
    anonymous pipes honour it: FIFOs and terminals answer EOPNOTSUPP.)

    The thread writes at most PIPE_BUF bytes at a time, after poll() said POLLOUT: a pipe
    then has that much room, so the write does not wait unless another writer of the same
    pipe (the server) took the room first; a terminal may hold it until its reader
    catches up. Only this thread waits then, with every signal blocked, so that signals
    meant for the launcher reach its main thread, and the process exits whatever the
    thread is doing (a daemon thread). It starts at the first write, after the sandbox
    was made (a user namespace needs a single-threaded process).

    To the loop it is a destination that never blocks: ``write`` takes what fits in a
    small buffer (BlockingIOError when full, BrokenPipeError once the destination is
    gone), and ``room_fd`` is readable while there is room or once it is gone. The
    thread owns the destination's descriptor and closes it itself: closing a descriptor
    another thread waits on would let its number be reused under that thread.
    """

    BUFFER = 4 * select.PIPE_BUF

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._gone = False
        self._closed = False
        self._room = False  # whether the room pipe holds its byte
        # The loop's: readable while there is room (one byte in it, or none).
        self.room_fd, self._room_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # The thread's: closing the write end wakes it from its poll for good.
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._set_room(True)

    def _set_room(self, room: bool) -> None:
        """Under ``_cond`` (or before the thread runs): the room pipe says ``room``."""
        if self._closed or room == self._room:
            return
        if room:
            os.write(self._room_w, b"r")
        else:
            os.read(self.room_fd, 1)
        self._room = room

    def write(self, data: bytes | bytearray) -> int:
        with self._cond:
            if self._gone:
                raise BrokenPipeError("the destination is gone")
            n = min(len(data), self.BUFFER - len(self._pending))
            if n == 0:
                raise BlockingIOError
            self._pending += data[:n]
            self._set_room(len(self._pending) < self.BUFFER)
            self._cond.notify()
        if self._thread is None:
            self._start()
        return n

    def wait_written(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for everything taken to be written (or the
        destination to be gone); whether it was."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending or self._gone, timeout)

    def close(self) -> None:
        """No more writes: the thread ends (at once, unless it waits in a write) and
        closes the destination; what it had not written yet is dropped."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify()
        os.close(self._stop_w)  # wakes the thread's poll
        os.close(self.room_fd)
        os.close(self._room_w)
        if self._thread is None:
            os.close(self._fd)
            os.close(self._stop_r)

    def _start(self) -> None:
        # The new thread inherits this mask: no signal of the launcher's is ever its.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread = threading.Thread(target=self._run, name="nskernel-output", daemon=True)
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    chunk = bytes(self._pending[: select.PIPE_BUF])
                events = dict(poller.poll())
                if self._stop_r in events:
                    return
                n = os.write(self._fd, chunk)  # an error (EPIPE, EIO) if it is gone
                with self._cond:
                    del self._pending[:n]
                    self._set_room(True)
                    self._cond.notify_all()
        except OSError:  # hung up, no reader: nobody to show it to
            pass
        finally:
            with self._cond:
                self._gone = True
                self._pending.clear()
                self._set_room(True)  # the loop then finds it gone and lets it go
                self._cond.notify_all()
            os.close(self._fd)
            os.close(self._stop_r)


class Relay:
    """What the sandbox writes to one pipe, passed on to one of the launcher's own standard
    streams: never blocking, never more than the ``budget`` allows.

    ``dst`` is our own descriptor of the destination (``_destination``): a new,
    non-blocking open file description of a terminal or pipe (setting O_NONBLOCK on the
    inherited descriptor would change it for the server and the user's shell too), a
    duplicate of a regular file's (its offset is shared with the server's own writes, so
    lines land after the server's, never over them), or of a socket, written with
    MSG_DONTWAIT (``kind=SOCKET``), or the inherited descriptor itself, written from a
    ``ThreadWriter`` (``kind=SHARED``) when no description of our own could be had; or -1
    when there is none: output is then read and dropped, so the sandbox never stalls on a
    full pipe either. At most ``LIMIT`` bytes
    wait for a slow destination; past that the pipe is not read, so it is the sandbox's
    writes that wait. ``TerminalText`` makes control characters harmless on the way,
    whatever the destination: a log file ends up on a terminal too (``tail -f``).

    Paced, because this process runs outside the sandbox's CPU limit: a kernel writing
    one byte at a time, or without end past its budget, must not turn it into a core of
    the host's. After a short read the pipe rests ``COALESCE`` seconds (small writes
    gather meanwhile: at most 200 reads a second, yet 12 MiB/s of output); past the
    budget it is read at ``DROP_RATE``, so the kernel slows down instead of stalling.
    """

    LIMIT = 1 << 16
    SMALL = 4096  # bytes: a read shorter than this rests the pipe
    COALESCE = 0.005  # seconds
    DROP_RATE = 1 << 20  # bytes a second read, and dropped, past the budget

    def __init__(
        self,
        src: int,
        dst: int,
        text: TerminalText,
        budget: OutputBudget | None = None,
        *,
        kind: str = DIRECT,
    ) -> None:
        self.src, self.dst, self.text = src, dst, text
        self.budget = budget
        # Wrapping a descriptor leaves its flags alone (no default timeout is set).
        self.sock = socket.socket(fileno=dst) if kind == SOCKET and dst >= 0 else None
        self.writer = ThreadWriter(dst) if kind == SHARED and dst >= 0 else None
        self.buf = bytearray()
        self.eof = False
        self.next_read = 0.0  # time.monotonic() before which the pipe rests

    def register(self, poller: select.poll) -> None:
        if not self.eof and len(self.buf) < self.LIMIT and time.monotonic() >= self.next_read:
            poller.register(self.src, select.POLLIN)
        if self.buf and self.dst >= 0:
            fd, event = self._wait_for()
            poller.register(fd, event)

    def _wait_for(self) -> tuple[int, int]:
        """What to poll for before the next write: room at the destination."""
        if self.writer is not None:
            return self.writer.room_fd, select.POLLIN
        return self.dst, select.POLLOUT

    def wake_in(self) -> int | None:
        """Milliseconds until the resting pipe may be read again; None if it does not rest."""
        left = self.next_read - time.monotonic()
        if self.eof or left <= 0:
            return None
        return max(1, int(left * 1000) + 1)

    def service(self, events: dict[int, int]) -> None:
        if not self.eof and self.src in events:
            self._read()
        if self.dst >= 0 and self._wait_for()[0] in events:
            self._write()

    def _read(self) -> bool:
        """Read once; False if there was nothing to read yet."""
        try:
            data = os.read(self.src, 1 << 16)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
            os.close(self.src)
        read = len(data)
        shown, cut = self._show(data, final=self.eof)
        if cut:
            self.next_read = time.monotonic() + max(read, self.SMALL) / self.DROP_RATE
        elif 0 < read < self.SMALL:
            self.next_read = time.monotonic() + self.COALESCE
        if self.dst >= 0:
            self.buf += shown
            if cut and self.budget is not None and not self.budget.told:
                self.budget.told = True
                self.buf += self.budget.cut_notice()
        return True

    def _show(self, data: bytes, final: bool) -> tuple[bytes, bool]:
        """``data`` as it is shown, charged to the budget; and whether the budget cut some
        of it. Past the budget nothing is decoded any more: it is all dropped."""
        if self.budget is None:
            return self.text.feed(data, final), False
        if self.budget.cut:
            self.budget.charge(b"", len(data))
            return b"", bool(data)
        shown = self.text.feed(data, final)
        passed = self.budget.charge(shown, len(data))
        return passed, len(passed) < len(shown)

    def _write(self) -> None:
        try:
            if self.sock is not None:
                n = self.sock.send(self.buf, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            elif self.writer is not None:
                n = self.writer.write(self.buf)
            else:
                n = os.write(self.dst, self.buf)
            del self.buf[:n]
        except BlockingIOError:
            pass
        except OSError:  # the destination is gone (hung up, no reader): nobody to show it to
            self._drop_terminal()

    def _drop_terminal(self) -> None:
        if self.sock is not None:
            self.sock.close()  # and with it dst
            self.sock = None
        elif self.writer is not None:
            self.writer.close()  # and with it dst, from its thread
            self.writer = None
        elif self.dst >= 0:
            os.close(self.dst)
        self.dst = -1
        self.buf.clear()

    def add(self, data: bytes) -> None:
        """A line of the launcher's own, after what the sandbox wrote."""
        if self.dst >= 0:
            self.buf += data

    def drain(self) -> None:
        """The sandbox is gone: read what the pipe still holds (bounded: a pipe holds 64
        KiB unless a writer lives on, and then at most this much is read)."""
        for _ in range(64):  # reads of up to 64 KiB each
            if self.eof or len(self.buf) >= 4 * self.LIMIT or not self._read():
                break
        if not self.eof:
            shown, _ = self._show(b"", final=True)  # a character cut short, a last CR
            if self.dst >= 0:
                self.buf += shown
            self.eof = True
            os.close(self.src)

    def flush(self, timeout: float) -> None:
        """Show what is left, waiting at most ``timeout`` seconds for the destination,
        then close."""
        deadline = time.monotonic() + timeout
        while self.buf and self.dst >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            p = select.poll()
            p.register(*self._wait_for())
            if syscalls.poll_ready(p, left):
                self._write()
        left = deadline - time.monotonic()
        if self.writer is not None and left > 0:
            self.writer.wait_written(left)
        self._drop_terminal()

    def finish(self, timeout: float) -> None:
        """The sandbox is gone: show what is left, waiting at most ``timeout`` seconds
        for the destination, then close."""
        self.drain()
        self.flush(timeout)


RELAY_FLUSH_TIMEOUT = 1.0  # seconds the destination may take for the last output at exit


def _destination(fd: int) -> tuple[int, str]:
    """Our own descriptor to pass the kernel's output on to the launcher's ``fd``, and how
    ``Relay`` writes it (``DIRECT``, ``SOCKET``, ``SHARED``); -1 when there is nothing to
    write to.

    Never blocking the supervising loop: a terminal or a pipe is opened anew,
    non-blocking, through /proc/self/fd (a pipe nobody reads would otherwise stop this
    process, and with it the kernel's ending). When that is refused (EACCES: a pipe or
    terminal of another user; reopening checks its permissions, writing through the
    inherited descriptor does not), the inherited descriptor is written from a thread
    (``ThreadWriter``); but a pipe that refuses for want of a reader (ENXIO) has nobody
    to show anything to. A socket is written with MSG_DONTWAIT. A regular file is written
    through a duplicate of the inherited descriptor: the same offset as the server's own
    writes (a new open file description would write over the server's lines), and a
    file's writes do not wait for a reader.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # closed: nothing to pass it on to
        return -1, DIRECT
    if stat.S_ISSOCK(mode):
        return os.dup(fd), SOCKET
    if os.isatty(fd) or stat.S_ISFIFO(mode):
        try:
            flags = os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
            return os.open(f"/proc/self/fd/{fd}", flags), DIRECT
        except OSError as e:
            if e.errno == errno.ENXIO:  # a pipe nobody reads any more
                print(f"nskernel: the kernel's output is not shown here: {e}", file=sys.stderr)
                return -1, DIRECT
            # EACCES above all: another user's; what we inherited still writes.
            return os.dup(fd), SHARED
    return os.dup(fd), DIRECT


def sandbox_stdio(
    env: dict[str, str], limit: int = OUTPUT_LIMIT
) -> tuple[tuple[int, int, int], list[Relay]]:
    """The sandbox's stdio: /dev/null and two pipes, never a descriptor of the launcher's.
    Returns (stdio for Sandbox.spawn, relays).

    Whatever jupyter_client gave this process as stdout/stderr (a terminal, the server's
    log file, a pipe, a journal socket) is the host's: held by the sandbox, a log file
    could be truncated, rewritten at any offset (the offset is shared with the server,
    whose next lines would follow forged text) or grown until the disk is full; a
    terminal could be typed into. So the sandbox writes into pipes, and this process
    passes the bytes on (``Relay``), capped by one ``OutputBudget`` for both.
    """
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    stdio = [stdin, -1, -1]
    relays: list[Relay] = []
    utf8 = _locale_is_utf8(env)
    budget = OutputBudget(limit)
    try:
        for fd in (1, 2):
            r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(w, True)  # the sandbox's end behaves like any stdout
            stdio[fd] = w
            dst, kind = _destination(fd)
            relays.append(Relay(r, dst, TerminalText(utf8), budget, kind=kind))
    except BaseException:
        _close_ours(tuple(stdio))  # type: ignore[arg-type]
        for relay in relays:
            relay.finish(0)
        raise
    return (stdio[0], stdio[1], stdio[2]), relays


def _close_ours(stdio: tuple[int, int, int] | None) -> None:
    """After spawn: the sandbox holds its own copies of the pipes and /dev/null."""
    for target, fd in enumerate(stdio or ()):
        if fd != target and fd >= 0:
            os.close(fd)


def supervise(
    sb: Sandbox,
    lifeline_fd: int | None,
    relays: Sequence[Relay] = (),
    linker: SocketLinker | None = None,
) -> int:
    """Wait for the sandbox's init; destroy the sandbox if the server goes away; relay
    its stdout and stderr and publish its kernel's sockets meanwhile. Nothing here blocks
    on anything but poll: this process's own messages go out through the stderr relay
    too (a print to a stderr nobody reads would stop it, and with it the lifeline's
    watch)."""

    def say(text: str) -> None:
        if relays:
            relays[-1].add(f"{text}\n".encode(errors="backslashreplace"))
        else:
            print(text, file=sys.stderr)

    if linker is not None:
        linker.say = say
    pidfd = os.pidfd_open(sb.pid)
    try:
        while True:
            timeout = None
            if linker is not None:
                timeout = linker.step()
                if timeout is None:
                    linker.close()
                    linker = None
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if lifeline_fd is not None:
                poller.register(lifeline_fd, select.POLLIN)
            for relay in relays:
                relay.register(poller)
                wake = relay.wake_in()
                if wake is not None:
                    timeout = wake if timeout is None else min(timeout, wake)
            events = dict(poller.poll(timeout))  # PEP 475: retried after signal handlers
            for relay in relays:
                relay.service(events)
            if lifeline_fd in events:
                try:
                    data = os.read(lifeline_fd, 64)
                except OSError:
                    data = b""
                if not data:
                    return sb.kill() or 0
            if pidfd in events:
                code = sb.wait() or 0
                reason = sb.exit_reason()
                if reason:  # e.g. "killed: memory limit 1 GiB reached", in the server's log
                    say(f"nskernel kernel: {reason}")
                return code
    finally:
        os.close(pidfd)
        if linker is not None:
            linker.close()
        for relay in relays:
            relay.drain()
        budget = relays[-1].budget if relays else None
        if budget is not None and budget.dropped:  # on stderr, after the kernel's last words
            relays[-1].add(budget.summary())
        for relay in relays:
            relay.flush(RELAY_FLUSH_TIMEOUT)


class SocketLinker:
    """Publishes the kernel's unix sockets to the server: each name the kernel binds in
    ``sock/`` (which the sandbox can write) gets a hard link in the host-only ``ep/``
    (:func:`nskernel.paths.link_socket`: only a socket of sandbox root's is linked, never
    what a symlink points to). The server connects in ``ep/`` and keeps retrying until
    the link is there; on a restart the new start's links replace the old ones.

    Polled from :func:`supervise` until every socket is published, first every few
    milliseconds (a kernel binds its sockets within its first second), then less often.
    """

    FIRST_INTERVAL_MS = 5
    MAX_INTERVAL_MS = 250

    def __init__(self, sockets_fd: int, endpoints_fd: int, names: list[str], uid: int) -> None:
        self.sockets_fd, self.endpoints_fd, self.uid = sockets_fd, endpoints_fd, uid
        self.pending = list(names)
        self.say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
        self.interval = self.FIRST_INTERVAL_MS
        self.polls = 0

    def step(self) -> int | None:
        """Link what is there; the poll timeout until the next try (None: all done)."""
        for name in list(self.pending):
            try:
                linked = paths.link_socket(self.sockets_fd, name, self.endpoints_fd, self.uid)
            except OSError as e:
                # Not linked, ever: the server's connection to it fails (it retries),
                # which is all a kernel that did this can get.
                self.say(f"nskernel kernel: not connecting to {name}: {e}")
                linked = True
            if linked:
                self.pending.remove(name)
        if not self.pending:
            return None
        self.polls += 1
        if self.polls % 100 == 0:  # 100 tries each 5, 20, 80 ms apart, then every 250 ms
            self.interval = min(self.interval * 4, self.MAX_INTERVAL_MS)
        return self.interval

    def close(self) -> None:
        for fd in (self.sockets_fd, self.endpoints_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.sockets_fd = self.endpoints_fd = -1


# ---------------------------------------------------------------- removal helper


def remove_kernel_dir(path: str, only_retired: bool) -> int:
    """``--remove``: remove a kernel directory (or its retired starts) without following
    anything in it; exit status 0 once it is gone.

    Rootless, what a sandbox made may belong to the user's subordinate ids (or have no
    permissions left): this process then enters a user namespace with the same id maps
    as the sandbox had, where it holds CAP_DAC_OVERRIDE and CAP_FOWNER over those ids,
    and removes it from there. A fresh, single-threaded process: the provisioner runs
    this as a subprocess, because a multi-threaded one may not create a user namespace.
    """

    def attempt() -> list[OSError]:
        if only_retired:
            return paths.retire_start_dirs(path)
        return paths.remove_tree(path)

    errors = attempt()
    if errors and not userns.is_host_root():
        try:
            _enter_user_namespace_with_sandbox_ids()
        except OSError as e:
            print(f"nskernel: cannot remove {path} from a user namespace: {e}", file=sys.stderr)
            return 1
        errors = attempt()
    for e in errors[:10]:
        print(f"nskernel: cannot remove {e.filename or path}: {e.strerror or e}", file=sys.stderr)
    return 1 if errors else 0


def _enter_user_namespace_with_sandbox_ids() -> None:
    """unshare(CLONE_NEWUSER), with the maps a sandbox of this user gets (written by a
    forked child, which stays outside: only it may write them)."""
    exefile.look_before_entering_a_user_namespace()
    plan = userns.plan_id_maps()
    go_r, go_w = os.pipe()
    me = os.getpid()
    writer = os.fork()
    if writer == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(go_w)
            if os.read(go_r, 1) == b"g":
                userns.write_id_maps_from_parent(me, plan)
                code = 0
        finally:
            os._exit(code)
    os.close(go_r)
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        os.write(go_w, b"g")
    finally:
        os.close(go_w)
        _, status = os.waitpid(writer, 0)
    if status != 0:
        msg = f"could not write the id maps ({plan.describe()})"
        raise PermissionError(1, msg)


# ---------------------------------------------------------------- spare


def _serve_as_spare(fd: int) -> int:
    """Started ahead of a kernel start (nskernel/kernel/spare.py): finish the imports a
    start needs, wait for its orders, then be that start's launcher."""
    from .._linux import caps, seccomp  # noqa: F401 - what _preload_filter imports
    from ..facts import host_facts  # noqa: F401 - what the facts child imports

    _import_kernel_ahead()
    orders = spare.await_orders(fd)
    if orders is None:
        return 0
    argv, env, cwd = orders
    # `ps` shows what a fresh launcher's command line would have been, not a waiting spare.
    show_as([*python_module_command(spare.LAUNCHER_MODULE), *argv])
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
    except OSError as e:
        status_fd = build_parser().parse_args(argv).status_fd
        msg = f"nskernel: the sandboxed kernel could not start: cannot enter {cwd}: {e.strerror}"
        print(msg, file=sys.stderr)
        _report(status_fd, ok=False, error=msg)
        return EXIT_SANDBOX_FAILED
    return main(argv)


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything else: an interrupt of the kernel (killpg) must not end the launcher.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    if args.spare_fd is not None:
        return _serve_as_spare(args.spare_fd)
    cmd = list(args.argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.probe:
        return probe(_namespaces(args.namespaces))
    if args.remove:
        return remove_kernel_dir(args.remove, args.only_retired)
    if not cmd:
        print("no kernel command given after --", file=sys.stderr)
        return 2

    box: list[Sandbox] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if box:
            box[0].send_signal(signum)
        else:
            pending.append(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    if args.seccomp_filter_fd is not None:
        _preload_filter(args)
    try:
        stdio, relays = sandbox_stdio(dict(os.environ), parse_size(args.output_limit))
    except (SpecError, OSError) as e:
        msg = f"nskernel: the sandboxed kernel could not start: {e}"
        print(msg, file=sys.stderr)
        _report(args.status_fd, ok=False, error=msg)
        return EXIT_SANDBOX_FAILED
    try:
        sb, linker = start(args, cmd, pending, stdio)
    except (SandboxError, SpecError, OSError, ValueError) as e:  # ValueError: connection file
        for relay in relays:
            relay.finish(0)
        msg = f"nskernel: the sandboxed kernel could not start: {e}"
        print(msg, file=sys.stderr)
        _report(args.status_fd, ok=False, error=msg)
        return EXIT_SANDBOX_FAILED
    finally:
        _close_ours(stdio)
    box.append(sb)
    _report(args.status_fd, ok=True, pid=sb.pid, hostname=sb.hostname)
    return supervise(sb, args.lifeline_fd, relays, linker)


if __name__ == "__main__":
    sys.exit(main())
