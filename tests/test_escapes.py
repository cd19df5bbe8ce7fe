"""Escapes tried from inside a sandbox: each one must fail, and the host must not change.

Every test runs as whoever runs the suite (CI: root, then an unprivileged user). What
differs between the two is who sandbox root is on the host: ``nobody`` (65534, or
root's /etc/subuid range) when the suite runs as root, the calling user when it runs
rootless. Assertions that depend on it say so. Unless a test says otherwise the sandbox
has all six namespaces, as `nskernel run` gives by default.

Network traffic stays on loopback or inside namespaces the test created; the only host
processes signalled are ones the test started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from tests.conftest import IS_ROOT
from tests.hostile import (
    descendants,
    host_pid_alive,
    host_scratch_dir,
    inside,
    pids_with_cmdline,
    start_background,
    status_ids,
    wait_for,
)

pytestmark = pytest.mark.userns


@pytest.fixture
def host_sleep():
    """A process on the host that the sandbox must neither see nor touch."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc.pid
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    assert alive, "the host process died while the sandbox tried to reach it"


@pytest.fixture
def scratch():
    path = host_scratch_dir()
    yield path
    shutil.rmtree(path)


def _mapped_root() -> int:
    return 65534 if IS_ROOT else os.getuid()


# ---------------------------------------------------------------- processes


def test_host_process_is_invisible_and_cannot_be_signalled(nsk, host_sleep):
    script = f"""
pid = {host_sleep}
report(
    in_proc=os.path.exists(f"/proc/{{pid}}"),
    listed=str(pid) in os.listdir("/proc"),
    kill0=attempt(os.kill, pid, 0),
    kill9=attempt(os.kill, pid, 9),
    killpg=attempt(os.killpg, pid, 9),
    # Unmounting the sandbox's /proc must not uncover the host's.
    umount_proc=attempt(c_call, libc.umount2, b"/proc", 2),
    after_umount=os.path.exists(f"/proc/{{pid}}"),
    host_pids_after_umount=sum(1 for p in os.listdir("/proc") if p.isdigit()),
)
"""
    seen = inside(nsk, script)
    assert seen["in_proc"] is False and seen["listed"] is False
    assert seen["kill0"] == seen["kill9"] == seen["killpg"] == "ESRCH"
    assert seen["after_umount"] is False, "unmounting /proc uncovered the host's processes"
    assert seen["host_pids_after_umount"] <= 3, seen  # init, python, nothing of the host
    assert host_pid_alive(host_sleep)


def test_ptrace_of_a_host_process_fails(nsk, host_sleep):
    script = f"""
pid = {host_sleep}
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
report(
    attach=attempt(c_call, libc.ptrace, PTRACE_ATTACH, pid, None, None),
    seize=attempt(c_call, libc.ptrace, PTRACE_SEIZE, pid, None, None),
    mem=attempt(open, f"/proc/{{pid}}/mem", "rb"),
    pidfd=attempt(os.pidfd_open, pid),
)
"""
    seen = inside(nsk, script)
    assert seen == {"attach": "ESRCH", "seize": "ESRCH", "mem": "ENOENT", "pidfd": "ESRCH"}
    with open(f"/proc/{host_sleep}/status") as f:
        tracer = next(line for line in f if line.startswith("TracerPid:"))
    assert tracer.split()[1] == "0"


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param((), id="all-six"),
        # Without a PID namespace the init runs as a subreaper and still catches orphans.
        pytest.param(("--net", "--mnt", "--uts", "--ipc", "--user"), id="no-pid-namespace"),
    ],
)
def test_daemonized_process_dies_with_the_sandbox(tmp_path, flags):
    tag = f"1000.{uuid.uuid4().int % 10**9:09d}"  # a unique `sleep` argument to find it by
    script = f"""
import os, sys
if os.fork() == 0:
    os.setsid()                       # the classic daemon: new session, double fork,
    if os.fork() == 0:                # stdio detached, parent gone
        fd = os.open("/dev/null", os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(fd, n)
        os.execvp("sleep", ["sleep", "{tag}"])
    os._exit(0)
os.wait()
print("daemonized", flush=True)
sys.stdin.read()                      # until the test closes our stdin
"""
    proc, facts = start_background(
        tmp_path,
        *flags,
        "--",
        sys.executable,
        "-c",
        script,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "daemonized\n"
        wait_for(lambda: pids_with_cmdline(f"sleep {tag}"), what="the daemon on the host")
        daemons = pids_with_cmdline(f"sleep {tag}")
        assert set(daemons) <= set(descendants(facts["pid"])), "re-parented to the sandbox's init"
        proc.stdin.close()  # the command exits normally: the sandbox ends
        assert proc.wait(10) == 0
        for pid in daemons:
            wait_for(lambda pid=pid: not host_pid_alive(pid), what=f"daemon {pid} to die")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# ---------------------------------------------------------------- files


def test_unreadable_host_files_stay_unreadable(nsk, tmp_path):
    # /etc/shadow is root:shadow 0640: neither nobody (sandbox root of a root run) nor the
    # unprivileged caller may read it, whether it is reached through the host root or bound in.
    script = """
report(
    shadow=attempt(open, "/etc/shadow"),
    bound=attempt(open, "/tmp/shadow"),
    chmod=attempt(os.chmod, "/tmp/shadow", 0o666),
)
"""
    seen = inside(nsk, script, "--ro-bind", "/etc/shadow:/tmp/shadow")
    assert seen["shadow"] == seen["bound"] == "EACCES"
    assert seen["chmod"] in ("EPERM", "EROFS")  # the read-only bind may answer first


@pytest.mark.root
def test_root_only_file_bound_writable_is_still_unreadable(nsk, tmp_path):
    # As root the test can make a 0600 root file; sandbox root is nobody on the host, so
    # even a writable bind gives it nothing: no read, no chmod, no replacing the file.
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "key").write_text("top secret\n")
    os.chmod(secret_dir / "key", 0o600)
    for d in (tmp_path, secret_dir):
        os.chmod(d, 0o755)
    script = """
report(
    read=attempt(open, "/tmp/s/key"),
    chmod=attempt(os.chmod, "/tmp/s/key", 0o644),
    chown=attempt(os.chown, "/tmp/s/key", 0, 0),
    unlink=attempt(os.unlink, "/tmp/s/key"),
    create=attempt(write_file, "/tmp/s/new"),
)
"""
    seen = inside(nsk, script, "--bind", f"{secret_dir}:/tmp/s")
    assert seen == {
        "read": "EACCES",
        "chmod": "EPERM",
        "chown": "EPERM",
        "unlink": "EACCES",
        "create": "EACCES",
    }
    assert (secret_dir / "key").read_text() == "top secret\n"
    assert os.listdir(secret_dir) == ["key"]


def test_writes_land_only_in_bind_paths(nsk, scratch):
    tag = uuid.uuid4().hex[:12]
    for sub in ("bound", "unbound"):
        os.mkdir(f"{scratch}/{sub}")
        os.chmod(f"{scratch}/{sub}", 0o777)
    with open(f"{scratch}/unbound/existing", "w") as f:
        f.write("host data\n")
    os.chmod(f"{scratch}/unbound/existing", 0o666)
    targets = {
        "bound": f"{scratch}/bound/f",
        "unbound": f"{scratch}/unbound/f",
        "parent": f"{scratch}/f",
        "var_tmp": f"/var/tmp/nsk-escape-{tag}",
        "etc": f"/etc/nsk-escape-{tag}",
        "tmp": f"/tmp/nsk-escape-{tag}",  # private inside: lands, but not on the host
        "shm": f"/dev/shm/nsk-escape-{tag}",  # private inside too
        "home": os.path.expanduser(f"~/nsk-escape-{tag}"),  # a private home too
    }
    script = f"""
targets = {targets!r}
found = {{k: attempt(write_file, p) for k, p in targets.items()}}
found["overwrite"] = attempt(write_file, "{scratch}/unbound/existing", "sandbox")
found["unlink"] = attempt(os.unlink, "{scratch}/unbound/existing")
found["rename"] = attempt(os.rename, "{scratch}/unbound/existing", "{scratch}/bound/moved")
report(**found)
"""
    seen = inside(nsk, script, "--bind", f"{scratch}/bound")
    assert seen.pop("bound") == seen.pop("tmp") == seen.pop("shm") == seen.pop("home") == "ok"
    for what, err in seen.items():
        # EROFS: the read-only host root; EACCES: a directory nobody may enter (/root when
        # the suite runs as root); EXDEV: a rename across the bind boundary; ENOENT: a
        # home directory under /tmp, which is private inside.
        assert err in ("EROFS", "EACCES", "EXDEV", "ENOENT"), (what, err)
    # On the host, the only write that landed is the one in the bound directory.
    assert sorted(os.listdir(f"{scratch}/bound")) == ["f"]
    assert sorted(os.listdir(f"{scratch}/unbound")) == ["existing"]
    assert open(f"{scratch}/unbound/existing").read() == "host data\n"
    for what, path in targets.items():
        if what != "bound":
            assert not os.path.exists(path), path


REMOUNT_SCRIPT = """
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
NR_MOUNT_SETATTR = 442

def clear_rdonly(path):
    # mount_setattr(2), the modern way to flip a mount's read-only flag
    attr = (ctypes.c_uint64 * 4)(0, MOUNT_ATTR_RDONLY, 0, 0)  # set, clr, propagation, userns
    c_call(libc.syscall, NR_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE,
           ctypes.byref(attr), ctypes.c_size_t(32))

found = {}
for name, path in TARGETS.items():
    found[name + "_bind_remount"] = attempt(
        c_call, libc.mount, None, path.encode(), None, MS_REMOUNT | MS_BIND, None)
    found[name + "_sb_remount"] = attempt(
        c_call, libc.mount, None, path.encode(), None, MS_REMOUNT, None)
    found[name + "_mount_setattr"] = attempt(clear_rdonly, path)
    found[name + "_umount"] = attempt(c_call, libc.umount2, path.encode(), 2)
    found[name + "_write"] = attempt(write_file, PROBE[name])
report(**found)
"""


def test_read_only_host_root_and_ro_binds_cannot_be_made_writable(nsk, scratch):
    # Sandbox root has CAP_SYS_ADMIN over its own mount namespace, so it may mount; but the
    # read-only flags nskernel set up must be locked, or a remount makes the host writable.
    os.mkdir(f"{scratch}/ro")
    os.chmod(f"{scratch}/ro", 0o777)
    targets = {"root": "/", "robind": f"{scratch}/ro"}
    probe = {"root": f"{scratch}/escaped", "robind": f"{scratch}/ro/escaped"}
    script = f"TARGETS = {targets!r}\nPROBE = {probe!r}\n" + REMOUNT_SCRIPT
    seen = inside(nsk, script, "--ro-bind", f"{scratch}/ro")
    for key, err in seen.items():
        assert err != "ok", f"{key} succeeded inside the sandbox"
    assert seen["root_write"] == seen["robind_write"] == "EROFS"
    assert os.listdir(scratch) == ["ro"]
    assert os.listdir(f"{scratch}/ro") == []


def test_mounts_inside_do_not_reach_the_host(tmp_path, scratch):
    with open("/proc/self/mountinfo") as f:
        host_before = f.read()
    script = f"""
set -e
mount -t tmpfs none {scratch}
echo inside > {scratch}/file-in-tmpfs
mount -t tmpfs none /tmp
echo mounted
read _ || true
"""
    proc, facts = start_background(
        tmp_path,
        "--",
        "sh",
        "-c",
        script,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "mounted\n"
        command = descendants(facts["pid"])[0]
        with open(f"/proc/{command}/mountinfo") as f:
            assert f" {scratch} " in f.read(), "the tmpfs was not mounted inside"
        with open("/proc/self/mountinfo") as f:
            assert f.read() == host_before
        assert os.listdir(scratch) == []
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == 0


def test_proc_sys_and_sys_are_not_writable(nsk):
    # Host-wide knobs only: per-namespace ones (the sandbox's own hostname, its own net
    # sysctls) are the sandbox's to change. Writing back the current value keeps the host
    # unchanged even if a write ever got through.
    candidates = [
        "/proc/sys/kernel/panic",
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/vm/swappiness",
        "/proc/sys/fs/file-max",
        "/proc/sys/kernel/sysrq",
        "/proc/sysrq-trigger",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/uevent_helper",
        "/sys/module/printk/parameters/time",
        "/sys/power/state",
    ]
    present = [p for p in candidates if os.path.exists(p)]
    assert len(present) >= 4, present
    script = f"""
def rewrite(path):
    try:
        old = open(path).read()
    except OSError:
        old = ""  # write-only (sysrq-trigger): an empty write is a no-op
    with open(path, "w") as f:
        f.write(old)

found = {{p: attempt(rewrite, p) for p in {present!r}}}
report(**found)
"""
    seen = inside(nsk, script)
    for path in present:
        assert seen[path] in ("EACCES", "EPERM", "EROFS"), (path, seen[path])


# ---------------------------------------------------------------- identity


def test_hostname_change_stays_in_the_sandbox(nsk):
    host = socket.gethostname()
    script = """
found = {"set": attempt(socket.sethostname, "escaped")}
found["now"] = socket.gethostname()
report(**found)
"""
    seen = inside(nsk, script)
    assert seen == {"set": "ok", "now": "escaped"}
    assert socket.gethostname() == host


def test_hostname_cannot_be_set_without_a_uts_namespace(nsk):
    # The UTS namespace is then the host's, owned by the host's user namespace: sandbox
    # root has no CAP_SYS_ADMIN there.
    host = socket.gethostname()
    try:
        seen = inside(nsk, 'report(set=attempt(socket.sethostname, "escaped"))', "--user", "--net")
        assert seen == {"set": "EPERM"}
    finally:
        if socket.gethostname() != host:  # never leave the machine renamed
            socket.sethostname(host)
    assert socket.gethostname() == host


def test_sandbox_root_is_never_host_root(tmp_path):
    # A setuid-root binary (passwd) waits for a password; the host then looks at who it is.
    # The file's owner, host root, is not mapped inside, so the kernel ignores the bit.
    proc, facts = start_background(
        tmp_path,
        "--",
        "sh",
        "-c",
        "stat -c %u /usr/bin/passwd; grep -v '^$' /proc/self/uid_map; exec passwd",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert os.stat("/usr/bin/passwd").st_mode & 0o4000, "passwd is expected to be setuid"
        owner_inside = int(proc.stdout.readline())
        assert owner_inside == 65534, "host root must be unmapped (the overflow uid) inside"
        for _inside, outside, count in facts["uid_map"]:
            assert not outside <= 0 < outside + count, "a uid map range covers host root"
        wait_for(
            lambda: any(_comm(p) == "passwd" for p in descendants(facts["pid"])),
            what="passwd to start",
        )
        passwd = next(p for p in descendants(facts["pid"]) if _comm(p) == "passwd")
        uids, gids = status_ids(passwd)
        assert uids == [_mapped_root()] * 4, uids
        assert 0 not in gids, gids
        for pid in (facts["pid"], *descendants(facts["pid"])):
            assert 0 not in status_ids(pid)[0], pid
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- network


def test_host_network_addresses_are_unreachable(nsk):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable on the host
        host_addrs = _host_ipv4_addresses()
        script = f"""
import time
port = {port}
def connect(addr):
    with socket.create_connection((addr, port), timeout=2):
        pass
found = {{}}
t0 = time.monotonic()
found["loopback"] = attempt(connect, "127.0.0.1")
found["loopback_seconds"] = time.monotonic() - t0
found["host"] = {{a: attempt(connect, a) for a in {host_addrs!r}}}
# The same port on the sandbox's own loopback works: it is another network stack.
own = socket.create_server(("127.0.0.1", port))
found["own_loopback"] = attempt(connect, "127.0.0.1")
found["links"] = sorted(os.listdir("/sys/class/net"))
report(**found)
"""
        seen = inside(nsk, script)
    finally:
        listener.close()
    assert seen["loopback"] == "ECONNREFUSED"
    assert seen["loopback_seconds"] < 1.0
    assert seen["own_loopback"] == "ok"
    assert seen["links"] == ["lo"]
    for addr, err in seen["host"].items():
        assert err in ("ENETUNREACH", "ECONNREFUSED"), (addr, err)


def _host_ipv4_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True)
    return [a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", [])]


@pytest.mark.parametrize(
    ("flags", "reachable"),
    [
        pytest.param((), False, id="own-net-namespace"),
        # Documented limit: abstract sockets belong to a network namespace; a sandbox
        # without --net shares the host's and reaches them (see SECURITY.md).
        pytest.param(("--pid", "--mnt", "--uts", "--ipc", "--user"), True, id="without-net"),
    ],
)
def test_host_abstract_unix_socket(nsk, flags, reachable):
    name = f"\0nsk-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen()
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(name)  # reachable from the host itself
        probe.close()
        script = f"""
def connect(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(name)
    finally:
        s.close()
report(abstract=attempt(connect, {name!r}))
"""
        seen = inside(nsk, script, *flags)
    finally:
        listener.close()
    assert seen["abstract"] == ("ok" if reachable else "ECONNREFUSED")


def test_kill_minus_one_inside_reaches_only_the_sandbox(tmp_path, host_sleep):
    # The sandbox's processes cannot be used as a relay: kill(-1) inside reaches only them.
    proc, _facts = start_background(
        tmp_path, "--", "sh", "-c", "sleep 30 & kill -9 -1; echo done", stdout=subprocess.PIPE
    )
    try:
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert host_pid_alive(host_sleep)
    assert proc.returncode in (0, 128 + signal.SIGKILL)
