"""`nskernel run` end to end: real namespaces, as whoever runs the suite.

CI runs this file as root and again as an unprivileged user; the assertions that
differ between the two (who sandbox root is on the host) say so explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from nskernel._linux.procfs import namespace_ids
from tests.conftest import IS_ROOT, require
from tests.hostile import descendants, host_pid_alive, start_background, wait_for

pytestmark = pytest.mark.userns


@pytest.fixture(params=["native", "python"])
def init_kind(request, monkeypatch):
    """Run a test with each sandbox init: nskernel-init (built from init.c when the
    package is installed) and the Python loop it falls back to."""
    from nskernel._linux import init

    if request.param == "python":
        monkeypatch.setenv(init.INIT_ENV, "python")
    else:
        monkeypatch.delenv(init.INIT_ENV, raising=False)
        require(
            None
            if os.access(init.NATIVE_INIT, os.X_OK)
            else f"{init.NATIVE_INIT} was not built (no C compiler when nskernel was installed)"
        )
    return request.param


# ---------------------------------------------------------------- what's inside


def test_all_six_namespaces_inside_view(nsk):
    script = r"""
import os, socket, json
print(json.dumps({
    "pid": os.getpid(),
    "hostname": socket.gethostname(),
    "uid": os.getuid(),
    "uid_map": open("/proc/self/uid_map").read().split(),
    "links": sorted(os.listdir("/sys/class/net")),
    "lo_flags": int(open("/sys/class/net/lo/flags").read(), 16),
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "comm1": open("/proc/1/comm").read().strip(),
}))
"""
    r = nsk("run", "--hostname", "box", "--", sys.executable, "-c", script)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["hostname"] == "box"
    assert seen["pid"] == 2  # the command is PID 2, the init is PID 1
    assert seen["comm1"] == "nskernel-init"
    assert seen["procs"] == [1, 2]  # a fresh /proc shows only the sandbox
    assert seen["uid"] == 0
    assert seen["links"] == ["lo"]
    assert seen["lo_flags"] & 1  # IFF_UP
    inside, outside, _count = (int(x) for x in seen["uid_map"][:3])
    assert inside == 0
    assert outside != 0, "sandbox root must never be host root"
    assert outside == (65534 if IS_ROOT else os.getuid())
    assert socket.gethostname() != "box", "the host's hostname must not change"


def test_only_the_namespaces_asked_for(tmp_path):
    proc, facts = start_background(tmp_path, "--net", "--uts", "--", "sleep", "30")
    try:
        host = namespace_ids()
        ns = facts["namespaces"]
        assert ns["net"] != host["net"]
        assert ns["uts"] != host["uts"]
        for shared in ("pid", "mnt", "ipc", "cgroup"):
            assert ns[shared] == host[shared], shared
        # A user namespace always: sandbox root is never host root.
        assert ns["user"] != host["user"]
        assert set(facts["created"]) == {"net", "uts", "user"}
    finally:
        proc.terminate()
        assert proc.wait(10) == 128 + signal.SIGTERM


def test_pid_brings_a_fresh_proc_and_so_a_mount_namespace(nsk):
    r = nsk("run", "--pid", "--", "sh", "-c", "ls /proc | grep -c '^[0-9]'; cat /proc/1/comm")
    assert r.returncode == 0, r.stderr
    count, comm = r.stdout.split()
    assert int(count) <= 4 and comm == "nskernel-init"  # init, sh, grep (and ls)


@pytest.mark.root
def test_no_userns_opts_out_explicitly_and_keeps_the_host_identity(tmp_path):
    proc, facts = start_background(tmp_path, "--net", "--uts", "--no-userns", "--", "sleep", "30")
    try:
        host = namespace_ids()
        assert facts["namespaces"]["user"] == host["user"]
        assert set(facts["created"]) == {"net", "uts"}
        with open(f"/proc/{facts['pid']}/status") as f:
            assert "Uid:\t0\t0\t0\t0" in f.read()  # host root, as asked for
    finally:
        proc.terminate()
        assert proc.wait(10) == 128 + signal.SIGTERM


@pytest.mark.rootless
def test_no_userns_needs_cap_sys_admin(nsk):
    r = nsk("run", "--net", "--no-userns", "--", "true")
    assert r.returncode == 2
    assert "--no-userns needs CAP_SYS_ADMIN" in r.stderr


def test_status_json_is_the_facts_feed(tmp_path):
    proc, facts = start_background(tmp_path, "--hostname", "feed", "--", "sleep", "30")
    try:
        init = facts["pid"]
        assert open(f"/proc/{init}/comm").read().strip() == "nskernel-init"
        assert facts["hostname"] == "feed"
        assert facts["namespaces"] == namespace_ids(init)
        host = namespace_ids()
        for t in ("pid", "net", "mnt", "uts", "ipc", "user"):
            assert facts["namespaces"][t] != host[t], t
        assert facts["namespaces"]["cgroup"] == host["cgroup"]
        assert facts["uid_map"][0][0] == 0 and facts["uid_map"][0][1] != 0
        # The host sees the sandbox's processes as the unprivileged mapped uid.
        with open(f"/proc/{init}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        assert int(uid_line.split()[1]) == facts["uid_map"][0][1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_private_tmp_and_read_only_host_root(nsk, tmp_path):
    marker = f"/tmp/nsk-test-marker-{os.getpid()}"
    open(marker, "w").close()
    try:
        script = (
            f"test ! -e {marker} && echo private-tmp; "
            "touch /tmp/inside && echo tmp-writable; "
            "touch /dev/shm/inside && echo shm-writable; "
            "touch /usr/nsk-x 2>/dev/null || echo root-readonly"
        )
        r = nsk("run", "--", "sh", "-c", script)
        assert r.stdout.split() == ["private-tmp", "tmp-writable", "shm-writable", "root-readonly"]
        assert not os.path.exists("/tmp/inside")
        assert not os.path.exists("/usr/nsk-x")
    finally:
        os.unlink(marker)


def test_bind_is_writable_and_ro_bind_is_not(nsk, tmp_path):
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data.txt").write_text("hello\n")
    for d in (tmp_path, rw, ro):
        os.chmod(d, 0o777)  # sandbox root is another uid on the host when we are root
    script = (
        "echo out > /tmp/rw/result.txt && echo rw-ok; "
        "cat /tmp/data/data.txt; "
        "echo x > /tmp/data/new.txt 2>/dev/null || echo ro-refused"
    )
    r = nsk(
        "run", "--bind", f"{rw}:/tmp/rw", "--ro-bind", f"{ro}:/tmp/data", "--", "sh", "-c", script
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["rw-ok", "hello", "ro-refused"]
    assert (rw / "result.txt").read_text() == "out\n"
    assert not (ro / "new.txt").exists()
    assert "nskernel:" not in r.stderr  # writable as it is: no idmapping, no warning


def test_a_writable_bind_over_code_places_is_refused(nsk, tmp_path):
    """``nskernel run --bind .`` in a project (the ``docker run -v $PWD`` habit) that
    holds the environment nskernel runs from, or a git repository: the sandbox would plant
    a ``.pth`` the next nskernel runs, or git hooks (red team). Refused with exit 2 before
    anything runs; ``--ro-bind`` and other directories are fine."""
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    marker = tmp_path / "ran"
    for src in (tmp_path / "repo", sys.prefix):
        r = nsk("run", "--bind", str(src), "--", "touch", str(marker))
        assert r.returncode == 2 and "--ro-bind" in r.stderr, r.stderr
        assert not marker.exists()
    r = nsk("run", "--ro-bind", sys.prefix, "--", "true")
    assert r.returncode == 0, r.stderr
    shutil.rmtree(tmp_path / "repo")  # a .git left under /tmp: --bind /tmp is refused


def test_bind_without_destination_uses_the_same_path(nsk, tmp_path):
    os.chmod(tmp_path, 0o777)
    r = nsk("run", "--bind", str(tmp_path), "--", "sh", "-c", f"echo hi > {tmp_path}/f")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f").read_text() == "hi\n"


def test_missing_bind_destination_fails_before_running(nsk, tmp_path):
    r = nsk("run", "--bind", f"{tmp_path}:/nonexistent-dir", "--", "sh", "-c", "echo ran")
    assert r.returncode == 125
    assert "ran" not in r.stdout
    assert "does not exist inside the sandbox" in r.stderr


def test_nothing_mounted_inside_reaches_the_host(tmp_path):
    with open("/proc/self/mountinfo") as f:
        before = f.read()
    proc, _ = start_background(tmp_path, "--", "sleep", "30")
    try:
        with open("/proc/self/mountinfo") as f:
            assert f.read() == before
    finally:
        proc.terminate()
        proc.wait(10)


def test_ipc_objects_are_private(nsk):
    # A POSIX shared memory object and a System V queue made on the host are invisible inside.
    shm = f"/dev/shm/nsk-test-{os.getpid()}"
    open(shm, "w").close()
    key = subprocess.run(["ipcmk", "-Q"], capture_output=True, text=True, check=True)
    qid = key.stdout.split()[-1]
    try:
        r = nsk("run", "--", "sh", "-c", "ls /dev/shm; ipcs -q | grep -c '^0x' || true")
        assert os.path.basename(shm) not in r.stdout
        assert r.stdout.split()[-1] == "0"
        host = subprocess.run(["ipcs", "-q"], capture_output=True, text=True).stdout
        assert qid in host
    finally:
        os.unlink(shm)
        subprocess.run(["ipcrm", "-q", qid], check=True)


# ---------------------------------------------------------------- process behaviour


def test_stdin_and_stdout_pass_through(nsk):
    r = nsk("run", "--", "tr", "a-z", "A-Z", input="hello sandbox\n")
    assert r.stdout == "HELLO SANDBOX\n"


@pytest.mark.parametrize(
    ("script", "code"), [("exit 0", 0), ("exit 7", 7), ("kill -9 $$", 137), ("kill -TERM $$", 143)]
)
@pytest.mark.usefixtures("init_kind")
def test_exit_status_is_the_commands(nsk, script, code):
    assert nsk("run", "--", "sh", "-c", script).returncode == code


def test_command_not_found(nsk):
    r = nsk("run", "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert "no-such-command-xyz" in r.stderr and "not found" in r.stderr


def test_no_command(nsk):
    r = nsk("run")
    assert r.returncode == 2
    assert "put it after --" in r.stderr


def test_invalid_hostname_is_refused_before_anything_runs(nsk):
    r = nsk("run", "--hostname", "bad_name!", "--", "true")
    assert r.returncode == 2
    assert "invalid hostname" in r.stderr


@pytest.mark.usefixtures("init_kind")
def test_sigterm_reaches_the_command(tmp_path):
    script = "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.05; done"
    proc, _ = start_background(
        tmp_path, "--", "sh", "-c", script, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 42
    assert proc.stdout.read() == "got-term\n"


@pytest.mark.usefixtures("init_kind")
def test_ctrl_c_reaches_the_command_through_the_process_group(tmp_path):
    script = (
        "import time, sys\n"
        "try:\n    print('ready', flush=True)\n    time.sleep(30)\nexcept KeyboardInterrupt:\n"
        "    print('interrupted', flush=True); sys.exit(3)\n"
    )
    proc, _ = start_background(
        tmp_path,
        "--",
        sys.executable,
        "-c",
        script,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline() == "ready\n"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C (and jupyter_client) does
    assert proc.wait(10) == 3
    assert proc.stdout.read() == "interrupted\n"


@pytest.mark.usefixtures("init_kind")
def test_lifeline_sigkill_of_nskernel_kills_the_whole_sandbox(tmp_path):
    proc, facts = start_background(tmp_path, "--", "sh", "-c", "sleep 1000 & sleep 1000 & wait")
    init = facts["pid"]
    with open(f"/proc/{init}/task/{init}/children") as f:
        shell = int(f.read().split()[0])
    wait_for(
        lambda: len(open(f"/proc/{shell}/task/{shell}/children").read().split()) == 2,
        what="the two sleeps",
    )
    sleeps = [int(x) for x in open(f"/proc/{shell}/task/{shell}/children").read().split()]
    proc.kill()
    proc.wait(10)
    for pid in (init, shell, *sleeps):
        wait_for(lambda pid=pid: not host_pid_alive(pid), what=f"process {pid} to die")


def test_pid_1_is_the_init_asked_for(tmp_path, init_kind):
    from nskernel._linux import init

    proc, facts = start_background(
        tmp_path,
        "--",
        "sh",
        "-c",
        "cat /proc/1/comm; readlink /proc/1/exe || echo hidden; sleep 30",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Neither init is dumpable (the Python one changed uid, nskernel-init says so):
        # from inside, its exe link stays unreadable.
        assert proc.stdout.readline() == "nskernel-init\n"
        assert proc.stdout.readline() == "hidden\n"
        pid = facts["pid"]
        exe = None
        for _ in range(200):  # nskernel-init is exec'd right after the command starts
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except PermissionError:
                break  # the Python init, seen by an unprivileged host user
            if exe == init.NATIVE_INIT:
                break
            time.sleep(0.01)
        assert (exe == init.NATIVE_INIT) == (init_kind == "native"), exe
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.usefixtures("init_kind")
def test_init_reaps_orphaned_zombies(nsk):
    script = r"""
import os, time
for _ in range(5):
    if os.fork() == 0:           # a child that forks a grandchild and exits at once:
        if os.fork() == 0:       # the grandchild is orphaned, re-parented to PID 1,
            os._exit(0)          # and exits: only PID 1 can reap it
        os._exit(0)
    os.wait()
time.sleep(0.5)
states = [open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]
          for p in os.listdir("/proc") if p.isdigit()]
print("zombies", states.count("Z"), "procs", len(states))
"""
    r = nsk("run", "--", sys.executable, "-c", script)
    assert r.stdout.split() == ["zombies", "0", "procs", "2"], r.stderr


@pytest.mark.usefixtures("init_kind")
def test_without_pid_namespace_orphans_still_die_with_the_sandbox(tmp_path):
    proc, facts = start_background(
        tmp_path, "--net", "--", "sh", "-c", "(sleep 1000 &); sleep 1000"
    )
    init = facts["pid"]
    wait_for(lambda: len(descendants(init)) >= 2, what="the orphaned sleep")
    victims = descendants(init)
    proc.kill()  # SIGKILL of the launcher: the lifeline closes
    proc.wait(10)
    for pid in (init, *victims):
        wait_for(lambda pid=pid: not host_pid_alive(pid), what=f"process {pid} to die")


@pytest.mark.spawns_here
@pytest.mark.usefixtures("init_kind")
def test_without_pid_namespace_an_orphan_made_at_once_comes_back_to_init(monkeypatch):
    """Init must be the orphans' subreaper before its command runs, not once its own
    loop starts: found in CI, where an orphan made in that gap went to the launcher and
    outlived the sandbox. Here init is made slow to reach its loop, so the gap is wide."""
    from nskernel import Sandbox, SandboxSpec
    from nskernel._linux import init

    def slowly(step):
        def slow_step(*args, **kwargs):
            time.sleep(0.2)
            return step(*args, **kwargs)

        return slow_step

    # Init is a fork of this process, so it runs these (the native init and the Python loop).
    monkeypatch.setattr(init, "exec_native", slowly(init.exec_native))
    monkeypatch.setattr(init, "run_init_loop", slowly(init.run_init_loop))
    r, w = os.pipe()

    def target() -> int:
        if os.fork() == 0:
            if os.fork() == 0:  # orphaned at once: its parent exits right away
                time.sleep(0.5)  # init has reached its loop by now
                os.write(w, f"{os.getpid()} {os.getppid()}\n".encode())
                time.sleep(1000)
            os._exit(0)
        os.wait()
        time.sleep(1000)
        return 0

    sb = Sandbox.spawn(SandboxSpec(namespaces={"net", "uts"}), target=target, pass_fds=[w])
    os.close(w)
    try:
        orphan, parent = map(int, os.read(r, 100).split())
    finally:
        os.close(r)
        sb.kill()
    try:
        assert parent == sb.pid, "the orphan was re-parented past the sandbox's init"
        # Init kills its descendants when the lifeline closes: the orphan goes too.
        wait_for(lambda: not host_pid_alive(orphan), what=f"orphan {orphan} to die")
    finally:
        if host_pid_alive(orphan):  # it escaped: end it here rather than leak it
            os.kill(orphan, signal.SIGKILL)
            if parent == os.getpid():
                os.waitpid(orphan, 0)


# ---------------------------------------------------------------- the Python API


@pytest.mark.spawns_here
def test_python_api_spawn_target_and_facts():
    from nskernel import Sandbox, SandboxSpec

    r, w = os.pipe()

    def target() -> int:
        os.write(w, f"{os.getpid()} {socket.gethostname()}".encode())
        return 5

    sb = Sandbox.spawn(SandboxSpec(hostname="api"), target=target, pass_fds=[w])
    os.close(w)
    try:
        assert os.read(r, 100).decode() == "2 api"
        assert sb.wait(10) == 5
        assert sb.facts()["hostname"] == "api"
    finally:
        os.close(r)
        sb.kill()


@pytest.mark.spawns_here
def test_python_api_target_gets_pythons_fork_handling():
    """The setup processes skip Python's at-fork handlers (speed); a target must not:
    its `random` is reseeded, so two sandboxes never draw the same numbers, and a
    handler the caller registered runs in it."""
    import random

    from nskernel import Sandbox, SandboxSpec

    marks: list[str] = []
    os.register_at_fork(after_in_child=lambda: marks.append("child"))
    random.seed(1234)  # every fork starts from this state unless it is reseeded
    r, w = os.pipe()

    def target() -> int:
        os.write(w, f"{random.getrandbits(64)} {','.join(marks)}\n".encode())
        return 0

    draws = []
    try:
        for _ in range(2):
            sb = Sandbox.spawn(SandboxSpec(), target=target, pass_fds=[w])
            try:
                assert sb.wait(10) == 0
            finally:
                sb.kill()
            draws.append(os.read(r, 100).decode().split())
    finally:
        os.close(r)
        os.close(w)
    assert draws[0][1] == draws[1][1] == "child"  # ran once per target, not per setup fork
    assert draws[0][0] != draws[1][0]


@pytest.mark.spawns_here
def test_python_api_kill_destroys_a_running_sandbox():
    from nskernel import Sandbox, SandboxSpec

    sb = Sandbox.spawn(SandboxSpec(), ["sleep", "1000"])
    init = sb.pid
    assert host_pid_alive(init)
    sb.kill()
    assert not host_pid_alive(init)
    assert sb.returncode == 128 + signal.SIGKILL


def test_explicit_chdir_must_exist_inside(nsk):
    r = nsk("run", "--chdir", "/no/such/dir", "--", "sh", "-c", "echo ran")
    assert r.returncode == 125
    assert "ran" not in r.stdout
    assert "working directory /no/such/dir does not exist inside the sandbox" in r.stderr


def test_chdir_into_a_bound_directory(nsk, tmp_path):
    os.chmod(tmp_path, 0o777)
    r = nsk("run", "--bind", f"{tmp_path}:/tmp/work", "--chdir", "/tmp/work", "--", "pwd")
    assert r.stdout == "/tmp/work\n", r.stderr


@pytest.mark.root
def test_as_root_a_directory_sandbox_root_cannot_enter(nsk, private_dir):
    # Made by the host's root, sandbox root is an unprivileged host uid: a 0700 directory
    # of root's (like /root) is visible inside but cannot be entered.
    work = os.path.join(private_dir, "work")
    os.mkdir(work)
    with open(os.path.join(work, "data.txt"), "w") as f:
        f.write("from the host\n")

    # Started from there, the command starts at / (as from a directory not visible).
    r = nsk("run", "--", "pwd", cwd=work)
    assert (r.returncode, r.stdout) == (0, "/\n"), r.stderr
    # Asked for explicitly: a clear error, nothing ran.
    r = nsk("run", "--chdir", work, "--", "sh", "-c", "echo ran")
    assert r.returncode == 125
    assert "ran" not in r.stdout
    assert f"working directory {work} is not accessible inside the sandbox" in r.stderr
    # Bound in, it is reachable: a tmpfs skeleton over the 0700 directory holds the bind
    # (and hides the rest of it, which sandbox root could not read anyway).
    r = nsk("run", "--ro-bind", work, "--chdir", work, "--", "sh", "-c", "cat data.txt; ls ..")
    assert r.stdout == "from the host\nwork\n", r.stderr


@pytest.mark.root
def test_as_root_a_bind_owned_by_a_user_is_writable_as_that_user(nsk, private_dir):
    # Sandbox root is an unprivileged host uid R. A writable bind R cannot write, owned
    # by a user, is attached through an idmapped mount on which that user is R: inside
    # it is sandbox root's own, and what it writes lands on the host as that user.
    os.chmod(private_dir, 0o755)
    theirs = os.path.join(private_dir, "user-owned")
    kept = os.path.join(private_dir, "read-only")
    for d in (theirs, kept):
        os.mkdir(d, 0o755)
    with open(os.path.join(theirs, "old.txt"), "w") as f:
        f.write("old\n")
    for path in (theirs, os.path.join(theirs, "old.txt"), kept):
        os.chown(path, 4321, 4322)
    script = (
        f"stat -c %u:%g {theirs} {theirs}/old.txt; "
        f"echo more >> {theirs}/old.txt && mkdir {theirs}/sub && echo wrote; "
        f"touch {kept}/x 2>/dev/null || echo ro-refused"
    )
    r = nsk("run", "--bind", theirs, "--ro-bind", kept, "--", "sh", "-c", script)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.split() == ["0:0", "0:0", "wrote", "ro-refused"]
    with open(os.path.join(theirs, "old.txt")) as f:
        assert f.read() == "old\nmore\n"
    st = os.stat(os.path.join(theirs, "sub"))
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert os.listdir(kept) == []
    # Only the bound tree: the rest of the host stays read-only and as it was.
    r = nsk("run", "--bind", theirs, "--", "sh", "-c", f"touch {private_dir}/x || echo refused")
    assert r.stdout == "refused\n"
    assert sorted(os.listdir(private_dir)) == ["read-only", "user-owned"]


@pytest.mark.root
def test_as_root_a_root_owned_bind_stays_read_only_and_says_why(nsk, private_dir):
    # Idmapping root's tree would let the sandbox act as host root there (setuid files
    # included): it stays as the host has it, and the warning says what to do instead.
    os.chmod(private_dir, 0o755)
    r = nsk(
        "run", "--bind", private_dir, "--", "sh", "-c", f"touch {private_dir}/x || echo refused"
    )
    assert (r.returncode, r.stdout) == (0, "refused\n")
    assert f"{private_dir} belongs to root (owner or group), so it stays read-only" in r.stderr
    assert "run nskernel as the user who should own the files" in r.stderr
    assert os.listdir(private_dir) == []
    # Writable for sandbox root as it is (mode 1777): a plain bind, no warning.
    os.chmod(private_dir, 0o1777)
    r = nsk("run", "--bind", private_dir, "--", "sh", "-c", f"touch {private_dir}/x && echo wrote")
    assert (r.stdout, r.stderr) == ("wrote\n", "")


@pytest.mark.root
def test_as_root_a_bind_that_cannot_be_idmapped_says_so_and_still_runs(nsk):
    # procfs cannot be idmapped: a /proc/PID directory of a user's process keeps its plain
    # bind (not writable for sandbox root), a warning says why, and the command runs.
    pid = os.fork()
    if pid == 0:  # a process of uid 4321, so that its /proc directory is that user's
        try:
            os.setgid(4322)
            os.setuid(4321)
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        wait_for(lambda: os.stat(f"/proc/{pid}").st_uid == 4321, 5, "the child to be uid 4321")
        r = nsk("run", "--bind", f"/proc/{pid}:/tmp/p", "--", "sh", "-c", "cat /tmp/p/comm")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() in ("python", "python3", "python3.11", "pytest")
        assert f"cannot make /proc/{pid} writable for the sandbox" in r.stderr
        assert "idmapped mount refused" in r.stderr
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_nskernels_runtime_state_is_masked_inside(nsk):
    # Other kernels' socket dirs and connection files (with their keys) live in the
    # per-user runtime dir; under $XDG_RUNTIME_DIR it would otherwise be visible inside.
    import shutil
    import tempfile

    xdg = tempfile.mkdtemp(prefix="nsk-xdg-", dir="/var/tmp")
    try:
        os.chmod(xdg, 0o755)  # traversable by sandbox root, which is another uid for root
        state = os.path.join(xdg, f"nsk-{os.geteuid()}")
        os.mkdir(state, 0o700)
        os.mkdir(os.path.join(state, "kern-other"), 0o755)  # readable by sandbox root
        with open(os.path.join(state, "kern-other", "kernel.json"), "w") as f:
            f.write("secret-key")
        os.chmod(os.path.join(state, "kern-other", "kernel.json"), 0o644)
        env = {**os.environ, "XDG_RUNTIME_DIR": xdg}
        r = nsk("run", "--", "sh", "-c", f"ls -A {state}; echo listed", env=env)
        assert r.stdout == "listed\n", r.stdout + r.stderr
        mine = os.path.join(state, "kern-other")
        r = nsk("run", "--ro-bind", mine, "--", "cat", f"{mine}/kernel.json", env=env)
        assert r.stdout == "secret-key"  # what is bound explicitly is still visible
    finally:
        shutil.rmtree(xdg)


def _listed_after(
    argv: list[str], env: dict[str, str], state: str, make: Callable[[], None]
) -> str:
    """Start ``nskernel run ARGV -- sh`` that lists ``state`` once ``make`` has run (after
    the sandbox's mounts are made), and return what it listed."""
    from tests.conftest import nskernel_cmd

    look = f"echo ready; read go; ls -A {state} 2>&1; echo listed"
    proc = subprocess.Popen(
        [*nskernel_cmd("run", *argv, "--"), "sh", "-c", look],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        make()
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.endswith("listed\n"), out + err
    return out


def test_the_runtime_directory_is_covered_even_when_made_after_the_sandbox_started(
    monkeypatch,
):
    """A sandbox that binds the runtime directory's parent (here $XDG_RUNTIME_DIR) must
    never see the kernels started after it: the directory did not exist between kernels
    (the last one out removed it), so no mask covered it, and one made again later was
    not the directory covered (thirteenth red-team pass: rootless, a sandbox read a later
    kernel's key and ran code in it). It is made before any sandbox and never removed."""
    import shutil
    import tempfile

    from nskernel import paths

    xdg = tempfile.mkdtemp(prefix="nsk-xdg-", dir="/var/tmp")
    os.chmod(xdg, 0o755)  # traversable by sandbox root, which is another uid for root
    state = os.path.join(xdg, f"nsk-{os.geteuid()}")
    env = {**os.environ, "XDG_RUNTIME_DIR": xdg}

    def start_kernels() -> None:
        # "A kernel": the runtime directory and a kernel's files in it, as the
        # provisioner makes them; the last kernel out, then the next one in.
        monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
        base = paths.runtime_dir()
        kern = os.path.join(base, "kern-later")
        os.mkdir(kern, 0o755)
        with open(os.path.join(kern, "kernel.json"), "w") as f:
            f.write("secret-key")
        os.chmod(os.path.join(kern, "kernel.json"), 0o644)
        assert paths.remove_runtime_entry(kern) == []
        assert os.path.isdir(base)  # the directory must be the same
        os.mkdir(kern, 0o755)
        with open(os.path.join(kern, "kernel.json"), "w") as f:
            f.write("secret-key")

    try:
        out = _listed_after(["--ro-bind", xdg], env, state, start_kernels)
    finally:
        shutil.rmtree(xdg, ignore_errors=True)
    # Empty (covered), or out of sandbox root's reach as on the host (as root, a 0700
    # directory of root's): never a kernel's entry.
    assert "kern-later" not in out, out


def test_the_runtime_directory_another_base_would_use_is_covered_too(tmp_path, monkeypatch):
    """Jupyter started without $XDG_RUNTIME_DIR (a service, a container) keeps its
    kernels under /tmp; a sandbox started from a login shell, which has one, covered
    only its own base; and a bind of the runtime directory itself was not covered at
    all: it read those kernels' keys (14th red-team pass). Every base this user's
    processes may choose is covered (made first, so that the cover is on the directory
    kernels will use), and a bind of the directory itself is refused."""
    from nskernel import paths
    from tests.conftest import nskernel_cmd

    xdg = tmp_path / "xdg"
    xdg.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    state = f"/tmp/nsk-{os.geteuid()}"
    covered = paths.runtime_dirs_to_hide()
    assert state in covered and f"{xdg}/nsk-{os.geteuid()}" in covered, covered
    res = subprocess.run(
        [*nskernel_cmd("run", "--ro-bind", state, "--"), "ls", "-A", state],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "nskernel's runtime directory" in res.stderr, res


def test_a_runtime_base_reached_through_a_link_is_covered_where_it_is():
    """$XDG_RUNTIME_DIR may be a link into a place every sandbox sees read-only: the
    check by path took it for hidden (it is under /tmp) and masked nothing, so a
    sandbox with no bind at all read the kernels' keys (14th red-team pass)."""
    import shutil
    import tempfile

    real = tempfile.mkdtemp(prefix="nsk-realbase-", dir="/var/tmp")
    link = tempfile.mktemp(prefix="nsk-linkbase-", dir="/tmp")
    os.chmod(real, 0o755)
    os.symlink(real, link)
    try:
        env = {**os.environ, "XDG_RUNTIME_DIR": link}
        state = os.path.join(real, f"nsk-{os.geteuid()}")
        os.makedirs(state, 0o700, exist_ok=True)

        def start_a_kernel() -> None:
            os.makedirs(os.path.join(state, "kern-later-test"), 0o755)
            os.chmod(state, 0o755)  # even readable by anyone: what hides it is the mount

        out = _listed_after([], env, state, start_a_kernel)
    finally:
        os.unlink(link)
        shutil.rmtree(real, ignore_errors=True)
    assert "kern-later-test" not in out, out


def test_a_missing_native_init_is_said_at_first_use(tmp_path, monkeypatch):
    # pip hides the build hook's warning; its note (one line) is shown instead.
    from nskernel._linux import init

    monkeypatch.delenv(init.INIT_ENV, raising=False)
    monkeypatch.setattr(init, "NATIVE_INIT", str(tmp_path / "nskernel-init"))
    monkeypatch.setattr(init, "MISSING_NOTE", str(tmp_path / "nskernel-init.missing"))
    (tmp_path / "nskernel-init.missing").write_text("no C compiler (cc/gcc) found\n")
    assert init.fallback_reason() == "no C compiler (cc/gcc) found"
    (tmp_path / "nskernel-init").write_bytes(b"")
    assert init.fallback_reason() is None


@pytest.mark.parametrize("option", ["--bind", "--ro-bind"])
def test_a_bind_of_tmp_itself_shows_the_hosts_tmp(option):
    """`--bind /tmp` showed the setup's scratch tmpfs, not the host's files: the source
    was copied (recursively) after the scratch had been mounted on it. It shows the
    host's /tmp, writable only with --bind, and nskernel's runtime directory in it stays
    covered."""
    import tempfile

    from nskernel import paths
    from tests.conftest import nskernel_cmd

    state = f"/tmp/nsk-{os.geteuid()}"
    assert state in paths.runtime_dirs_to_hide()  # made, as before any sandbox
    fd, probe = tempfile.mkstemp(prefix="nsk-bindtmp-", dir="/tmp")
    os.write(fd, b"the host's file\n")
    os.close(fd)
    os.chmod(probe, 0o644)  # readable by sandbox root, another uid for root
    secret = tempfile.mkdtemp(prefix="bindtmp-kernel-", dir=state)
    written = probe + ".from-sandbox"
    look = f"cat {probe}; ls -A {state}; echo listed; echo w > {written} || echo refused"
    try:
        res = subprocess.run(
            [*nskernel_cmd("run", option, "/tmp", "--"), "sh", "-c", look],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        if option == "--bind" and res.returncode == 2:
            # A /tmp holding a place host-side code is loaded from (a git repository, a
            # Jupyter path of a test, too big to look through) is not handed to a sandbox
            # to write (15th red-team pass, F4); on a shared machine, and after other
            # tests, it usually does: then that refusal, saying what to do, is right.
            assert res.stderr.startswith("nskernel run: --bind /tmp: "), res
            assert "--ro-bind /tmp" in res.stderr, res
            assert not os.path.exists(written)
            return
        assert res.returncode == 0, res
        seen, rest = res.stdout.split("listed\n")
        assert seen == "the host's file\n", res  # nothing of the runtime directory
        if option == "--bind":
            with open(written) as f:
                assert f.read() == "w\n"
        else:
            assert rest == "refused\n" and "Read-only file system" in res.stderr, res
            assert not os.path.exists(written)
    finally:
        for path in (probe, written):
            if os.path.lexists(path):
                os.unlink(path)
        os.rmdir(secret)


def _session_bus_seen(base: str, *options: str) -> str:
    """What `nskernel run OPTIONS` sees of a private $XDG_RUNTIME_DIR ``base`` (made
    here, 0700) holding a listening "bus": its listing, then whether it connects."""
    from tests.conftest import nskernel_cmd

    os.mkdir(base, 0o700)
    bus = os.path.join(base, "bus")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(bus)
        listener.listen(1)
        os.chmod(bus, 0o777)
        probe = (
            "import os, socket\n"
            f"print(sorted(os.listdir({base!r})))\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({bus!r}); print('connected')\n"
            "except OSError as e:\n    print(e.strerror)\n"
        )
        res = subprocess.run(
            [*nskernel_cmd("run", *options, "--"), sys.executable, "-I", "-c", probe],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "XDG_RUNTIME_DIR": base},
            cwd="/",
        )
        assert res.returncode == 0, res
        return res.stdout
    finally:
        listener.close()


def test_the_sessions_runtime_directory_is_hidden_wherever_it_is():
    """$XDG_RUNTIME_DIR holds the session's sockets (D-Bus, whose systemd --user starts
    commands on the host; ssh-agent, gpg-agent). Only /run/user was hidden: with the
    variable elsewhere (/var/tmp/..., as some sites set it), every sandbox connected to
    them (15th red-team pass). A private one (0700, the user's) is hidden wherever it is."""
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="nsk-xrt-", dir="/var/tmp")
    os.chmod(top, 0o755)  # the runtime directory is the private one, below it
    try:
        seen = _session_bus_seen(os.path.join(top, "run"))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert seen == "[]\nNo such file or directory\n", seen


@pytest.mark.parametrize("where", ["under-a-bind", "share-home"])
def test_the_sessions_runtime_directory_stays_hidden_under_a_bind_and_with_share_home(where):
    """The session's runtime directory is masked, but a mask lies beneath the binds: a
    bind (a notebook's directory) holding a private $XDG_RUNTIME_DIR showed it, and
    --share-home, meant to show the homes read-only, showed /run/user and it too, and
    read-only does not stop a connect to the session bus (16th red-team pass, F5, F11)."""
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="nsk-xrt-top-", dir="/var/tmp")
    os.chmod(top, 0o755)
    option = ["--ro-bind", top] if where == "under-a-bind" else ["--share-home"]
    try:
        seen = _session_bus_seen(os.path.join(top, "run"), *option)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert seen == "[]\nNo such file or directory\n", seen


def test_a_writable_bind_of_a_homes_dot_directory_is_refused(tmp_path):
    """`nskernel run --bind ~/.cargo`: a login shell sources ~/.cargo/env on the host, so
    what the sandbox planted there would run outside it (16th red-team pass, F8)."""
    from tests.conftest import nskernel_cmd

    home = tmp_path / "home"
    cargo = home / ".cargo"
    cargo.mkdir(parents=True)
    res = subprocess.run(
        [*nskernel_cmd("run", "--bind", str(cargo), "--"), "sh", "-c", f"echo x > {cargo}/env"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
        cwd="/",
    )
    assert res.returncode == 2, res
    assert "a home's dot-entry" in res.stderr and f"--ro-bind {cargo}" in res.stderr, res
    assert not (cargo / "env").exists()
