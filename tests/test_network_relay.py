"""The ``--publish`` relay under a hostile sandbox and demanding host clients.

A real sandbox on a real network (``tests/netlab.py``, the same NetworkManager the
``%%sandbox`` server uses) serves on its port; the host side reaches it through the real
relay process on loopback. The sandbox decides when its half of a connection closes, how
fast it reads and how much it sends; none of that may make the host-side relay spin or
grow. What is measured is the relay's own CPU time over an interval (a busy loop takes
most of it, an idle relay almost none), its resident memory, and its epoll registrations
(``/proc/PID/fdinfo``), never how long anything took.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import socket
import time

import pytest

from nskernel.network import _MAX_CONNECTIONS
from tests.netlab import Lab

pytestmark = pytest.mark.userns

# Inside the sandbox: servers whose behaviour is the test's subject, each on its own port.
SERVERS = r"""
import hashlib, socket, struct, threading
events = {k: threading.Event() for k in ("client_eof", "release", "flood_done", "reset")}
held = []
flood = {"sent": 0, "sha": None}

def _loop(port, handle):
    ls = socket.create_server(("0.0.0.0", port))
    def run():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    threading.Thread(target=run, daemon=True).start()

def fin_then_echo(c):
    # Half-closes at once (FIN after "hi"), then still reads: echoes what arrives, in
    # one reply once the client's own FIN comes, then closes.
    c.sendall(b"hi\n")
    c.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += b
    held.append(got)
    c.close()

def reply_after_release(c):
    # Reads the request up to the client's FIN, holds the connection open until the
    # test says so, then replies and closes.
    got = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += b
    events["client_eof"].set()
    events["release"].wait()
    c.sendall(b"got " + str(len(got)).encode())
    c.close()

def flood_client(c):
    # Sends as much as it can (the host client does not read for a while), then closes.
    h = hashlib.sha256()
    chunk = bytes(range(256)) * 4096  # 1 MiB
    for i in range({flood_mib}):
        piece = chunk[i % 251:] + chunk[: i % 251]
        c.sendall(piece)
        h.update(piece)
        flood["sent"] += len(piece)
    flood["sha"] = h.hexdigest()
    c.close()
    events["flood_done"].set()

def echo_until_eof(c):
    # One reply per request, the connection kept until the client's FIN.
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b"echo " + b)
    c.close()

_loop(8001, fin_then_echo)
_loop(8002, reply_after_release)
_loop(8003, flood_client)
_loop(8004, echo_until_eof)

def reset_after_hi(c):
    # "hi", a byte of urgent (out-of-band) data, then, when the test says so, a reset
    # instead of a FIN.
    c.sendall(b"hi")
    c.send(b"!", socket.MSG_OOB)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    events["reset"].wait()
    c.close()

_loop(8005, reset_after_hi)
"""

# More than every kernel socket buffer on the way can hold (two send buffers of at most
# net.ipv4.tcp_wmem's 4 MiB, two receive buffers of at most tcp_rmem's 32 MiB here).
FLOOD_MIB = 128
WINDOW = 2.0  # s over which the relay's CPU time is measured
IDLE_SHARE = 0.10  # of WINDOW: a busy loop takes most of it even on a loaded machine
EPOLLIN, EPOLLOUT = 0x001, 0x004
_EVENTS = re.compile(r"tfd:\s*\d+\s+events:\s*([0-9a-f]+)")  # one line per registration


@pytest.fixture
def relay():
    """A sandbox serving SERVERS on network "lab", each port published; yields
    (lab, {sandbox port: host port}, relay PIDs by sandbox port)."""
    with Lab() as lab:
        lab.call("spawn", name="web", networks=["lab"])
        lab.run("web", SERVERS.replace("{flood_mib}", str(FLOOD_MIB)))
        ports, pids = {}, {}
        for port in (8001, 8002, 8003, 8004, 8005):
            ports[port] = _free_port()
            pids[port] = lab.call("publish", name="web", host_port=ports[port], port=port)["pid"]
        for pid in pids.values():
            # Its descriptors are settled once it waits for its first client.
            _wait(lambda pid=pid: _wchan(pid) == "do_epoll_wait", 30, f"relay {pid} waits")
        yield lab, ports, pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(pid: int, window: float = WINDOW) -> float:
    """The share of ``window`` seconds that process ``pid`` spent on a CPU."""
    c0, t0 = _cpu(pid), time.monotonic()
    time.sleep(window)  # a measuring interval, not a wait for something to happen
    return (_cpu(pid) - c0) / (time.monotonic() - t0)


def _wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))


def _fds(pid: int) -> list[int]:
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))


def _registrations(pid: int) -> list[int]:
    """The event masks of everything registered in the relay's epoll instance."""
    for fd in _fds(pid):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    return [int(m, 16) for m in _EVENTS.findall(f.read())]
        except FileNotFoundError:
            continue
    pytest.fail(f"the relay (PID {pid}) has no epoll instance")


def _parked(pid: int) -> int:
    """How many sockets the relay keeps registered for neither reading nor writing."""
    return sum(1 for m in _registrations(pid) if not m & (EPOLLIN | EPOLLOUT))


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _read_to_eof(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def test_a_sandbox_half_close_leaves_the_relay_idle_and_the_other_half_open(relay):
    lab, ports, pids = relay
    pid = pids[8001]
    base = _fds(pid)
    with socket.create_connection(("127.0.0.1", ports[8001]), timeout=30) as c:
        # The sandbox's FIN reaches the client as EOF after "hi": the relay has seen it.
        assert _read_to_eof(c) == b"hi\n"
        # The client keeps its half open, as a pooled keep-alive connection does.
        share = _cpu_share(pid)
        assert share < IDLE_SHARE, f"the relay used {share:.0%} of a CPU on a half-closed pair"
        assert _parked(pid) == 1  # the socket at EOF: nothing asked of it but errors
        # The half that is still open still carries bytes, and then the client's FIN.
        c.sendall(b"still here")
        c.shutdown(socket.SHUT_WR)
        _wait(lambda: lab.run("web", "print(len(held))").strip() == "1", 30, "sandbox got EOF")
    assert lab.run("web", "print(held[0])").strip() == "b'still here'"
    # Both halves closed: the relay let go of the pair.
    _wait(lambda: _fds(pid) == base, 30, "the relay closed both sockets of the pair")


def test_a_client_half_close_leaves_the_relay_idle_and_the_reply_still_arrives(relay):
    lab, ports, pids = relay
    pid = pids[8002]
    base = _fds(pid)
    with socket.create_connection(("127.0.0.1", ports[8002]), timeout=30) as c:
        c.sendall(b"request")
        c.shutdown(socket.SHUT_WR)
        # The sandbox saw the client's FIN (passed on as shutdown) and holds its half.
        lab.run("web", "assert events['client_eof'].wait(30)")
        share = _cpu_share(pid)
        assert share < IDLE_SHARE, f"the relay used {share:.0%} of a CPU on a half-closed pair"
        assert _parked(pid) == 1
        lab.run("web", "events['release'].set()")
        assert _read_to_eof(c) == b"got 7"
    _wait(lambda: _fds(pid) == base, 30, "the relay closed both sockets of the pair")


def test_a_client_that_does_not_read_holds_the_sandbox_back_not_relay_memory(relay):
    lab, ports, pids = relay
    pid = pids[8003]
    rss0 = _rss_kib(pid)
    bound_kib = 16 * 1024  # far above the relay's buffers, far below what is sent

    def stalled() -> bool:
        grown = _rss_kib(pid) - rss0
        assert grown < bound_kib, f"the relay's memory grew by {grown} KiB for a slow reader"
        return _parked(pid) == 1  # it stopped reading the sandbox: its buffer is full

    with socket.create_connection(("127.0.0.1", ports[8003]), timeout=60) as c:
        _wait(stalled, 60, "the relay stopped reading the sandbox while the client did not read")
        share = _cpu_share(pid)
        assert share < IDLE_SHARE, f"the relay used {share:.0%} of a CPU on a stalled pair"
        assert lab.run("web", "print(flood['sha'])").strip() == "None"  # it is still waiting
        stalled()
        # The client reads at last: every byte arrives, in order.
        got = hashlib.sha256()
        n = 0
        while chunk := c.recv(1 << 20):
            got.update(chunk)
            n += len(chunk)
    assert n == FLOOD_MIB << 20
    assert got.hexdigest() == lab.run("web", "print(flood['sha'])").strip()


def test_urgent_data_and_a_reset_from_the_sandbox_end_the_pair_without_a_spin(relay):
    lab, ports, pids = relay
    pid = pids[8005]
    base = _fds(pid)
    with socket.create_connection(("127.0.0.1", ports[8005]), timeout=30) as c:
        assert c.recv(100) == b"hi"
        # The urgent byte waits unread in the relay's socket (it is not relayed).
        share = _cpu_share(pid)
        assert share < IDLE_SHARE, f"the relay used {share:.0%} of a CPU with urgent data queued"
        lab.run("web", "events['reset'].set()")
        assert c.recv(100) == b""  # the relay ended the pair
    _wait(lambda: _fds(pid) == base, 30, "the relay closed both sockets of the pair")


def test_a_full_descriptor_table_makes_clients_wait_not_the_relay_spin(relay):
    _, ports, pids = relay
    pid = pids[8004]
    # Leave the relay room for exactly two relayed connections (two sockets each).
    used = _fds(pid)
    limit = next(n for n in range(1, 1 << 16) if n - sum(1 for f in used if f < n) == 4)
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    clients = [socket.create_connection(("127.0.0.1", ports[8004]), timeout=60) for _ in range(4)]
    try:
        for c in clients[:2]:
            c.sendall(b"ping")
            assert c.recv(100) == b"echo ping"
        # The next two are connected (the kernel's backlog) but the relay has no
        # descriptor left for them: they wait, and the relay must not retry in a loop.
        for c in clients[2:]:
            c.sendall(b"ping")
        share = _cpu_share(pid)
        assert share < IDLE_SHARE, f"the relay used {share:.0%} of a CPU at its descriptor limit"
        # Each connection that ends makes room for one that waits.
        for done, waiting in zip(clients[:2], clients[2:], strict=True):
            done.close()
            assert waiting.recv(100) == b"echo ping"
    finally:
        for c in clients:
            c.close()


def test_connections_beyond_the_relays_cap_wait_in_the_backlog(relay):
    _, ports, pids = relay
    pid = pids[8004]
    base = len(_fds(pid))
    clients = []
    try:
        for _ in range(_MAX_CONNECTIONS + 1):
            clients.append(socket.create_connection(("127.0.0.1", ports[8004]), timeout=60))
        for c in clients[:-1]:
            c.sendall(b"ping")
            assert c.recv(100) == b"echo ping"
        clients[-1].sendall(b"ping")
        share = _cpu_share(pid)
        assert share < IDLE_SHARE, f"the relay used {share:.0%} of a CPU at its connection cap"
        # Two sockets per relayed connection, and none for the one over the cap.
        assert len(_fds(pid)) == base + 2 * _MAX_CONNECTIONS
        clients[0].close()
        assert clients[-1].recv(100) == b"echo ping"
    finally:
        for c in clients:
            c.close()
    _wait(lambda: len(_fds(pid)) == base, 60, "the relay closed every pair")
