"""A stand-in for the ``%%sandbox`` server, to test networks without the magics.

Run as a script, it is the helper process: single-threaded, started by a test with
``sys.executable``; rootless it first enters its own user namespace, exactly as the
sandbox server does, so every sandbox is nested in it and the hub network namespace
is owned by it. It reads JSON requests on stdin and answers one JSON line each on
stdout. Each sandbox it spawns runs an *agent*: a loop that executes Python snippets
sent by the test (inside the sandbox, in one persistent namespace dict, so a snippet
can start a server thread that later snippets talk to).

Imported, :class:`Lab` is the test side: it starts the helper and sends requests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- test side


class LabError(Exception):
    """An error raised in the helper; ``kind`` is its class name there."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Lab:
    """Drives one helper process (one NetworkManager, one hub)."""

    def __init__(self, *, pool: str | None = None, prefixlen: int | None = None) -> None:
        env = dict(os.environ)
        if pool:
            env["NSKERNEL_NETWORK_POOL"] = pool
        if prefixlen:
            env["NSKERNEL_NETWORK_PREFIXLEN"] = str(prefixlen)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "netlab.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.call("hello")

    def call(self, op: str, _wait: float = 30.0, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], _wait)
        if not ready:
            msg = f"the network helper did not answer {op!r} within {_wait} s"
            raise TimeoutError(msg)
        line = self.proc.stdout.readline()
        if not line:
            msg = f"the network helper exited (status {self.proc.wait()}) during {op!r}"
            raise RuntimeError(msg)
        answer = json.loads(line)
        if "error" in answer:
            raise LabError(answer["type"], answer["error"])
        return answer["result"]

    def run(self, name: str, code: str, timeout: float = 20.0) -> str:
        """Run ``code`` inside sandbox ``name``; its stdout, or LabError with the traceback."""
        return self.call("run", _wait=timeout + 5, name=name, code=code, timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
            except (OSError, RuntimeError, TimeoutError, LabError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- helper side


def _enter_own_user_namespace() -> None:
    """Rootless: become root of a new user namespace, as the sandbox server does."""
    from nskernel._linux import exefile
    from nskernel._linux import syscalls as sc

    uid, gid = os.geteuid(), os.getegid()
    exefile.look_before_entering_a_user_namespace()  # as the server does
    sc.unshare(sc.CLONE_NEWUSER)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1\n")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1\n")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _agent(go_r: int, cmd_r: int, res_w: int) -> int:
    """Inside the sandbox: wait for the network, then run snippets until EOF."""
    if os.read(go_r, 1) != b"g":
        return 1
    os.close(go_r)
    scope: dict[str, Any] = {"__name__": "__sandbox__"}
    with os.fdopen(cmd_r) as commands, os.fdopen(res_w, "w") as results:
        for line in commands:
            out = io.StringIO()
            err = None
            try:
                with contextlib.redirect_stdout(out):
                    exec(json.loads(line), scope)
            except BaseException:
                err = traceback.format_exc()
            results.write(json.dumps({"out": out.getvalue(), "error": err}) + "\n")
            results.flush()
    return 0


class _Helper:
    def __init__(self) -> None:
        from nskernel.network import NetworkManager

        self.nm = NetworkManager()
        self.sandboxes: dict[str, Any] = {}
        self.pipes: dict[str, tuple[int, int]] = {}

    def op_hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "uid_map": open("/proc/self/uid_map").read().split()}

    def op_spawn(
        self,
        name: str,
        networks: list[str],
        ip: str | None = None,
        namespaces: list[str] | None = None,
    ) -> dict[str, Any]:
        from nskernel import Sandbox, SandboxSpec

        self.nm.check_request(name, networks, ip)  # before anything is created
        spec = SandboxSpec.from_flags(namespaces or (), hostname=name)
        go_r, go_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        t0 = time.perf_counter()
        try:
            sb = Sandbox.spawn(
                spec, target=lambda: _agent(go_r, cmd_r, res_w), pass_fds=(go_r, cmd_r, res_w)
            )
        finally:
            for fd in (go_r, cmd_r, res_w):
                os.close(fd)
        t1 = time.perf_counter()
        try:
            eps = self.nm.attach(name, sb.pid, networks, ip=ip, hosts_file="mnt" in sb.namespaces)
        except BaseException:
            for fd in (go_w, cmd_w, res_r):
                os.close(fd)
            sb.kill()
            raise
        t2 = time.perf_counter()
        os.write(go_w, b"g")
        os.close(go_w)
        self.sandboxes[name] = sb
        self.pipes[name] = (cmd_w, res_r)
        return {
            "pid": sb.pid,
            "addresses": [str(e.address) for e in eps],
            "spawn_ms": (t1 - t0) * 1000,
            "attach_ms": (t2 - t1) * 1000,
        }

    def op_run(self, name: str, code: str, timeout: float) -> str:
        cmd_w, res_r = self.pipes[name]
        os.write(cmd_w, (json.dumps(code) + "\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([res_r], [], [], left)[0]:
                raise TimeoutError(f"sandbox {name!r} did not finish the snippet in {timeout} s")
            chunk = os.read(res_r, 65536)
            if not chunk:
                raise RuntimeError(f"sandbox {name!r} exited")
            buf += chunk
        answer = json.loads(buf)
        if answer["error"]:
            raise RuntimeError(f"in sandbox {name!r}:\n{answer['error']}")
        return answer["out"]

    def op_rm(self, name: str) -> None:
        self.nm.detach(name)
        sb = self.sandboxes.pop(name)
        for fd in self.pipes.pop(name):
            os.close(fd)
        sb.kill()

    def op_publish(self, name: str, host_port: int, port: int) -> dict[str, Any]:
        fwd = self.nm.publish(name, host_port, port)
        return {"pid": fwd.pid, **fwd.info()}

    def op_ls(self) -> Any:
        return self.nm.ls()

    def op_inspect(self, name: str) -> Any:
        return self.nm.describe(name)

    def op_remove_network(self, name: str) -> None:
        self.nm.remove_network(name)

    def op_hub(self) -> dict[str, Any]:
        fd = self.nm.hub_ns_fd
        hub = self.nm._hub
        v6 = hub.ipr.get_addr(family=socket.AF_INET6) if hub is not None else []
        neigh = hub.ipr.get_neighbours(family=socket.AF_INET) if hub is not None else []
        routes = hub.ipr.get_routes(family=socket.AF_INET, table=254) if hub is not None else []
        return {
            "links": self.nm.hub_links(),
            "inode": os.fstat(fd).st_ino if fd is not None else None,
            "ipv6": sorted(a.get_attr("IFA_ADDRESS") for a in v6),
            # IPv4 neighbour entries: (address, MAC or None)
            "neighbours": sorted((n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")) for n in neigh),
            "macs": {
                link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_ADDRESS")
                for link in (hub.ipr.get_links() if hub is not None else [])
            },
            # the main table's destinations (members' addresses, /32)
            "routes": sorted(
                f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in routes if r.get_attr("RTA_DST")
            ),
        }

    def op_add_bridge(self, bridge: str, address: str) -> str:
        """Hub.add_bridge straight, as a buggy caller would: the error, or "made"."""
        hub = self.nm._hub
        assert hub is not None
        try:
            hub.add_bridge(bridge, address, 24)
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        return "made"

    def op_fdb(self, network: str) -> dict[str, Any]:
        """The forwarding database of ``network``'s bridge in the hub: how many entries,
        and the static ones (MAC, port)."""
        from pyroute2.netlink.rtnl.ndmsg import NUD_NOARP

        hub = self.nm._hub
        assert hub is not None
        bridge = hub._index(self.nm.networks[network].bridge)
        names = {link["index"]: link.get("IFLA_IFNAME") for link in hub.ipr.get_links()}
        count, static = 0, []
        for entry in hub.ipr.fdb("dump"):
            if entry.get("NDA_MASTER") != bridge:
                continue  # a device's own address list, not the bridge's table
            count += 1
            if entry["state"] & NUD_NOARP:
                static.append([entry.get("NDA_LLADDR"), names.get(entry["ifindex"])])
        return {"count": count, "static": sorted(static)}

    def op_exit(self) -> None:
        for name in list(self.sandboxes):
            self.op_rm(name)
        self.nm.close()
        raise SystemExit(0)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nskernel._linux.userns import in_initial_user_namespace

    if os.geteuid() != 0 and in_initial_user_namespace():
        _enter_own_user_namespace()
    helper = _Helper()
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            result = getattr(helper, f"op_{op}")(**req)
            answer: dict[str, Any] = {"result": result}
        except SystemExit:
            print(json.dumps({"result": None}), flush=True)
            return 0
        except Exception as e:
            answer = {"error": str(e), "type": type(e).__name__}
        print(json.dumps(answer), flush=True)
    helper.op_exit()
    return 0


if __name__ == "__main__":
    # Test this checkout's nskernel (the one the test imported), not whichever the
    # interpreter's install points to: a script's sys.path starts at tests/.
    sys.path.insert(0, os.path.dirname(HERE))
    sys.exit(main())
