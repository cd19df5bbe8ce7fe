"""Resource limits: contained, reported plainly, cleaned up — root (cgroups) and
rootless (rlimits, since an unprivileged user has no writable cgroup here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nskernel import SpecError
from nskernel.spec import make_limits, parse_size
from tests.conftest import IS_ROOT, nskernel_cmd

HOG = "x = bytearray(400 * 1024 * 1024); print('allocated')"
FORK_BOMB = r"""
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("fork refused after", n, "children:", e.strerror, flush=True)
"""


@pytest.mark.parametrize(
    ("text", "n"), [("256M", 256 << 20), ("1G", 1 << 30), ("1.5GiB", 3 << 29), (2 << 20, 2 << 20)]
)
def test_sizes(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory": "lots"}, "invalid size 'lots'"),
        ({"memory": "10K"}, "too small"),
        ({"pids": "0"}, "invalid --pids"),
        ({"pids": "many"}, "invalid --pids"),
        ({"cpus": "-1"}, "invalid --cpus"),
    ],
)
def test_bad_limits_are_clear_errors(kwargs, match):
    with pytest.raises(SpecError, match=match):
        make_limits(**kwargs)


def test_bad_size_on_the_command_line(nsk):
    r = nsk("run", "--memory", "lots", "--", "true")
    assert r.returncode == 2
    assert "invalid size 'lots'" in r.stderr


@pytest.mark.userns
def test_memory_hog_is_contained_and_reported(nsk, tmp_path):
    status = tmp_path / "s.json"
    r = nsk("run", "--memory", "64M", "--status-json", str(status), "--", sys.executable, "-c", HOG)
    assert "allocated" not in r.stdout
    mechanism = json.loads(status.read_text())["limits"]["memory"]["mechanism"]
    if IS_ROOT:  # this machine mounts a writable v1 memory controller for root
        assert mechanism == "cgroup v1"
        assert r.returncode == 128 + signal.SIGKILL
        assert "killed: memory limit 64 MiB reached" in r.stderr
    else:
        assert mechanism.startswith("rlimit RLIMIT_AS")
        assert "MemoryError" in r.stderr
        assert r.returncode == 1


@pytest.mark.userns
def test_private_tmpfs_hold_no_more_than_the_memory_limit(nsk):
    # Files in a tmpfs are memory RLIMIT_AS (the rootless fallback) never sees: each
    # private tmpfs is as large as the limit, whatever enforces it.
    code = (
        "import os, json\n"
        "print(json.dumps({p: os.statvfs(p).f_blocks * os.statvfs(p).f_frsize"
        " for p in ('/tmp', '/dev/shm', os.environ['HOME'])}))"
    )
    res = nsk("run", "--memory", "64M", "--", sys.executable, "-c", code)
    assert res.returncode == 0, res.stderr
    sizes = json.loads(res.stdout)
    assert all(0 < size <= 64 << 20 for size in sizes.values()), sizes
    res = nsk("run", "--", sys.executable, "-c", code)
    assert all(size > 64 << 20 for size in json.loads(res.stdout).values())  # unlimited


def test_fork_bomb_is_contained(nsk, tmp_path):
    status = tmp_path / "s.json"
    start = time.monotonic()
    r = nsk(
        "run", "--pids", "32", "--timeout", "20", "--status-json", str(status), "--",
        sys.executable, "-c", FORK_BOMB,
    )  # fmt: skip
    assert "fork refused after" in r.stdout, r.stderr
    assert int(r.stdout.split("after")[1].split()[0]) < 32
    assert time.monotonic() - start < 20, "the bomb was contained by the limit, not the timeout"
    expected = "cgroup v1" if IS_ROOT else "rlimit RLIMIT_NPROC"
    assert json.loads(status.read_text())["limits"]["pids"]["mechanism"].startswith(expected)


@pytest.mark.userns
def test_timeout_kills_the_sandbox_with_a_message(nsk):
    start = time.monotonic()
    r = nsk("run", "--timeout", "0.5", "--", "sh", "-c", "sleep 30 & sleep 30")
    assert r.returncode == 124
    assert "killed: timeout 0.5 s reached" in r.stderr
    assert time.monotonic() - start < 10


@pytest.mark.userns
def test_cpu_limit_mechanism_is_reported(nsk, tmp_path):
    status = tmp_path / "s.json"
    r = nsk("run", "--cpus", "0.5", "--status-json", str(status), "--", "true")
    assert r.returncode == 0
    mech = json.loads(status.read_text())["limits"]["cpus"]["mechanism"]
    assert mech == (
        "cgroup v1" if IS_ROOT else "not enforced: no writable cpu cgroup (v1 or delegated v2) here"
    )


def _limited_sleeper(tmp_path):
    """``nskernel run --pids 50 --memory 128M -- sleep 30``: its process and the cgroups
    of its init, by controller."""
    status = tmp_path / "s.json"
    proc = subprocess.Popen(
        nskernel_cmd("run", "--pids", "50", "--memory", "128M", "--status-json", str(status),
                     "--", "sleep", "30")
    )  # fmt: skip
    while not status.exists():
        time.sleep(0.02)
    init = json.loads(status.read_text())["pid"]
    with open(f"/proc/{init}/cgroup") as f:
        return proc, dict(line.strip().split(":", 2)[1:] for line in f)


@pytest.mark.root
@pytest.mark.userns
def test_cgroups_live_beneath_our_own_and_go_away(tmp_path):
    proc, theirs = _limited_sleeper(tmp_path)
    with open("/proc/self/cgroup") as f:
        ours = dict(line.strip().split(":", 2)[1:] for line in f)
    for controller in ("pids", "memory"):
        assert theirs[controller].startswith(ours[controller].rstrip("/") + "/nsk-")
        assert os.path.isdir(f"/sys/fs/cgroup/{controller}{theirs[controller]}")
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    for controller in ("pids", "memory"):
        assert not os.path.exists(f"/sys/fs/cgroup/{controller}{theirs[controller]}")


@pytest.mark.root
@pytest.mark.userns
def test_a_killed_launchers_cgroup_is_swept_by_the_next(nsk, tmp_path):
    status = tmp_path / "s.json"
    proc = subprocess.Popen(
        nskernel_cmd("run", "--pids", "50", "--status-json", str(status), "--", "sleep", "30")
    )
    while not status.exists():
        time.sleep(0.02)
    init = json.loads(status.read_text())["pid"]
    with open(f"/proc/{init}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f if ":pids:" in line)
    proc.kill()  # SIGKILL: no chance to remove its cgroup
    proc.wait(10)
    stale = f"/sys/fs/cgroup/pids{path}"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{init}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.isdir(stale)
    assert nsk("run", "--pids", "10", "--", "true").returncode == 0
    assert not os.path.exists(stale)


@pytest.mark.root
@pytest.mark.userns
def test_child_cgroups_a_sandbox_made_go_with_its_cgroup(tmp_path):
    """Where the hierarchy is delegated to it, a sandbox can make child cgroups in its own:
    its cgroup must still go at the end (bottom-up), not stay behind busy. Made here by the
    test, as host root, in the sandbox's cgroups."""
    proc, theirs = _limited_sleeper(tmp_path)
    dirs = [f"/sys/fs/cgroup/{c}{theirs[c]}" for c in ("pids", "memory")]
    for d in dirs:
        os.makedirs(os.path.join(d, "child", "grandchild"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    for d in dirs:
        assert not os.path.exists(d), f"{d} was left behind"
