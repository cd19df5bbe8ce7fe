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

ipykernel's parent poller would see PID 1 (the init) as its parent and ``JPY_PARENT_PID``
holds a host PID meaningless inside, so ``JPY_PARENT_PID`` is set to 1, which turns the
poller off; the lifelines replace it.

Exit status: the kernel's, or 125 when the sandbox could not be created (the reason,
with the likely cause and fix, goes to ``--status-fd`` as JSON and to stderr).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import Bind, Sandbox, SandboxError, SandboxSpec, SpecError
from .._linux import syscalls, userns
from ..errors import EXIT_SANDBOX_FAILED
from ..spec import ALL_NAMESPACES, blocked_ancestor, make_limits, python_environment_binds
from . import HOST_FACTS_ENV, SANDBOX_FACTS_ENV

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


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
    p.add_argument("--cpus", metavar="FRACTION", help="CPU share, e.g. 0.5")
    p.add_argument(
        "--socket-dir",
        help="private directory holding the kernel's unix sockets; bound at the same path",
    )
    p.add_argument(
        "--connection-file",
        help="the connection file named in the kernel command; a copy is made in --socket-dir",
    )
    p.add_argument(
        "--lifeline-fd",
        type=int,
        help="fd whose EOF means the server died: destroy the sandbox",
    )
    p.add_argument("--status-fd", type=int, help="fd to write one JSON status line to once started")
    p.add_argument(
        "--no-bind-cwd",
        action="store_true",
        help="do not make the working directory writable inside",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="only check that such a sandbox can be created; exit 0, or 125 with the reason",
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
        sb = Sandbox.spawn(SandboxSpec(namespaces=namespaces), target=lambda: 0)
    except (SandboxError, SpecError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_SANDBOX_FAILED
    code = sb.wait(10)
    if code != 0:
        sb.kill()
        print(f"a probe sandbox did not exit cleanly (status {code})", file=sys.stderr)
        return EXIT_SANDBOX_FAILED
    return 0


def start(args: argparse.Namespace, argv: list[str], pending: list[int]) -> Sandbox:
    """Prepare the socket directory, capture host facts, create the sandbox."""
    cwd = os.getcwd()
    sockdir = args.socket_dir
    if args.connection_file and sockdir:
        # A private copy next to the sockets: the original lives in Jupyter's runtime dir,
        # beside other kernels' files (and keys), and may be unreachable for sandbox root.
        copy = os.path.join(sockdir, "kernel.json")
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(args.connection_file, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        argv = [copy if a == args.connection_file else a for a in argv]

    namespaces = _namespaces(args.namespaces)
    # Without a mount namespace the sandbox sees the host's paths as they are: no binds.
    with_mnt = "mnt" in namespaces
    env = dict(os.environ)
    env["JPY_PARENT_PID"] = "1"
    profile: dict[str, bytes] = {}
    if with_mnt and "IPYTHONDIR" not in env:
        # Inside, HOME is read-only (the host's root is), so IPython would warn and make
        # a temporary profile anyway; the sandbox's private /tmp is the honest place.
        # The user's own config and startup files are carried over into it.
        profile = read_user_profile(argv)
        env["IPYTHONDIR"] = SANDBOX_IPYTHONDIR
    binds: list[Bind] = []
    facts_child = None
    if sockdir:
        facts_path = os.path.join(sockdir, "host.json")
        env[HOST_FACTS_ENV] = facts_path
        env[SANDBOX_FACTS_ENV] = os.path.join(sockdir, "sandbox.json")
        # The host's facts are read by a child while this process imports ipykernel
        # (just below): both take the CPU for a while, and there is more than one core.
        facts_child = _capture_host_facts_in_child(facts_path)
        if with_mnt:
            binds.append(Bind(sockdir, sockdir))
    target = _ipykernel_in_process(argv, env, profile)
    if target is None and profile and sockdir:
        # An exec'd kernel command cannot be handed the profile in memory: it gets an
        # IPython dir holding the copy in its private socket dir, bound inside (and
        # removed with it when the kernel shuts down).
        env["IPYTHONDIR"] = os.path.join(sockdir, "ipython")
        _write_profile(env["IPYTHONDIR"], profile)
    if facts_child is not None:
        _wait_for_host_facts(facts_child, facts_path)
    bind_cwd = not args.no_bind_cwd and cwd != "/"
    if bind_cwd and with_mnt:
        binds.append(Bind(cwd, cwd))
    if with_mnt:
        # Modules the kernel imports later (nskernel.widgets, the user's editable
        # packages) must stay importable when this environment lives under a directory
        # that is private inside (a venv or checkout under /tmp).
        taken = {b.dest for b in binds}
        binds += [b for b in python_environment_binds() if b.dest not in taken]

    if userns.is_host_root():
        from . import staging

        plan = userns.plan_id_maps()
        uid, gid = plan.root_on_host
        items = []
        if sockdir:
            for top, dirs, files in os.walk(sockdir):
                for name in dirs + files:
                    os.chown(os.path.join(top, name), uid, gid)
            os.chown(sockdir, uid, gid)
            items.append(staging.Expose(sockdir))
        if bind_cwd:
            items.append(staging.Expose(cwd, owner_to=(uid, gid)))
        # This Python's environment, when it lives where sandbox root cannot go (a venv
        # under /root): kept reachable, read-only and owned as it is.
        exposed = {it.path for it in items}
        items += [
            staging.Expose(b.source)
            for b in binds
            if b.source not in exposed and blocked_ancestor(b.source, uid, gid) is not None
        ]
        for warning in staging.expose_in_private_mount_namespace(items, uid):
            print(warning, file=sys.stderr)
        os.chdir(cwd)  # re-resolve through the idmapped mount

    spec = SandboxSpec(
        namespaces=namespaces,
        hostname=args.hostname,
        binds=tuple(binds),
        cwd=cwd,
        env=env,
        limits=make_limits(args.memory, args.pids, args.cpus),
        # %%sandbox in this kernel makes nested sandboxes: its filter lets it create user
        # namespaces (the cells' own filters, stacked on it, do not).
        allow_new_userns=True,
    )
    if target is not None:
        # The imported modules are shared copy-on-write with the kernel process; without
        # this, the kernel's first garbage collections write to (and copy) all of them.
        gc.freeze()
    # jupyter_client started us as a session leader without a terminal, and interrupts
    # with killpg(SIGINT): the kernel must stay in our process group.
    if target is not None:
        sb = Sandbox.spawn(spec, target=target, new_session=False)
    else:
        sb = Sandbox.spawn(spec, argv, new_session=False)
    if sockdir:
        sb.write_status_json(env[SANDBOX_FACTS_ENV])
    for sig in pending:
        sb.send_signal(sig)
    return sb


def _capture_host_facts_in_child(path: str) -> int:
    """Fork a child that writes the host's facts to ``path``; its PID."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            from ..facts import capture_host_facts  # imported here only: ~9 ms

            capture_host_facts(path)
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait_for_host_facts(pid: int, path: str) -> None:
    """Reap the facts child; should it have failed, capture here to raise the reason."""
    _, status = os.waitpid(pid, 0)
    if status != 0:
        from ..facts import capture_host_facts

        capture_host_facts(path)


SANDBOX_IPYTHONDIR = "/tmp/.ipython"
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
    for path, data in files.items():
        dest = os.path.join(ipython_dir, path)
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)


def _ipykernel_in_process(
    argv: list[str], env: dict[str, str], profile: dict[str, bytes]
) -> Callable[[], int] | None:
    """For this interpreter's ``-m ipykernel_launcher``: run it in the forked sandbox process.

    Why: the kernel's start time is dominated by interpreter start-up and imports. Exec'ing
    a second interpreter inside the sandbox would pay for both twice (this launcher's, then
    ipykernel's); importing ipykernel here, before the fork, pays once, and the sandbox's
    command process simply calls it. Imports start no threads, so spawning stays allowed.
    Any other kernel command is exec'd as given.
    """
    if len(argv) < 3 or argv[1:3] != ["-m", "ipykernel_launcher"]:
        return None
    try:
        same = os.path.samefile(argv[0], sys.executable)
    except OSError:
        same = False
    if not same:
        return None
    # ipykernel reads some environment at import time (JPY_PARENT_PID becomes a trait
    # default when its module is imported), so the kernel's environment comes first.
    os.environ.clear()
    os.environ.update(env)
    import ipykernel_launcher
    from ipykernel import kernelapp

    args = argv[3:]

    def run_kernel() -> int:
        os.environ.clear()
        os.environ.update(env)
        if profile:
            _write_profile(env["IPYTHONDIR"], profile)
        sys.argv = [ipykernel_launcher.__file__, *args]
        try:
            kernelapp.launch_new_instance(argv=args)
        finally:
            _let_the_control_thread_finish(kernelapp.IPKernelApp)
            # The command process ends with os._exit: run what a normal exit would
            # (IPython's history session end, ipykernel's cleanups).
            atexit._run_exitfuncs()
        return 0

    return run_kernel


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


def supervise(sb: Sandbox, lifeline_fd: int | None) -> int:
    """Wait for the sandbox's init; destroy the sandbox if the server goes away."""
    pidfd = os.pidfd_open(sb.pid)
    watch = [pidfd] if lifeline_fd is None else [pidfd, lifeline_fd]
    while True:
        ready = syscalls.readable(watch)  # PEP 475: retried after handlers
        if lifeline_fd in ready:
            try:
                data = os.read(lifeline_fd, 64)
            except OSError:
                data = b""
            if not data:
                return sb.kill() or 0
        if pidfd in ready:
            code = sb.wait() or 0
            reason = sb.exit_reason()
            if reason:  # e.g. "killed: memory limit 1 GiB reached", in the server's log
                print(f"nskernel kernel: {reason}", file=sys.stderr)
            return code


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything else: an interrupt of the kernel (killpg) must not end the launcher.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = build_parser().parse_args(argv)
    cmd = list(args.argv)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.probe:
        return probe(_namespaces(args.namespaces))
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
    try:
        sb = start(args, cmd, pending)
    except (SandboxError, SpecError, OSError) as e:
        msg = f"nskernel: the sandboxed kernel could not start: {e}"
        print(msg, file=sys.stderr)
        _report(args.status_fd, ok=False, error=msg)
        return EXIT_SANDBOX_FAILED
    box.append(sb)
    _report(args.status_fd, ok=True, pid=sb.pid, hostname=sb.hostname)
    return supervise(sb, args.lifeline_fd)


if __name__ == "__main__":
    sys.exit(main())
