"""Creating a sandbox, as a checklist. Read top to bottom; the order is the point.

Processes (the launcher must be single-threaded: unshare(CLONE_NEWUSER) fails with
EINVAL in a process with more than one thread):

    launcher ── fork ──► setup child ── fork ──► init (PID 1) ── fork ──► command (PID 2)
                          exits once init exists;     then execs nskernel-init
                          init is re-parented to the launcher, a child subreaper

The setup child and init are forked with libc's fork() (``syscalls.fork_lean``): they run
only this module's code, and Python's at-fork handlers cost over a millisecond per fork
in a warm server. The command gets ``os.fork()`` when it runs Python (a target).

Parent side (launcher)                    Child side
1. validate the spec (no privileges)
2. fork ────────────────────────────────► 3. unshare(CLONE_NEWUSER); report "userns"
4. write setgroups, gid_map, uid_map ───► 5. unshare each other namespace, one at a time
                                             (so a failure names the namespace)
                                          6. open bind sources (O_PATH), with the caller's
                                             access rights, in the new mount namespace
                                          7. become sandbox root
                                          8. fork init, report its PID, exit
                                          init: 9. hostname  10. lo up  11. mounts
                                                12. report "ready", fork the command
                                                14. exec nskernel-init (init.c), if built
                                          command: 13. reset signals, close what it was
                                                not given, drop capabilities, no_new_privs,
                                                syscall filter; exec (or run target)

With a user and a mount namespace, the mounts are locked (see ``locks_mounts``): step 5
creates only MNT and PID (and a throwaway NET for a locked /sys beneath the real one);
the launcher writes staging maps (host ids mapped to themselves) in step 4; init does
11. mounts, 11b. unshare(CLONE_NEWUSER|CLONE_NEWNS) again, with the sandbox's real maps
(``userns.enter_nested_from_child``), then IPC, UTS, NET, 9. hostname, 10. lo up and
11c. /sys and /dev/mqueue for them. Sandbox root keeps every capability over its own
namespaces but can no longer remount the read-only host root or a ``--ro-bind``
read-write, nor unmount /proc to uncover the host's.

Messages travel child → launcher as JSON lines on the ``report`` pipe (each write is one
line, under PIPE_BUF, so atomic). The pipe is close-on-exec: EOF after "ready" means the
command was exec'd (a target is not waited for: the launcher returns at "ready"). The
launcher → child ``go`` pipe releases step 5.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Sequence

from .._record import record, replace
from . import confine, init, limits, mntns, netns, syscalls, userns, utsns

ORDER_AFTER_USER = ("ipc", "uts", "net", "mnt", "pid")


@record(frozen=True)
class ChildPlan:
    """Everything the child side needs, decided before fork."""

    namespaces: frozenset[str]
    hostname: str | None
    mounts: mntns.MountPlan | None
    cwd: str | None
    cwd_required: bool  # an explicit --chdir must exist inside; the caller's cwd may not
    setgroups_allowed: bool
    argv: Sequence[str] | None = None
    env: dict[str, str] | None = None
    target: Callable[[], int | None] | None = None
    # Fork the target with os.fork() (Python's at-fork handlers run in it) or plain fork().
    target_at_fork: bool = True
    pass_fds: tuple[int, ...] = ()
    # The sandbox's fds 0, 1, 2 (None: the caller's own). The setup child dup2()s them
    # into place before anything else, so no other descriptor of the caller's survives.
    stdio: tuple[int, int, int] | None = None
    # A new session for the whole sandbox: it never shares the caller's controlling
    # terminal (TIOCSTI would let it type into the caller's shell, CVE-2017-5226). Off
    # only for a caller that has no terminal and needs the sandbox in its process group
    # (the kernel launcher: jupyter_client interrupts with killpg).
    new_session: bool = True
    # A terminal the command makes its controlling one (a pty nskernel relays), or None.
    controlling_tty: int | None = None
    cgroup_dirs: tuple[str, ...] = ()
    rlimits: tuple[tuple[int, int], ...] = ()
    # Degraded modes the caller allows (--allow-degraded: proc, sys, hostname).
    allow_degraded: frozenset[str] = frozenset()
    # Capabilities, no_new_privs and the syscall filter of the command (see ``confine``),
    # decided and compiled by the launcher; None runs the command with neither.
    confinement: confine.Confinement | None = None
    # Set when the mounts are locked (see ``locks_mounts``): the launcher wrote the staging
    # maps, init's helper writes these for the sandbox's own, nested user namespace.
    final_maps: userns.IdMapPlan | None = None


@record
class Pipes:
    report_r: int
    report_w: int
    go_r: int
    go_w: int
    lifeline_r: int
    lifeline_w: int

    @classmethod
    def create(cls) -> Pipes:
        fds: list[int] = []
        for _ in range(3):
            fds.extend(os.pipe2(os.O_CLOEXEC))
        return cls(*fds)


def report(fd: int, **msg: object) -> None:
    os.write(fd, (json.dumps(msg) + "\n").encode())


def _fail(fd: int, step: str, err: BaseException, namespace: str | None = None) -> None:
    errno = getattr(err, "errno", None)
    strerror = getattr(err, "strerror", None) or str(err)
    try:
        report(fd, event="error", step=step, errno=errno, strerror=strerror, namespace=namespace)
    except OSError:
        pass


# ---------------------------------------------------------------- child side


def setup_child(plan: ChildPlan, pipes: Pipes, native_init: int | None) -> int:
    """Steps 3-8. Runs in the forked setup child; returns its exit status.

    ``native_init``: ``init.open_native()``, opened by the launcher before the fork (the
    child's own Python work costs copy-on-write faults; the launcher's does not).
    """
    rep = pipes.report_w
    keep = {rep, pipes.go_r, pipes.lifeline_r, *plan.pass_fds}
    if native_init is not None:
        keep.add(native_init)
    if plan.controlling_tty is not None:
        keep.add(plan.controlling_tty)
    if plan.mounts is not None:
        keep |= plan.mounts.detached_fds()
    if plan.stdio is not None:
        syscalls.install_stdio(plan.stdio)
    syscalls.close_fds_except(keep)
    if plan.new_session:
        os.setsid()  # the setup child is no group leader (forked): this cannot fail
    # The setup child must not outlive the launcher while it waits for the maps.
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 9)

    if plan.cgroup_dirs:
        try:  # before any namespace exists: every process of the sandbox is accounted
            limits.join_from_child(list(plan.cgroup_dirs))
        except OSError as e:
            _fail(rep, "join the sandbox's cgroups", e)
            return 1

    if "user" in plan.namespaces:
        try:
            syscalls.unshare(syscalls.CLONE_NEWUSER)  # step 3
        except OSError as e:
            _fail(rep, "unshare(CLONE_NEWUSER)", e, "user")
            return 1
        report(rep, event="userns")
        if os.read(pipes.go_r, 1) != b"g":  # step 4 happens in the launcher
            return 1
    os.close(pipes.go_r)

    for ns in _created_by_setup_child(plan):  # step 5
        flag = syscalls.NAMESPACE_FLAGS[ns]
        try:
            syscalls.unshare(flag)
        except OSError as e:
            _fail(rep, f"unshare(CLONE_NEW{_FLAG_NAMES[ns]})", e, ns)
            return 1

    if plan.mounts is not None and plan.mounts.binds:
        try:  # step 6, still with the caller's own access rights
            plan = replace(plan, mounts=plan.mounts.with_sources_opened())
        except OSError as e:
            _fail(rep, f"open bind source {e.filename}", e, "mnt")
            return 1

    if "user" in plan.namespaces:
        try:
            if plan.final_maps is not None:
                userns.become_staging_from_child(
                    plan.final_maps, setgroups_allowed=plan.setgroups_allowed
                )
            else:
                userns.become_root_from_child(setgroups_allowed=plan.setgroups_allowed)  # 7
        except OSError as e:
            _fail(rep, "become sandbox root (setresuid/setresgid)", e, "user")
            return 1

    nesting = host_proc = None
    if plan.final_maps is not None:
        nesting = userns.NestingPipes.create()
        # Opened before init exists: its pivot_root will move our root (and /proc) too.
        host_proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    pid = syscalls.fork_lean()  # step 8: with CLONE_NEWPID unshared, this child is PID 1
    if pid == 0:
        code = 1
        try:
            if host_proc is not None:
                # A handle on the host's /proc: through it a sandbox lists and reads every
                # host process. Only the setup child, outside, may hold it.
                os.close(host_proc)
            code = _init_main(plan, pipes, nesting, native_init)
        except BaseException as e:
            _fail(rep, "init", e)
        finally:
            os._exit(code)
    report(rep, event="init", pid=pid)
    if nesting is not None and host_proc is not None and plan.final_maps is not None:
        # Stay until init's step 11b: only we, outside its new user namespace, can map it.
        flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
        proc_dir = os.open(str(pid), flags, dir_fd=host_proc)
        os.close(host_proc)
        try:
            userns.write_nested_maps_from_setup_child(nesting, proc_dir, plan.final_maps)
        except OSError as e:
            _fail(rep, "write the sandbox's uid_map/gid_map (step 11b)", e, "user")
            return 1
        finally:
            os.close(proc_dir)
    return 0


_FLAG_NAMES = {"user": "USER", "pid": "PID", "net": "NET", "mnt": "NS", "uts": "UTS", "ipc": "IPC"}


def locks_mounts(namespaces: frozenset[str]) -> bool:
    """Whether init steps into a nested user namespace to lock its mounts (step 11b).

    Only with a user namespace (without one, the command is the caller itself: host root
    as root) and a mount namespace (nothing to lock otherwise).
    """
    return "user" in namespaces and "mnt" in namespaces


def _locks_mounts(plan: ChildPlan) -> bool:
    return plan.final_maps is not None


def _created_by_setup_child(plan: ChildPlan) -> list[str]:
    if not _locks_mounts(plan):
        return [ns for ns in ORDER_AFTER_USER if ns in plan.namespaces]
    # IPC, UTS and NET are created by init in the nested user namespace, which must own
    # them so that sandbox root keeps its capabilities there (hostname, ip, ping). A
    # throwaway network namespace now gives the locked /sys beneath the real one.
    early = ["net"] if plan.mounts is not None and plan.mounts.fresh_sys else []
    return early + [ns for ns in ("mnt", "pid") if ns in plan.namespaces]


def _name_and_loopback(plan: ChildPlan) -> None:
    """Steps 9 and 10; a failure raises a _StepError naming the step."""
    if plan.hostname is not None:
        try:
            utsns.set_hostname_from_child(plan.hostname)
        except OSError as e:
            # A seccomp filter of the container's may refuse sethostname: keep the name
            # the UTS namespace inherited, if the caller allowed it (--allow-degraded).
            if not (e.errno == 1 and "hostname" in plan.allow_degraded):
                raise _StepError(f"sethostname({plan.hostname!r})", e) from e
            mntns.DEGRADED.append("hostname")
    if "net" in plan.namespaces:
        try:
            netns.bring_up_loopback_from_child()
        except OSError as e:
            raise _StepError("bring up lo (ioctl SIOCSIFFLAGS)", e) from e


class _StepError(OSError):
    """An OSError that knows which setup step raised it."""

    def __init__(self, step: str, err: OSError) -> None:
        super().__init__(err.errno, err.strerror)
        self.step = step


def _init_main(
    plan: ChildPlan, pipes: Pipes, nesting: userns.NestingPipes | None, native_init: int | None
) -> int:
    rep = pipes.report_w
    pid_ns = "pid" in plan.namespaces
    step = ""
    if nesting is not None:
        assert plan.mounts is not None
        ns: str | None = "mnt"
        os.close(nesting.hop_r)
        os.close(nesting.done_w)
        try:
            step = "mounts"
            mntns.setup_mounts_from_child(
                plan.mounts, plan.cwd, plan.cwd_required, locked=True
            )  # step 11
            step = "lock the mounts: unshare(CLONE_NEWUSER|CLONE_NEWNS) again"
            ns = "user"
            userns.enter_nested_from_child(nesting)  # step 11b
            for ns in ("ipc", "uts", "net"):
                if ns in plan.namespaces:
                    step = f"unshare(CLONE_NEW{_FLAG_NAMES[ns]})"
                    syscalls.unshare(syscalls.NAMESPACE_FLAGS[ns])
            ns = None
            _name_and_loopback(plan)  # steps 9, 10
            mntns.mount_namespace_views_from_child(plan.mounts)  # step 11c
        except mntns.MountStepError as e:
            _fail(rep, e.step, e, "mnt")
            return 1
        except OSError as e:
            _fail(rep, getattr(e, "step", step), e, ns)
            return 1
        return _start_command(plan, pipes, pid_ns, native_init)
    try:
        _name_and_loopback(plan)  # steps 9, 10
        if plan.mounts is not None:
            step = "mounts"
            mntns.setup_mounts_from_child(plan.mounts, plan.cwd, plan.cwd_required)  # step 11
        elif plan.cwd:
            step = f"chdir({plan.cwd!r})"
            os.chdir(plan.cwd)
    except mntns.MountStepError as e:
        _fail(rep, e.step, e, "mnt")
        return 1
    except OSError as e:
        step = getattr(e, "step", step)
        _fail(rep, step, e, {"mounts": "mnt"}.get(step))
        return 1

    return _start_command(plan, pipes, pid_ns, native_init)


def _start_command(plan: ChildPlan, pipes: Pipes, pid_ns: bool, native_init: int | None) -> int:
    rep = pipes.report_w
    if not _adopted_by_launcher(pipes.lifeline_r, arm=pid_ns):
        return 128 + signal.SIGKILL  # the launcher is gone: nobody may outlive it
    if native_init is not None:
        # nskernel-init takes the signals over from a signalfd: blocked from now on, they
        # stay pending across its exec. No Python handlers, no wake-up pipe (a third of a
        # millisecond of init's work before "ready", measured: copy-on-write faults).
        signal.pthread_sigmask(signal.SIG_BLOCK, init.HANDLED)
        wake_r = wake_w = -1
    else:
        wake_r, wake_w = init.prepare_signals()
    if not pid_ns:
        # Without a PID namespace, init is the subreaper its command's orphans come back
        # to, so it can kill them with the sandbox. Set before the fork: a command that
        # orphans a process at once would otherwise hand it to the launcher, outside the
        # sandbox's lifetime. The attribute survives init's exec of nskernel-init.
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    if mntns.DEGRADED:
        report(rep, event="degraded", what=list(mntns.DEGRADED))
    report(rep, event="ready")  # step 12
    # In a session of its own the command leads its own process group: init passes a
    # SIGINT (the caller's Ctrl-C, forwarded) on to that group, as a terminal would.
    to_group = plan.new_session
    if native_init is not None and plan.target is None:
        # 13+14 at once: nskernel-init forks the command and makes its last setup steps
        # in C (init.c, spawn_command), so the command is not one more copy of this
        # Python process (returns only if nskernel-init cannot be executed).
        spawn_plan = _native_spawn_plan(plan, rep)
        if spawn_plan is not None:
            keep = (rep, *plan.pass_fds)
            if plan.controlling_tty is not None:
                keep += (plan.controlling_tty,)
            init.spawn_native(
                native_init,
                spawn_plan,
                keep,
                pipes.lifeline_r,
                pid_namespace=pid_ns,
                sigint_to_group=to_group,
            )
    # A command that is exec'd needs nothing of Python's at-fork handling; a target runs
    # on in Python (the caller's code: random must be reseeded, threading reset...),
    # unless its caller said it needs none of that (``Sandbox.spawn(target_at_fork=)``).
    at_fork = plan.target is not None and plan.target_at_fork
    child = os.fork() if at_fork else syscalls.fork_lean()
    if child == 0:
        _command_main(plan, pipes, wake_r, wake_w, native_init)  # never returns
    os.close(rep)
    if native_init is not None:  # 14. become the native init (returns only if it cannot)
        init.exec_native(
            native_init,
            child,
            pipes.lifeline_r,
            wake_r,
            pid_namespace=pid_ns,
            sigint_to_group=to_group,
        )
        if wake_r < 0:  # it could not: the Python loop needs its handlers, then the signals
            wake_r, _ = init.prepare_signals()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, init.HANDLED)
    return init.run_init_loop(
        child, pipes.lifeline_r, wake_r, pid_namespace=pid_ns, sigint_to_group=to_group
    )


def _native_spawn_plan(plan: ChildPlan, report_fd: int) -> bytes | None:
    """What nskernel-init needs to start the command (init.c, ``read_spawn_plan``, says
    the format); None for what only the Python path reports properly (execve's
    ValueError: a NUL byte in an argument, a variable name that is empty or holds "=")."""
    assert plan.argv is not None
    env = plan.env if plan.env is not None else os.environ
    try:
        argv = [os.fsencode(a) for a in plan.argv]
        envp = []
        for k, v in env.items():
            key = os.fsencode(k)
            if not key or b"=" in key:
                return None
            envp.append(key + b"=" + os.fsencode(v))
    except (TypeError, UnicodeError):
        return None
    if any(b"\0" in x for x in (*argv, *envp)):
        return None
    c = plan.confinement
    program = c.filter.program if c is not None and c.filter.program is not None else b""
    numbers = [
        report_fd,
        int(plan.new_session),
        -1 if plan.controlling_tty is None else plan.controlling_tty,
        int(c is not None),
        c.last_cap if c is not None else 0,
        c.cap_mask if c is not None else 0,
        c.filter.flags if c is not None and program else 0,
        len(plan.pass_fds),
        *plan.pass_fds,
        len(plan.rlimits),
        *(x for pair in plan.rlimits for x in pair),
    ]
    fields = [b"nsk1", *(str(n).encode() for n in numbers)]
    fields += [str(len(argv)).encode(), *argv, str(len(envp)).encode(), *envp]
    fields.append(str(len(program)).encode())
    return b"\0".join(fields) + b"\0" + program


def _adopted_by_launcher(lifeline_r: int, *, arm: bool) -> bool:
    """Wait until the launcher is our parent; with ``arm``, then die with it.

    Ending a sandbox must not need its init's cooperation: a sandbox can ptrace-stop or
    starve its init, which then never reads the lifeline's EOF. With a PID namespace,
    init gets PR_SET_PDEATHSIG(SIGKILL): if the launcher dies (even by SIGKILL), the
    kernel kills init, and with init every process of its PID namespace. The death
    signal belongs to the parent at the time it dies, and ours was the setup child: the
    launcher writes one byte on the lifeline once it has reaped the setup child, which
    made it our parent (it is a child subreaper). The command does not exist yet, so
    nothing can stop us in between. Without a PID namespace a SIGKILLed init would leave
    the command's processes behind, so there init keeps its lifeline duty alone (see
    SECURITY.md: a partial set of namespaces is not a boundary). False: the launcher
    died before that (EOF); nothing must start.
    """
    try:
        if os.read(lifeline_r, 1) != b"a":
            return False
    except OSError:
        return False
    if not arm:
        return True
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    # Had the launcher died between its byte and our prctl, no signal would come: then
    # its end of the lifeline is closed already.
    return not syscalls.readable([lifeline_r], 0)


def _command_main(
    plan: ChildPlan, pipes: Pipes, wake_r: int, wake_w: int, native_init: int | None
) -> None:
    """Step 13: the command. Never returns."""
    rep = pipes.report_w
    code = 1
    try:
        init.reset_signals_for_command()
        for fd in (wake_r, wake_w, pipes.lifeline_r):
            if fd >= 0:  # no wake-up pipe when nskernel-init takes over
                os.close(fd)
        if native_init is not None:
            os.close(native_init)
        for fd in plan.pass_fds:
            os.set_inheritable(fd, True)
        if plan.controlling_tty is not None:
            os.setsid()  # only a session leader may take a controlling terminal
            syscalls.take_controlling_tty(plan.controlling_tty)
        elif plan.new_session:
            os.setpgid(0, 0)  # a group of its own, which init sends SIGINT to
        limits.apply_rlimits_from_child(list(plan.rlimits))
        # The sandbox starts with fds 0-2 plus exactly what it was passed: nothing of
        # the setup (the report pipe stays for a failed exec, close-on-exec).
        keep = {rep, *plan.pass_fds}
        if plan.controlling_tty is not None:
            keep.add(plan.controlling_tty)
        syscalls.close_fds_except(keep)
        if plan.confinement is not None:
            # Last: capabilities, no_new_privs, the syscall filter. Nothing runs without.
            try:
                confine.apply_from_child(plan.confinement)
            except OSError as e:
                report(rep, event="error", step="confine", errno=e.errno, strerror=str(e))
                code = 125
                raise SystemExit(code) from None
        if plan.target is not None:
            os.close(rep)
            if plan.env is not None:  # a target runs on in this interpreter: no execve
                os.environ.clear()
                os.environ.update(plan.env)
            result = plan.target()
            code = result if isinstance(result, int) else 0
        else:
            assert plan.argv is not None
            env = plan.env if plan.env is not None else os.environ
            # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: without
            # this, `nskernel run -- yes | head -1` would end in EPIPE errors, not SIGPIPE.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            try:
                os.execvpe(plan.argv[0], list(plan.argv), env)
            except OSError as e:
                code, why = _exec_failure(plan.argv[0], e, env.get("PATH"))
                report(
                    rep,
                    event="error",
                    step="exec",
                    errno=e.errno,
                    strerror=why,
                    command=plan.argv[0],
                    exit_code=code,
                )
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass  # the command may have closed them (or its reader left): exit regardless
        os._exit(code)


def _exec_failure(command: str, err: OSError, path: str | None) -> tuple[int, str]:
    """Exit code and reason, the shell's way: 127 not found, 126 found but not runnable.

    execvp reports EACCES when any PATH entry was unsearchable, even if the command
    exists nowhere, so "not found" is decided by looking it up ourselves.
    """
    import shutil  # only when exec failed: its imports cost every `nskernel run` otherwise

    if isinstance(err, FileNotFoundError) or (
        "/" not in command and not shutil.which(command, path=path)
    ):
        return 127, "command not found"
    return 126, err.strerror or str(err)
