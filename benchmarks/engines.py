"""Container engines for the comparison: crun, podman and docker, set up and torn down here.

Nothing is pulled from a registry: the containers' root filesystem is made locally from a
static busybox (``/bin/busybox``, the applets the payloads call linked to it); payloads that need
Python get the host's ``/usr`` bound read-only, with ``/lib`` and ``/lib64`` pointing into it.

All engines run inside one *engine host*: ``python -m benchmarks.engines --host WORKDIR TOKEN``
started under ``unshare --mount --pid --fork --kill-child --mount-proc --net``. In that
private mount namespace

- the cgroup2 mount (``/sys/fs/cgroup/unified``) is unmounted on a hybrid cgroup v1/v2
  machine, because crun and podman refuse the mixed layout ("cgroups in hybrid mode not
  supported");
- a tmpfs covers ``/run``: the engines' sockets and runtime state (``/run/nsk-bench/...``
  and whatever they keep under ``/run`` by default) vanish with it;
- dockerd's overlay mounts never reach the host's mount table.

Its own network namespace holds docker's user-defined network (bridge, veths, addresses):
nothing appears on the host's links and no traffic leaves it.

What must be on disk (the root filesystem, crun's bundles, podman's storage, dockerd's
``--data-root``) goes to the run's scratch directory, deleted at the end.

Payloads: ``true`` and ``python`` for every engine; ``network`` for docker only (see
:meth:`Docker._measure_network`), the comparison for nskernel's network case.

The host is PID 1 of its own PID namespace, so when it exits (or the ``unshare`` that
started it is killed) the kernel kills every process an engine left behind. The
benchmark talks to it with JSON lines over stdin/stdout and times each command inside it,
with the same :func:`~benchmarks.harness.time_command` as every other case.

Teardown, in order: dockerd is sent SIGTERM by the PID it was started with (SIGKILL after
30 s); the host exits; the cgroups crun and docker made under ``nsk-bench-TOKEN`` are
removed; the scratch directory is deleted.

Engines run as root with their defaults (no user namespace; podman with
``--cgroups=disabled`` and the host's ulimits, as this VM's root lacks CAP_SYS_RESOURCE to
raise RLIMIT_NOFILE to podman's default). Without root, or without a tool, its cases say
"not available" and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from benchmarks.harness import (
    CaseFailed,
    Context,
    NotAvailable,
    Plan,
    cgroup_layout,
    cgroup_mounts,
    pack_error,
    raise_packed,
    time_command,
)

ENGINES = ("crun", "podman", "docker")
PAYLOADS = ("true", "python")
IMAGE = "nsk-bench/busybox:local"
APPLETS = ("sh", "true", "nc", "grep", "usleep", "sleep")  # what the payloads call
PRIVATE_RUN = Path("/run/nsk-bench")  # inside the engine host's tmpfs on /run
NETWORK = "nsk-bench"  # docker's user-defined network, inside the host's own netns
NET_PEER = "nskb-peer"
NET_PORT = 7000

# The interpreter measured in every Python case: the real file, not a venv's symlink or a
# shell shim on PATH, so that containers see it through the read-only /usr bind.
HOST_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
PYTHON_SNIPPET = (HOST_PYTHON, "-I", "-c", "pass")


def container_payload(payload: str) -> list[str]:
    if payload == "true":
        return ["/bin/true"]
    if not HOST_PYTHON.startswith("/usr/"):
        msg = f"the host's Python ({HOST_PYTHON}) is not under /usr, the only host path bound"
        raise NotAvailable(msg)
    return list(PYTHON_SNIPPET)


# ---------------------------------------------------------------- the client side


class EngineHost:
    """The benchmark's handle on the engine host process (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc

    @classmethod
    @contextlib.contextmanager
    def open(cls, ctx: Context) -> Iterator[EngineHost]:
        if os.geteuid() != 0:
            msg = (
                "container engines are only measured as root (they need a private mount "
                "namespace with their own /run and, on hybrid cgroups, no cgroup2 mount)"
            )
            raise NotAvailable(msg)
        unshare = shutil.which("unshare")
        if unshare is None:
            raise NotAvailable("util-linux `unshare` is not installed")
        workdir = ctx.workdir / "engines"
        workdir.mkdir()
        token = secrets.token_hex(4)
        argv = [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--net",
            "--",
            sys.executable,
            "-m",
            "benchmarks.engines",
            "--host",
            str(workdir),
            token,
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ctx.env, cwd="/"
        )
        try:
            yield cls(proc)
        finally:
            cls._stop(proc)
            remove_cgroups(f"nsk-bench-{token}")

    @staticmethod
    def _stop(proc: subprocess.Popen[str]) -> None:
        # EOF on stdin asks the host to stop its engines and exit.
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            # --kill-child: unshare's death kills the host, PID 1, and with it the namespace.
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def time(self, engine: str, payload: str, plan: Plan) -> dict[str, Any]:
        """Time ``payload`` under ``engine`` in the host: ``samples``, ``command``, ``details``.

        For a case: ``ctx.fixture("engines", EngineHost.open).time("docker", "network", plan)``.
        """
        assert self._proc.stdin and self._proc.stdout
        request = {"engine": engine, "payload": payload, "plan": plan.__dict__}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise CaseFailed(f"the engine host exited (status {self._proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        raise_packed(reply)
        return reply


def remove_cgroups(name: str) -> None:
    """Remove the cgroup directory ``name`` (and what the engines left inside) everywhere."""
    for _, mountpoint in cgroup_mounts():
        top = Path(mountpoint, name)
        if not top.is_dir():
            continue
        # cgroup directories hold only kernel files: rmdir, deepest first, is the whole job.
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as e:
                print(f"engines: could not remove cgroup {dirpath}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- the host side


def _is_static_elf(path: str) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        is64, little = ident[4] == 2, ident[5] == 1
        end = "<" if little else ">"
        f.seek(0x20 if is64 else 0x1C)
        (phoff,) = struct.unpack(end + ("Q" if is64 else "I"), f.read(8 if is64 else 4))
        f.seek(0x36 if is64 else 0x2A)
        phentsize, phnum = struct.unpack(end + "HH", f.read(4))
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader the rootfs doesn't have
                return False
    return True


def build_rootfs(root: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise NotAvailable("no busybox to build a root filesystem from (Debian: busybox-static)")
    busybox = os.path.realpath(busybox)
    if not _is_static_elf(busybox):
        raise NotAvailable(f"{busybox} is dynamically linked; install busybox-static")
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "usr", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    # Merged-/usr layout: with the host's /usr bound read-only, its Python and libc work.
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")


def _checked(argv: list[str], **kwargs: Any) -> str:
    """Run a setup command; its failure fails the case with the command's own words."""
    shown = shlex.join([os.path.basename(argv[0]), *argv[1:]])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise CaseFailed(f"`{shown}` took over 120 s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-600:]
        raise CaseFailed(f"`{shown}` exited {proc.returncode}: {tail}")
    return proc.stdout.strip()


def _version(argv: list[str]) -> str:
    return _checked(argv).splitlines()[0]


class Engine:
    """One engine inside the host: ``prepare`` once, then ``command`` per payload."""

    name = ""

    def __init__(self, workdir: Path, token: str, rootfs: Path) -> None:
        self.dir = workdir / self.name
        # Sockets and runtime state live on the host's private /run tmpfs: short paths
        # (a unix socket path has at most 107 bytes), gone when the host exits.
        self.run = PRIVATE_RUN / self.name
        self.token = token
        self.rootfs = rootfs
        self.env: dict[str, str] | None = None
        self.details: dict[str, Any] = {}

    def binary(self, name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise NotAvailable(f"`{name}` is not installed")
        return path

    def prepare(self) -> None:
        raise NotImplementedError

    def command(self, payload: str) -> list[str]:
        raise NotImplementedError

    def measure(self, payload: str, plan: Plan) -> tuple[list[float], str]:
        """Samples (ms) and the command they timed."""
        argv = self.command(payload)
        return time_command(argv, plan, env=self.env), shlex.join(argv)

    def stop(self) -> None:
        """Stop whatever ``prepare`` started; called once, also after a failed prepare."""

    def pids(self) -> set[int]:
        """Processes this engine keeps running (not to be reaped as orphans)."""
        return set()


class Crun(Engine):
    name = "crun"

    def prepare(self) -> None:
        self.crun = self.binary("crun")
        self.details["version"] = _version([self.crun, "--version"])
        self.details["namespaces"] = "pid, net, ipc, uts, mnt (crun spec defaults)"
        self.run.mkdir(parents=True)
        self.dir.mkdir(parents=True)

    def command(self, payload: str) -> list[str]:
        bundle = self.dir / payload
        if not bundle.exists():
            self._write_bundle(bundle, payload)
        run = ["run", "--bundle", str(bundle), f"nskb-{payload}"]
        return [self.crun, f"--root={self.run}", *run]

    def _write_bundle(self, bundle: Path, payload: str) -> None:
        args = container_payload(payload)
        bundle.mkdir()
        _checked([self.crun, "spec"], cwd=bundle)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = args
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        # A known parent, so that teardown can find and remove what crun leaves.
        config["linux"]["cgroupsPath"] = f"/nsk-bench-{self.token}/crun-{payload}"
        if payload == "python":
            usr = {
                "destination": "/usr",
                "type": "bind",
                "source": "/usr",
                "options": ["rbind", "ro"],
            }
            config["mounts"].append(usr)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))


class Podman(Engine):
    name = "podman"

    def prepare(self) -> None:
        self.podman = self.binary("podman")
        self.details["version"] = _version([self.podman, "--version"])
        self.details["namespaces"] = "pid, net, ipc, uts, mnt (podman defaults as root)"
        self.dir.mkdir(parents=True)

    def command(self, payload: str) -> list[str]:
        storage = [
            f"--root={self.dir / 'storage'}",
            f"--runroot={self.run / 'storage'}",
            f"--tmpdir={self.run / 'libpod'}",
            "--events-backend=none",
            "--cgroup-manager=cgroupfs",
        ]
        run = ["run", "--rm", "--cgroups=disabled", "--network=none", "--ulimit=host"]
        if payload == "python":
            run += ["--volume=/usr:/usr:ro"]
        rootfs = ["--rootfs", str(self.rootfs)]
        return [self.podman, *storage, *run, *rootfs, *container_payload(payload)]


class Docker(Engine):
    name = "docker"

    def __init__(self, workdir: Path, token: str, rootfs: Path) -> None:
        super().__init__(workdir, token, rootfs)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.fifos: tuple[int, int] | None = None  # driving the network peer, once started

    def prepare(self) -> None:
        self.dockerd = self.binary("dockerd")
        self.docker = self.binary("docker")
        self.dir.mkdir(parents=True)
        self.run.mkdir(parents=True)
        self.sock = self.run / "docker.sock"
        self.env = dict(os.environ, DOCKER_CONFIG=str(self.dir / "cli"))
        config: dict[str, Any] = {}
        dockerd_version = _version([self.dockerd, "--version"])
        self.details["version"] = dockerd_version
        self.details["namespaces"] = "pid, net, ipc, uts, mnt (docker defaults)"
        if _major(dockerd_version) < 23:
            # dockerd before 23 writes a trust key to /etc/docker/key.json unless told where.
            config["deprecated-key-path"] = str(self.dir / "key.json")
        (self.dir / "daemon.json").write_text(json.dumps(config))
        self.log = open(self.dir / "dockerd.log", "wb")  # noqa: SIM115 (closed in stop)
        self.daemon = subprocess.Popen(
            [
                self.dockerd,
                f"--config-file={self.dir / 'daemon.json'}",
                f"--data-root={self.dir / 'data'}",
                f"--exec-root={self.run / 'exec'}",
                f"--pidfile={self.run / 'dockerd.pid'}",
                f"--host=unix://{self.sock}",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--userland-proxy=false",
                f"--cgroup-parent=/nsk-bench-{self.token}",
                "--log-level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self._wait_ready(timeout=60)
        tarball = self.dir / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(self.rootfs, arcname=".")
        self._docker("import", str(tarball), IMAGE)
        versions = "{{.Server.Version}} (client {{.Client.Version}})"
        self.details["server"] = self._docker("version", "--format", versions)

    def _docker(self, *args: str) -> str:
        return _checked([self.docker, f"--host=unix://{self.sock}", *args], env=self.env)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise CaseFailed(f"dockerd exited {self.daemon.returncode}: {self._log_tail()}")
            if self.sock.exists():
                try:
                    self._docker("version")
                    return
                except CaseFailed:
                    pass
            time.sleep(0.1)
        raise CaseFailed(f"dockerd was not ready after {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        text = (self.dir / "dockerd.log").read_text(errors="replace")
        return text.strip()[-600:] or "no log output"

    def measure(self, payload: str, plan: Plan) -> tuple[list[float], str]:
        if payload == "network":
            return self._measure_network(plan)
        return super().measure(payload, plan)

    def _measure_network(self, plan: Plan) -> tuple[list[float], str]:
        """``docker run -d`` a server on a user-defined network until a peer reads its byte.

        The same figure as nskernel's ``network`` case: from creating the container until
        another container on the network has connected to it *by name* and read the first
        byte. The peer is one long-lived container that takes names from a FIFO and answers
        on another (``docker exec`` would add its own ~100 ms). Removal is not timed.
        """
        cmd_fd, res_fd = self._network_client()

        def server(name: str) -> list[str]:
            run = ["run", "--detach", f"--network={NETWORK}", f"--name={name}", IMAGE]
            listen = ["nc", "-l", "-p", str(NET_PORT), "-e", "echo", "x"]
            return [self.docker, f"--host=unix://{self.sock}", *run, *listen]

        samples = []
        for i in range(plan.warmup + plan.n):
            name = f"nskb-svc{i}"
            t0 = time.perf_counter()
            started = subprocess.run(server(name), capture_output=True, text=True, env=self.env)
            if started.returncode != 0:
                raise CaseFailed(f"docker run --network failed: {started.stderr.strip()[-600:]}")
            os.write(cmd_fd, f"{name}\n".encode())
            ready, _, _ = select.select([res_fd], [], [], plan.timeout)
            if not ready or os.read(res_fd, 2) != b"k\n":
                raise CaseFailed(f"the peer container never reached {name}:{NET_PORT}")
            took = (time.perf_counter() - t0) * 1e3
            self._docker("rm", "--force", name)
            if i >= plan.warmup:
                samples.append(took)
        return samples, shlex.join(server("nskb-svcN"))

    def _network_client(self) -> tuple[int, int]:
        """Create the network and the peer container once; the FIFOs' fds to drive it."""
        if self.fifos is None:
            fifo_dir = self.dir / "net"
            fifo_dir.mkdir()
            # Opened read-write here, a FIFO never blocks this side on open and never
            # reads as EOF between the peer's opens (it reopens both for every name).
            fds = []
            for fifo in ("cmd", "res"):
                os.mkfifo(fifo_dir / fifo)
                fds.append(os.open(fifo_dir / fifo, os.O_RDWR))
            self.fifos = (fds[0], fds[1])
            self._docker("network", "create", "--internal", NETWORK)
            peer = (
                "while read name < /x/cmd; do "
                f"until nc $name {NET_PORT} </dev/null | grep -q x; do usleep 500; done; "
                "echo k > /x/res; done"
            )
            self._docker(
                "run",
                "--detach",
                f"--network={NETWORK}",
                f"--name={NET_PEER}",
                f"--volume={fifo_dir}:/x",
                IMAGE,
                "sh",
                "-c",
                peer,
            )
        return self.fifos

    def command(self, payload: str) -> list[str]:
        run = ["run", "--rm", "--network=none"]
        if payload == "python":
            run += ["--volume=/usr:/usr:ro"]
        docker = [self.docker, f"--host=unix://{self.sock}"]
        return [*docker, *run, IMAGE, *container_payload(payload)]

    def stop(self) -> None:
        if self.fifos is not None:
            # Its shell, PID 1 in the container, ignores SIGTERM: dockerd would wait 15 s.
            with contextlib.suppress(CaseFailed):
                self._docker("rm", "--force", NET_PEER)
            for fd in self.fifos:
                os.close(fd)
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)  # dockerd then stops its containerd
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.log is not None:
            self.log.close()

    def pids(self) -> set[int]:
        return {self.daemon.pid} if self.daemon is not None else set()


def _major(version_line: str) -> int:
    """``Docker version 20.10.24+dfsg1, build 5d6db84`` -> 20."""
    for word in version_line.split():
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    return 0


def _private_mounts() -> None:
    """Make this mount namespace fit for crun and podman (see the module docstring)."""
    if cgroup_layout() == "hybrid":
        for fstype, mountpoint in cgroup_mounts():
            if fstype == "cgroup2":
                subprocess.run(["umount", mountpoint], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsk-bench-run", "/run"], check=True)


def _reap_orphans(keep: set[int]) -> None:
    """As PID 1 we inherit every orphan (conmon double-forks); reap those that exited."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)


class _Host:
    """The engine host's state: which engines are prepared, or why they could not be."""

    def __init__(self, workdir: Path, token: str) -> None:
        self.rootfs = workdir / "rootfs"
        self.engines = {
            cls.name: cls(workdir, token, self.rootfs) for cls in (Crun, Podman, Docker)
        }
        self.outcome: dict[str, Exception | None] = {}  # prepared engines, None if ready
        self.rootfs_state: bool | Exception = False  # True once built, else why it failed

    def _ready(self, engine: Engine) -> None:
        if engine.name not in self.outcome:
            try:
                self._build_rootfs_once()
                engine.prepare()
                self.outcome[engine.name] = None
            except Exception as e:
                self.outcome[engine.name] = e
        error = self.outcome[engine.name]
        if error is not None:
            raise error

    def _build_rootfs_once(self) -> None:
        if self.rootfs_state is False:
            try:
                build_rootfs(self.rootfs)
                self.rootfs_state = True
            except Exception as e:
                self.rootfs_state = e
        if isinstance(self.rootfs_state, Exception):
            raise self.rootfs_state

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        engine = self.engines[request["engine"]]
        try:
            self._ready(engine)
            samples, command = engine.measure(request["payload"], Plan(**request["plan"]))
        except Exception as e:
            return pack_error(e)
        finally:
            _reap_orphans(set().union(*(e.pids() for e in self.engines.values())))
        return {"samples": samples, "command": command, "details": engine.details}

    def stop(self) -> None:
        for name, engine in self.engines.items():
            if name in self.outcome:
                engine.stop()


def host_main(workdir: Path, token: str) -> int:
    # Replies go to a private copy of stdout; anything an engine prints goes to stderr.
    replies: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _private_mounts()
    host = _Host(workdir, token)
    try:
        for line in sys.stdin:
            replies.write(json.dumps(host.handle(json.loads(line))) + "\n")
            replies.flush()
    finally:
        host.stop()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", nargs=2, metavar=("WORKDIR", "TOKEN"), required=True)
    args = parser.parse_args(argv)
    return host_main(Path(args.host[0]), args.host[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
