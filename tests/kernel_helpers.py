"""Helpers for the sandboxed-kernel tests: throwaway kernelspecs, running cells, waiting.

Kernelspecs are installed into a temporary prefix and found through a KernelSpecManager
(or JUPYTER_PATH for subprocesses) pointed at it: the user's real Jupyter config is never
touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nskernel._linux import procfs
from nskernel.paths import KERNEL_DIR_PREFIX, runtime_dir_path

KERNEL_NAME = "nsk-test"
RW_KERNEL_NAME = "nsk-test-rw"  # installed with --writable-notebook-dir
DISPLAY_NAME = "Python 3 (sandboxed)"


def install_kernelspecs(prefix: Path) -> Path:
    """The default kernelspec, one with a writable notebook directory and a net+uts-only
    one, side by side; returns the kernels dir."""
    from nskernel.kernel import install

    install.install(name=KERNEL_NAME, prefix=str(prefix))
    install.install(
        name=RW_KERNEL_NAME,
        display_name="Python 3 (sandboxed, writable notebook directory)",
        prefix=str(prefix),
        writable_notebook_dir=True,
    )
    install.install(
        name="nsk-test-net",
        display_name="Python 3 (sandboxed, net only)",
        namespaces=install.parse_namespaces("net,uts"),
        prefix=str(prefix),
    )
    return prefix / "share" / "jupyter" / "kernels"


def jupyter_env(tmp: Path, prefix: Path) -> dict[str, str]:
    """Environment for a Jupyter subprocess that sees only our kernelspecs and tmp dirs."""
    env = dict(os.environ)
    env.update(
        JUPYTER_PATH=str(prefix / "share" / "jupyter"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(tmp / "ipython"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run_cell(kc: Any, code: str, timeout: float = 60) -> dict[str, Any]:
    """Execute ``code``; collect its iopub output until idle."""
    msg_id = kc.execute(code)
    out: dict[str, Any] = {"stdout": "", "stderr": "", "error": None, "data": [], "msgs": []}
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        out["msgs"].append(msg)
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out[content["name"]] += content["text"]
        elif kind == "error":
            out["error"] = content["ename"]
        elif kind in ("display_data", "execute_result"):
            out["data"].append(content["data"])
        elif kind == "status" and content["execution_state"] == "idle":
            while True:  # skip replies to requests other than ours (e.g. comm traffic)
                reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
                if reply["parent_header"].get("msg_id") == msg_id:
                    out["reply"] = reply["content"]
                    return out


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def kernel_dirs() -> set[str]:
    """The sandboxed kernels' directories of this user (``kern-*``, see nskernel.paths)."""
    d = runtime_dir_path()
    try:
        return {os.path.join(d, e) for e in os.listdir(d) if e.startswith(KERNEL_DIR_PREFIX)}
    except FileNotFoundError:
        return set()


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (by /proc/PID/task/*/children)."""
    found: set[int] = set()
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = {int(x) for x in f.read().split()}
            except OSError:
                continue
            stack.extend(kids - found)
            found |= kids
    return {p for p in found if alive(p)}


alive = procfs.alive


def kernel_processes(server_pid: int) -> set[int]:
    """A server's processes that belong to its kernels: its descendants but a spare
    launcher still waiting for a start (nskernel/kernel/spare.py), which is no kernel's
    until a start takes it (it then shows the launcher's command line)."""
    return {p for p in descendants(server_pid) if "--spare-fd" not in cmdline(p)}


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jupyter(
    app: str,
    tmp: Path,
    prefix: Path,
    root_dir: Path,
    token: str,
    *,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``jupyter_server`` or ``jupyterlab`` on 127.0.0.1; returns (process, base url).
    ``options`` go on its command line, ``env`` over ``jupyter_env``'s."""
    port = free_port()
    log = open(tmp / f"{app}-{port}.log", "wb")
    cmd = [
        sys.executable,
        "-m",
        app,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.disable_check_xsrf=True",
        *options,
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(
        cmd,
        env={**jupyter_env(tmp, prefix), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root_dir,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    return proc, base


def wait_http(base: str, token: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the Jupyter server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(up, timeout, f"{base} to answer")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hold_namespaces(pids: set[int]) -> list[int]:
    """Open the namespaces of ``pids``, so they outlive the processes.

    Namespace ids are nsfs inode numbers, which the kernel reuses as soon as a namespace
    is freed: "the restarted kernel has new namespace ids" is only meaningful while the
    old namespaces are kept alive. Close the returned fds afterwards.
    """
    fds = []
    for pid in pids:
        for t in ("pid", "net", "mnt", "uts", "ipc", "user"):
            try:
                fds.append(os.open(f"/proc/{pid}/ns/{t}", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass
    return fds


def owned_kernel_dirs(pid: int) -> set[str]:
    """Kernel directories whose owner (the KernelManager's process) is ``pid``.

    Other test sessions on the machine may have kernels of their own at the same time,
    so tests check the directories of their own manager, not the whole runtime dir.
    """
    found = set()
    for d in kernel_dirs():
        try:
            with open(os.path.join(d, "owner")) as f:
                if f.read().split()[0] == str(pid):
                    found.add(d)
        except (OSError, IndexError):
            continue
    return found


@contextlib.contextmanager
def started_kernel(
    ksm: Any, cwd: Path, name: str = KERNEL_NAME, env: dict[str, str] | None = None
) -> Iterator[tuple[Any, Any]]:
    """A started sandboxed kernel's (KernelManager, client); afterwards, asserts that none
    of its processes and not its kernel directory is left."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(cwd), **({"env": env} if env is not None else {}))
    kc = km.client()
    kc.start_channels()
    launcher = km.provisioner.pid
    kernel_dir = km.provisioner.kernel_dir
    assert kernel_dir in owned_kernel_dirs(os.getpid())
    procs: set[int] = set()
    try:
        kc.wait_for_ready(timeout=60)
        procs = descendants(launcher)
        yield km, kc
    finally:
        procs |= descendants(launcher)
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    wait_for(lambda: not any(alive(p) for p in {launcher, *procs}), 10, "the kernel to be gone")
    assert not os.path.exists(kernel_dir), "the kernel's directory was not removed"


# Module names a helper started host-side (the launcher, the %%sandbox server, their probe
# and removal helpers) imports after start-up: planted in the directory it starts in, a
# `python -m` helper would import them from there (sys.path[0]), outside every sandbox.
PLANTED_MODULES = ("argparse", "json", "runpy", "selectors", "ipykernel_launcher", "nskernel")
BESIDE_THE_NOTEBOOK = "beside_the_notebook"


def plant_modules(directory: Path, markers: Path) -> None:
    """Plant, in ``directory``, modules that record in ``markers`` who imported them
    (command line and user namespace) and then fail; plus an honest module the kernel
    and cells should import from there, as from beside any notebook."""
    for name in PLANTED_MODULES:
        code = (
            "import os\n"
            "try:\n"
            f"    with open({str(markers)!r} + '/' + str(os.getpid()), 'w') as f:\n"
            "        cmd = open('/proc/self/cmdline', 'rb').read().replace(b'\\0', b' ')\n"
            "        f.write(os.readlink('/proc/self/ns/user') + ' ' + cmd.decode())\n"
            "except OSError:\n"
            "    pass\n"
            f"raise ImportError('planted {name}')\n"
        )
        if name == "nskernel":
            (directory / name).mkdir()
            (directory / name / "__init__.py").write_text(code)
        else:
            (directory / f"{name}.py").write_text(code)
    (directory / f"{BESIDE_THE_NOTEBOOK}.py").write_text("ANSWER = 'imported from beside'\n")


def host_side_imports(markers: Path) -> list[str]:
    """What imported a planted module in the host's user namespace (a sandbox cannot
    write to ``markers``; a process inside that imported one does no harm)."""
    host_userns = os.readlink("/proc/self/ns/user")
    found = [p.read_text() for p in markers.iterdir()]
    return [m for m in found if m.startswith(host_userns + " ")]
