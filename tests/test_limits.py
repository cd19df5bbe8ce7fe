"""Resource limits: contained, reported plainly, cleaned up — root (cgroups) and
rootless (rlimits, since an unprivileged user has no writable cgroup here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nskernel import SpecError
from nskernel.spec import make_limits, parse_size
from tests.conftest import IS_ROOT, nskernel_cmd, require

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
    """``nskernel run --pids 50 --memory 128M -- sleep 30``: its process, the cgroups of
    its init, by controller, and the init's host PID."""
    status = tmp_path / "s.json"
    proc = subprocess.Popen(
        nskernel_cmd("run", "--pids", "50", "--memory", "128M", "--status-json", str(status),
                     "--", "sleep", "30")
    )  # fmt: skip
    while not status.exists():
        time.sleep(0.02)
    init = json.loads(status.read_text())["pid"]
    with open(f"/proc/{init}/cgroup") as f:
        return proc, dict(line.strip().split(":", 2)[1:] for line in f), init


@pytest.mark.root
@pytest.mark.userns
def test_cgroups_live_beneath_our_own_and_go_away(tmp_path):
    proc, theirs, _ = _limited_sleeper(tmp_path)
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
    # The sandbox lives in the leaf of the cgroup that holds its limits (limits.LEAF).
    stale = os.path.dirname(f"/sys/fs/cgroup/pids{path}")
    assert os.path.basename(stale).startswith("nsk-") and os.path.isdir(stale)
    proc.kill()  # SIGKILL: no chance to remove its cgroup
    proc.wait(10)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{init}") and time.monotonic() < deadline:
        time.sleep(0.05)
    # The next launcher with limits sweeps it (any launcher beneath the same cgroup may
    # have already: root's nskernel runs elsewhere on the machine share it).
    assert nsk("run", "--pids", "10", "--", "true").returncode == 0
    assert not os.path.exists(stale)


@pytest.mark.root
@pytest.mark.userns
def test_child_cgroups_a_sandbox_made_go_with_its_cgroup(tmp_path):
    """Where the hierarchy is delegated to it, a sandbox can make child cgroups in its own:
    its cgroup must still go at the end (bottom-up), not stay behind busy. Made here by the
    test, as host root, in the sandbox's cgroups."""
    proc, theirs, _ = _limited_sleeper(tmp_path)
    dirs = [f"/sys/fs/cgroup/{c}{theirs[c]}" for c in ("pids", "memory")]
    for d in dirs:
        os.makedirs(os.path.join(d, "child", "grandchild"))
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    for d in dirs:
        assert not os.path.exists(d), f"{d} was left behind"


# ------------------------------------------------------------------ red team 18, F2


def test_limits_are_set_above_the_cgroup_the_sandbox_lives_in(tmp_path, monkeypatch):
    """Every file of a cgroup made with mkdir belongs to its maker: rootless, sandbox root.
    A sandbox living in the cgroup that holds its limits could mount cgroup2 through a
    cgroup namespace of its own, rooted there, and rewrite them (red team 18 F2). The
    limits go on ``nsk-<pid>-<n>``, the sandbox into its leaf ``sandbox``: whatever
    namespace it makes is rooted below them. A v2 hierarchy stood in for by directories."""
    from nskernel._linux import limits as L

    own = tmp_path / "own"
    own.mkdir()
    (own / "cgroup.subtree_control").write_text("cpu memory pids\n")
    monkeypatch.setattr(L, "_v2_mount", lambda: str(tmp_path))
    monkeypatch.setattr(L, "_own_cgroups", lambda: {"": "/own"})
    applied = L.create_from_parent(L.Limits(memory=64 << 20, pids=32, cpus=0.5))
    assert set(applied.mechanism.values()) == {"cgroup v2"}
    (d,) = map(Path, applied.cgroup_dirs)
    assert d.parent == own and d.name.startswith(f"nsk-{os.getpid()}-")
    limit_files = {
        "memory.max": str(64 << 20),
        "memory.swap.max": "0",
        "pids.max": "32",
        "cpu.max": "50000 100000",
    }
    assert {name: (d / name).read_text() for name in limit_files} == limit_files
    L.join_from_child(applied.cgroup_dirs)
    leaf = d / "sandbox"
    assert (leaf / "cgroup.procs").read_text() == str(os.getpid())
    assert not (d / "cgroup.procs").exists(), "the sandbox joined the cgroup of its limits"
    assert not any((leaf / name).exists() for name in limit_files)


def test_a_v2_limit_that_cannot_be_written_leaves_no_cgroup_and_falls_back(tmp_path, monkeypatch):
    """Without swap accounting memory.swap.max does not exist: that is no reason to
    refuse --memory. A limit that cannot be written at all leaves no cgroup behind (it
    left one, with its leaf) and the fallbacks take over."""
    from nskernel._linux import limits as L

    own = tmp_path / "own"
    own.mkdir()
    (own / "cgroup.subtree_control").write_text("memory pids\n")
    monkeypatch.setattr(L, "_v2_mount", lambda: str(tmp_path))
    monkeypatch.setattr(L, "_own_cgroups", lambda: {"": "/own"})
    write = L._write

    def without(name):
        def _write(path, value):
            if os.path.basename(path) == name:
                raise FileNotFoundError(2, "No such file or directory", path)
            write(path, value)

        return _write

    monkeypatch.setattr(L, "_write", without("memory.swap.max"))
    applied = L.create_from_parent(L.Limits(memory=64 << 20))
    assert applied.mechanism == {"memory": "cgroup v2"}
    # Stand-in directories hold real files, which rmdir refuses: record the removal.
    removed: list[str] = []
    monkeypatch.setattr(L, "_remove_cgroup", removed.append)
    monkeypatch.setattr(L, "_write", without("pids.max"))
    applied = L.create_from_parent(L.Limits(memory=64 << 20, pids=8))
    assert applied.cgroup_dirs == [] and len(removed) == 1
    assert os.path.dirname(removed[0]) == str(own)
    assert "cgroup v2" not in applied.mechanism.values(), applied.mechanism


def test_events_and_facts_are_read_where_the_layout_puts_them(tmp_path):
    """v1 counts an OOM kill or a refused fork in the leaf, v2 in the limit cgroup: both
    are read. The facts read a leaf's limits from the cgroup above it."""
    from nskernel import facts
    from nskernel._linux import limits as L

    d = tmp_path / "nsk-1-0"
    (d / L.LEAF).mkdir(parents=True)
    applied = L.AppliedLimits(L.Limits(memory=1 << 26, pids=8), {}, [str(d)], [])
    assert not applied.oom_killed() and not applied.pids_limit_hit()
    (d / L.LEAF / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    (d / L.LEAF / "pids.events").write_text("max 2\n")
    assert applied.oom_killed() and applied.pids_limit_hit()
    (d / L.LEAF / "memory.oom_control").unlink()
    (d / L.LEAF / "pids.events").unlink()
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 1\n")
    assert applied.oom_killed() and applied.pids_limit_hit()
    assert facts._limit_cgroup("/user.slice/nsk-12-0/sandbox") == "/user.slice/nsk-12-0"
    for path in ("/user.slice/nsk-12-0/sandbox/x", "/a/sandbox", "/nsk-x-0/sandbox", "/"):
        assert facts._limit_cgroup(path) == path


@pytest.mark.root
@pytest.mark.userns
def test_the_sandbox_lives_below_its_limits_and_facts_read_them_there(tmp_path):
    proc, theirs, init = _limited_sleeper(tmp_path)
    try:
        for controller, limit_file, value in (
            ("pids", "pids.max", "50"),
            ("memory", "memory.limit_in_bytes", str(128 << 20)),
        ):
            leaf = f"/sys/fs/cgroup/{controller}{theirs[controller]}"
            assert os.path.basename(leaf) == "sandbox", theirs
            assert open(os.path.join(os.path.dirname(leaf), limit_file)).read().strip() == value
        from nskernel import facts

        limits = facts.sandbox_facts_from_host(init)["limits"]
        assert limits == {"pids": "50 (cgroup v1)", "memory": "128 MiB (cgroup v1)"}, limits
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


HELPER = os.path.join(os.path.dirname(__file__), "helpers", "delegated_cgroup.py")
USER = 4321  # no such user: a uid of no one else's, as test_hardening's tests use


def _cgroup2_here() -> tuple[str, str] | None:
    """(where cgroup2 is mounted, this process's own cgroup v2 directory) or None."""
    mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                mount = fields[4]
                break
    with open("/proc/self/cgroup") as f:
        own = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    if mount is None or own is None:
        return None
    return mount, os.path.join(mount, own.lstrip("/"))


def _remove_cgroup_tree(top: str) -> None:
    """Deepest first; what a sandbox made there too. Its processes may take a moment to
    be gone: retried, then killed (they are this test's: the subtree is its own)."""
    deadline = time.monotonic() + 10
    while os.path.isdir(top):
        for root, dirs, _files in os.walk(top, topdown=False):
            for name in dirs:
                try:
                    os.rmdir(os.path.join(root, name))
                except OSError:
                    pass
        try:
            os.rmdir(top)
        except OSError:
            if time.monotonic() > deadline:
                with open(os.path.join(top, "cgroup.kill"), "w") as f:
                    f.write("1")
                deadline += 10
            time.sleep(0.1)


@pytest.fixture
def delegated():
    """A cgroup v2 subtree beneath this test's own cgroup, delegated to ``USER`` as
    systemd delegates one (the directory, ``cgroup.procs``, ``cgroup.subtree_control``
    and ``cgroup.threads`` chowned); removed afterwards, with all below it."""
    found = _cgroup2_here()
    require(None if found else "no cgroup2 hierarchy is mounted here")
    assert found is not None
    mount, own = found
    d = os.path.join(own, f"nsktest-deleg-{os.getpid()}")
    os.mkdir(d)
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(d, name), USER, USER)
        yield mount, d
    finally:
        _remove_cgroup_tree(d)


def _in_delegated(mount: str, d: str, mode: str, seccomp: str) -> dict:
    """``tests/helpers/delegated_cgroup.py`` as ``USER``, moved into ``d`` first."""
    proc = subprocess.Popen(
        [sys.executable, HELPER, mount, d, mode, seccomp],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        user=USER,
        group=USER,
        extra_groups=[],
        env={
            **{k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")},
            "HOME": "/nonexistent",
            "LANG": "C.UTF-8",
        },
    )
    with open(os.path.join(d, "cgroup.procs"), "w") as f:
        f.write(str(proc.pid))
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, (out, err)
    return json.loads(out)


@pytest.mark.root
@pytest.mark.userns
@pytest.mark.parametrize("seccomp", ["unconfined", "default"])
def test_a_sandbox_cannot_lift_its_limits_in_a_delegated_cgroup_v2(delegated, seccomp):
    """Red team 18 F2, rootless with a delegated cgroup v2 subtree: the sandbox makes a
    cgroup namespace, mounts cgroup2 and writes the root of its mount. Before, that root
    was the cgroup holding its limits, whose files sandbox root owns: ``--pids 3`` became
    1000. With ``--seccomp unconfined`` (a cgroup namespace allowed) the layout alone
    holds: the namespace is rooted at the leaf, below the limits."""
    got = _in_delegated(*delegated, "limits", seccomp)
    assert got["mechanism"] == "cgroup v2", got
    assert got["limit"] == "3", got


@pytest.mark.root
@pytest.mark.userns
def test_a_sandbox_cannot_rewrite_its_starters_cgroup_in_a_delegated_cgroup_v2(delegated):
    """Without a limit the sandbox stays in its starter's cgroup, which under a systemd
    user manager the user made (every file the user's, so sandbox root's): the default
    filter refuses the cgroup namespace through which it could mount cgroup2 and write
    them (cgroup.kill would end the Jupyter server). Red team 18 F2, second form."""
    got = _in_delegated(*delegated, "starter", "default")
    assert got["limit"] == "3", got
    assert "wrote 1000" not in got["inside"], got


def test_removing_a_sandboxs_cgroup_survives_a_deep_chain_below_it(tmp_path):
    """Red team 18: os.fwalk recursed once per level, so a chain of 1,000 cgroups a
    sandbox made (where the hierarchy is delegated to it) raised RecursionError in the
    %%sandbox server. The walk is bounded in depth now; a shallow tree goes entirely."""
    from nskernel._linux import limits

    deep = tmp_path / "deep"
    chain = [str(deep)] + [str(deep) + "/d" * i for i in range(1, 1001)]
    for d in chain:  # one level at a time: pathlib's and os's own helpers recurse too
        os.mkdir(d)
    limits._remove_cgroup(str(deep))  # raised RecursionError before
    assert deep.exists()  # what lies below CGROUP_REMOVE_DEPTH stays, and so its parents
    shallow = tmp_path / "shallow"
    for branch in ("a/b/c", "a/d", "e"):
        (shallow / branch).mkdir(parents=True)
    limits._remove_cgroup(str(shallow))
    assert not shallow.exists()
    os.symlink(tmp_path / "deep", tmp_path / "link")
    limits._remove_cgroup(str(tmp_path / "link"))  # follows no link
    assert deep.exists() and (tmp_path / "link").is_symlink()
    for d in reversed(chain):  # a plain directory chain (no mounts); what is left of it
        if os.path.isdir(d):
            os.rmdir(d)
