"""What the host reads of a sandbox is hostile input: its size and its bytes.

A sandbox has CAP_NET_ADMIN over its own network namespace and makes its /proc/PID/net
files as long as it likes (thousands of addresses, routes and links in under a second);
its processes' command lines are megabytes if it likes; its interface names are any
bytes. The host reads all of these in the single-threaded %%sandbox server (``--show``)
and in the kernel (``%sandbox compare``, Refresh). The tests count the work the host
does (bytes read, rows kept), never the time it takes, and check that what is shown is
right up to the cut and says it was cut.

Also here: the checks of strings a sandbox (or a user) supplies accept no trailing
newline (``re.match`` with ``$`` did).

The tests that spawn sandboxes in the pytest process are marked ``spawns_here``; the one
that starts a kernel is not (its client's threads would forbid later spawns).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from nskernel import Sandbox, SandboxSpec, environ, facts, network, widgets
from nskernel.errors import SpecError
from nskernel.magics import messages
from tests.magic_helpers import execute, kernel

MANY_V4 = 6000  # /32 addresses on lo, each with a /30 route of its own
MANY_V6 = 4000
VETH_PAIRS = 150  # 300 interfaces, more than facts.MAX_INTERFACES (128)
LONG = "sh -c sleep 600; : sh xxx"  # the start of each long command line


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends, all files together."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _v4(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address("10.1.0.0") + 4 * i + 1


def _batch() -> bytes:
    """`ip -batch` input for a crowded network namespace."""
    lines = [
        "link set lo up",
        # One ordinary interface with an address that sorts before the crowd.
        "link add va0 type veth peer name vb0",
        "addr add 10.0.0.1/24 dev va0",
        "link set va0 up",
        "link set vb0 up",
    ]
    lines += [f"link add va{i} type veth peer name vb{i}" for i in range(1, VETH_PAIRS)]
    for i in range(MANY_V4):
        lines.append(f"addr add {_v4(i)}/32 dev lo")
        lines.append(f"route add {_v4(i) - 1}/30 dev lo")
    lines += [f"addr add fd00::{i + 1:x}/128 dev lo" for i in range(MANY_V6)]
    return ("\n".join(lines) + "\n").encode()


@contextmanager
def _spawn_ready(script: str, stdin: bytes = b"") -> Iterator[Sandbox]:
    """A sandbox running ``script`` (sh), once it printed "ready"; killed afterwards."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        sb = Sandbox.spawn(SandboxSpec(), ["sh", "-c", script], stdio=(in_r, out_w, 2))
    finally:
        os.close(in_r)
        os.close(out_w)
    try:
        try:
            with os.fdopen(in_w, "wb") as w:
                w.write(stdin)  # blocks until the sandbox has read most of it
        except BrokenPipeError:
            pass  # it stopped reading: its error is on stderr, and "ready" never comes
        got = b""
        deadline = time.monotonic() + 120
        while b"ready\n" not in got and time.monotonic() < deadline:
            if select.select([out_r], [], [], 1)[0]:
                chunk = os.read(out_r, 4096)
                if not chunk:
                    break
                got += chunk
        assert b"ready\n" in got, f"the sandbox did not set itself up: {got[-500:]!r}"
        yield sb
    finally:
        sb.kill()
        os.close(out_r)


@pytest.fixture(scope="module")
def crowded() -> Iterator[Sandbox]:
    """A sandbox with thousands of addresses and routes and hundreds of interfaces."""
    with _spawn_ready("ip -batch - && echo ready && exec sleep 600", _batch()) as sb:
        yield sb


def _net_bytes(pid: int) -> int:
    total = 0
    for name in ("dev", "fib_trie", "route", "if_inet6"):
        with open(f"/proc/{pid}/net/{name}", "rb") as f:
            total += len(f.read())
    return total


@pytest.mark.userns
@pytest.mark.spawns_here  # Sandbox.spawn in the pytest process (see conftest)
def test_the_host_reads_a_crowded_sandbox_network_in_bounded_work(crowded: Sandbox) -> None:
    pid = crowded.pid
    whole = _net_bytes(pid)
    assert whole > 2 * 2**20, f"the sandbox's network files are only {whole} bytes"

    f = facts.empty_facts("crowded", "sandbox", seen_from="host")
    facts._namespaces(pid, f)
    before = _rchar()
    facts._interfaces_from_host(pid, f, facts._own_namespace_ids())
    read = _rchar() - before
    # Everything the host read for the interfaces: four bounded files, plus each listed
    # interface's flags in the sandbox's /sys (and the fdinfo lines that check them).
    assert read <= 4 * 128 * 1024 + 256 * 2048, f"read {read} of {whole} bytes"


@pytest.mark.userns
@pytest.mark.spawns_here  # Sandbox.spawn in the pytest process (see conftest)
def test_a_crowded_sandbox_is_shown_right_up_to_the_cut_and_says_so(crowded: Sandbox) -> None:
    f = facts.sandbox_facts_from_host(crowded.pid, name="crowded", hostname=crowded.hostname)
    assert f["alive"] is True
    cut = f["errors"].get("interfaces_cut", "")
    assert "IPv4 addresses after the first" in cut, f["errors"]
    assert "IPv6 addresses after the first" in cut
    assert f"interfaces after the first {facts.MAX_INTERFACES}" in cut

    rows = {i["name"]: i for i in f["interfaces"]}
    assert len(rows) == facts.MAX_INTERFACES
    # /proc/PID/net/dev order: lo, then the interfaces in the order they were made.
    assert {"lo", "va0", "vb0"} <= set(rows) and "vb149" not in rows
    assert rows["va0"]["addresses"][0] == "10.0.0.1/24"  # its own prefix, its own link
    assert rows["va0"]["state"] == "UP"
    shown_v4 = [a for a in rows["lo"]["addresses"] if ":" not in a]
    expected_v4 = [f"{_v4(i)}/30" for i in range(MANY_V4)]
    # In order and complete up to where the reading stopped, each with its route's prefix.
    assert len(shown_v4) >= 500, shown_v4[:3]
    assert shown_v4 == expected_v4[: len(shown_v4)]
    assert len(shown_v4) < MANY_V4
    shown_v6 = {a for a in rows["lo"]["addresses"] if ":" in a}
    expected_v6 = {f"fd00::{i + 1:x}/128" for i in range(MANY_V6)} | {"::1/128"}
    assert 1000 <= len(shown_v6) < MANY_V6 and shown_v6 <= expected_v6
    # The panel (%%sandbox --show, %sandbox compare) says so too.
    from nskernel import widgets

    assert "not all of it is shown" in widgets.column_html(f, facts.host_facts())


@pytest.mark.userns
@pytest.mark.spawns_here  # Sandbox.spawn in the pytest process (see conftest)
def test_an_interface_name_that_is_not_utf8_is_shown_not_raised() -> None:
    # Interface names are any bytes but "/", ":" and spaces; the host decoded them strictly
    # and the whole read failed (UnicodeDecodeError, not even an OSError).
    batch = b"link add \xff\xfe type veth peer name ok0\nlink set ok0 up\n"
    with _spawn_ready("ip -batch - && echo ready && exec sleep 600", batch) as sb:
        f = facts.sandbox_facts_from_host(sb.pid, name="odd", hostname=sb.hostname)
        names = {i["name"] for i in f["interfaces"]}
        assert names == {"lo", "ok0", "\ufffd\ufffd"}, f
        assert "interfaces" not in f["errors"] and "interfaces_cut" not in f["errors"]


@pytest.mark.userns
@pytest.mark.spawns_here  # Sandbox.spawn in the pytest process (see conftest)
def test_long_command_lines_of_a_sandbox_are_read_in_part() -> None:
    # Twelve processes, each with about 1.4 MB of arguments: the host keeps 200 characters
    # of each command, and reads no more than a few KiB of each.
    script = (
        "b=$(head -c 120000 /dev/zero | tr '\\0' x); for i in $(seq 12); do "
        "sh -c 'sleep 600; :' sh $b $b $b $b $b $b $b $b $b $b $b $b & done; echo ready; wait"
    )
    with _spawn_ready(script) as sb:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = facts.sandbox_processes_from_host(sb.pid)
            if sum(r["command"].startswith(LONG) for r in rows) == 12:
                break
            time.sleep(0.1)
        procs = len([n for n in os.listdir("/proc") if n.isdigit()])
        before = _rchar()
        rows = facts.sandbox_processes_from_host(sb.pid)
        read = _rchar() - before
    sleeps = [r for r in rows if r["command"].startswith(LONG)]
    # Each process: its status (about 1.5 KiB) and at most 4 KiB of its command line.
    assert read < (procs + 50) * 8192, f"read {read} bytes for {procs} processes"
    assert len(sleeps) == 12
    assert all(len(r["command"]) == 200 for r in sleeps)  # facts.COMMAND_MAX


@pytest.mark.userns
@pytest.mark.spawns_here  # Sandbox.spawn in the pytest process (see conftest)
def test_a_sandbox_with_many_processes_is_listed_in_part_and_says_so() -> None:
    """Red team 32 F2: the host listed every process of a sandbox, reading each one's
    command line and rendering a row for it: 8,000 processes cost 0.8 s of CPU, 100 MiB
    and 8.7 MB of panel HTML on every display. At most MAX_PROCESSES rows now, the lowest
    PIDs, with the count; command lines only for the rows listed."""
    extra = facts.MAX_PROCESSES + 100
    script = f"for i in $(seq {extra}); do sleep 600 & done; echo ready; wait"
    with _spawn_ready(script) as sb:
        deadline = time.monotonic() + 60
        f = facts.sandbox_facts_from_host(sb.pid, name="crowd", hostname=sb.hostname)
        while "processes" not in f["errors"] and time.monotonic() < deadline:
            time.sleep(0.2)
            f = facts.sandbox_facts_from_host(sb.pid, name="crowd", hostname=sb.hostname)
        procs = len([n for n in os.listdir("/proc") if n.isdigit()])
        before = _rchar()
        f = facts.sandbox_facts_from_host(sb.pid, name="crowd", hostname=sb.hostname)
        read = _rchar() - before
        html_text = widgets.render_html([f])
    rows = f["processes"]
    assert len(rows) == facts.MAX_PROCESSES
    assert [r["pid"] for r in rows] == sorted(r["pid"] for r in rows) and rows[0]["pid"] == 1
    total = int(f["errors"]["processes"].split()[0])
    assert total > facts.MAX_PROCESSES, f["errors"]
    assert f["errors"]["processes"].endswith(f"the first {facts.MAX_PROCESSES} are listed")
    # Statuses of every process (about 1.5 KiB each); command lines of the listed only,
    # each followed by its status again (the PID may have gone to another process).
    assert read < procs * 2048 + facts.MAX_PROCESSES * (4096 + 2048) + (1 << 20), read
    assert html_text.count("<tr") <= facts.MAX_PROCESSES + 50
    assert f"the first {facts.MAX_PROCESSES} are listed" in html_text


@pytest.mark.root  # choosing the next host PID (ns_last_pid) takes CAP_SYS_ADMIN there
@pytest.mark.userns
@pytest.mark.spawns_here
def test_a_pid_freed_after_the_scan_never_shows_another_process_arguments() -> None:
    """Red team 34 (from reading the code): command lines are read after the scan, for
    the rows listed. A sandbox process that exits in between frees its host PID; a host
    process given that PID would have its arguments (maybe a token) shown as the
    sandbox's. Made real here: the next host PID is chosen through ns_last_pid."""
    secret = "--token=not-for-the-sandbox-column"
    # After its `wait`, the sandbox forks nothing that could take the freed PID.
    with _spawn_ready("sleep 600 & echo ready; wait; exec sleep 600") as sb:
        sleeper = _sleep_of(sb.pid)
        os.kill(sleeper.pid, 9)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{sleeper.pid}"):  # reaped by the sandbox's sh
            assert time.monotonic() < deadline, "the sandbox never reaped its sleep"
            time.sleep(0.01)
        taker = None
        for _ in range(50):  # another process may take the PID first: try again
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(sleeper.pid - 1))
            # One process, no child of its own: nothing is orphaned to us when it ends.
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", secret])
            if proc.pid == sleeper.pid:
                taker = proc
                break
            _end(proc)
        assert taker is not None, "no host process could be given the freed PID"
        try:
            deadline = time.monotonic() + 10
            while secret.encode() not in _cmdline(taker.pid):  # the PID reused, once exec'd
                assert time.monotonic() < deadline, _cmdline(taker.pid)
                time.sleep(0.01)
            assert sleeper.command == "[sleep]", sleeper.command
        finally:
            _end(taker)


def _sleep_of(init_pid: int) -> facts._Proc:
    """The `sleep` a sandbox started, once its fork of sh is `sleep`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        procs = {p.pid: p for p in facts._scan_processes()}
        for p in procs.values():
            if p.name == "sleep" and _descends_from(p.pid, init_pid, procs):
                return p
        time.sleep(0.01)
    raise AssertionError("the sandbox's sleep never showed")


def _end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _descends_from(pid: int, ancestor: int, procs: dict) -> bool:
    while pid in procs and pid != ancestor:
        pid = procs[pid].ppid
    return pid == ancestor


def _fake_net_dir(path, n: int) -> None:
    """A /proc/PID/net with ``n`` local /32 addresses, a /30 route for each, and a few
    routes that must not win, in the kernel's formats (fib_trie lists the trie twice)."""
    leaves = [f"        |-- {_v4(i)}\n           /32 host LOCAL\n" for i in range(n)]
    trie = "  +-- 0.0.0.0/0 3 0 5\n" + "".join(leaves)
    trie += "        |-- 10.9.0.7\n           /32 host LOCAL\n"  # only the /16 holds it
    trie += "        |-- 10.200.0.1\n           /32 host LOCAL\n"  # no route holds it
    (path / "fib_trie").write_text(f"Main:\n{trie}Local:\n{trie}")

    def route(dev: str, net: str, gateway: str = "0.0.0.0") -> str:
        n = ipaddress.IPv4Network(net)
        # The kernel prints each __be32 as a number in host byte order.
        dest, gw, mask = (
            socket.htonl(int(a))
            for a in (n.network_address, ipaddress.IPv4Address(gateway), n.netmask)
        )
        return f"{dev}\t{dest:08X}\t{gw:08X}\t0001\t0\t0\t0\t{mask:08X}\t0\t0\t0\n"

    lines = [
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    ]
    lines.append(route("wide0", "10.0.0.0/8", gateway="10.0.0.254"))  # via a gateway: no
    lines.append(route("eth1", "10.0.0.0/9"))  # shorter than each /30
    lines += [route("lo", f"{_v4(i) - 1}/30") for i in range(n)]
    lines.append(route("late0", f"{_v4(0) - 1}/30"))  # the same prefix again: first wins
    (path / "route").write_text("".join(lines))


def _lines_run_in(module_file: str, fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` and how many lines of ``module_file`` ran: the work it did."""
    count = 0

    def local(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        if event == "line":
            count += 1
        return local

    def call(frame, event, arg):  # type: ignore[no-untyped-def]
        return local if frame.f_code.co_filename == module_file else None

    sys.settrace(call)
    try:
        result = fn(*args)
    finally:
        sys.settrace(None)
    return result, count


def test_addresses_are_matched_to_routes_in_linear_work(tmp_path) -> None:
    # The red team's sandbox: N addresses and N routes cost N x N steps (8000 of each held
    # the %%sandbox server 17 s). Counted here in lines run, not in seconds.
    n = 1000
    _fake_net_dir(tmp_path, n)
    cut: list[str] = []
    got, lines = _lines_run_in(facts.__file__, facts._ipv4_addresses_procfs, str(tmp_path), cut)
    assert cut == []
    assert got["lo"] == [f"{_v4(i)}/30" for i in range(n)]  # the longest prefix, first route
    assert got["eth1"] == ["10.9.0.7/9"]
    assert got["?"] == ["10.200.0.1/32"]
    assert "late0" not in got and "wide0" not in got
    assert lines < 100 * n, f"{lines} lines run for {n} addresses and {n} routes"


# ------------------------------------------------------------------ whole-string checks


@pytest.mark.parametrize(
    ("hostname", "shown"),
    [("web1", "web1"), ("web\n", None), ("db.lab\n", None), ("web\r", None), ("\nweb", None)],
)
def test_a_sandbox_hostname_with_a_newline_is_not_shown_in_ls(hostname, shown) -> None:
    # `$` matches before a final newline too: "web\n" passed as a plain DNS name.
    assert messages.facts_summary({"hostname": hostname, "ips": []})[0] == shown


def test_a_sandbox_address_cannot_carry_text_in_an_ipv6_scope() -> None:
    # ipaddress accepts any scope after "%": newlines, escapes, a fake `%sandbox ls` row.
    claimed = ["10.0.0.2", "fe80::1", "fe80::1%a\nfake  4242  10.6.6.6", "fe80::2%\x1b]0;t\x07"]
    assert messages.facts_summary({"hostname": "a", "ips": claimed})[1] == ["10.0.0.2", "fe80::1"]


@pytest.mark.parametrize("tail", ["\n", "\r\n", " "])
def test_names_a_user_gives_are_checked_whole(tail: str) -> None:
    with pytest.raises(SpecError, match="invalid hostname"):
        SandboxSpec(hostname=f"web{tail}")
    with pytest.raises(SpecError, match="KEY is letters"):
        environ.parse_env_option(f"KEY{tail}=1")
    assert environ.kept_names({environ.KEEP_ENV_VAR: f"A,B{tail}"}) == {"A", "B"}
    with pytest.raises(network.NetworkError, match="invalid network name"):
        network._check_network_name(f"lab{tail}")
    manager = network.NetworkManager.__new__(network.NetworkManager)
    with pytest.raises(network.NetworkError, match="cannot be used on a network"):
        manager.check_request(f"web{tail}", ["lab"])


@pytest.mark.userns
def test_sandbox_ls_shows_one_row_for_a_hostname_ending_in_a_newline() -> None:
    with kernel() as (_km, kc):
        res = execute(
            kc,
            "%%sandbox --name nl1 --hostname nl1\n"
            "import socket\nsocket.sethostname('web\\n')\nprint(repr(socket.gethostname()))",
        )
        assert res.status == "ok" and res.stdout == "'web\\n'\n", res.error_text
        ls = execute(kc, "%sandbox ls").result or ""
        execute(kc, "%sandbox rm nl1")
    rows = [line for line in ls.splitlines() if line.strip()]
    assert len(rows) == 2, ls  # the heading and nl1's row, not a row split in two
    assert rows[1].startswith("nl1") and " nl1 " in rows[1] and "web" not in ls, ls


def test_forged_cgroup_lines_are_skipped_not_raised_or_followed(tmp_path) -> None:
    # A sandbox with a delegated cgroup names its child cgroups with any bytes but "/":
    # a newline in a name forges lines of /proc/PID/cgroup. Here such a file (reached as
    # /proc/../<tmp>/cgroup), with a line that is no line and one that climbs out of
    # /sys/fs/cgroup to a FIFO (a reader that opened it would block for good).
    os.mkfifo(tmp_path / "memory.limit_in_bytes")
    (tmp_path / "cgroup").write_text(f"0::/\nnot a line\n4:memory:/../../../..{tmp_path}\n")
    read = (
        "import json, sys; from nskernel import facts; "
        "print(json.dumps(facts._cgroup_limits('..' + sys.argv[1])))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", read, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading the limits followed a forged cgroup path to a FIFO and blocked")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{}"
