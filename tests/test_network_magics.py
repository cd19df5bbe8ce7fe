"""``%%sandbox --network/--ip/--publish`` and ``%sandbox network`` through a real kernel.

A real ipykernel with ``%load_ext nskernel``; its sandbox server (rootless: in its own
user namespace) owns the hub. Runs as root and rootless. Traffic: only between
sandboxes the test made, and from the kernel to its own 127.0.0.1 (``--publish``).
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import time

import pytest

from tests.magic_helpers import execute, kernel, wait_gone

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

WEB = textwrap.dedent(
    """
    import http.server, threading, socket
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello from {socket.gethostname()} to {self.client_address[0]}".encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("0.0.0.0", 8000), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok(kc, code: str):
    res = execute(kc, code)
    assert res.status == "ok", res.error_text
    return res


def _hub_inode(server_pid: int) -> int | None:
    """The hub: a network namespace the server holds by fd, other than its own."""
    own = os.readlink(f"/proc/{server_pid}/ns/net")
    for fd in os.listdir(f"/proc/{server_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{server_pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:[") and target != own:
            return int(target[5:-1])
    return None


def _holders(inode: int) -> list[int]:
    needle = f"net:[{inode}]"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == needle or any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == needle
                for fd in os.listdir(f"/proc/{pid}/fd")
            ):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_web_and_client_by_name_ip_publish_and_network_ls():
    port = _free_port()
    with kernel() as (_km, kc):
        _ok(kc, f"%%sandbox --name web1 --network lab --publish {port}:8000\n{WEB}")
        _ok(kc, "%%sandbox --name client1 --network lab --ip 10.213.0.77\nimport urllib.request")
        info = _ok(kc, "i = %sandbox inspect web1\nprint(i['ips'][0])").stdout.strip()
        assert info.startswith("10.213.0.")

        # By name and by IP, from another sandbox; the server sees the client's address.
        res = _ok(
            kc,
            "%%sandbox --name client1\n"
            "for url in ('http://web1:8000/', 'http://" + info + ":8000/'):\n"
            "    with urllib.request.urlopen(url, timeout=5) as r:\n"
            "        print(r.status, r.read().decode())\n",
        )
        lines = res.stdout.splitlines()
        assert len(lines) == 2 and lines[0] == lines[1], res.stdout
        assert lines[0].startswith("200 hello from ") and lines[0].endswith(" to 10.213.0.77")

        # The kernel side reaches web1 through the published port.
        res = _ok(
            kc,
            "import urllib.request\n"
            f"print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5).read().decode())",
        )
        assert res.stdout.startswith("hello from ") and " to 10.213.0.1" in res.stdout

        # A one-off cell on the network resolves the named ones too.
        res = _ok(
            kc,
            "%%sandbox --network lab\nimport socket\nprint(socket.gethostbyname('client1'))",
        )
        assert res.stdout.strip() == "10.213.0.77"

        res = _ok(kc, "nets = %sandbox network ls\nprint(nets)")
        assert "'name': 'lab'" in res.stdout and "'web1'" in res.stdout
        assert "'client1': '10.213.0.77'" in res.stdout

        # --ip conflicts and a network in use are clear errors in the cell.
        res = execute(kc, "%%sandbox --name other --network lab --ip 10.213.0.77\npass")
        assert res.status == "error"
        assert "already used by sandbox 'client1'" in res.error_text
        res = execute(kc, "%sandbox network rm lab")
        assert res.status == "error" and "in use by client1, web1" in res.error_text
        res = execute(kc, "%%sandbox --publish 8080:80\npass")
        assert res.status == "error" and "--publish needs --network" in res.error_text

        _ok(kc, "%sandbox rm web1 client1")
        assert _ok(kc, "n = %sandbox network ls\nprint(n)").stdout.strip() == "[]"
        with socket.socket() as s:  # the relay is gone and its port free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_networks_end_with_the_kernel(how):
    port = _free_port()
    with kernel() as (km, kc):
        _ok(kc, f"%%sandbox --name w --network lab --publish {port}:8000\n{WEB}")
        _ok(kc, "%%sandbox --name c --network lab,side\npass")
        res = _ok(
            kc,
            "from nskernel.magics.client import get_client\n"
            "w = %sandbox inspect w\n"
            "c = %sandbox inspect c\n"
            "print(w['pid'], c['pid'], get_client().server_pid)",
        )
        w_pid, c_pid, server_pid = map(int, res.stdout.split())
        hub = _hub_inode(server_pid)
        assert hub is not None, "the server holds no hub namespace"
        holders = _holders(hub)
        assert server_pid in holders and len(holders) == 2, holders  # server + relay
        relay = next(p for p in holders if p != server_pid)
        if how == "sigkill":
            os.kill(km.provisioner.process.pid, signal.SIGKILL)
        else:
            km.shutdown_kernel(now=False)
        for pid in (server_pid, w_pid, c_pid, relay):
            assert wait_gone(pid), f"process {pid} outlived the kernel"
        assert not _holders(hub), "the hub namespace outlived the kernel"


HALF_CLOSE = textwrap.dedent(
    """
    import socket, threading
    held = []
    def serve(ls):
        while True:
            c, _ = ls.accept()
            c.sendall(b"hi\\n")
            c.shutdown(socket.SHUT_WR)  # FIN after each answer, the socket kept open
            held.append(c)
    threading.Thread(target=serve, args=(socket.create_server(("0.0.0.0", 8000)),),
                     daemon=True).start()
    """
)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_published_server_that_half_closes_leaves_the_host_relay_idle():
    """Red team r12 F3: a keep-alive client holding a connection the sandbox half-closed
    kept the host-side relay at 100% of a CPU. tests/test_network_relay.py has the rest."""
    port = _free_port()
    with kernel() as (_km, kc):
        _ok(kc, f"%%sandbox --name web --network lab --publish {port}:8000\n{HALF_CLOSE}")
        res = _ok(
            kc, "from nskernel.magics.client import get_client\nprint(get_client().server_pid)"
        )
        server_pid = int(res.stdout)
        hub = _hub_inode(server_pid)
        assert hub is not None, "the server holds no hub namespace"
        relay = next(p for p in _holders(hub) if p != server_pid)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            got = b""
            while chunk := c.recv(100):  # "hi", then the sandbox's FIN
                got += chunk
            assert got == b"hi\n"
            cpu, t = _cpu_seconds(relay), time.monotonic()
            time.sleep(2.0)  # a measuring interval, the client's side still open
            share = (_cpu_seconds(relay) - cpu) / (time.monotonic() - t)
            assert share < 0.10, f"the relay used {share:.0%} of a CPU on a half-closed pair"
        _ok(kc, "%sandbox rm web")
        assert wait_gone(relay), "the relay outlived its sandbox"


def test_a_fifo_where_the_hosts_file_goes_blocks_nothing(tmp_path):
    """A named sandbox that shares a directory with the next one plants a FIFO (full, held
    open) where the network helper used to write the next sandbox's /etc/hosts: that
    sandbox must still join its network, and the server answer (red team: it blocked for
    good, and outlived the kernel). The file is made under a fresh name, then unlinked."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)
    fifo = str(shared / ".nskernel-hosts")
    holder = f"import os, time; fd = os.open({fifo!r}, os.O_RDWR); os.write(fd, bytes(65536)); "
    holder += "time.sleep(120)"
    plant = (
        f"%%sandbox --name a --bind {shared}\nimport os, subprocess, sys\n"
        f"os.mkfifo({fifo!r})\n"
        f"subprocess.Popen([sys.executable, '-c', {holder!r}], start_new_session=True)"
    )
    with kernel() as (_km, kc):
        _ok(kc, plant)
        join = f"%%sandbox --name b --bind {shared}:/tmp --network lab\nprint('joined')"
        res = execute(kc, join, timeout=60)
        assert res.status == "ok" and res.stdout == "joined\n", res.error_text
        assert sorted(p.name for p in shared.iterdir()) == [".nskernel-hosts"]  # only the FIFO
        _ok(kc, "%sandbox rm a b")
