"""What the spawn path's speed-ups must not change (issue 19). Speed itself is measured
in benchmarks/, never asserted here.

- With nskernel-init, the Python init no longer installs signal handlers before it
  becomes nskernel-init: the handled signals are blocked instead, and stay pending across
  its exec. When that exec fails (a noexec mount, say) the Python loop takes over: its
  handlers must be in place before the signals are unblocked, or a SIGCHLD that arrived
  meanwhile is discarded (SIGCHLD's default is to ignore it) and the sandbox never ends.
- The launcher reads the sandbox's facts at "ready", while init forks the command: they
  are init's and must be its final ones (the nested user namespace, its maps).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from nskernel._linux.procfs import namespace_ids

pytestmark = pytest.mark.userns


@pytest.fixture
def native_init_not_executable(monkeypatch, tmp_path):
    """nskernel-init's descriptor names a file that cannot be executed: init's execveat
    fails (EACCES) and the Python loop runs, as it does on a noexec mount."""
    from nskernel._linux import init

    fake = tmp_path / "nskernel-init"
    fake.write_bytes(b"")
    fake.chmod(0o644)
    monkeypatch.delenv(init.INIT_ENV, raising=False)
    monkeypatch.setattr(init, "open_native", lambda: os.open(fake, os.O_PATH | os.O_CLOEXEC))
    real_exec_native = init.exec_native

    def slow_exec_native(*args, **kwargs):
        # Init is a fork of this process, so it runs this: the command exits (or the
        # signal arrives) while init's signals are blocked, before the exec fails.
        time.sleep(0.3)
        return real_exec_native(*args, **kwargs)

    monkeypatch.setattr(init, "exec_native", slow_exec_native)


def _init_program(pid: int) -> str:
    return os.path.basename(os.readlink(f"/proc/{pid}/exe"))


@pytest.mark.spawns_here
@pytest.mark.usefixtures("native_init_not_executable")
def test_when_nskernel_init_cannot_be_executed_the_python_loop_still_sees_the_command_exit():
    from nskernel import Sandbox, SandboxSpec

    # `true` exits while init's signals are still blocked: its SIGCHLD must reach the
    # Python loop's handler once the exec failed, not be dropped.
    for _ in range(3):
        sb = Sandbox.spawn(SandboxSpec(), ["true"])
        try:
            assert sb.wait(timeout=30) == 0, "init never noticed its command exit"
        finally:
            if sb.returncode is None:
                sb.kill()


@pytest.mark.spawns_here
@pytest.mark.usefixtures("native_init_not_executable")
def test_when_nskernel_init_cannot_be_executed_a_signal_sent_at_once_is_forwarded():
    from nskernel import Sandbox, SandboxSpec

    # The command's answer to SIGTERM is its own exit code: 143 would mean the signal
    # killed init (a default disposition), not that it was forwarded.
    script = 'trap "exit 7" TERM; echo ready; sleep 60 & wait'
    r, w = os.pipe()
    sb = Sandbox.spawn(SandboxSpec(), ["sh", "-c", script], stdio=(0, w, 2))
    os.close(w)
    try:
        with os.fdopen(r, "rb") as out:
            assert out.readline() == b"ready\n"
        sb.terminate()  # init is still in its slowed, failing exec: blocked, pending
        assert sb.wait(timeout=30) == 7
    finally:
        if sb.returncode is None:
            sb.kill()


@pytest.mark.spawns_here
def test_with_nskernel_init_signals_still_reach_the_command_and_init_is_native():
    from nskernel import Sandbox, SandboxSpec
    from nskernel._linux import init

    if not os.access(init.NATIVE_INIT, os.X_OK) or os.environ.get(init.INIT_ENV) == "python":
        pytest.skip("nskernel-init is not in use here")
    sb = Sandbox.spawn(SandboxSpec(), ["sleep", "60"])
    try:
        sb.terminate()
        assert sb.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if sb.returncode is None:
            sb.kill()
    sb = Sandbox.spawn(SandboxSpec(), ["sleep", "60"])
    try:
        assert _init_program(sb.pid) == "nskernel-init"
    finally:
        sb.kill()


@pytest.mark.spawns_here
def test_facts_read_at_ready_are_the_sandboxs_final_ones():
    from nskernel import Sandbox, SandboxSpec

    sb = Sandbox.spawn(SandboxSpec(), ["sleep", "60"])
    try:
        facts = sb.facts()
        assert facts["namespaces"] == namespace_ids(sb.pid)
        for which in ("uid_map", "gid_map"):
            with open(f"/proc/{sb.pid}/{which}") as f:
                rows = [[int(x) for x in line.split()] for line in f if line.strip()]
            assert facts[which] == rows
        # The nested user namespace (locked mounts): sandbox root is uid 0 inside.
        assert facts["uid_map"][0][0] == 0
        assert facts["namespaces"]["user"] != namespace_ids(os.getpid())["user"]
        assert facts["confinement"]["no_new_privs"] is True
    finally:
        sb.kill()


# ---------------------------------------------------------------- the command, started in C
#
# With nskernel-init, a command that is exec'd is forked by it and makes its last setup
# steps in C (init.c, spawn_command) instead of in a fork of the Python init. What the
# command starts with must be exactly what the Python path gives it.

_STATE_SCRIPT = (
    'grep -E "^(SigBlk|SigIgn|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp)" /proc/self/status; '
    "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; "
    "cut -d' ' -f5,6,8 /proc/$$/stat; ulimit -n; ulimit -u; umask; pwd; env | sort"
)


def _command_state(kind: str, monkeypatch, extra_fd: int) -> str:
    from nskernel import Sandbox, SandboxSpec
    from nskernel._linux import init

    if kind == "python":
        monkeypatch.setenv(init.INIT_ENV, "python")
    else:
        monkeypatch.delenv(init.INIT_ENV, raising=False)
    r, w = os.pipe()
    try:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "ODD": "a b\tc"}
        sb = Sandbox.spawn(
            SandboxSpec(env=env), ["sh", "-c", _STATE_SCRIPT], stdio=(0, w, 2), pass_fds=[extra_fd]
        )
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            out = f.read().decode()
        assert sb.wait(timeout=30) == 0
        return out
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


@pytest.mark.spawns_here
def test_a_command_started_by_nskernel_init_starts_as_one_started_by_the_python_init(
    monkeypatch,
):
    from nskernel._linux import init

    if not os.access(init.NATIVE_INIT, os.X_OK):
        pytest.skip("nskernel-init is not built here")
    extra_r, extra_w = os.pipe()
    try:
        native = _command_state("native", monkeypatch, extra_w)
        python = _command_state("python", monkeypatch, extra_w)
    finally:
        os.close(extra_r)
        os.close(extra_w)
    assert native == python
    # And what both give: nothing blocked or ignored, no_new_privs, the filter, the fds.
    assert "SigBlk:\t0000000000000000" in native
    assert "SigIgn:\t0000000000000000" in native
    assert "NoNewPrivs:\t1" in native and "Seccomp:\t2" in native
    assert f"0 1 2 3 {extra_w} " in native or f"0 1 2 {extra_w} " in native


@pytest.mark.spawns_here
@pytest.mark.parametrize("kind", ["native", "python"])
def test_exec_failures_say_the_same_with_either_init(kind, monkeypatch):
    from nskernel import CommandNotFound, Sandbox, SandboxSpec
    from nskernel._linux import init

    if kind == "python":
        monkeypatch.setenv(init.INIT_ENV, "python")
    else:
        monkeypatch.delenv(init.INIT_ENV, raising=False)
        if not os.access(init.NATIVE_INIT, os.X_OK):
            pytest.skip("nskernel-init is not built here")
    cases = [
        (["no-such-command-here"], 127, "command not found"),
        (["/no/such/dir/cmd"], 127, "command not found"),
        (["/etc"], 126, "Permission denied"),  # found, not runnable
        (["/etc/passwd"], 126, "Permission denied"),
    ]
    spec = SandboxSpec(env={"PATH": "/usr/bin:/bin"})
    for argv, code, text in cases:
        with pytest.raises(CommandNotFound) as caught:
            Sandbox.spawn(spec, argv)
        assert caught.value.exit_code == code, argv
        assert f"{argv[0]}: {text} inside the sandbox" in str(caught.value)
