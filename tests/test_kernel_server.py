"""The sandboxed kernel behind a real jupyter_server (a subprocess on 127.0.0.1 with a token).

REST creates, interrupts, restarts and deletes the kernel; code runs over the websocket
channels as JupyterLab sends it. A SIGKILLed server must take its sandboxes with it (the
launcher's lifeline), and a restarted server must start kernels normally, sweeping the
dead server's socket directory.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_helpers import (
    KERNEL_NAME,
    alive,
    descendants,
    hold_namespaces,
    install_kernelspecs,
    kernel_dirs,
    kernel_processes,
    owned_kernel_dirs,
    start_jupyter,
    stop,
    wait_for,
    wait_http,
)

pytestmark = [pytest.mark.kernel, pytest.mark.userns, pytest.mark.slow]


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, token: str) -> None:
        self.proc, self.base, self.token = proc, base, token

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=90) as r:
            text = r.read()
            return json.loads(text) if text else r.status

    def channels(self, kernel_id: str) -> Channels:
        import websocket

        url = self.base.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels"
        ws = websocket.create_connection(
            url, header=[f"Authorization: token {self.token}"], timeout=60
        )
        return Channels(ws)


class Channels:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session = uuid.uuid4().hex

    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": "test",
                        "session": self.session,
                        "msg_type": msg_type,
                        "version": "5.3",
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": content,
                    "channel": channel,
                    "buffers": [],
                }
            )
        )
        return msg_id

    def execute(self, code: str, timeout: float = 60) -> dict[str, Any]:
        msg_id = self.send("execute_request", {"code": code, "silent": False})
        return self.wait(msg_id, timeout, what=repr(code[:60]))

    def wait(self, msg_id: str, timeout: float = 60, what: str = "") -> dict[str, Any]:
        """Collect what answers request `msg_id` until both its reply and its idle status came.

        Both are needed, in whichever order they arrive: shell and IOPub reach the websocket
        independently, so the idle status may come before the reply (waiting for one, then the
        other, once hung CI for the full test timeout).
        """
        import websocket

        out: dict[str, Any] = {"stdout": "", "error": None, "reply": None, "idle": False}
        deadline = time.monotonic() + timeout
        while not (out["reply"] and out["idle"]):
            left = deadline - time.monotonic()
            if left <= 0:  # other messages (e.g. a kernel restarting) may keep coming
                raise TimeoutError(f"no reply to {what or msg_id} within {timeout} s: {out}")
            # Short reads: jupyter_server pings every 30 s, and a ping read inside recv()
            # restarts the socket's timeout, so one long recv() could outlive the deadline.
            self.ws.settimeout(min(left, 5))
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                out["stdout"] += content["text"]
            elif kind == "error":
                out["error"] = content["ename"]
            elif kind == "execute_reply":
                out["reply"] = content
            elif kind == "status" and content["execution_state"] == "idle":
                out["idle"] = True
        return out

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("prefix")
    install_kernelspecs(p)
    return p


def _start(tmp: Path, prefix: Path, root: Path, **kw: Any) -> Server:
    token = secrets.token_hex(16)
    proc, base = start_jupyter("jupyter_server", tmp, prefix, root, token, **kw)
    try:
        wait_http(base, token, proc)
    except BaseException:
        stop(proc)
        raise
    return Server(proc, base, token)


@pytest.fixture
def server(tmp_path: Path, prefix: Path) -> Iterator[Server]:
    root = tmp_path / "notebooks"
    root.mkdir()
    srv = _start(tmp_path, prefix, root)
    try:
        yield srv
    finally:
        stop(srv.proc)


def _ns(ch: Channels, timeout: float = 60) -> dict[str, int]:
    out = ch.execute(
        "import os, json; print(json.dumps({t: os.stat('/proc/self/ns/' + t).st_ino "
        "for t in ('pid', 'net', 'mnt', 'uts', 'ipc', 'user')}))",
        timeout,
    )
    return json.loads(out["stdout"])


def test_rest_websocket_interrupt_restart_delete(server: Server) -> None:
    specs = server.api("GET", "/api/kernelspecs")["kernelspecs"]
    assert specs[KERNEL_NAME]["spec"]["display_name"] == "Python 3 (sandboxed)"

    kernel = server.api("POST", "/api/kernels", {"name": KERNEL_NAME})
    kid = kernel["id"]
    kernel_procs = kernel_processes(server.proc.pid)
    ch = server.channels(kid)
    try:
        out = ch.execute("import socket; print(socket.gethostname())")
        assert out["stdout"].strip() == f"nsk-{kid[:8]}"

        msg_id = ch.send("execute_request", {"code": "import time; time.sleep(60)"})
        time.sleep(1.0)
        t0 = time.monotonic()
        assert server.api("POST", f"/api/kernels/{kid}/interrupt") == 204
        # ipykernel aborts what arrives after an error until it has queued its own "stop
        # aborting", which it does before it says idle: the next request waits for that.
        interrupted = ch.wait(msg_id, 30, what="the interrupted sleep")
        assert interrupted["reply"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - t0 < 5

        ids1 = _ns(ch)
        held = hold_namespaces(kernel_processes(server.proc.pid))
        try:
            server.api("POST", f"/api/kernels/{kid}/restart")
            # As JupyterLab does after a restart (KernelConnection.restart: REST restart,
            # then reconnect), a new websocket: jupyter_server nudges the kernel on connect
            # until IOPub delivers. On the old websocket the first cell's IOPub messages
            # (busy, stream, idle) are lost whenever its SUB socket has not reconnected to
            # the new kernel's PUB yet (ZMQ's slow joiner; execute_reply still arrives on
            # shell): 15 of 80 restarts before this branch, 17 of 80 with it. The first
            # message on the new one must be answered: an old kernel that hung on its way
            # out (ipykernel's control thread, see test_kernel.py) once made it get lost.
            ch.close()
            ch = server.channels(kid)
            ids2 = _ns(ch)
        finally:
            for fd in held:
                os.close(fd)
        assert all(ids1[t] != ids2[t] for t in ids1)
        assert not any(alive(p) for p in kernel_procs), "the first sandbox outlived restart"
        kernel_procs = kernel_processes(server.proc.pid)
    finally:
        ch.close()
    assert server.api("DELETE", f"/api/kernels/{kid}") == 204
    wait_for(lambda: not any(alive(p) for p in kernel_procs), 10, "the kernel to be gone")
    assert not owned_kernel_dirs(server.proc.pid)


def test_server_sigkill_leaves_no_sandbox_and_a_new_server_works(
    tmp_path: Path, prefix: Path
) -> None:
    root = tmp_path / "notebooks"
    root.mkdir()
    first = _start(tmp_path, prefix, root)
    try:
        kid = first.api("POST", "/api/kernels", {"name": KERNEL_NAME})["id"]
        ch = first.channels(kid)
        assert ch.execute("print('up')")["stdout"] == "up\n"
        ch.close()
        kernel_procs = descendants(first.proc.pid)
        assert len(kernel_procs) >= 3  # launcher, init, ipykernel
        stale = owned_kernel_dirs(first.proc.pid)
        assert len(stale) == 1
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    wait_for(lambda: not any(alive(p) for p in kernel_procs), 10, "the orphaned sandbox to die")

    second = _start(tmp_path, prefix, root)
    try:
        kid = second.api("POST", "/api/kernels", {"name": KERNEL_NAME})["id"]
        assert not (stale & kernel_dirs()), "the dead server's kernel dir was not swept"
        ch = second.channels(kid)
        assert ch.execute("print(6 * 7)")["stdout"] == "42\n"
        ch.close()
        assert second.api("DELETE", f"/api/kernels/{kid}") == 204
        assert not owned_kernel_dirs(second.proc.pid)
    finally:
        stop(second.proc)


def test_the_kernel_never_reads_the_servers_secrets_wherever_they_are(
    tmp_path: Path, prefix: Path, var_tmp: Path
) -> None:
    """Red teams 22 F1 and 24 F3: a server whose runtime directory (its jpserver-PID.json
    with the token, every kernel's connection file) and cookie secret file lie outside
    any home, as containers and hubs configure them: the sandboxed kernel read them.
    Both are hidden inside now; the server keeps working."""
    runtime, secret_dir = var_tmp / "runtime", var_tmp / "secrets"
    for d in (runtime, secret_dir, secret_dir / "..data"):
        d.mkdir(mode=0o755)
    # As Kubernetes mounts secrets: links into ..data/ (red team 25 F1: a link was
    # skipped, and what it points to stayed readable).
    for name, text in (("cookie_secret", "the-cookie-secret\n"), ("token", "the-token\n")):
        (secret_dir / "..data" / name).write_text(text)
        (secret_dir / "..data" / name).chmod(0o644)
        (secret_dir / name).symlink_to(f"..data/{name}")
    cookie, token = secret_dir / "cookie_secret", secret_dir / "token"
    root = tmp_path / "notebooks"
    root.mkdir()
    srv = _start(
        tmp_path,
        prefix,
        root,
        options=[f"--ServerApp.cookie_secret_file={cookie}"],
        env={"JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_TOKEN_FILE": str(token)},
    )
    try:
        assert any(p.name.startswith("jpserver-") for p in runtime.iterdir())
        kid = srv.api("POST", "/api/kernels", {"name": KERNEL_NAME})["id"]
        ch = srv.channels(kid)
        out = ch.execute(
            "import os\n"
            f"print(sorted(os.listdir({str(runtime)!r})))\n"
            f"for path in ({str(cookie)!r}, {str(token)!r}):\n"
            "    try:\n"
            "        print(repr(open(path).read()))\n"
            "    except FileNotFoundError:\n"
            "        print('gone')"
        )
        ch.close()
        assert out["error"] is None, out
        # Their directory is hidden whole (red team 26 F2): not there at all inside.
        assert out["stdout"] == "[]\ngone\ngone\n", out["stdout"]
        assert srv.api("DELETE", f"/api/kernels/{kid}") == 204
    finally:
        stop(srv.proc)
