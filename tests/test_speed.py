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
