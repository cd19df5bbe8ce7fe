"""What tests/test_containers.py runs *inside* a Docker container, as a user would.

    python -m tests.helpers.in_container doctor run magic server

Each step prints one JSON line, ``{"step": NAME, ...}``, with what it saw; the test on
the host side asserts on them. A step that raises reports the exception instead, so one
broken step never hides what the others saw. Every step also tries to leave a marker
file in $HOME from code that must only ever run in a sandbox, where the host root is
read-only: a marker therefore means the code ran *unsandboxed*.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import traceback
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

NS = ("pid", "net", "mnt", "uts", "ipc", "user")
NS_CODE = (
    "import os, json; print(json.dumps({t: os.stat('/proc/self/ns/' + t).st_ino "
    f"for t in {NS!r}}}))"
)


def own_namespaces() -> dict[str, int]:
    return {t: os.stat(f"/proc/self/ns/{t}").st_ino for t in NS}


def marker(step: str) -> Path:
    return Path(os.environ["HOME"]) / f"ran-unsandboxed-{step}"


def _touch_code(step: str) -> str:
    return f"try:\n    open({str(marker(step))!r}, 'w').close()\nexcept OSError:\n    pass\n"


def step_doctor() -> dict[str, Any]:
    nsk = [sys.executable, "-m", "nskernel", "doctor"]
    j = subprocess.run([*nsk, "--json"], capture_output=True, text=True, timeout=120)
    t = subprocess.run(nsk, capture_output=True, text=True, timeout=120)
    return {
        "returncode": j.returncode,
        "report": json.loads(j.stdout) if j.stdout.strip() else None,
        "stderr": j.stderr[-2000:],
        "text": t.stdout,
        "text_returncode": t.returncode,
    }


def step_run() -> dict[str, Any]:
    script = (
        f"touch {marker('run')} 2>/dev/null; "
        "for t in " + " ".join(NS) + "; do stat -L -c %i /proc/self/ns/$t; done; id -u"
    )
    r = subprocess.run(
        [sys.executable, "-m", "nskernel", "run", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stdout.split()
    inside = dict(zip(NS, map(int, lines[:6]), strict=True)) if len(lines) >= 7 else None
    return {
        "returncode": r.returncode,
        "stderr": r.stderr,
        "inside": inside,
        "uid_inside": lines[6] if len(lines) >= 7 else None,
        "outside": own_namespaces(),
        "marker": marker("run").exists(),
    }


def step_magic() -> dict[str, Any]:
    from tests.magic_helpers import execute, kernel

    with kernel() as (_km, kc):
        outside = execute(kc, NS_CODE).json_line()
        res = execute(kc, "%%sandbox\n" + _touch_code("magic") + NS_CODE, timeout=120)
        return {
            "status": res.status,
            "inside": res.json_line() if res.status == "ok" else None,
            "outside": outside,
            "error": res.error_text,
            "marker": marker("magic").exists(),
        }


def step_server() -> dict[str, Any]:
    from nskernel.kernel import install
    from tests.kernel_helpers import (
        KERNEL_NAME,
        install_kernelspecs,
        start_jupyter,
        stop,
        wait_http,
    )
    from tests.test_kernel_server import Server

    tmp = Path(tempfile.mkdtemp(prefix="nsk-server-"))
    prefix = tmp / "prefix"
    install_kernelspecs(prefix)
    # An Enterprise Gateway kernel pod's setting: everything but the network namespace,
    # so the kernel keeps its network path to the gateway.
    install.install(
        name="nsk-test-nonet",
        display_name="Python 3 (sandboxed, host network)",
        namespaces=install.parse_namespaces("pid,mnt,uts,ipc"),
        prefix=str(prefix),
    )
    root = tmp / "notebooks"
    root.mkdir()
    token = secrets.token_hex(16)
    proc, base = start_jupyter("jupyter_server", tmp, prefix, root, token)
    out: dict[str, Any] = {"marker": False}
    try:
        wait_http(base, token, proc)
        server = Server(proc, base, token)
        try:
            kernel = server.api("POST", "/api/kernels", {"name": KERNEL_NAME})
        except urllib.error.HTTPError as e:
            out["start_error"] = {"status": e.code, "body": e.read().decode(errors="replace")}
            return out
        kid = kernel["id"]
        ch = server.channels(kid)
        try:
            cell = ch.execute(_touch_code("server") + NS_CODE, timeout=120)
            out["inside"] = json.loads(cell["stdout"]) if cell["stdout"] else None
            out["cell_error"] = cell["error"]
            out["hostname"] = ch.execute("import socket; print(socket.gethostname())")["stdout"]
        finally:
            ch.close()
        out["kernel_id"] = kid
        out["outside"] = own_namespaces()
        nonet = server.api("POST", "/api/kernels", {"name": "nsk-test-nonet"})
        ch = server.channels(nonet["id"])
        try:
            # The server is on the container's 127.0.0.1, as a gateway would be for the
            # kernel pod: without a network namespace of its own the kernel reaches it.
            reach = ch.execute(
                "import urllib.request\n"
                f"url = {base + '/api/status?token=' + token!r}\n"
                "print(urllib.request.urlopen(url, timeout=10).status)\n" + NS_CODE
            )
            lines = reach["stdout"].splitlines()
            out["nonet"] = {
                "status": lines[0] if lines else None,
                "inside": json.loads(lines[1]) if len(lines) > 1 else None,
                "error": reach["error"],
            }
        finally:
            ch.close()
        for k in (kid, nonet["id"]):
            server.api("DELETE", f"/api/kernels/{k}")
    finally:
        stop(proc)
        out["marker"] = marker("server").exists()
        logs = sorted(tmp.glob("jupyter_server-*.log"))
        out["log_tail"] = logs[0].read_text(errors="replace")[-3000:] if logs else ""
    return out


STEPS: dict[str, Callable[[], dict[str, Any]]] = {
    "doctor": step_doctor,
    "run": step_run,
    "magic": step_magic,
    "server": step_server,
}


def main(argv: list[str]) -> int:
    for name in argv:
        try:
            result = {"step": name, **STEPS[name]()}
        except Exception:
            result = {"step": name, "exception": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
