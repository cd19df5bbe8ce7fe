"""A hostile command against the sandbox's own plumbing (issue 14): what it inherits,
and whether it can outlive the host side's decision to end it.

Each test names the item of the hardening issue it backs. Everything runs as whoever
runs the suite (CI: root, then an unprivileged user), through the real entry points:
`nskernel run`, ``Sandbox.spawn`` (in a fresh process: the pytest process may have
threads), a ``%%sandbox`` cell in a real ipykernel, and the sandboxed kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT, nskernel_cmd, require
from tests.hostile import inside, pids_with_cmdline, start_background, wait_for
from tests.magic_helpers import execute, kernel

pytestmark = pytest.mark.userns

# Prints {fd: {target, foreign, o_path}} for every open descriptor but the listing's own.
# "foreign": a path on a mount that is not in this process's mount namespace (a handle
# on the host's tree); "o_path": an O_PATH handle (how /proc leaked into sandboxes).
FD_CHECK = r"""
import json, os, re
own = {int(line.split()[0]) for line in open("/proc/self/mountinfo")}
found = {}
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
        with open(f"/proc/self/fdinfo/{fd}") as f:
            info = f.read()
    except OSError:
        continue  # the listing's own descriptor, closed by now
    mnt = int(re.search(r"mnt_id:\s*(\d+)", info).group(1))
    flags = int(re.search(r"flags:\s*([0-7]+)", info).group(1), 8)
    found[fd] = {
        "target": target,
        "foreign": target.startswith("/") and mnt not in own,
        "o_path": bool(flags & 0o10000000),
    }
print(json.dumps(found), flush=True)
"""


def _no_host_handles(found: dict[str, dict]) -> None:
    """Beyond fds 0-2 (the caller's choice, e.g. its /dev/null), nothing points outside."""
    bad = {fd: d for fd, d in found.items() if int(fd) > 2 and (d["foreign"] or d["o_path"])}
    assert not bad, f"descriptors reaching outside the sandbox: {bad}"


# ---------------------------------------------------------------- item 5: descriptors


def test_run_command_starts_with_fds_0_1_2_only(nsk):
    r = nsk("run", "--", sys.executable, "-I", "-c", FD_CHECK)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert sorted(int(fd) for fd in found) == [0, 1, 2], found
    _no_host_handles(found)


def test_api_target_starts_with_fds_0_1_2_and_what_it_was_passed(tmp_path):
    # In a fresh process: Sandbox.spawn needs a single-threaded caller.
    script = textwrap.dedent(
        f"""
        import io, json, os, sys, contextlib
        from nskernel import Sandbox, SandboxSpec
        r, w = os.pipe()
        def target():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec({FD_CHECK!r}, {{}})
            os.write(w, buf.getvalue().encode())
            return 0
        sb = Sandbox.spawn(SandboxSpec(), target=target, pass_fds=(w,))
        os.close(w)
        data = os.read(r, 1 << 20)
        print(json.dumps({{"w": w, "found": json.loads(data), "code": sb.wait()}}))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["code"] == 0
    assert sorted(int(fd) for fd in out["found"]) == [0, 1, 2, out["w"]], out["found"]
    _no_host_handles(out["found"])


def test_sandbox_cell_has_no_handle_on_the_host():
    with kernel() as (_km, kc):
        res = execute(kc, "%%sandbox\n" + FD_CHECK)
        assert res.status == "ok", res.error_text
        _no_host_handles(res.json_line())
        res = execute(kc, "%%sandbox --name fdcheck\n" + FD_CHECK)
        assert res.status == "ok", res.error_text
        _no_host_handles(res.json_line())


# ---------------------------------------------------------------- item 6: ending it

# Inside: seize PID 1 (the sandbox's init) and stop it, so it can no longer act on its
# lifeline or forward signals; start a process to find on the host; then wait forever.
STOP_INIT = r"""
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
seize = libc.ptrace(PTRACE_SEIZE, 1, None, None)
err = ctypes.get_errno()
stop = libc.ptrace(PTRACE_INTERRUPT, 1, None, None)
os.spawnlp(os.P_NOWAIT, "sleep", "sleep", sys.argv[1])
print(json.dumps({"seize": seize, "errno": err, "stop": stop}), flush=True)
time.sleep(1000)
"""


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z")


def _start_stopping_init(tmp_path, *flags: str):
    tag = f"1000.{uuid.uuid4().int % 10**9:09d}"
    # With its default capabilities a sandbox cannot trace its init at all (it holds
    # fewer than init: tests/test_seccomp.py); given SYS_PTRACE it can, and the host
    # side must end it anyway.
    proc, facts = start_background(
        tmp_path,
        "--cap-add",
        "SYS_PTRACE",
        *flags,
        "--",
        sys.executable,
        "-I",
        "-c",
        STOP_INIT,
        tag,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = json.loads(proc.stdout.readline())
    assert seen["seize"] == 0, f"the attack itself failed (errno {seen['errno']}): {seen}"
    init = facts["pid"]
    wait_for(lambda: _state(init) == "t", what="init to be in a tracing stop")
    wait_for(lambda: pids_with_cmdline(f"sleep {tag}"), what="the tagged sleep")
    return proc, init, tag


def test_sigkill_of_nskernel_run_ends_a_sandbox_that_stopped_its_init(tmp_path):
    proc, init, tag = _start_stopping_init(tmp_path)
    try:
        proc.kill()  # nothing of nskernel can act now but the kernel
        proc.wait(10)
        wait_for(lambda: _gone(init), what="the stopped init to die")
        wait_for(lambda: not pids_with_cmdline(f"sleep {tag}"), what="the sandbox's sleep to die")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_timeout_ends_a_sandbox_that_stopped_its_init_and_says_so(tmp_path):
    proc, init, tag = _start_stopping_init(tmp_path, "--timeout", "2")
    try:
        assert proc.wait(30) == 124
        # Gone when nskernel reports it, not some time later.
        assert _gone(init)
        assert not pids_with_cmdline(f"sleep {tag}")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_sigterm_to_nskernel_run_with_a_stopped_init_ends_it_stop_timeout_later(tmp_path):
    # SIGTERM is forwarded through init, which is stopped: the command never gets it,
    # as with any command that ignores SIGTERM. nskernel does not wait for it forever
    # (red team 21 F1): --stop-timeout later the sandbox is killed, without its help.
    proc, init, tag = _start_stopping_init(tmp_path, "--stop-timeout", "1")
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 137
        # Gone when nskernel reports it, not some time later.
        assert _gone(init)
        assert not pids_with_cmdline(f"sleep {tag}")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@contextlib.contextmanager
def _running(
    *args: str, stdout: int = subprocess.PIPE, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """`nskernel run ARGS` in the background (stderr kept); killed and reaped after."""
    proc = subprocess.Popen(
        nskernel_cmd("run", *args), stdout=stdout, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("how", ["stop-timeout", "second signal", "stopped itself"])
def test_a_command_that_will_not_end_is_killed_when_asked_twice_or_stop_timeout_later(
    tmp_path, how
):
    """Red team 21 F1: a command that ignores every signal nskernel forwards, or stops
    itself so that none is ever delivered, kept `nskernel run` waiting forever. Now the
    first INT/TERM/HUP/QUIT starts --stop-timeout, and a second one ends it at once."""
    tag = f"1000.{uuid.uuid4().int % 10**9:09d}"
    if how == "stopped itself":
        script = f"sleep {tag} & echo ready; kill -STOP $$; echo never"
    else:
        script = f"trap '' INT TERM HUP QUIT; sleep {tag} & echo ready; wait"
    stop_timeout = "60" if how == "second signal" else "1"
    with _running("--stop-timeout", stop_timeout, "--", "sh", "-c", script) as proc:
        assert proc.stdout.readline() == "ready\n"
        wait_for(lambda: pids_with_cmdline(f"sleep {tag}"), what="the tagged sleep")
        if how == "stopped itself":
            shell = [p for p in pids_with_cmdline(script) if _state(p) is not None]
            wait_for(lambda: any(_state(p) == "T" for p in shell), what="the shell to stop")
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.3)  # the first one is the command's to act on
        if how == "second signal":
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 137, err
    says = {
        "stop-timeout": "killed: it had not ended 1 s after SIGTERM",
        "second signal": "killed: SIGINT came while it was still ending",
        "stopped itself": "killed: it had not ended 1 s after SIGTERM",
    }[how]
    assert f"nskernel run: {says}" in err
    assert not pids_with_cmdline(f"sleep {tag}")


def test_a_sigterm_while_the_sandbox_is_made_is_not_lost():
    """A TERM that comes before nskernel's loop waits (while the sandbox is made, or just
    after) is handled as one that comes later: forwarded, and --stop-timeout runs. It was
    forwarded at best, and a command that ignored it kept nskernel waiting for ever."""
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
        tag = f"1000.{uuid.uuid4().int % 10**9:09d}"
        script = f"trap '' TERM; exec sleep {tag}"
        args = ("--stop-timeout", "1", "--", "sh", "-c", script)
        with _running(*args, stdout=subprocess.DEVNULL) as proc:
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        # nskernel killed before it made anything (-15), the command killed by the TERM
        # before its trap was set (143), or the sandbox ended by nskernel (137): never
        # waiting.
        assert proc.returncode in (-signal.SIGTERM, 143, 137), (delay, proc.returncode, err)
        assert not pids_with_cmdline(f"sleep {tag}"), delay


def test_timeouts_longer_than_poll_can_wait_work(nsk):
    """Red team 23 F2: poll(2) takes an int of milliseconds; --timeout 3000000 (35 days)
    or --stop-timeout 1e308 overflowed it: a traceback, exit status 1, and no line."""
    r = nsk("run", "--timeout", "3000000", "--", "sh", "-c", "echo ran; exit 3")
    assert (r.returncode, r.stdout) == (3, "ran\n"), r.stderr
    script = "trap '' TERM; echo ready; exec sleep 100"
    with _running("--stop-timeout", "1e308", "--", "sh", "-c", script) as proc:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 137, err
    assert err == "nskernel run: killed: SIGTERM came while it was still ending\n"


def test_api_kill_ends_a_sandbox_that_stopped_its_init(tmp_path):
    tag = f"1000.{uuid.uuid4().int % 10**9:09d}"
    script = textwrap.dedent(
        f"""
        import json, os, sys, time
        from nskernel import Sandbox, SandboxSpec
        r, w = os.pipe()
        sb = Sandbox.spawn(
            SandboxSpec(cap_add=("SYS_PTRACE",)),
            [sys.executable, "-I", "-c", {STOP_INIT!r}, {tag!r}],
            stdio=(0, w, 2),
        )
        os.close(w)
        line = b""
        while not line.endswith(b"\\n"):
            line += os.read(r, 1)
        seen = json.loads(line)
        deadline = time.monotonic() + 10
        while open(f"/proc/{{sb.pid}}/stat").read().rsplit(")", 1)[1].split()[0] != "t":
            assert time.monotonic() < deadline, "init never stopped"
            time.sleep(0.02)
        code = sb.kill()
        print(json.dumps({{"seen": seen, "code": code, "init": sb.pid}}))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["seen"]["seize"] == 0, out
    assert out["code"] == 128 + signal.SIGKILL
    assert _gone(out["init"])
    wait_for(lambda: not pids_with_cmdline(f"sleep {tag}"), what="the sandbox's sleep to die")


# ---------------------------------------------------------------- item 4: groups

GROUPS_INSIDE = r"""
import json, os
with open("/proc/self/status") as f:
    line = next(l for l in f if l.startswith("Groups:"))
print(json.dumps({"groups": line.split()[1:], "getgroups": os.getgroups()}))
"""


def _as_user_with_an_extra_group(
    *args: str, command: str = "run", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`nskernel COMMAND ARGS` as uid 4321 (no /etc/subuid range) in extra group 4999."""
    return subprocess.run(
        [sys.executable, "-m", "nskernel", command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
        user=4321,
        group=4321,
        extra_groups=[4999],
        env={
            **{k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")},
            "HOME": "/nonexistent",
            "LANG": "C.UTF-8",
        },
    )


@pytest.mark.root
def test_groups_that_cannot_be_dropped_refuse_the_sandbox_and_say_how_to_fix_it():
    r = _as_user_with_an_extra_group("--", sys.executable, "-I", "-c", GROUPS_INSIDE)
    assert r.returncode == 125, (r.stdout, r.stderr)
    assert "supplementary groups (4999)" in r.stderr
    assert "/etc/subgid" in r.stderr and "--keep-groups" in r.stderr
    assert r.stdout == ""  # nothing ran


@pytest.mark.root
def test_keep_groups_runs_with_them_and_warns():
    r = _as_user_with_an_extra_group(
        "--keep-groups", "--", sys.executable, "-I", "-c", GROUPS_INSIDE
    )
    assert r.returncode == 0, r.stderr
    assert "--keep-groups: your supplementary groups (4999)" in r.stderr
    assert json.loads(r.stdout)["groups"] != []  # still attached (shown unmapped)


def test_no_supplementary_group_reaches_the_sandbox(nsk):
    if not IS_ROOT and not [g for g in os.getgroups() if g != os.getegid()]:
        require(
            "the caller has no supplementary group, so dropping them is not shown: put "
            "the test user in one (.ci/run adds nskci to nskci-extra)"
        )
    r = nsk("run", "--", sys.executable, "-I", "-c", GROUPS_INSIDE)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"groups": [], "getgroups": []}


@pytest.mark.rootless
def test_rootless_without_a_subgid_map_groups_refuse_the_api(tmp_path):
    if not [g for g in os.getgroups() if g != os.getegid()]:
        require("the caller has no supplementary group (.ci/run adds nskci to nskci-extra)")
    script = textwrap.dedent(
        """
        from nskernel import Sandbox, SandboxSpec, SandboxError
        try:
            Sandbox.spawn(SandboxSpec(use_subids=False), ["true"])
        except SandboxError as e:
            print("refused:", e)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert r.stdout.startswith("refused: your supplementary groups"), (r.stdout, r.stderr)


# ---------------------------------------------------------------- item 8: /dev


def test_dev_is_fresh_and_minimal_and_other_terminals_are_out_of_reach(nsk):
    master, slave = os.openpty()  # a terminal of the host's, like the user's other ones
    try:
        name = os.ttyname(slave)
        script = f"""
import os, pty
found = {{"dev": sorted(os.listdir("/dev")), "pts": sorted(os.listdir("/dev/pts"))}}
found["host_pty"] = attempt(os.open, {name!r}, os.O_WRONLY | os.O_NOCTTY)
m, s = pty.openpty()  # a pty of its own still works
found["own_pty"] = os.ttyname(s)
report(**found)
"""
        seen = inside(nsk, script)
    finally:
        os.close(master)
        os.close(slave)
    nodes = ["null", "zero", "full", "random", "urandom", "tty", "ptmx"]
    assert seen["dev"] == sorted(
        [*nodes, "pts", "shm", "mqueue", "fd", "stdin", "stdout", "stderr"]
    )
    assert seen["pts"] == ["ptmx"]
    assert seen["host_pty"] == "ENOENT"
    assert seen["own_pty"] == "/dev/pts/0"


# ---------------------------------------------------------------- item 9: --pids

SPREAD = r"""
import json, os, time
forked = 0
for i in range(1, 200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            os.setresuid(i, i, i)  # move to another uid, if one is mapped: a fresh count
        except OSError:
            pass
        time.sleep(30)
        os._exit(0)
    forked += 1
with open("/proc/self/uid_map") as f:
    rows = len(f.read().splitlines())
print(json.dumps({"forked": forked, "uid_map_rows": rows}))
"""


def test_pids_limit_holds_even_across_uids(nsk):
    r = nsk("run", "--pids", "16", "--timeout", "20", "--", sys.executable, "-I", "-c", SPREAD)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    # init, python and its children: at most 16 in all.
    assert seen["forked"] <= 14, seen


# ---------------------------------------------------------------- safer defaults


def test_homes_are_hidden_and_home_is_private_and_writable(nsk, tmp_path):
    home = os.path.expanduser("~")
    script = f"""
found = {{"home_listing": sorted(os.listdir({home!r})), "HOME": os.environ["HOME"]}}
found["write"] = attempt(write_file, os.path.join({home!r}, "made-inside"))
found["others"] = sorted(os.listdir("/home")) if os.path.isdir("/home") else None
found["root"] = attempt(os.listdir, "/root")
report(**found)
"""
    seen = inside(nsk, script)
    assert seen["HOME"] == home
    assert seen["home_listing"] == []
    assert seen["write"] == "ok"
    assert not os.path.exists(os.path.join(home, "made-inside"))  # stayed inside
    user_home = os.path.basename(home) if home.startswith("/home/") else None
    assert seen["others"] in ([], [user_home])
    assert seen["root"] == "ok" if home == "/root" else seen["root"] in ("ok", "EACCES")


def test_share_home_shows_the_homes_read_only(nsk):
    home = os.path.expanduser("~")
    script = f"""
report(
    listing=attempt(os.listdir, {home!r}),
    write=attempt(write_file, os.path.join({home!r}, "nsk-share-home-probe")),
)
"""
    seen = inside(nsk, script, "--share-home")
    # Visible as the host has it: the caller's own home (rootless), or /root, which
    # sandbox root (nobody on the host) may not even list (root).
    assert seen["listing"] == ("EACCES" if IS_ROOT else "ok")
    assert seen["write"] in ("EROFS", "EACCES")


def test_environment_is_an_allow_list(nsk):
    env = {
        **os.environ,
        "JUPYTERHUB_API_TOKEN": "secret-token",
        "AWS_SECRET_ACCESS_KEY": "secret-key",
        "SSH_AUTH_SOCK": "/run/agent.sock",
        "MY_SETTING": "kept",
    }
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    r = nsk("run", "--", sys.executable, "-I", "-c", dump, env=env)
    seen = json.loads(r.stdout)
    for secret in ("JUPYTERHUB_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "MY_SETTING"):
        assert secret not in seen
    assert seen["PATH"] == os.environ["PATH"]
    r = nsk(
        "run",
        "--env",
        "MY_SETTING",
        "--env",
        "X=1",
        "--",
        sys.executable,
        "-I",
        "-c",
        dump,
        env=env,
    )
    seen = json.loads(r.stdout)
    assert seen["MY_SETTING"] == "kept" and seen["X"] == "1"
    assert "JUPYTERHUB_API_TOKEN" not in seen
    r = nsk("run", "--keep-env", "--", sys.executable, "-I", "-c", dump, env=env)
    assert json.loads(r.stdout)["JUPYTERHUB_API_TOKEN"] == "secret-token"


def test_sandbox_cell_gets_no_secret_of_the_kernels_environment():
    with kernel() as (_km, kc):
        execute(kc, "import os; os.environ['AWS_SECRET_ACCESS_KEY'] = 'secret-key'")
        res = execute(kc, "%%sandbox\nimport os\nprint('AWS_SECRET_ACCESS_KEY' in os.environ)")
        assert res.status == "ok", res.error_text
        # The server was started before the secret was set: a new server sees it too.
        assert res.stdout == "False\n"


def test_sandbox_root_is_never_host_root_even_for_single_namespaces(nsk):
    # The design's own example, %%sandbox --pid --net, and nskernel run --net: as root,
    # these used to run as host uid 0 with a writable host filesystem.
    for flags in (("--net",), ("--pid", "--net"), ("--uts",)):
        r = nsk("run", *flags, "--", "sh", "-c", "cat /proc/self/uid_map; id -u")
        assert r.returncode == 0, r.stderr
        first = r.stdout.split("\n")[0].split()
        assert first[0] == "0" and first[1] != "0", (flags, r.stdout)


def test_kernel_shutdown_ends_a_sandboxed_kernel_that_stopped_its_init(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from nskernel.kernel import install
    from tests.kernel_helpers import run_cell

    # By default the kernel cannot trace its init at all; with SYS_PTRACE it can.
    install.install(name="nsk-ptrace", prefix=str(tmp_path / "prefix"), cap_add=["SYS_PTRACE"])
    kernels = tmp_path / "prefix" / "share" / "jupyter" / "kernels"
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
    km = KernelManager(kernel_name="nsk-ptrace", kernel_spec_manager=ksm)
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    km.start_kernel(cwd=str(nbdir))
    kc = km.client()
    kc.start_channels()
    tag = f"1000.{uuid.uuid4().int % 10**9:09d}"
    try:
        kc.wait_for_ready(timeout=60)
        attack = STOP_INIT.replace("time.sleep(1000)", "").replace("sys.argv[1]", repr(tag))
        out = run_cell(kc, attack)
        assert json.loads(out["stdout"])["seize"] == 0, out
        launcher = km.provisioner.pid
        with open(f"/proc/{launcher}/task/{launcher}/children") as f:
            init = int(f.read().split()[0])
        wait_for(lambda: _state(init) == "t", what="init to be in a tracing stop")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert _gone(init)
    wait_for(lambda: not pids_with_cmdline(f"sleep {tag}"), what="the sandbox's sleep to die")


@pytest.mark.root
def test_doctor_says_up_front_when_groups_cannot_be_dropped():
    r = _as_user_with_an_extra_group(command="doctor", timeout=120)
    assert r.returncode == 1, r.stdout
    assert "supplementary groups: 4999 CANNOT be dropped" in r.stdout
    assert "--add-subgids" in r.stdout and "--keep-groups" in r.stdout
    assert "Sandboxes do NOT start here" in r.stdout


# ---------------------------------------------------------------- the notebook's directory


def test_a_bind_never_shows_nskernels_runtime_directory_again(nsk, tmp_path):
    from nskernel.paths import runtime_dir

    state = runtime_dir()  # other kernels' sockets and keys live here
    secret = os.path.join(state, f"secret-{uuid.uuid4().hex[:8]}")
    with open(secret, "w") as f:
        f.write("a kernel's key\n")
    try:
        parent = os.path.dirname(state)
        look = f"import os\ntry:\n    print(os.listdir({state!r}))\nexcept OSError as e:\n"
        look += "    print(e.strerror)"
        r = nsk("run", "--bind", parent, "--", sys.executable, "-I", "-c", look)
        assert r.returncode == 0, r.stderr
        # Empty (covered again), or out of sandbox root's reach as on the host (as root,
        # a 0700 directory of root's): never its entries.
        assert r.stdout in ("[]\n", "Permission denied\n"), r.stdout
    finally:
        os.unlink(secret)
        from nskernel.paths import remove_runtime_entry

        remove_runtime_entry(secret)


LOOK_AT_RUNTIME = r"""
import json, os, sys
seen = {}
for path in sys.argv[1:]:
    try:
        seen[path] = sorted(os.listdir(path))
    except OSError as e:
        seen[path] = e.strerror
print(json.dumps(seen))
"""


@pytest.mark.parametrize("variable", ["JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR"])
def test_jupyters_runtime_directory_is_hidden_wherever_it_is(nsk, var_tmp, variable):
    """Red team 22 F1: Jupyter keeps a server's token (jpserver-PID.json), its cookie
    secret and every kernel's key in its runtime directory. Under a home it was hidden
    with it; where JUPYTER_RUNTIME_DIR or JUPYTER_DATA_DIR put it (/srv, /opt, /work...)
    a sandbox read them. Now it is hidden wherever it is, also where a bind shows it."""
    data = var_tmp / "jupyter"
    runtime = var_tmp / "jupyter" / "runtime"
    runtime.mkdir(parents=True)
    (runtime / "jpserver-4242.json").write_text('{"token": "the-servers-token"}\n')
    (runtime / "kernel-1.json").write_text('{"key": "a-kernels-key"}\n')
    (data / "kernels").mkdir()  # the rest of Jupyter's data directory stays as it is
    for path in (data, runtime, data / "kernels"):
        path.chmod(0o755)
    for path in runtime.iterdir():
        path.chmod(0o644)
    env = {**os.environ, variable: str(runtime if variable == "JUPYTER_RUNTIME_DIR" else data)}
    look = [sys.executable, "-I", "-c", LOOK_AT_RUNTIME, str(runtime), str(data), "/tmp/seen"]
    r = nsk("run", "--ro-bind", f"{data}:/tmp/seen", "--", *look, env=env)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen[str(runtime)] == [], seen
    assert sorted(seen[str(data)]) == ["kernels", "runtime"], seen
    assert seen["/tmp/seen"] == ["kernels", "runtime"], seen  # the bind shows the rest...
    assert "token" not in r.stdout and "kernel-1.json" not in r.stdout
    r = nsk("run", "--ro-bind", f"{data}:/tmp/seen", "--", "ls", "/tmp/seen/runtime", env=env)
    assert r.returncode == 0 and r.stdout == "", r.stdout  # ...and not what it holds


def test_jupyters_runtime_directory_is_hidden_from_sandbox_cells(var_tmp, monkeypatch):
    """Red team 24 F1: the sandbox server behind %%sandbox starts with an allow-listed
    environment, which said nothing of JUPYTER_RUNTIME_DIR: a cell read the server's
    token and the kernel's own key there; nor of JUPYTER_TOKEN_FILE (red team 25 F2).
    The kernel now tells the server where."""
    from jupyter_client.manager import KernelManager

    runtime = var_tmp / "runtime"
    runtime.mkdir(mode=0o755)
    (runtime / "jpserver-4242.json").write_text('{"token": "the-servers-token"}\n')
    (runtime / "jpserver-4242.json").chmod(0o644)
    token = var_tmp / "token"  # and the server's token file (red team 25 F2)
    token.write_text("the-servers-token\n")
    token.chmod(0o644)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("JUPYTER_TOKEN_FILE", str(token))
    km = KernelManager(kernel_name="python3", connection_file=str(runtime / "kernel-cells.json"))
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        assert execute(kc, "%load_ext nskernel").status == "ok"
        look = (
            "import os\n"
            f"print(sorted(os.listdir({str(runtime)!r})) if os.path.exists({str(runtime)!r}) "
            "else 'gone')\n"
            f"print(repr(open({str(token)!r}).read()) if os.path.exists({str(token)!r}) "
            "else 'gone')"
        )
        # The token file's directory (var_tmp, holding the runtime directory too) is
        # hidden whole (red team 26 F2).
        for cell in (f"%%sandbox\n{look}", f"%%sandbox --name runtime1\n{look}"):
            res = execute(kc, cell)
            assert (res.status, res.stdout) == ("ok", "gone\ngone\n"), (
                res.stdout,
                res.error_text,
            )
        execute(kc, "%sandbox rm runtime1")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.root
def test_a_secret_file_is_hidden_where_a_bind_mount_shows_it_again(nsk, var_tmp):
    """Red team 25 F1b: a server's secret file hidden at its own path only was read where
    a bind mount on the host showed its directory again. Now it is hidden there too, and
    a --bind of the directory holding it is refused (red team 27 F2: hidden alone on top
    of such a bind, it came back when the host replaced it). (Root: the bind mount is
    made in a mount namespace of this test's own.)"""
    secrets, alias = var_tmp / "secrets", var_tmp / "alias"
    secrets.mkdir(mode=0o755)
    alias.mkdir(mode=0o755)
    (secrets / "token").write_text("the-token\n")
    (secrets / "token").chmod(0o644)
    look = (
        f"for p in {str(secrets / 'token')!r} {str(alias / 'token')!r}; "
        'do printf "%s=[%s] " "$p" "$(cat "$p" 2>/dev/null)"; done'
    )
    env = {**os.environ, "JUPYTER_TOKEN_FILE": str(secrets / "token")}
    r = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" "$1" && shift && exec "$@"', str(secrets), str(alias),
            *nskernel_cmd("run", "--", "sh", "-c", look),
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "the-token" not in r.stdout, r.stdout
    assert r.stdout.count("=[]") == 2, r.stdout
    r = nsk("run", "--ro-bind", f"{secrets}:/tmp/seen", "--", "cat", "/tmp/seen/token", env=env)
    assert r.returncode == 125 and "the-token" not in r.stdout, (r.stdout, r.stderr)
    assert f"{secrets} holds a Jupyter server's secret" in r.stderr, r.stderr


def test_jupyters_secrets_under_tmp_are_hidden_where_a_bind_shows_them(nsk, tmp_path):
    """Red team 26 F1: paths under /tmp were left out as private inside anyway, but a
    bind of a directory there (a notebook's directory /tmp/proj, a --bind) showed
    Jupyter's runtime directory and a token file again."""
    proj = tmp_path / "proj"
    runtime, secrets = proj / "runtime", proj / "secrets"
    for d in (proj, runtime, secrets):
        d.mkdir(parents=True)
    (runtime / "jpserver-4242.json").write_text('{"token": "the-servers-token"}\n')
    (secrets / "token").write_text("the-token\n")
    (proj / "notes.txt").write_text("shown\n")
    for d in (tmp_path, proj, runtime, secrets):
        d.chmod(0o755)
    for f in (runtime / "jpserver-4242.json", secrets / "token", proj / "notes.txt"):
        f.chmod(0o644)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    env["JUPYTER_TOKEN_FILE"] = str(secrets / "token")
    look = [sys.executable, "-I", "-c", LOOK_AT_RUNTIME, str(proj), str(runtime), str(secrets)]
    r = nsk("run", "--bind", str(proj), "--", *look, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        str(proj): ["notes.txt", "runtime", "secrets"],  # the rest of it is shown
        str(runtime): [],
        str(secrets): [],
    }


def _token_read_across(token: Path, change: Callable[[], None], read: Path | None = None) -> str:
    """What a sandbox reads at ``read`` (default: ``token``, the server's token file, named
    so in its environment), ten times a second, for a second before and after the host
    makes ``change``: "[...]" per read."""
    look = f'while :; do printf "[%s]" "$(cat {read or token} 2>/dev/null)"; sleep 0.1; done'
    env = {**os.environ, "JUPYTER_TOKEN_FILE": str(token)}
    with _running("--", "sh", "-c", look, env=env) as proc:
        out = proc.stdout.fileno()
        os.set_blocking(out, False)
        time.sleep(1)
        change()
        time.sleep(1)
        return os.read(out, 1 << 16).decode()


@pytest.mark.parametrize("how", ["rename over it", "kubernetes update"])
def test_a_secret_file_replaced_on_the_host_stays_hidden(var_tmp, how):
    """Red team 26 F2: a secret file was hidden by an empty file on its own path, which
    went away when the host replaced the file (a rename over it), and Kubernetes moves
    a secret to a new directory on every update (links into ..data/). Its directory is
    hidden whole now, in a sandbox that runs across the change."""
    secrets = var_tmp / "secrets"
    secrets.mkdir(mode=0o755)
    if how == "kubernetes update":
        (secrets / "..2026_01").mkdir(mode=0o755)
        (secrets / "..2026_01" / "token").write_text("the-token\n")
        (secrets / "..data").symlink_to("..2026_01")
        (secrets / "token").symlink_to("..data/token")
    else:
        (secrets / "token").write_text("the-token\n")
    token = secrets / "token"
    token.chmod(0o644)

    def replace() -> None:
        if how == "kubernetes update":
            (secrets / "..2026_02").mkdir(mode=0o755)
            (secrets / "..2026_02" / "token").write_text("the-new-token\n")
            (secrets / "..2026_02" / "token").chmod(0o644)
            (secrets / "..data.tmp").symlink_to("..2026_02")
            os.replace(secrets / "..data.tmp", secrets / "..data")
        else:
            (secrets / "token.new").write_text("the-new-token\n")
            (secrets / "token.new").chmod(0o644)
            os.replace(secrets / "token.new", token)

    seen = _token_read_across(token, replace)
    assert seen.startswith("[]"), seen
    assert "token" not in seen, seen


@pytest.mark.spawns_here
def test_a_connection_file_in_tmp_itself_warns_only_where_a_bind_shows_tmp():
    """jupyter_client writes a connection file to /tmp when it was given none (nbclient,
    papermill, nbval): the launcher then passes /tmp as a runtime directory. /tmp is
    private inside, so the key stays unreadable without a word; every such kernel start
    warned before. A bind of /tmp itself does show it: that warns."""
    from nskernel import Bind, Sandbox, SandboxSpec

    fd, key = tempfile.mkstemp(".json")  # where jupyter_client puts it
    os.write(fd, b'{"key": "the-kernels-key"}')
    os.close(fd)
    try:
        spec = SandboxSpec(jupyter_runtime_dirs=("/tmp",))
        code = "import os, sys; print(os.path.exists(sys.argv[1]))"
        r, w = os.pipe()
        try:
            sb = Sandbox.spawn(spec, [sys.executable, "-I", "-c", code, key], stdio=(0, w, 2))
        finally:
            os.close(w)
        with os.fdopen(r) as f:
            assert f.read().strip() == "False"
        assert sb.wait(60) == 0
        assert sb.warnings == []

        shown = SandboxSpec(
            jupyter_runtime_dirs=("/tmp",), binds=(Bind("/tmp", "/tmp/host", readonly=True),)
        )
        sb = Sandbox.spawn(shown, ["true"])
        assert sb.wait(60) == 0
        assert [w for w in sb.warnings if "runtime directory" in w] == [
            "/tmp is Jupyter's runtime directory (servers' tokens, kernels' keys) and the "
            "bind of /tmp shows it inside. Point JUPYTER_RUNTIME_DIR at a directory of its own."
        ]
    finally:
        os.unlink(key)


SHOW_HOME = r"""
import json, os, sys
home, token, runtime = sys.argv[1:4]
seen = {"listing": sorted(os.listdir(home)), "token": open(token).read()}
seen["runtime"] = sorted(os.listdir(runtime))
seen["conf"] = sorted(os.listdir(os.path.join(home, "conf")))
print(json.dumps(seen))
"""


@pytest.mark.spawns_here
def test_secrets_in_a_home_shown_as_the_notebooks_directory_get_empty_stand_ins(var_tmp):
    """Red team 27 F1, F3: a home shown as the notebook's directory is bound entry by
    entry; a token file directly in it (JUPYTER_TOKEN_FILE=~/jupyter_token) became a bind
    of its own and was read, and a runtime directory there made every sandbox fail. Both
    get an empty stand-in now, like a private dot-entry."""
    from nskernel import Bind, Sandbox, SandboxSpec

    home = var_tmp / "home"
    runtime = home / "jupyter-runtime"
    runtime.mkdir(parents=True)
    (home / "conf").mkdir()  # a secret's directory in the home (red team 28 F1)
    (home / "conf" / "cookie").write_text("the-cookie\n")
    (home / "jupyter_token").write_text("the-token\n")
    (runtime / "jpserver-4242.json").write_text('{"token": "the-servers-token"}\n')
    (home / "notes.txt").write_text("shown\n")
    for d in (home, runtime, home / "conf"):
        d.chmod(0o755)
    for f in (home / "jupyter_token", runtime / "jpserver-4242.json", home / "notes.txt"):
        f.chmod(0o644)
    spec = SandboxSpec(
        binds=(Bind(str(home), str(home), True, fixed_top_level=True),),
        secret_files=(str(home / "jupyter_token"), str(home / "conf" / "cookie")),
        jupyter_runtime_dirs=(str(runtime),),
    )
    r, w = os.pipe()
    argv = [sys.executable, "-I", "-c", SHOW_HOME, str(home), str(home / "jupyter_token")]
    try:
        sb = Sandbox.spawn(spec, [*argv, str(runtime)], stdio=(0, w, 2))
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    assert sb.wait(60) == 0, out
    assert json.loads(out) == {
        "listing": ["conf", "jupyter-runtime", "jupyter_token", "notes.txt"],
        "token": "",
        "runtime": [],
        "conf": [],
    }


def test_a_secret_named_through_a_directory_link_stays_hidden_when_it_is_repointed(var_tmp):
    """Red team 27 F3: a token file named through a directory link (current -> v1) had
    v1 hidden; the host then pointed the link at v2, which nothing hid. The directory
    holding the link is hidden too now."""
    secrets = var_tmp / "secrets"
    for version in ("v1", "v2"):
        (secrets / version).mkdir(parents=True, mode=0o755)
        (secrets / version / "token").write_text(f"the-{version}-token\n")
        (secrets / version / "token").chmod(0o644)
    secrets.chmod(0o755)
    (secrets / "current").symlink_to("v1")
    token = secrets / "current" / "token"

    def repoint() -> None:
        (secrets / "next").symlink_to("v2")
        os.replace(secrets / "next", secrets / "current")

    seen = _token_read_across(token, repoint)
    assert seen.startswith("[]") and "token" not in seen, seen


def test_a_secret_reached_through_a_link_whose_target_is_repointed_stays_hidden(var_tmp):
    """Red team 28 F2: the token file a link into another tree whose directory link the
    host re-points (token -> ../app/current/token, current: v1, then v2): the directory
    holding that inner link was not hidden."""
    app, named = var_tmp / "app", var_tmp / "jupyter"
    for version in ("v1", "v2"):
        (app / version).mkdir(parents=True, mode=0o755)
        (app / version / "token").write_text(f"the-{version}-token\n")
        (app / version / "token").chmod(0o644)
    app.chmod(0o755)
    named.mkdir(mode=0o755)
    (app / "current").symlink_to("v1")
    (named / "token").symlink_to("../app/current/token")

    def repoint() -> None:
        (app / "next").symlink_to("v2")
        os.replace(app / "next", app / "current")

    # Read where the inner link leads, not through the named one (hidden with its
    # directory).
    seen = _token_read_across(named / "token", repoint, read=app / "current" / "token")
    assert seen.startswith("[]") and "token" not in seen, seen


def test_secrets_written_after_the_sandbox_started_are_hidden(var_tmp):
    """Red team 28 F3: a runtime directory or a token file that did not exist yet when
    the sandbox started (a server started after it) was left out, and the token the
    server then wrote was read. The runtime directory is made first (as Jupyter makes
    it), the token file's directory hidden whole."""
    runtime, tokens = var_tmp / "later-runtime", var_tmp / "tokens"
    tokens.mkdir(mode=0o755)
    token = tokens / "token"
    look = (
        f'while :; do printf "[%s|%s]" "$(cat {token} 2>/dev/null)" '
        f'"$(cat {runtime}/jpserver-1.json 2>/dev/null)"; sleep 0.1; done'
    )
    env = {**os.environ, "JUPYTER_TOKEN_FILE": str(token), "JUPYTER_RUNTIME_DIR": str(runtime)}
    with _running("--", "sh", "-c", look, env=env) as proc:
        out = proc.stdout.fileno()
        os.set_blocking(out, False)
        time.sleep(1)
        assert runtime.is_dir()  # made before the sandbox, 0700
        token.write_text("the-token\n")
        (runtime / "jpserver-1.json").write_text("the-servers-token\n")
        for f in (token, runtime / "jpserver-1.json"):
            f.chmod(0o644)
        runtime.chmod(0o755)
        time.sleep(1)
        seen = os.read(out, 1 << 16).decode()
    assert seen.startswith("[|]") and "token" not in seen, seen


def test_a_relative_token_file_and_a_bind_of_the_file_itself(nsk, var_tmp):
    """Red team 28 F5: JUPYTER_TOKEN_FILE relative to the working directory (jupyter_server
    reads it so) was left out; F6: a bind of the token file itself showed it. Now the
    first is hidden and the second refused."""
    (var_tmp / "secrets").mkdir(mode=0o755)
    token = var_tmp / "secrets" / "token"
    token.write_text("the-token\n")
    token.chmod(0o644)
    env = {**os.environ, "JUPYTER_TOKEN_FILE": "secrets/token"}
    r = nsk("run", "--", "sh", "-c", f"cat {token}; echo end", env=env, cwd=str(var_tmp))
    assert r.returncode == 0 and r.stdout == "end\n", (r.stdout, r.stderr)
    env["JUPYTER_TOKEN_FILE"] = str(token)
    r = nsk("run", "--ro-bind", f"{token}:/tmp/t", "--", "cat", "/tmp/t", env=env)
    assert r.returncode == 125 and "the-token" not in r.stdout, (r.stdout, r.stderr)


@pytest.mark.root
def test_a_secret_in_this_pythons_environment_never_hides_the_environment(nsk):
    """Red team 27 F4: a token file directly in the virtualenv's directory hid the whole
    environment, so its Python was gone inside. The file is hidden alone, with a warning."""
    token = os.path.join(sys.prefix, f"nsk-test-token-{uuid.uuid4().hex[:8]}")
    with open(token, "w") as f:
        f.write("the-token\n")
    try:
        os.chmod(token, 0o644)
        look = f"import sys; print(repr(open({token!r}).read()), sys.prefix)"
        env = {**os.environ, "JUPYTER_TOKEN_FILE": token}
        r = nsk("run", "--", sys.executable, "-I", "-c", look, env=env)
    finally:
        os.unlink(token)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"'' {sys.prefix}\n", r.stdout
    assert "is not hidden whole inside" in r.stderr, r.stderr


def test_a_bind_inside_the_notebooks_directory_stays_writable(tmp_path):
    nb = tmp_path / "nb"
    (nb / "data").mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    for d in (nb, nb / "data"):
        os.chmod(d, 0o777)
    with kernel() as (_km, kc):
        back = execute(kc, "import os; print(os.getcwd())").stdout.strip()
        try:
            execute(kc, f"os.chdir({str(nb)!r})")
            res = execute(kc, "%%sandbox --bind ./data\nopen('data/out.txt', 'w').write('x')")
            assert res.status == "ok", res.error_text
        finally:
            execute(kc, f"os.chdir({back!r})")
    assert (nb / "data" / "out.txt").read_text() == "x"


def _home_with_secrets(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".netrc").write_text("machine x password y\n")
    (home / "notes.txt").write_text("next to the notebook\n")
    for p in (tmp_path, home, home / ".ssh"):
        os.chmod(p, 0o777)
    for p in (home / "notes.txt", home / ".netrc", home / ".ssh" / "id_ed25519"):
        os.chmod(p, 0o666)
    return home


LOOK_AT_HOME = r"""
import json, os
home = os.environ["HOME"]
found = {"cwd": os.getcwd(), "listing": sorted(os.listdir(home))}
found["notes"] = open(os.path.join(home, "notes.txt")).read()
try:
    found["key"] = open(os.path.join(home, ".ssh", "id_ed25519")).read()
except OSError as e:
    found["key"] = e.strerror
found["netrc"] = open(os.path.join(home, ".netrc")).read()
try:
    with open(os.path.join(home, ".ssh", "planted"), "w") as f:
        f.write("x")
    found["dot_write"] = "ok"
except OSError as e:
    found["dot_write"] = e.strerror
print(json.dumps(found))
"""


@pytest.mark.kernel
def test_a_sandboxed_kernel_whose_notebook_is_in_the_home_sees_no_dot_files(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from tests.kernel_helpers import KERNEL_NAME, install_kernelspecs, run_cell

    home = _home_with_secrets(tmp_path)
    ksm = KernelSpecManager(kernel_dirs=[str(install_kernelspecs(tmp_path / "prefix"))])
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(home), env={**os.environ, "HOME": str(home)})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out = run_cell(kc, LOOK_AT_HOME)
        assert out["error"] is None, out
        seen = json.loads(out["stdout"].splitlines()[-1])
        # The home itself is never writable (new dot-files would run at the next login).
        out = run_cell(kc, "open('written.txt', 'w').write('from the kernel')")
        assert out["error"] == "OSError" and "is read-only inside" in out["stderr"], out
        # A dot-file the host makes while the kernel lives (`aws configure`, a new token)
        # stays out of its sight too (thirteenth red-team pass: it appeared).
        (home / ".made-later").write_text("NEWSECRET\n")
        out = run_cell(kc, "import os; print(os.path.exists(os.path.expanduser('~/.made-later')))")
        assert out["error"] is None and out["stdout"].strip() == "False", out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert seen["cwd"] == str(home)
    assert seen["notes"] == "next to the notebook\n"  # the notebook's files: there
    assert seen["key"] == "No such file or directory" and seen["netrc"] == ""  # dot-files: not
    assert seen["dot_write"] == "ok"  # into its own private .ssh...
    assert not (home / ".ssh" / "planted").exists()  # ...not the host's
    assert not (home / "written.txt").exists()


@contextlib.contextmanager
def _plain_kernel_in(home):
    """A plain ipykernel with ``home`` as its HOME and working directory, nskernel's
    magics loaded: a notebook kept in the home."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(
        kernel_name="python3", startup_timeout=60, env={**os.environ, "HOME": str(home)}
    )
    try:
        execute(kc, f"import os\nos.chdir({str(home)!r})\n%load_ext nskernel")
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _cell_in(home, code: str) -> dict:
    """What one plain ``%%sandbox`` cell printed (a JSON line), the notebook kept in
    ``home``."""
    with _plain_kernel_in(home) as kc:
        res = execute(kc, "%%sandbox\n" + code)
    assert res.status == "ok", res.error_text
    return res.json_line()


def test_a_sandbox_cell_whose_notebook_is_in_the_home_sees_no_dot_files(tmp_path):
    home = _home_with_secrets(tmp_path)
    seen = _cell_in(home, LOOK_AT_HOME)
    assert seen["cwd"] == str(home) and seen["notes"] == "next to the notebook\n"
    assert seen["key"] == "No such file or directory" and seen["netrc"] == ""
    assert not (home / ".ssh" / "planted").exists()


def test_other_programs_homes_in_the_home_are_as_private_as_its_dot_files(tmp_path):
    """Each snap keeps its $HOME, dot-files and all, under ~/snap/<app>/ (Ubuntu's
    Firefox and Chromium profiles, the gh token): a non-dot entry, so a cell whose
    notebook is kept in the home read the browsers' saved passwords (15th red-team
    pass). ~/snap is private there, as a dot-entry is."""
    home = _home_with_secrets(tmp_path)
    profile = home / "snap" / "firefox" / "common" / ".mozilla"
    profile.mkdir(parents=True)
    (profile / "logins.json").write_text("SAVED PASSWORDS\n")
    for p in (home / "snap", home / "snap" / "firefox", profile.parent, profile):
        os.chmod(p, 0o777)
    os.chmod(profile / "logins.json", 0o666)
    look = (
        "import json, os\n"
        "home = os.environ['HOME']\n"
        "found = {'listing': sorted(os.listdir(home)), 'snap': os.listdir(home + '/snap')}\n"
        "try:\n"
        "    found['logins'] = open(home + '/snap/firefox/common/.mozilla/logins.json').read()\n"
        "except OSError as e:\n"
        "    found['logins'] = e.strerror\n"
        "print(json.dumps(found))\n"
    )
    seen = _cell_in(home, look)
    assert "snap" in seen["listing"] and "notes.txt" in seen["listing"], seen
    assert seen["snap"] == [] and seen["logins"] == "No such file or directory", seen


def test_dot_links_in_the_home_lead_nowhere_secret(tmp_path):
    """Dotfile managers (GNU stow, yadm, home-manager) make ~/.ssh a link into a
    non-dot directory: made again as it was, the link led to the keys, and the directory
    it leads into was bound whole (15th red-team pass). A dot-link is private as any
    dot-entry is, and so is the top-level directory a dot-link leads into."""
    home = _home_with_secrets(tmp_path)
    keys = home / "dotfiles" / "ssh"
    keys.mkdir(parents=True)
    (keys / "id_stowed").write_text("STOWED KEY\n")
    (home / "dotfiles" / "netrc").write_text("machine x password stowed\n")
    for p in (home / "dotfiles", keys):
        os.chmod(p, 0o777)
    for p in (keys / "id_stowed", home / "dotfiles" / "netrc"):
        os.chmod(p, 0o666)
    (home / ".ssh-stowed").symlink_to("dotfiles/ssh")
    (home / ".netrc-stowed").symlink_to(home / "dotfiles" / "netrc")  # absolute, too
    look = (
        "import json, os\n"
        "home = os.environ['HOME']\n"
        "def read(p):\n"
        "    try:\n"
        "        return open(os.path.join(home, p)).read()\n"
        "    except OSError as e:\n"
        "        return e.strerror\n"
        "print(json.dumps({'key': read('.ssh-stowed/id_stowed'), 'netrc': read('.netrc-stowed'),\n"
        "                  'repo': os.listdir(os.path.join(home, 'dotfiles')),\n"
        "                  'notes': read('notes.txt')}))\n"
    )
    seen = _cell_in(home, look)
    assert seen == {
        "key": "No such file or directory",
        "netrc": "",
        "repo": [],
        "notes": "next to the notebook\n",
    }, seen


def test_a_dot_link_naming_the_home_by_a_link_leads_nowhere_secret(tmp_path):
    """`ln -s ~/dotfiles/ssh ~/.ssh` writes the home's path as $HOME has it; where the
    home is reached through a link (/home/u -> /data/u), that text did not start with
    the home's real path, and ~/dotfiles stayed shown, keys included (16th red-team
    pass, F4)."""
    real = _home_with_secrets(tmp_path)
    keys = real / "dotfiles" / "ssh"
    keys.mkdir(parents=True)
    (keys / "id_stowed").write_text("STOWED KEY\n")
    for p in (real / "dotfiles", keys):
        os.chmod(p, 0o777)
    os.chmod(keys / "id_stowed", 0o666)
    home = tmp_path / "home-link"
    home.symlink_to(real)
    (real / ".ssh-stowed").symlink_to(home / "dotfiles" / "ssh")  # through the link
    look = (
        "import json, os\n"
        f"home = {str(real)!r}  # where the notebook's directory is shown\n"
        "try:\n"
        "    key = open(os.path.join(home, 'dotfiles', 'ssh', 'id_stowed')).read()\n"
        "except OSError as e:\n"
        "    key = e.strerror\n"
        "print(json.dumps({'key': key, 'repo': os.listdir(os.path.join(home, 'dotfiles'))}))\n"
    )
    seen = _cell_in(home, look)
    assert seen == {"key": "No such file or directory", "repo": []}, seen


def test_a_home_on_the_python_path_is_not_bound_into_cells(tmp_path):
    """`PYTHONPATH=$HOME` (modules kept in ~): the home, hidden inside, was bound whole
    as a place this Python imports from, dot-files included, into every cell of a
    notebook kept anywhere else (15th red-team pass). A home is never bound that way."""
    from jupyter_client.manager import start_new_kernel

    home = _home_with_secrets(tmp_path)
    nb = tmp_path / "nb"
    nb.mkdir(mode=0o777)
    os.chmod(nb, 0o777)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(home)}
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60, env=env, cwd=str(nb))
    try:
        execute(kc, "%load_ext nskernel")
        look = (
            "import json, os\n"
            "home = os.environ['HOME']\n"
            "try:\n"
            "    key = open(os.path.join(home, '.ssh', 'id_ed25519')).read()\n"
            "except OSError as e:\n"
            "    key = e.strerror\n"
            "print(json.dumps({'listing': sorted(os.listdir(home)), 'key': key}))\n"
        )
        res = execute(kc, "%%sandbox\n" + look)
        assert res.status == "ok", res.error_text
        seen = res.json_line()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "notes.txt" not in seen["listing"] and ".ssh" not in seen["listing"], seen
    assert seen["key"] == "No such file or directory", seen


def test_a_notebook_kept_in_tmp_gets_a_private_tmp_not_the_hosts(tmp_path):
    """A notebook directory is bound read-only into cells; /tmp itself is every user's
    (their files, X11's and agents' sockets): a cell whose notebook lives there runs in
    its private home, with a private, writable /tmp, and a note says why."""
    import tempfile

    fd, marker = tempfile.mkstemp(prefix="nsk-host-only-", dir="/tmp")
    os.close(fd)
    os.chmod(marker, 0o644)
    look = (
        "import json, os\n"
        f"seen = os.path.exists({marker!r})\n"
        "open('/tmp/written-inside', 'w').close()\n"
        "print(json.dumps({'cwd': os.getcwd(), 'home': os.environ['HOME'], 'seen': seen}))\n"
    )
    try:
        with kernel() as (_km, kc):
            execute(kc, "import os\nos.chdir('/tmp')\n%load_ext nskernel")
            res = execute(kc, "%%sandbox\n" + look)
            assert res.status == "ok", res.error_text
            seen = res.json_line()
            assert "shared temporary directory" in res.stderr, res.stderr
    finally:
        os.unlink(marker)
    assert seen["seen"] is False and seen["cwd"] == seen["home"], seen
    assert not os.path.exists("/tmp/written-inside")


def test_a_bind_of_an_entry_of_the_home_is_the_bind_asked_for(tmp_path):
    """`%%sandbox --bind ./work` in a notebook kept in the home was silently read-only:
    the home's own read-only bind of the entry landed on top of the one asked for (15th
    red-team pass). The caller's bind is the one the entry gets."""
    home = _home_with_secrets(tmp_path)
    (home / "work").mkdir(mode=0o777)
    os.chmod(home / "work", 0o777)
    write = (
        "import os\n"
        "with open(os.path.join(os.environ['HOME'], 'work', 'out.txt'), 'w') as f:\n"
        "    f.write('written inside')\n"
    )
    with _plain_kernel_in(home) as kc:
        res = execute(kc, "%%sandbox --bind ./work\n" + write)
        assert res.status == "ok", res.error_text
        res = execute(kc, "%%sandbox\n" + write)
        assert res.status == "error" and "Read-only file system" in res.error_text
    assert (home / "work" / "out.txt").read_text() == "written inside"


@pytest.mark.root
def test_a_cell_whose_notebook_is_in_roots_home_starts_there_and_sees_no_dot_files():
    """A container's Jupyter runs as root in /root. /root was not taken for a home (it
    is one of the directories masked whole), so it was bound whole: as root the cell did
    not start (sandbox root may not enter host root's 0700 home), and as root of a
    rootless container it would have seen every dot-file (15th red-team pass)."""
    from pathlib import Path

    look = (
        "import json, os\n"
        "dots = [n for n in os.listdir('.') if n.startswith('.')]\n"
        "full = [n for n in dots if os.path.isdir(n) and os.listdir(n)]\n"
        "print(json.dumps({'cwd': os.getcwd(), 'dots': dots, 'full': full}))\n"
    )
    host_dots = {n for n in os.listdir("/root") if n.startswith(".")}
    seen = _cell_in(Path("/root"), look)
    # Every dot-entry there is shown as a private, empty one.
    assert seen["cwd"] == "/root" and seen["full"] == [], seen
    assert host_dots <= set(seen["dots"]), seen


LOOK_AGAIN = r"""
import json, os
home = os.environ["HOME"]
def read(*parts):
    try:
        return open(os.path.join(home, *parts)).read()
    except OSError as e:
        return e.strerror
found = {name: read(name) for name in (".made-later", ".netrc", "later.txt")}
found["linked_key"] = read("keys", "id_ed25519")
found["below"] = read("alias", "late.txt")
try:
    open(os.path.join(home, "new.txt"), "w").close()
    found["top_write"] = "ok"
except OSError as e:
    found["top_write"] = e.strerror
print(json.dumps(found))
"""


def test_a_named_sandbox_in_the_home_never_sees_what_the_host_makes_there_later(tmp_path):
    """A named sandbox lives as long as its kernel: hours. A home bound as the
    notebook's directory, with the dot-files that existed at start covered, showed every
    dot-file the host made later, and each one rewritten by rename (a new file where the
    cover was): keys and tokens made after it started (thirteenth red-team pass). Its
    top level is now fixed at start; what is below an entry stays live."""
    home = _home_with_secrets(tmp_path)
    (home / "proj").mkdir(mode=0o777)
    (home / "alias").symlink_to("proj")  # links are made again as they are...
    (home / "keys").symlink_to(".ssh")  # ...so this one reaches the private .ssh
    with _plain_kernel_in(home) as kc:
        try:
            res = execute(kc, "%%sandbox --name watch\n" + LOOK_AT_HOME)
            assert res.status == "ok", res.error_text
            first = res.json_line()
            # The host, while the sandbox lives: a new dot-file, a hidden one rewritten by
            # rename, a new file, a new file below an entry.
            (home / ".made-later").write_text("NEWSECRET\n")
            (home / ".netrc.new").write_text("machine x password REWRITTEN\n")
            os.replace(home / ".netrc.new", home / ".netrc")
            (home / "later.txt").write_text("later\n")
            (home / "proj" / "late.txt").write_text("below\n")
            for p in (home / ".made-later", home / ".netrc", home / "proj" / "late.txt"):
                os.chmod(p, 0o666)
            res = execute(kc, "%%sandbox --name watch\n" + LOOK_AGAIN)
            assert res.status == "ok", res.error_text
            seen = res.json_line()
        finally:
            execute(kc, "%sandbox rm watch")
    assert first["key"] == "No such file or directory" and first["netrc"] == ""
    assert seen[".made-later"] == "No such file or directory", seen
    assert seen[".netrc"] == "", seen  # still the private, empty one
    assert seen["later.txt"] == "No such file or directory", seen
    assert seen["linked_key"] == "No such file or directory", seen
    assert seen["below"] == "below\n", seen  # below an entry: live
    assert seen["top_write"] == "Read-only file system", seen  # fails, nothing is lost
    assert not (home / "new.txt").exists()


# ---------------------------------------------------------------- --status-json


def test_status_json_never_writes_through_what_the_sandbox_planted(tmp_path) -> None:
    """``--status-json`` in a directory the sandbox can write: what an earlier run planted
    at every name the file could take (its temporary included) is replaced, not followed,
    and the directory is opened before this run's sandbox could swap it for a link."""
    work, secret = tmp_path / "work", tmp_path / "secret"
    work.mkdir()
    secret.mkdir(mode=0o700)
    victim = secret / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    status = work / "status.json"
    # The run execs from a shell that first prints its PID: the CLI's own, so the old
    # temporary name (status.json.tmp<PID>) can be planted before it starts.
    swap = f"mv {work}/sub {work}/old && ln -s {secret} {work}/sub; sleep 0.3"
    (work / "sub").mkdir()
    if IS_ROOT:  # a bind owned by root stays read-only for sandbox root: give it away
        for d in (work, work / "sub"):
            os.chown(d, 4242, 4242)
    cmd = [*nskernel_cmd("run", "--bind", str(work), "--status-json")]
    proc = subprocess.Popen(
        ["sh", "-c", 'echo $$; read go; exec "$@"', "sh", *cmd, str(status), "--", "true"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(proc.stdout.readline())
        for name in ("status.json", f"status.json.tmp{pid}"):
            os.symlink(victim, work / name)
        _, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert victim.read_text() == "precious\n"
    assert not status.is_symlink() and "namespaces" in json.loads(status.read_text())
    # And a directory this run's sandbox swaps for a link meanwhile:
    res = subprocess.run(
        [*cmd, str(work / "sub" / "status.json"), "--", "sh", "-c", swap],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (work / "sub").is_symlink(), res.stderr  # the sandbox did swap it
    assert sorted(os.listdir(secret)) == ["victim"], "the host wrote where the sandbox pointed"
    assert "namespaces" in json.loads((work / "old" / "status.json").read_text())


def test_a_status_json_that_cannot_be_written_ends_the_sandbox_and_says_so(tmp_path) -> None:
    """Red team 21 N1: a --status-json path that cannot be replaced (a sticky directory
    and another user's file; here a directory) gave a traceback and left the temporary
    file behind. Now: one line, exit status 2, no temporary, no sandbox."""
    (tmp_path / "status.json").mkdir()
    (tmp_path / "status.json" / "keep").write_text("")
    tag = f"1000.{uuid.uuid4().int % 10**9:09d}"
    r = subprocess.run(
        nskernel_cmd("run", "--status-json", str(tmp_path / "status.json"), "--", "sleep", tag),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"nskernel run: --status-json {tmp_path / 'status.json'}: ")
    assert "the sandbox was killed at once" in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["status.json"]
    assert not pids_with_cmdline(f"sleep {tag}")
