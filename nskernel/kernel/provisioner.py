"""NamespaceProvisioner: jupyter_client's hook that puts every kernel in a fresh sandbox.

Named in kernel.json (``metadata.kernel_provisioner.provisioner_name =
"nskernel-provisioner"``), found through the ``jupyter_client.kernel_provisioners`` entry
point. It runs inside jupyter_server / a KernelManager, which are multi-threaded, so it
never creates namespaces itself: it rewrites the kernel command to start
``nskernel.kernel.launch`` (see there for the process model and signals).

Transport: a kernel in a fresh network namespace cannot reach the server's 127.0.0.1, so
ZMQ runs over path-bound unix sockets (``ipc``) in a private directory that the sandbox
sees at the same path (path sockets are found through the mount namespace; abstract ones
belong to one network namespace and would not work). ``sun_path`` holds 107 bytes, so
the length is checked before anything starts.

The socket directory belongs to the KernelManager's process, not to one launcher: a
restart must keep the same socket paths, because the server's ZMQ sockets (and
jupyter_server's websocket bridges) reconnect to the addresses they already have. Its
``owner`` file names that process (PID and start time); directories whose owner is gone
are swept on the next launch, and :meth:`cleanup` removes the directory at shutdown.

Interrupts stay in signal mode (``interrupt_mode: signal``): jupyter_client's ``killpg``
reaches ipykernel and every subprocess of the running cell, because the launcher, the
sandbox's init and the kernel share one process group (it crosses the PID namespace);
the launcher ignores SIGINT and the init does not forward it, so it arrives once. That
also stops a ``subprocess`` child, which message mode (an ``interrupt_request`` the
kernel handles itself) would leave running until the kernel got around to it.

Fails closed: if this machine cannot create the namespaces, ``pre_launch`` raises
:class:`KernelSandboxUnavailable` with the cause and the fix (as ``nskernel doctor``
words them) — JupyterLab shows it as the kernel start error; no unsandboxed kernel, no
restart loop. If the sandbox still fails in the launcher, :meth:`launch_kernel` raises
with the launcher's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Dict, List, Unicode

from ..errors import NskernelError, SpecError
from ..paths import remove_runtime_entry, runtime_dir, runtime_dir_path
from ..spec import ALL_NAMESPACES, _hostname_error, make_limits

SOCKET_DIR_PREFIX = "kern-"
# sun_path is 108 bytes including the NUL; ZMQ appends "-<port>" (up to 6 bytes).
MAX_SOCKET_PATH = 107
_PORT_SUFFIX = 6
_probed_ok: set[frozenset[str]] = set()


class KernelSandboxUnavailable(NskernelError, RuntimeError):
    """The sandboxed kernel cannot start here; the message names the cause and the fix."""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_token() -> str:
    return f"{os.getpid()} {_start_time(os.getpid())}"


def _owner_alive(token: str) -> bool:
    try:
        pid_text, start = token.split()
        return _start_time(int(pid_text)) == start
    except ValueError:
        return False


def sweep_stale_socket_dirs(base: str | None = None) -> list[str]:
    """Remove socket directories whose owning process is gone. Returns what was removed."""
    base = base or runtime_dir_path()
    removed = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(SOCKET_DIR_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            with open(os.path.join(path, "owner")) as f:
                token = f.read().strip()
        except FileNotFoundError:
            token = ""  # half-made by a process that died before writing it
        except OSError:
            continue
        if not _owner_alive(token):
            remove_runtime_entry(path)
            removed.append(path)
    return removed


def make_socket_dir() -> str:
    for attempt in range(3):
        path = os.path.join(runtime_dir(), SOCKET_DIR_PREFIX + secrets.token_hex(4))
        try:
            os.mkdir(path, 0o700)
            break
        except FileNotFoundError:  # the last other kernel just removed the empty parent
            if attempt == 2:
                raise
    with open(os.path.join(path, "owner"), "w") as f:
        f.write(_owner_token() + "\n")
    ip = os.path.join(path, "k")
    if len(ip.encode()) + _PORT_SUFFIX > MAX_SOCKET_PATH:
        remove_runtime_entry(path)
        msg = (
            f"the kernel's unix socket path {ip}-N would exceed {MAX_SOCKET_PATH} bytes; "
            "set XDG_RUNTIME_DIR to a shorter directory (or unset it to use /tmp)"
        )
        raise KernelSandboxUnavailable(msg)
    return path


def probe_namespaces(namespaces: frozenset[str]) -> None:
    """Check, in a fresh process, that such a sandbox can be made; cached on success."""
    if namespaces in _probed_ok:
        return
    cmd = [
        sys.executable,
        "-m",
        "nskernel.kernel.launch",
        "--probe",
        "--namespaces",
        ",".join(sorted(namespaces)),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        why = res.stderr.strip() or f"the probe exited with status {res.returncode}"
        if "nskernel doctor" not in why:
            why += "\nRun `nskernel doctor` for the full picture."
        msg = (
            "Cannot start the sandboxed kernel: this machine does not let it create the "
            f"namespaces it needs ({', '.join(sorted(namespaces))}).\n{why}\n"
            "The kernel was not started (it never runs unsandboxed)."
        )
        raise KernelSandboxUnavailable(msg)
    _probed_ok.add(namespaces)


class NamespaceProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launches ipykernel inside fresh Linux namespaces (see the module docstring)."""

    namespaces = List(
        Unicode(),
        default_value=list(ALL_NAMESPACES),
        config=True,
        help="Namespace types to create for the kernel (user is always added).",
    )
    hostname = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Hostname inside the sandbox; default nsk-<first 8 characters of the kernel id>.",
    )

    limits = Dict(
        default_value={},
        config=True,
        help="Resource limits for the session: memory (e.g. '1G'), pids, cpus.",
    )

    socket_dir: str | None = None
    _lifeline_w: int | None = None

    def _limit_args(self) -> list[str]:
        try:
            make_limits(**{k: self.limits.get(k) for k in ("memory", "pids", "cpus")})
        except (SpecError, TypeError, AttributeError) as e:
            msg = f"kernel.json has an unusable limits setting {self.limits!r}: {e}"
            msg += " (reinstall with nskernel install --memory/--pids/--cpus)"
            raise KernelSandboxUnavailable(msg) from None
        args: list[str] = []
        for key in ("memory", "pids", "cpus"):
            if self.limits.get(key) is not None:
                args += [f"--{key}", str(self.limits[key])]
        return args

    def _namespace_set(self) -> frozenset[str]:
        chosen = frozenset(self.namespaces) or frozenset(ALL_NAMESPACES)
        unknown = chosen - set(ALL_NAMESPACES)
        if unknown:
            msg = (
                f"kernel.json asks for unknown namespace type(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(ALL_NAMESPACES)} (reinstall with nskernel install)"
            )
            raise KernelSandboxUnavailable(msg)
        return chosen | {"user"}

    def _hostname(self) -> str:
        name = self.hostname or f"nsk-{str(self.kernel_id)[:8]}"
        err = _hostname_error(name)
        if err:
            raise KernelSandboxUnavailable(f"kernel.json: {err}")
        return name

    def _reuse_or_make_socket_dir(self) -> str:
        km = self.parent
        # On restart the manager keeps its ip (a path in our directory): keep the paths.
        if km is not None and km.transport == "ipc" and km.ip:
            d = os.path.dirname(km.ip)
            if os.path.basename(d).startswith(SOCKET_DIR_PREFIX) and os.path.isdir(d):
                return d
        return make_socket_dir()

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by the KernelManager before launch: check, prepare sockets, wrap the cmd."""
        namespaces = self._namespace_set()
        hostname = self._hostname() if "uts" in namespaces else None
        limit_args = self._limit_args()  # every setting checked before anything is made
        await asyncio.get_running_loop().run_in_executor(None, probe_namespaces, namespaces)
        sweep_stale_socket_dirs()
        km = self.parent
        self.socket_dir = self._reuse_or_make_socket_dir()
        if km is not None:
            km.transport = "ipc"
            km.ip = os.path.join(self.socket_dir, "k")
            km.cache_ports = False
        kwargs = await super().pre_launch(**kwargs)
        launcher = [sys.executable, "-m", "nskernel.kernel.launch"]
        launcher += ["--namespaces", ",".join(sorted(namespaces))]
        if hostname:
            launcher += ["--hostname", hostname]
        launcher += limit_args
        launcher += ["--socket-dir", self.socket_dir]
        if km is not None:
            launcher += ["--connection-file", km.connection_file]
        kwargs["cmd"] = [*launcher, "--", *kwargs["cmd"]]
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the launcher with two pipes: its lifeline and its one-line status."""
        life_r, life_w = os.pipe()  # non-inheritable: later kernels must not hold it
        status_r, status_w = os.pipe()
        cmd = list(cmd)
        at = cmd.index("--")
        cmd[at:at] = ["--lifeline-fd", str(life_r), "--status-fd", str(status_w)]
        kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), life_r, status_w)
        try:
            info = await super().launch_kernel(cmd, **kwargs)
        except BaseException:
            for fd in (life_r, life_w, status_r, status_w):
                os.close(fd)
            raise
        os.close(life_r)
        os.close(status_w)
        self._lifeline_w = life_w
        status = await asyncio.get_running_loop().run_in_executor(None, _read_status, status_r)
        if not status.get("ok"):
            await self._reap_failed_launcher()
            error = status.get("error") or "the launcher exited without saying why"
            raise KernelSandboxUnavailable(error)
        return info

    async def _reap_failed_launcher(self) -> None:
        if self.process is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.wait(), 10)
        await self._close_lifeline()

    async def _close_lifeline(self) -> None:
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)
            self._lifeline_w = None

    async def cleanup(self, restart: bool = False) -> None:
        """Called after the kernel ended: drop the lifeline; at shutdown, the socket dir."""
        await super().cleanup(restart=restart)
        await self._close_lifeline()
        if not restart and self.socket_dir:
            remove_runtime_entry(self.socket_dir)
            self.socket_dir = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["socket_dir"] = self.socket_dir
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.socket_dir = provisioner_info.get("socket_dir")


def _read_status(fd: int) -> dict[str, Any]:
    with os.fdopen(fd, "rb") as f:
        line = f.readline()
    if not line:
        return {"ok": False}
    return json.loads(line)
