"""The facts model: recorded facts (pure), and real gathering in real sandboxes.

The real tests compare what a sandbox reports about itself from inside with what the
host reads about it, and with values known in advance (hostname, PID 1, only ``lo``,
the id maps the caller's tier must produce).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from nskernel import Sandbox, SandboxSpec, facts
from tests.conftest import IS_ROOT
from tests.facts_helpers import gather_inside, load

# Some tests here call Sandbox.spawn in the pytest process (see conftest).
pytestmark = pytest.mark.spawns_here


SECTIONS = {
    "schema",
    "name",
    "kind",
    "alive",
    "gathered_at",
    "seen_from",
    "host_pid",
    "hostname",
    "interfaces",
    "processes",
    "uid_map",
    "gid_map",
    "namespaces",
    "created",
    "limits",
    "errors",
}
RECORDED = sorted(f for f in os.listdir(os.path.join(os.path.dirname(__file__), "data", "facts")))


def _expected_root_map() -> list[list[int]]:
    """The first uid_map line the caller's tier must produce for sandbox root."""
    return [0, 65534, 1] if IS_ROOT else [0, os.geteuid(), 1]


# ------------------------------------------------------------------ recorded (pure)


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_facts_follow_the_schema(name: str) -> None:
    f = load(name)
    assert set(f) == SECTIONS
    assert f["schema"] == facts.SCHEMA_VERSION
    assert json.loads(facts.to_json(f)) == f
    for p in f["processes"]:
        assert {"pid", "host_pid", "uid", "user", "command"} <= set(p)
    for i in f["interfaces"]:
        assert i["state"] in ("UP", "DOWN", None)
        assert all("/" in a for a in i["addresses"])
    assert set(f["namespaces"]) <= set(facts.NS_TYPES)


def test_normalize_fills_missing_sections() -> None:
    f = facts.normalize({"name": "old", "namespaces": {"pid": 5}})
    assert set(f) == SECTIONS
    assert f["interfaces"] == [] and f["errors"] == {} and f["namespaces"] == {"pid": 5}


def test_shared_namespaces_by_inode() -> None:
    host = load("host-root.json")
    sb = load("sandbox-uts-only-inside-root.json")
    rel = facts.shared_namespaces(sb, host)
    assert rel["uts"] == "own"
    assert rel["net"] == rel["pid"] == rel["mnt"] == rel["ipc"] == "shared"
    no_cgroup = dict(sb, namespaces={k: v for k, v in sb["namespaces"].items() if k != "cgroup"})
    assert facts.shared_namespaces(no_cgroup, host)["cgroup"] == "unknown"


def test_mark_sandbox_processes_by_host_pid() -> None:
    host = load("host-root.json")
    sb = load("sandbox-from-host-root.json")
    for row in host["processes"]:
        row.pop("sandbox", None)
    facts.mark_sandbox_processes(host, sb)
    marked = {r["host_pid"] for r in host["processes"] if r.get("sandbox") == "web1"}
    assert marked == {p["host_pid"] for p in sb["processes"]}
    assert len(marked) == 2
    facts.mark_sandbox_processes(host)  # no sandboxes: the labels go away
    assert not any("sandbox" in r for r in host["processes"])


def test_exited_facts_say_why() -> None:
    f = facts.exited_facts("web1", host_pid=123, why="gone")
    assert f["alive"] is False and f["errors"]["alive"] == "gone" and f["host_pid"] == 123


def test_load_captured_host_facts_errors_say_what_to_do(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(facts.HOST_FACTS_ENV, raising=False)
    with pytest.raises(facts.FactsError, match="NSKERNEL_HOST_FACTS is not set"):
        facts.load_host_facts_captured_at_launch()
    bad = tmp_path / "h.json"
    bad.write_text("{not json")
    monkeypatch.setenv(facts.HOST_FACTS_ENV, str(bad))
    with pytest.raises(facts.FactsError, match="not valid JSON"):
        facts.load_host_facts_captured_at_launch()
    monkeypatch.setenv(facts.HOST_FACTS_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(facts.FactsError, match="cannot read"):
        facts.load_host_facts_captured_at_launch()


# ------------------------------------------------------------------ the host, for real


def test_host_facts_are_this_machine() -> None:
    f = facts.host_facts()
    assert f["kind"] == "host" and f["name"] == "host" and f["alive"] is True
    assert f["hostname"] == socket.gethostname()
    mine = {r["pid"]: r for r in f["processes"]}
    assert mine[os.getpid()]["host_pid"] == os.getpid()
    assert sys.executable.split("/")[-1] in mine[os.getpid()]["command"]
    lo = next(i for i in f["interfaces"] if i["name"] == "lo")
    assert lo["state"] == "UP" and "127.0.0.1/8" in lo["addresses"]
    assert f["namespaces"]["net"] == os.stat("/proc/self/ns/net").st_ino
    assert set(f["namespaces"]) == set(facts.NS_TYPES)
    with open("/proc/self/uid_map") as maps:
        assert f["uid_map"] == [[int(x) for x in line.split()] for line in maps]


def test_capture_writes_privately_and_loads_back(monkeypatch, tmp_path) -> None:
    # How long a capture takes is measured in benchmarks/, not asserted here: a timing
    # budget in a test fails on a loaded machine without anything being wrong.
    path = str(tmp_path / "host-facts.json")
    written = facts.capture_host_facts(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    monkeypatch.setenv(facts.HOST_FACTS_ENV, path)
    loaded = facts.load_host_facts_captured_at_launch()
    assert loaded["namespaces"] == written["namespaces"]
    assert loaded["hostname"] == socket.gethostname()


def test_capture_in_a_fresh_interpreter(tmp_path) -> None:
    """What the launcher does per kernel start: a capture in a new process."""
    path = tmp_path / "h.json"
    code = f"from nskernel.facts import capture_host_facts; capture_host_facts({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert json.loads(path.read_text())["kind"] == "host"


# ------------------------------------------------------------------ sandboxes, for real


@pytest.mark.userns
def test_gather_inside_a_full_sandbox() -> None:
    f = gather_inside(SandboxSpec(hostname="inside1"), name="inside1")
    host = facts.host_facts()
    assert f["kind"] == "sandbox" and f["hostname"] == "inside1"
    assert [i["name"] for i in f["interfaces"]] == ["lo"]
    assert f["interfaces"][0]["state"] == "UP"
    assert "127.0.0.1/8" in f["interfaces"][0]["addresses"]
    pids = [p["pid"] for p in f["processes"]]
    assert pids[:2] == [1, 2], pids  # init, then the gathering command itself
    assert all(p["host_pid"] is None for p in f["processes"])
    assert "host_pids" in f["errors"]
    assert all(p["user"] == "root" and p["uid"] == 0 for p in f["processes"])
    assert f["uid_map"][0] == _expected_root_map()
    assert f["gid_map"][0][0] == 0
    rel = facts.shared_namespaces(f, host)
    assert {t for t, r in rel.items() if r == "own"} == {"pid", "net", "mnt", "uts", "ipc", "user"}
    assert rel["cgroup"] == "shared"


@pytest.mark.userns
def test_gather_inside_a_uts_only_sandbox_sees_the_host_pids() -> None:
    f = gather_inside(SandboxSpec(namespaces=frozenset({"uts"}), hostname="utsonly"))
    host = facts.host_facts()
    rel = facts.shared_namespaces(f, host)
    assert rel["uts"] == "own" and rel["net"] == "shared" and rel["pid"] == "shared"
    assert rel["user"] == "own"  # a user namespace is always created
    assert f["hostname"] == "utsonly"
    me = next(p for p in f["processes"] if p["pid"] == os.getpid())
    assert me["host_pid"] == os.getpid()  # same PID namespace: PIDs are host PIDs
    assert "host_pids" not in f["errors"]
    assert {i["name"] for i in f["interfaces"]} == {i["name"] for i in host["interfaces"]}


@pytest.mark.userns
def test_the_host_reads_a_running_sandbox_and_its_exit() -> None:
    spec = SandboxSpec(hostname="seen1")
    sb = Sandbox.spawn(spec, ["sleep", "60"])
    try:
        f = facts.sandbox_facts_from_host(
            sb.pid, name="seen1", hostname=sb.hostname, created=sb.namespaces
        )
        inside_view = gather_inside(spec)
    finally:
        sb.kill()
    assert f["alive"] is True and f["seen_from"] == "host" and f["host_pid"] == sb.pid
    assert f["hostname"] == "seen1"
    assert f["created"] == sorted(sb.namespaces)
    rows = {p["pid"]: p for p in f["processes"]}
    assert sorted(rows) == [1, 2]
    assert rows[1]["host_pid"] == sb.pid
    assert rows[2]["command"] == "sleep 60"
    assert rows[2]["uid"] == 0 and rows[2]["user"] == "root"
    assert rows[2]["host_uid"] == (65534 if IS_ROOT else os.geteuid())
    assert [(i["name"], i["state"]) for i in f["interfaces"]] == [("lo", "UP")]
    assert "127.0.0.1/8" in f["interfaces"][0]["addresses"]
    assert f["uid_map"] == sb.facts()["uid_map"] and f["uid_map"][0] == _expected_root_map()
    assert f["namespaces"] == {**sb.facts()["namespaces"], "cgroup": f["namespaces"]["cgroup"]}
    assert "hostname" not in f["errors"]
    # The host's view and the inside view of the same kind of sandbox agree.
    assert f["uid_map"] == inside_view["uid_map"]
    assert [i["name"] for i in f["interfaces"]] == [i["name"] for i in inside_view["interfaces"]]

    host = facts.mark_sandbox_processes(facts.host_facts(), f)
    assert not any(r.get("sandbox") for r in host["processes"])  # it is gone now
    gone = facts.sandbox_facts_from_host(sb.pid, name="seen1")
    assert gone["alive"] is False and "exited" in gone["errors"]["alive"]
    assert gone["name"] == "seen1"


@pytest.mark.userns
def test_host_table_marks_the_sandbox_processes() -> None:
    with Sandbox.spawn(SandboxSpec(hostname="mark1"), ["sleep", "60"]) as sb:
        f = facts.sandbox_facts_from_host(sb.pid, name="mark1", hostname=sb.hostname)
        host = facts.mark_sandbox_processes(facts.host_facts(), f)
        marked = sorted(r["pid"] for r in host["processes"] if r.get("sandbox") == "mark1")
        assert marked == sorted(p["host_pid"] for p in f["processes"])
        assert sb.pid in marked


@pytest.mark.userns
def test_unknown_hostname_is_explained_not_guessed() -> None:
    with Sandbox.spawn(SandboxSpec(hostname="hidden1"), ["sleep", "60"]) as sb:
        f = facts.sandbox_facts_from_host(sb.pid)
    assert f["hostname"] is None
    assert "another UTS namespace" in f["errors"]["hostname"]


@pytest.mark.userns
@pytest.mark.parametrize(
    "plant", ["fifo", "link to a host file", "link to a host fifo", "another sysfs file"]
)
def test_the_host_never_follows_or_blocks_on_what_a_sandbox_planted_in_its_sys(
    plant: str, tmp_path
) -> None:
    """The host reads a sandbox's link states (UP/DOWN) from the sandbox's own /sys, which
    the sandbox may cover with a tmpfs of its own: a FIFO there must not block the reader
    (the ``%%sandbox`` server, for ``--show``), a link must not lead it to a host path."""
    host_file, host_fifo = tmp_path / "flags", tmp_path / "fifo"
    host_file.write_text("0x1\n")  # a host file the sandbox names: never read for it
    os.mkfifo(host_fifo, 0o666)
    os.chmod(tmp_path, 0o755)
    made = {
        "fifo": "mkfifo /sys/class/net/lo/flags",
        "link to a host file": f"ln -s {host_file} /sys/class/net/lo/flags",
        "link to a host fifo": f"ln -s {host_fifo} /sys/class/net/lo/flags",
    }.get(plant)
    script = f"mount -t tmpfs none /sys/class/net && mkdir /sys/class/net/lo && {made}; sleep 60"
    if made is None:  # a sysfs file that reads as "1" (UP) bound over lo's flags
        script = "mount --bind /sys/class/net/lo/ifindex /sys/class/net/lo/flags; sleep 60"
    sb = Sandbox.spawn(SandboxSpec(), ["sh", "-c", script])
    try:
        planted = f"/proc/{sb.pid}/root/sys/class/net/lo/flags"

        def trap_set() -> bool:  # the real lo/flags, a regular file, is there before
            try:
                if made is None:
                    with open(f"/proc/{sb.pid}/mountinfo") as f:
                        return "/net/lo/flags " in f.read()  # the mount point
                return not stat.S_ISREG(os.lstat(planted).st_mode)
            except OSError:
                return False

        deadline = time.monotonic() + 20
        while not trap_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trap_set(), "the sandbox did not plant its trap"
        # In a process of its own: a reader that blocks is killed, not left in this one.
        read = (
            "import json, sys; from nskernel import facts; "
            "f = facts.sandbox_facts_from_host(int(sys.argv[1]), name='trap'); "
            "print(json.dumps([(i['name'], i['state']) for i in f['interfaces']]))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", read, str(sb.pid)],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
        except subprocess.TimeoutExpired:
            pytest.fail("reading the sandbox's facts blocked on what it planted")
    finally:
        sb.kill()
    assert json.loads(out) == [["lo", None]]
