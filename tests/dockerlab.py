"""A private Docker daemon and a locally built image, for the container tests.

The tests must never touch a Docker daemon the machine may already run, nor pull from a
registry. So: Debian's ``dockerd`` (package ``docker.io``) started with everything of its
own under one temporary directory (data root, exec root, its managed containerd, socket,
pid file, key file, CLI config), no bridge and no iptables/ip6tables/ip_forward changes to
the host's network, container cgroups created *beneath the cgroup this process lives in*
(a relative ``--cgroup-parent``: runc resolves it against its own cgroup), stopped and
removed afterwards. The image is a few kilobytes made here: an empty ``/usr`` with the
usual merged-/usr symlinks and a tiny ``/etc``; each container gets the host's ``/usr``,
this Python environment and the checkout bound read-only at their own paths, so the code
under test is exactly the checkout's.

``python -m tests.dockerlab`` starts the daemon and builds the image, prints how to reach
it, and stops it all on Ctrl-C (for looking around by hand).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from nskernel._linux import syscalls

DOCKERD = "/usr/sbin/dockerd"
# Debian's client, by absolute path: another `docker` earlier on PATH may talk to another
# daemon or be another version.
DOCKER = "/usr/bin/docker"
IMAGE = "nskernel-test:local"
REPO = str(Path(__file__).resolve().parent.parent)
# The unprivileged user that exists inside the image (`docker run --user 1000`).
USER_UID = 1000


def unavailable() -> str | None:
    """Why a private dockerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private dockerd needs root (the root tier runs the container tests)"
    missing = [p for p in (DOCKERD, DOCKER) if not os.access(p, os.X_OK)]
    if missing:
        return (
            f"{' and '.join(missing)} not found: install Debian's docker.io "
            "(apt-get install docker.io; .ci/run does)"
        )
    return None


def _etc_files() -> dict[str, str]:
    return {
        "etc/passwd": (
            "root:x:0:0:root:/root:/bin/sh\n"
            f"user:x:{USER_UID}:{USER_UID}:user:/home/user:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "etc/group": f"root:x:0:\nuser:x:{USER_UID}:\nnogroup:x:65534:\n",
        "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }


def build_rootfs_tar() -> bytes:
    """The image's root filesystem as a tar: merged-/usr symlinks, mount points, a tiny
    /etc, and the host's /etc/alternatives and ld.so cache (both point into /usr)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755, uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
            tar.addfile(info)

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("usr", "etc", "proc", "sys", "dev", "run", "var", "opt", "home", "srv"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_dir("var/tmp", 0o1777)
        add_dir("root", 0o700)
        add_dir("home/user", 0o755, USER_UID)
        for name in ("bin", "sbin", "lib", "lib64"):
            target = os.readlink(f"/{name}") if os.path.islink(f"/{name}") else f"usr/{name}"
            add_link(name, target)
        for name, text in _etc_files().items():
            add_file(name, text.encode())
        for name in ("ld.so.cache", "ld.so.conf"):
            with contextlib.suppress(OSError), open(f"/etc/{name}", "rb") as f:
                add_file(f"etc/{name}", f.read())
        add_dir("etc/alternatives")
        with os.scandir("/etc/alternatives") as it:
            for entry in it:
                if entry.is_symlink():
                    add_link(f"etc/alternatives/{entry.name}", os.readlink(entry.path))
    return buf.getvalue()


class PrivateDocker:
    """One dockerd with all its state under ``base``; see the module's docstring."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.sock = os.path.join(base, "docker.sock")
        self.log_path = os.path.join(base, "dockerd.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup_name = "nsk-docker-" + os.path.basename(base).rsplit(".", 1)[-1]
        self.cgroup_parent = _cgroup_parent(self.cgroup_name)
        # Directories dockerd and containerd's shims make at fixed paths whatever their
        # options say (plugin discovery, shim sockets): removed again if we made them.
        self._fixed_dirs = [d for d in ("/run/docker", "/run/containerd") if not os.path.lexists(d)]

    # ------------------------------------------------------------ daemon

    def start(self, timeout: float = 60) -> None:
        config = os.path.join(self.base, "daemon.json")
        with open(config, "w") as f:
            # Docker 20.10 writes a "trust key" to /etc/docker/key.json unless told
            # otherwise; this option is the only way to keep it out of /etc.
            json.dump({"deprecated-key-path": os.path.join(self.base, "key.json")}, f)
        cmd = [
            DOCKERD,
            f"--config-file={config}",
            f"--data-root={self.base}/data",
            f"--exec-root={self.base}/exec",
            f"--pidfile={self.base}/dockerd.pid",
            f"--host=unix://{self.sock}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--cgroup-parent={self.cgroup_parent}",
            "--storage-driver=overlay2",
        ]
        log = open(self.log_path, "wb")
        # Its own session: a Ctrl-C meant for pytest must not kill the daemon before it
        # has stopped its containers; stop() ends it by PID. Should pytest itself be
        # killed before stop() runs (a CI run ended from outside left a dockerd and its
        # data-root mount behind), the daemon gets SIGTERM and stops its containers.
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.base,
            preexec_fn=_terminated_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.sock) and self.docker("version").returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self, tail: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-tail:])
        except OSError:
            return ""

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": os.path.join(self.base, "cli"),
            "HOME": self.base,
        }

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [DOCKER, *args], input=input, capture_output=True, env=self.env(), timeout=timeout
        )
        return subprocess.CompletedProcess(
            r.args,
            r.returncode,
            r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace"),
        )

    def stop(self) -> None:
        """Remove every container, stop the daemon (and its containerd), remove ``base``."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=60)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = [m for m in _mount_points() if m == self.base or m.startswith(self.base + "/")]
        for m in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        left = [m for m in _mount_points() if m.startswith(self.base + "/")]
        if left:  # never rmtree through a mount: it could reach files that aren't ours
            raise RuntimeError(f"mounts still under {self.base} after stopping dockerd: {left}")
        shutil.rmtree(self.base)
        self._remove_cgroup_parent()
        for d in self._fixed_dirs:
            for root, _dirs, _files in os.walk(d, topdown=False):
                with contextlib.suppress(OSError):  # only empty ones: never anything else's
                    os.rmdir(root)

    def _remove_cgroup_parent(self) -> None:
        """runc removes each container's cgroup, not the parent it made them in."""
        for d in _own_cgroup_dirs():
            top = os.path.join(d, self.cgroup_name)
            if not os.path.isdir(top):
                continue
            for root, _dirs, _files in os.walk(top, topdown=False):
                os.rmdir(root)  # fails (EBUSY) if a process is still in it: a real leak

    # ------------------------------------------------------------ image and runs

    def build_image(self) -> None:
        r = self.docker("import", "-", IMAGE, input=build_rootfs_tar())
        if r.returncode != 0:
            raise RuntimeError(f"docker import failed: {r.stderr}")

    def run(
        self,
        options: Sequence[str],
        argv: Sequence[str],
        *,
        user: int = 0,
        timeout: float = 240,
    ) -> subprocess.CompletedProcess[str]:
        """``docker run --rm`` of ``argv`` in the test image, with the host's /usr, this
        Python environment and the checkout bound read-only at their own paths."""
        venv = os.path.realpath(sys.prefix)
        home = "/root" if user == 0 else "/home/user"
        cmd = [
            "run",
            "--rm",
            "--network=none",
            f"--user={user}:{user}",
            f"--env=HOME={home}",
            "--env=LANG=C.UTF-8",
            "--env=PYTHONDONTWRITEBYTECODE=1",
            # The checkout bound here is what runs, whatever the environment's editable
            # install points at (processes started in other directories import it too).
            f"--env=PYTHONPATH={REPO}",
            f"--env=PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            f"--workdir={REPO}",
            "--volume=/usr:/usr:ro",
            f"--volume={venv}:{venv}:ro",
            f"--volume={REPO}:{REPO}:ro",
            *options,
            IMAGE,
            *argv,
        ]
        return self.docker(*cmd, timeout=timeout)


def _terminated_with_parent() -> None:
    """In the child, before dockerd is exec'd: SIGTERM once the process that started it
    is gone (the death signal survives exec)."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGTERM)


def _cgroup_parent(name: str) -> str:
    """A --cgroup-parent that puts containers beneath this process's own cgroup.

    cgroup v1 (this project's machines): relative, which runc resolves against its own
    cgroup in each hierarchy, and runc runs in ours (dockerd, containerd and the shims
    are our children). cgroup v2 alone: runc would resolve a relative path against the
    *parent* of its cgroup, so the path is spelled out from the root instead.
    """
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return name
    with open("/proc/self/cgroup") as f:
        own = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    return f"{own.rstrip('/')}/{name}"


def _own_cgroup_dirs() -> list[str]:
    """This process's cgroup directory in each mounted hierarchy (v1 and v2)."""
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f.read().splitlines():
            _, controllers, path = line.split(":", 2)
            name = controllers.split(",")[0].removeprefix("name=")
            # v2 (no controller named) is /sys/fs/cgroup itself, or .../unified in the
            # hybrid layout; v1 hierarchies are named after their first controller.
            bases = (
                [f"/sys/fs/cgroup/{name}"] if name else ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            )
            for base in bases:
                if os.path.exists(f"{base}/cgroup.procs") and os.path.isdir(base + path):
                    dirs.append(base + path.rstrip("/"))
                    break
    return dirs


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


@contextlib.contextmanager
def private_docker() -> Iterator[PrivateDocker]:
    base = tempfile.mkdtemp(prefix="nsk-docker.", dir="/var/tmp")
    os.chmod(base, 0o711)
    d = PrivateDocker(base)
    try:
        d.start()
        d.build_image()
        yield d
    finally:
        d.stop()


if __name__ == "__main__":
    problem = unavailable()
    if problem:
        sys.exit(problem)
    with private_docker() as d:
        print(f"export DOCKER_HOST=unix://{d.sock}; {DOCKER} run ... {IMAGE}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
