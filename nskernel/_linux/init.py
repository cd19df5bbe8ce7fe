"""The sandbox's init: PID 1 of its PID namespace.

Someone has to be PID 1. The kernel gives PID 1 no default signal actions (a stray
SIGTERM does nothing unless handled), re-parents every orphan in the namespace to it,
and kills every other process of the namespace when it exits. So this small loop:

- reaps every zombie, not just its own child's;
- forwards TERM, HUP, QUIT, USR1, USR2 to the command, and SIGINT to the command's
  process group, as a terminal's Ctrl-C would (the sandbox runs in a session of its
  own, so the caller's Ctrl-C reaches only the caller, which passes it on). Where the
  command shares the caller's process group instead (the kernel: jupyter_client
  interrupts with ``killpg``), SIGINT already reached it and is not forwarded again;
- exits with the command's status (128+N when the command died of signal N), which
  takes the rest of the sandbox down with it;
- kills the whole sandbox when the lifeline (a pipe whose write end only the host side
  holds) reaches EOF, so a SIGKILLed launcher, server or kernel leaks no process.

Without a PID namespace the same loop runs as a subreaper, so orphans of the command
still come back to it and are killed with it.

Once the command is forked, init execs ``nskernel-init`` (``init.c``, compiled when the
package is built), which does the same in C: a forked Python init would otherwise hold
a copy-on-write image of the launcher's heap for the sandbox's whole life. The loop
here is the fallback when that program was not built or cannot be executed, and what
``NSKERNEL_INIT=python`` chooses.
"""

from __future__ import annotations

import os
import signal

from . import syscalls as sc

# Resolved, as /proc/PID/exe shows it once init runs it.
NATIVE_INIT = os.path.join(os.path.dirname(os.path.realpath(__file__)), "nskernel-init")
INIT_ENV = "NSKERNEL_INIT"  # "python": keep the Python loop (debugging, tests)

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
HANDLED = (*FORWARDED, signal.SIGCHLD, signal.SIGINT)


def prepare_signals() -> tuple[int, int]:
    """Install wake-up handlers before the command is forked (no signal may be lost).

    Returns the read and write ends of the wake-up pipe.
    """
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for sig in HANDLED:
        # A no-op Python handler: the C-level handler writes the signal number to the
        # wake-up fd, which the loop below reads.
        signal.signal(sig, lambda *_: None)
    return wake_r, wake_w


# Written by the build hook when it could not compile the native init: one line, why.
MISSING_NOTE = NATIVE_INIT + ".missing"


def fallback_reason() -> str | None:
    """Why sandboxes get the Python init here, or None when nskernel-init is in place."""
    if os.environ.get(INIT_ENV) == "python":
        return None  # asked for: nothing to warn about
    if os.path.exists(NATIVE_INIT):
        return None
    try:
        with open(MISSING_NOTE) as f:
            return f.readline().strip() or "it was not built"
    except OSError:
        return "it was not built (no C compiler when nskernel was installed?)"


def open_native() -> int | None:
    """An O_PATH descriptor of ``nskernel-init``, or None to use the Python loop.

    Opened by the setup child before any namespace exists: inside, the package's
    directory may be hidden (a private /tmp) or not searchable by sandbox root.
    """
    if os.environ.get(INIT_ENV) == "python":
        return None
    try:
        return os.open(NATIVE_INIT, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None  # not built (no C compiler at install time): the Python loop serves


def exec_native(
    fd: int,
    child: int,
    lifeline_fd: int,
    wake_r: int,
    *,
    pid_namespace: bool,
    sigint_to_group: bool,
) -> None:
    """Become ``nskernel-init`` (``execveat`` of ``fd``). Returns only on failure.

    The handled signals are blocked first: blocked signals stay pending across exec,
    where the native init reads them from a signalfd; those caught before that went to
    the wake-up pipe (``wake_r``; -1 when none was made: the signals were blocked from
    the start), which it drains. On failure everything is as it was: the signal mask too,
    so signals blocked before the call stay blocked until the caller has handlers.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    fds = [f for f in (lifeline_fd, wake_r) if f >= 0]
    for f in fds:
        os.set_inheritable(f, True)
    argv = [
        "nskernel-init",
        str(child),
        str(lifeline_fd),
        str(wake_r),
        str(int(pid_namespace)),
        str(int(sigint_to_group)),
    ]
    try:
        os.execve(fd, argv, os.environ)  # the environment only keeps init recognisable
    except OSError:  # e.g. a noexec mount: the caller runs the Python loop instead
        for f in fds:
            os.set_inheritable(f, False)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def spawn_native(
    fd: int,
    plan: bytes,
    keep_fds: tuple[int, ...],
    lifeline_fd: int,
    *,
    pid_namespace: bool,
    sigint_to_group: bool,
) -> None:
    """Become ``nskernel-init`` in spawn mode: it forks the command and makes the command's
    last setup steps itself (``init.c``, ``spawn_command``). Returns only on failure, with
    everything as it was (the caller then forks the command in Python).

    ``plan``: ``contain._native_spawn_plan``, handed over in a memfd. ``keep_fds``: the
    report pipe, the passed descriptors and the terminal, which must survive the exec
    (nskernel-init closes its own copies once the command is forked). The handled signals
    must be blocked already (see ``contain._start_command``).
    """
    mem = os.memfd_create("nskernel-spawn-plan", os.MFD_CLOEXEC)
    try:
        view = memoryview(plan)
        while view:
            view = view[os.write(mem, view) :]
        fds = [f for f in dict.fromkeys((lifeline_fd, mem, *keep_fds)) if f > 2]
        was = {f: os.get_inheritable(f) for f in fds}
        for f in fds:
            os.set_inheritable(f, True)
        argv = [
            "nskernel-init",
            "spawn",
            str(lifeline_fd),
            "-1",
            str(int(pid_namespace)),
            str(int(sigint_to_group)),
            str(mem),
        ]
        try:
            os.execve(fd, argv, os.environ)
        except OSError:  # e.g. a noexec mount: the caller forks the command in Python
            for f, inheritable in was.items():
                os.set_inheritable(f, inheritable)
    finally:
        os.close(mem)


def reset_signals_for_command() -> None:
    """The command must start with default dispositions and an empty mask."""
    signal.set_wakeup_fd(-1)
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _wait_status_to_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                found.extend(kids)
                stack.extend(kids)
        except OSError:
            continue
    return found


def kill_everything(pid_namespace: bool) -> None:
    if pid_namespace:
        # As PID 1, kill(-1) reaches every other process of this PID namespace.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    for _ in range(10):  # new children may appear while we kill; repeat until none
        kids = _descendants(os.getpid())
        if not kids:
            return
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap_all()


def _reap_all() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def run_init_loop(
    child: int, lifeline_fd: int, wake_r: int, *, pid_namespace: bool, sigint_to_group: bool
) -> int:
    """Supervise ``child`` until it exits or the lifeline closes. Returns the exit code."""
    sc.set_process_name("nskernel-init")
    code: int | None = None
    while code is None:
        try:
            ready = sc.readable([lifeline_fd, wake_r])
        except InterruptedError:
            ready = [wake_r]
        if lifeline_fd in ready:
            try:
                data = os.read(lifeline_fd, 64)
            except OSError:
                data = b""
            if not data:  # the host side is gone: nobody may outlive it
                kill_everything(pid_namespace)
                return 128 + signal.SIGKILL
        if wake_r in ready:
            try:
                signums = os.read(wake_r, 512)
            except BlockingIOError:
                signums = b""
            for signum in signums:
                try:
                    if signum in FORWARDED:
                        os.kill(child, signum)
                    elif signum == signal.SIGINT and sigint_to_group:
                        os.killpg(child, signum)  # the command leads its own group
                except ProcessLookupError:
                    pass
        for pid, status in _reap_all():
            if pid == child:
                code = _wait_status_to_code(status)
    kill_everything(pid_namespace)
    return code
