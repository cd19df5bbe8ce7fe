"""A hostile cell against the sandboxed kernel's host side: its files, terminal and environment.

Everything a sandbox can write is hostile input. A cell in the sandboxed kernel plants
symlinks (to files of the test's), FIFOs and links to /dev/zero at every name the host
side writes or reads next to the kernel (the connection file copy, the host facts, the
sandbox status, the IPython profile copy, ``owner``), in every directory of the kernel's
it can find. Then the kernel is restarted, another kernel of the same user is started
(which sweeps stale kernel directories) and everything is shut down: the host must not
have followed, opened, chowned or blocked on anything the sandbox planted, the restarted
kernel must work at the same socket paths, and nothing may be left behind.

Each test runs with its own runtime directory (``XDG_RUNTIME_DIR``): a FIFO that hangs a
kernel start must not hang other test sessions on the machine when this runs against a
build that still falls for it. The victims live where the sandbox cannot write; their
owner, mode and content are compared before and after.

The terminal test gives the launcher a pty as stdout/stderr, as ``jupyter lab`` run in a
terminal does: the sandbox must never get it, and what it writes arrives with terminal
control characters made harmless.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nskernel.kernel import install
from nskernel.paths import runtime_dir_path
from tests.conftest import IS_ROOT, nskernel_cmd
from tests.kernel_helpers import (
    BESIDE_THE_NOTEBOOK,
    KERNEL_NAME,
    host_side_imports,
    install_kernelspecs,
    plant_modules,
    run_cell,
    started_kernel,
)

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

# Every name the host side has written or read next to a kernel (in any layout), and the
# profile files an exec'd kernel command gets a copy of.
NAMES = ("kernel.json", "host.json", "sandbox.json", "owner", "sock", "ro")
PROFILE_FILES = ("ipython_kernel_config.py", "startup/00-first.py")
NEXT_START_TIMEOUT = 120  # seconds: a hang detector, not a speed requirement
RECONNECT_WINDOW = 3.0  # seconds: thirty of libzmq's reconnect attempts


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kernels = install_kernelspecs(tmp_path_factory.mktemp("prefix"))
    # The same kernel, but exec'ing `python -m ipykernel` inside the sandbox: the host
    # then writes a copy of the user's IPython profile for it before each start.
    spec = json.loads((kernels / KERNEL_NAME / "kernel.json").read_text())
    spec["argv"][1:3] = ["-m", "ipykernel"]
    (kernels / "nsk-test-exec").mkdir()
    (kernels / "nsk-test-exec" / "kernel.json").write_text(json.dumps(spec))
    return kernels


@pytest.fixture(scope="module")
def ksm(kernels_dir: Path) -> KernelSpecManager:
    return KernelSpecManager(kernel_dirs=[str(kernels_dir)])


@pytest.fixture
def runtime_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR (short: unix socket paths are limited to 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="nskh-", dir="/var/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    try:
        yield base
    finally:
        # The directory kernels use stays, empty, by design (made before any sandbox and
        # never removed: red team 13 F1); what is in it must not.
        kept = Path(runtime_dir_path())
        monkeypatch.undo()
        left = sorted(str(p) for p in base.rglob("*") if p != kept)
        _force_remove(base)
        assert not left, f"left in the runtime dir: {left}"


def _force_remove(path: Path) -> None:
    """Remove what a failed run may leave, including what the sandbox made its own."""
    if not path.exists():
        return
    if IS_ROOT:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
        return
    # Rootless: entries owned by the sandbox's subordinate ids need a user namespace.
    script = f"chmod -R u+rwX {path} 2>/dev/null; rm -rf {path}"
    subprocess.run(
        [*nskernel_cmd("run", "--bind", str(path.parent), "--", "sh", "-c"), script],
        check=False,
        capture_output=True,
    )
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def victims(tmp_path: Path) -> dict[str, Any]:
    """Files the test owns, outside anything bound into the sandbox: a world-readable one
    and a private one (0600 in a 0700 directory; as root, sandbox root cannot read it)."""
    public, private = tmp_path / "public", tmp_path / "private"
    public.mkdir(mode=0o755)
    private.mkdir(mode=0o700)
    found: dict[str, Any] = {"public": {}, "private": {}}
    for name in (*NAMES, *PROFILE_FILES):
        safe = name.replace("/", "_")
        for kind, d, mode in (("public", public, 0o644), ("private", private, 0o600)):
            p = d / f"victim-{safe}"
            p.write_text(f"{kind} victim for {name}\n")
            p.chmod(mode)
            found[kind][name] = str(p)
    return found


def _snapshot(victims: dict[str, Any]) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for paths in victims.values():
        for p in paths.values():
            st = os.lstat(p)
            out[p] = (st.st_uid, st.st_gid, st.st_mode, Path(p).read_bytes())
    return out


def _changed(victims: dict[str, Any], before: dict[str, Any]) -> dict[str, str]:
    """The victims whose owner, mode or content changed: {path: what changed}."""
    now = _snapshot(victims)
    found = {}
    for path, (uid, gid, mode, data) in before.items():
        n_uid, n_gid, n_mode, n_data = now[path]
        what = []
        if (n_uid, n_gid) != (uid, gid):
            what.append(f"owner {uid}:{gid} -> {n_uid}:{n_gid}")
        if n_mode != mode:
            what.append(f"mode {mode:o} -> {n_mode:o}")
        if n_data != data:
            what.append(f"content -> {n_data[:60]!r}")
        if what:
            found[path] = ", ".join(what)
    return found


def _home_with_profile(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    profile = home / ".ipython" / "profile_default"
    (profile / "startup").mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        "c.IPKernelApp.exec_lines = ['FROM_CONFIG = 1']\n"
    )
    (profile / "startup" / "00-first.py").write_text("FROM_STARTUP = 2\n")
    home.chmod(0o700)
    return home


# Runs inside: find the kernel's directories (from the connection file, the facts files,
# the socket address and IPYTHONDIR, and their parents), then plant at every name.
PLANT = r"""
import json, os, errno
import ipykernel.connect
kind, targets, names, profile_files = {args}
cf = ipykernel.connect.get_connection_file()
ip = json.load(open(cf))["ip"]
seen = [cf, os.environ.get("NSKERNEL_HOST_FACTS"), os.environ.get("NSKERNEL_SANDBOX_FACTS"), ip]
dirs = set()
for p in filter(None, seen):
    d = os.path.dirname(p)
    dirs |= {{d, os.path.dirname(d)}}
spots = [(os.path.join(d, n), n) for d in sorted(dirs) for n in names]
ipdir = os.environ.get("IPYTHONDIR")
if ipdir:
    spots += [(os.path.join(ipdir, "profile_default", f), f) for f in profile_files]
planted, refused = [], {{}}
for path, name in spots:
    tmp = path + ".plant"
    try:
        if kind == "fifo":
            os.mkfifo(tmp)
        else:
            os.symlink(targets.get(name, "/dev/zero") if kind != "dev-zero" else "/dev/zero", tmp)
        os.replace(tmp, path)
        planted.append(path)
    except OSError as e:
        refused[path] = errno.errorcode.get(e.errno, str(e.errno))
        try:
            os.unlink(tmp)
        except OSError:
            pass
# Entries the user cannot remove without help: other (sub)ids, no permissions.
sockdir = os.path.dirname(ip)
made = []
for uid in (0, 1234):
    d = os.path.join(sockdir, f"owned-by-{{uid}}")
    try:
        os.makedirs(os.path.join(d, "deeper"))
        open(os.path.join(d, "deeper", "f"), "w").close()
        for p in (os.path.join(d, "deeper", "f"), os.path.join(d, "deeper"), d):
            os.chown(p, uid, uid)
        os.chmod(os.path.join(d, "deeper"), 0)
        os.chmod(d, 0o500)
        made.append(d)
    except OSError:
        pass
print(json.dumps({{"planted": planted, "refused": refused, "sockdir": sockdir, "made": made}}))
"""

NEXT_START = r"""
import resource, sys
# A /dev/zero read must end in a MemoryError here, not take the machine's memory.
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name=sys.argv[2],
                   kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
km.start_kernel(cwd=sys.argv[3])
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
kc.stop_channels()
km.shutdown_kernel(now=False)
print("started and stopped")
"""


@pytest.mark.parametrize(
    ("kind", "kernel_name"),
    [
        ("link-to-public", "nsk-test-exec"),
        ("link-to-private", "nsk-test-exec"),
        ("link-to-private", KERNEL_NAME),
        ("fifo", "nsk-test-exec"),
        ("dev-zero", "nsk-test-exec"),
    ],
)
def test_what_the_sandbox_plants_is_never_followed(
    ksm: KernelSpecManager,
    kernels_dir: Path,
    runtime_base: Path,
    victims: dict[str, Any],
    tmp_path: Path,
    kind: str,
    kernel_name: str,
) -> None:
    before = _snapshot(victims)
    nbdir = tmp_path / "notebook"
    nbdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "IPYTHONDIR"}
    env["HOME"] = str(_home_with_profile(tmp_path))
    km = KernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(nbdir), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        ip = km.ip
        targets = victims["private" if kind == "link-to-private" else "public"]
        args = repr((kind, targets, NAMES, PROFILE_FILES))
        out = run_cell(kc, PLANT.format(args=args))
        assert out["error"] is None, out
        report = json.loads(out["stdout"].splitlines()[0])
        assert report["planted"], report  # the sandbox can write its socket directory

        try:
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
        finally:  # the host's files first: what the restart did to them is the point
            assert not _changed(victims, before), "the host followed what the sandbox planted"
        assert km.ip == ip  # the same socket paths: the server's sockets reconnect
        out = run_cell(
            kc,
            "import json, os, stat\n"
            f"planted = {report['planted']!r}\n"
            "still = [p for p in planted if os.path.lexists(p) and\n"
            "         (stat.S_ISLNK(os.lstat(p).st_mode) or stat.S_ISFIFO(os.lstat(p).st_mode))]\n"
            f"print(json.dumps([still, sorted(os.listdir({report['sockdir']!r}))]))\n"
            "print(6 * 7)",
        )
        assert out["error"] is None, out
        still, listing = json.loads(out["stdout"].splitlines()[0])
        assert out["stdout"].splitlines()[1] == "42"
        assert not still, f"planted entries survived the restart: {still}"
        assert not [n for n in listing if n.startswith("owned-by-")], listing  # a fresh dir

        # Another kernel of the same user: its start sweeps the kernel directories.
        res = subprocess.run(
            [sys.executable, "-c", NEXT_START, str(kernels_dir), KERNEL_NAME, str(nbdir)],
            capture_output=True,
            text=True,
            timeout=NEXT_START_TIMEOUT,
            env=env,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.strip().endswith("started and stopped")
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    assert not _changed(victims, before), "the host followed what the sandbox planted"
    # runtime_base checks on teardown that nothing is left in the runtime dir.


# Runs inside: close the kernel's stdin socket (libzmq removes its file, and the server's
# stdin channel starts reconnecting) and put a symlink to the host's socket in its place.
SWAP_SOCKET = r"""
import json, os
import ipykernel.connect
info = json.load(open(ipykernel.connect.get_connection_file()))
path = f"{{info['ip']}}-{{info['stdin_port']}}"
get_ipython().kernel.stdin_socket.close(linger=0)
if os.path.lexists(path):
    os.unlink(path)
os.symlink({target!r}, path)
print(os.readlink(path))
"""


def test_the_server_never_connects_where_the_kernel_points(
    ksm: KernelSpecManager, runtime_base: Path, tmp_path: Path
) -> None:
    """The kernel binds its sockets in a directory it can write; the server must connect to
    what it bound, never to where a symlink planted there points (here: a unix socket of
    the test's, as a host daemon's would be)."""
    victim = tmp_path / "daemon.sock"
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    daemon.bind(str(victim))
    daemon.listen(8)
    daemon.setblocking(False)
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out = run_cell(kc, SWAP_SOCKET.format(target=str(victim)))
        assert out["error"] is None, out
        assert out["stdout"].strip() == str(victim)  # planted
        # The server's stdin channel retries every 100 ms (libzmq's reconnect interval):
        # following the symlink, it reaches the daemon within a few tries.
        readable, _, _ = select.select([daemon], [], [], RECONNECT_WINDOW)
        assert not readable, "the server connected to the socket the kernel's symlink names"
        assert run_cell(kc, "print(6 * 7)")["stdout"].strip() == "42"  # shell still works
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        daemon.close()


def test_a_notebook_directory_holding_the_runtime_dir_is_not_made_writable(
    ksm: KernelSpecManager, runtime_base: Path
) -> None:
    # Jupyter started in the directory that holds nskernel's runtime dir (say, /tmp):
    # binding it writable would hand the sandbox every kernel's directory, keys and
    # host-only files included. The kernel still starts there, without that bind.
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(runtime_base))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        kernel_dir = Path(km.provisioner.kernel_dir)
        owner = (kernel_dir / "owner").read_bytes()
        out = run_cell(
            kc,
            "import errno, json, os\n"
            f"owner = {str(kernel_dir / 'owner')!r}\n"
            "tried = {}\n"
            "for path in (owner, 'written-inside'):\n"
            "    try:\n"
            "        with open(path, 'w') as f: f.write('sandbox')\n"
            "        tried[path] = 'ok'\n"
            "    except OSError as e:\n"
            "        tried[path] = errno.errorcode[e.errno]\n"
            "print(json.dumps([os.getcwd(), tried]))",
        )
        assert out["error"] is None, out
        cwd, tried = json.loads(out["stdout"])
        assert cwd == str(runtime_base)
        assert (kernel_dir / "owner").read_bytes() == owner, tried
        assert not (runtime_base / "written-inside").exists(), tried
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_the_kernel_never_reads_jupyters_runtime_directory(
    ksm: KernelSpecManager, runtime_base: Path, var_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red team 22 F1: the server's runtime directory (its token in jpserver-PID.json,
    its cookie secret, every kernel's connection file and key) lay outside any home
    (JUPYTER_RUNTIME_DIR=/srv/...): readable inside a rootless sandboxed kernel. The
    launcher's environment is an allow-list, so the provisioner tells it where."""
    jupyter_runtime = var_tmp / "jupyter-runtime"  # not in a private place of its own
    jupyter_runtime.mkdir(mode=0o755)
    (jupyter_runtime / "jpserver-4242.json").write_text('{"token": "the-servers-token"}\n')
    (jupyter_runtime / "jpserver-4242.json").chmod(0o644)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_runtime))
    km = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=ksm,
        # Where jupyter_server puts it: in its runtime directory.
        connection_file=str(jupyter_runtime / "kernel-test.json"),
    )
    km.start_kernel(cwd="/")
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out = run_cell(
            kc,
            "import os\n"
            f"try:\n    print(sorted(os.listdir({str(jupyter_runtime)!r})))\n"
            "except OSError as e:\n    print(e.strerror)",
        )
        assert out["error"] is None, out
        assert out["stdout"] == "[]\n", out["stdout"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


# ---------------------------------------------------------------- the caller's terminal

RELAY_SCRIPT = r"""
import fcntl, json, os, sys, termios
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
sys.path.insert(0, sys.argv[4])
from tests.kernel_helpers import run_cell
# Like a shell in a terminal: the pty (our stdout) is this session's controlling terminal.
fcntl.ioctl(1, termios.TIOCSCTTY, 0)
km = KernelManager(kernel_name=sys.argv[2],
                   kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
km.start_kernel(cwd=sys.argv[3])
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=60)
    out = run_cell(kc, sys.stdin.read())
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
out.pop("msgs")
os.write(int(sys.argv[5]), json.dumps(out).encode())
"""

# Runs inside: look at every descriptor for a terminal, try to use it as one, then write
# escape sequences to the original stdout/stderr and, through ipykernel's capture, fd 1/2.
HOSTILE_OUTPUT = r"""
import errno, fcntl, json, os, sys, termios
found = {}
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    r = {"isatty": os.isatty(fd)}
    for req, arg in (("TIOCGWINSZ", b"\0" * 8), ("TIOCSTI", b"#"), ("TIOCSCTTY", 0)):
        try:
            fcntl.ioctl(fd, getattr(termios, req), arg)
            r[req] = "ok"
        except OSError as e:
            r[req] = errno.errorcode.get(e.errno, str(e.errno))
    found[fd] = r
try:
    os.open("/dev/tty", os.O_RDWR)
    found["/dev/tty"] = "opened"
except OSError as e:
    found["/dev/tty"] = errno.errorcode.get(e.errno)
def original(stream, fd):  # ipykernel's copy of the fd it captures, if it captures it
    try:
        return stream.fileno()
    except OSError:
        return fd
evil = b"\x1b]0;pwned\x07 \x1b[2J\x1b[H \xc2\x9b31m \x9b \x05 over\rwrite \x7f end"
os.write(original(sys.stdout, 1), b"STDOUT-BEGIN " + evil + b" STDOUT-END\n")
os.write(original(sys.stderr, 2), b"STDERR-BEGIN " + evil + b" STDERR-END\n")
os.write(1, b"FD1-BEGIN \x1b[31mred\x1b[0m FD1-END\r\n")
sys.stdout.flush()
print(json.dumps(found))
"""


def _read_pty_until_closed(master: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """Everything written to the pty until every holder of its other side closed it."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            raise AssertionError(f"the pty was still open after {timeout}s: {bytes(data)!r}")
        ready, _, _ = select.select([master], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError as e:
            if e.errno == errno.EIO:  # the last slave side closed
                return bytes(data)
            raise
        if not chunk:
            return bytes(data)
        data += chunk


@pytest.mark.parametrize("terminal", ["own", "another-users"])
def test_the_sandbox_never_gets_the_callers_terminal(
    kernels_dir: Path, tmp_path: Path, var_tmp: Path, terminal: str
) -> None:
    """``another-users``: the launcher may not reopen the terminal (red team 13 F4: root's
    terminal under runuser or sudo -u), so it writes what it inherited, from a thread."""
    master, slave = pty.openpty()
    result_r, result_w = os.pipe()
    repo = str(Path(__file__).resolve().parent.parent)
    cwd = tmp_path
    script = [sys.executable, "-c", RELAY_SCRIPT, str(kernels_dir), KERNEL_NAME, str(cwd)]
    if terminal == "another-users":
        user = _another_users_pipe(slave)  # a terminal, here
        if user is not None:  # the server runs as that user: what it reads must be its
            kernels_dir = install_kernelspecs(var_tmp / "prefix")
            cwd = var_tmp
            # setsid: a session of its own, whose controlling terminal the pty can become.
            script = ["runuser", "-u", user, "--", "setsid", "-w", "env", "-i"]
            script += [f"PATH={os.environ['PATH']}"]
            script += [f"HOME=/home/{user}", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"]
            script += [sys.executable, "-c", RELAY_SCRIPT, str(kernels_dir), KERNEL_NAME]
            script += [str(cwd)]
    script += [repo, str(result_w)]
    try:
        proc = subprocess.Popen(
            script,
            stdin=subprocess.PIPE,
            stdout=slave,
            stderr=slave,
            pass_fds=(result_w,),
            start_new_session=True,
            cwd=cwd,
        )
        os.close(slave)
        slave = -1
        os.close(result_w)
        result_w = -1
        assert proc.stdin is not None
        proc.stdin.write(HOSTILE_OUTPUT.encode())
        proc.stdin.close()
        seen = _read_pty_until_closed(master, proc, 180)
        assert proc.wait(30) == 0, seen.decode(errors="replace")[-3000:]
        with os.fdopen(result_r, "rb") as f:
            result_r = -1
            cell = json.loads(f.read())
    finally:
        for fd in (master, slave, result_w, result_r):
            if fd >= 0:
                os.close(fd)
    assert cell["error"] is None, cell
    # The cell's stdout also carries what it wrote to fd 1 (ipykernel captures that, in
    # a thread of its own: its text may land next to the JSON line, so that is decoded
    # from where it starts).
    found = _last_json_object(cell["stdout"])
    ttys = {fd: r for fd, r in found.items() if fd != "/dev/tty" and r["isatty"]}
    assert not ttys, f"the sandbox got a terminal: {ttys}"
    for fd, r in found.items():
        if fd != "/dev/tty":
            assert r["TIOCSTI"] != "ok" and r["TIOCSCTTY"] != "ok", (fd, r)
    assert found["/dev/tty"] != "opened"

    text = seen.decode("utf-8", errors="replace")
    for marker in ("STDOUT", "STDERR"):
        begin, end = text.index(f"{marker}-BEGIN "), text.index(f" {marker}-END")
        shown = text[begin:end]
        assert "^[]0;pwned^G ^[[2J^[[H" in shown, shown
        assert "\\x9b31m \ufffd ^E over^Mwrite ^? end" in shown, shown
    assert "FD1-BEGIN ^[[31mred^[[0m FD1-END" in text, text
    assert not set(seen) & {0x1B, 0x07, 0x05, 0x7F, 0x9B}, seen
    assert "\u009b" not in text, text


def _last_json_object(text: str) -> Any:
    decoder = json.JSONDecoder()
    found = None
    for i in (i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")):
        try:
            found = decoder.raw_decode(text, i)[0]
        except ValueError:
            continue
    assert found is not None, text
    return found


# ---------------------------------------------------------------- the kernel's environment

SECRETS = {
    "JUPYTERHUB_API_TOKEN": "hub-token-do-not-leak",
    "AWS_SECRET_ACCESS_KEY": "aws-key-do-not-leak",
    "GITHUB_TOKEN": "gh-token-do-not-leak",
}

ENV_CELL = r"""
import json, os
def environ_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return ""
print(json.dumps({"env": dict(os.environ),
                  "raw": environ_of("self") + environ_of(1) + environ_of(os.getppid())}))
"""


@pytest.fixture(scope="module")
def env_kernels(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    prefix = tmp_path_factory.mktemp("env-prefix")
    install.install(name="nsk-env-default", prefix=str(prefix))
    cmd = [sys.executable, "-m", "nskernel", "install", "--prefix", str(prefix)]
    env = dict(os.environ, JUPYTER_PATH=str(prefix / "share" / "jupyter"))
    for args in (
        ["--name", "nsk-env-some", "--env", "EXTRA_SET=from-install", "--env", "EXTRA_PASSED"],
        ["--name", "nsk-env-all", "--keep-env"],
    ):
        res = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 0, res.stderr
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / "nsk-env-default" / "kernel.json").read_text())
    spec["env"] = {"FROM_KERNELSPEC": "spec-value"}
    (kernels / "nsk-env-default" / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def _kernel_environment(ksm: KernelSpecManager, name: str, cwd: Path) -> dict[str, Any]:
    env = dict(os.environ, **SECRETS, EXTRA_PASSED="passed", MPLBACKEND="agg")
    env["JPY_SESSION_NAME"] = str(cwd / "notebook.ipynb")
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(cwd), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        with open(f"/proc/{km.provisioner.pid}/environ", "rb") as f:
            launcher_env = f.read().decode(errors="replace")
        out = run_cell(kc, ENV_CELL)
        assert out["error"] is None, out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    return {**json.loads(out["stdout"]), "launcher": launcher_env}


def test_the_kernels_environment_is_an_allow_list(
    env_kernels: KernelSpecManager, tmp_path: Path
) -> None:
    got = _kernel_environment(env_kernels, "nsk-env-default", tmp_path)
    env = got["env"]
    for name, value in SECRETS.items():
        assert name not in env
        assert value not in got["raw"], f"{name} is readable in the sandbox's /proc"
        # The launcher's memory is what the kernel process is forked from: not there either.
        assert value not in got["launcher"], f"{name} reached the launcher"
    assert "EXTRA_PASSED" not in env
    assert env["JPY_PARENT_PID"] == "1"
    assert env["JPY_SESSION_NAME"] == str(tmp_path / "notebook.ipynb")
    assert env["MPLBACKEND"] == "agg"
    assert env["FROM_KERNELSPEC"] == "spec-value"  # the kernelspec's own env stanza
    # The caller's PATH, after the kernel's own Python and %pip's scripts directory
    # (nskernel.kernel.shell_inside: python3/pip inside are the kernel's).
    first, rest = env["PATH"].split(":")[:2], env["PATH"].split(":")[2:]
    assert first[1].endswith("/.local/bin"), env["PATH"]
    assert rest == [p for p in os.environ["PATH"].split(":") if p not in first], env["PATH"]
    assert "XDG_RUNTIME_DIR" not in env


def test_install_env_and_keep_env_pass_more(env_kernels: KernelSpecManager, tmp_path: Path) -> None:
    some = _kernel_environment(env_kernels, "nsk-env-some", tmp_path)["env"]
    assert some["EXTRA_SET"] == "from-install"
    assert some["EXTRA_PASSED"] == "passed"
    assert not set(SECRETS) & set(some)
    everything = _kernel_environment(env_kernels, "nsk-env-all", tmp_path)["env"]
    assert {k: everything.get(k) for k in SECRETS} == SECRETS
    assert everything["JPY_PARENT_PID"] == "1"


def test_install_rejects_a_bad_env_option(nsk, tmp_path: Path) -> None:
    res = nsk("install", "--prefix", str(tmp_path), "--env", "1BAD=x")
    assert res.returncode != 0
    assert "--env '1BAD=x'" in res.stderr
    assert not (tmp_path / "share").exists()


def test_modules_planted_in_the_notebook_directory_never_run_host_side(
    ksm: KernelSpecManager, tmp_path: Path, runtime_base: Path
) -> None:
    """A sandbox that can write its notebook directory (``--writable-notebook-dir``)
    plants ``json.py`` and friends there: the launcher of the next start (a restart runs
    in the same directory) must not import them. Inside, the notebook's directory is on
    ``sys.path`` as in any kernel: a module beside the notebook imports."""
    nbdir, markers = tmp_path / "nb", tmp_path / "markers"
    nbdir.mkdir()
    markers.mkdir()
    plant_modules(nbdir, markers)
    with started_kernel(ksm, nbdir) as (km, kc):
        out = run_cell(kc, f"import {BESIDE_THE_NOTEBOOK} as m; print(m.ANSWER)")
        assert out["stdout"] == "imported from beside\n", out
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        out = run_cell(kc, f"import {BESIDE_THE_NOTEBOOK} as m; print(m.ANSWER)")
        assert out["stdout"] == "imported from beside\n", out
    assert host_side_imports(markers) == []


# ---------------------------------------------------------------- the server's log

# Runs as the server would: its stdout and stderr are the log file (`jupyter lab > log
# 2>&1`). It writes lines of its own between the cells, restarts the kernel once (taking
# the spare launcher, which was started with the same log as its stdout/stderr) and writes
# a last line after the kernel is gone.
LOG_SCRIPT = r"""
import json, os, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
sys.path.insert(0, sys.argv[4])
from tests.kernel_helpers import cmdline, run_cell, wait_for
def spares():
    kids = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            kids |= {int(k) for k in f.read().split()}
    return [k for k in kids if "--spare-fd" in cmdline(k)]
os.write(1, b"SERVER-FIRST-LINE\n")
cells = json.loads(sys.stdin.read())
km = KernelManager(kernel_name=sys.argv[2],
                   kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
km.start_kernel(cwd=sys.argv[3])
kc = km.client()
kc.start_channels()
result = {"outs": [], "took_spare": None}
try:
    kc.wait_for_ready(timeout=60)
    for i, code in enumerate(cells):
        if code == "RESTART":
            waiting = wait_for(lambda: (lambda s: s[0] if len(s) == 1 else None)(spares()),
                               60, "the spare launcher")
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            result["took_spare"] = km.provisioner.pid == waiting
        else:
            out = run_cell(kc, code, timeout=120)
            out.pop("msgs")
            result["outs"].append(out)
        os.write(2, f"SERVER-LINE-{i}\n".encode())
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
os.write(1, b"SERVER-LAST-LINE\n")
os.write(int(sys.argv[5]), json.dumps(result).encode())
"""

# Runs inside: every descriptor that reaches the server's log file, and what ftruncate,
# lseek and pwrite do to fd 0-2 and to ipykernel's copies of the original stdout/stderr;
# then a line through each of those.
LOG_ATTACK = r"""
import errno, json, os, stat, sys
LOG = (%d, %d)
def original(stream, fd):  # ipykernel's copy of the fd it captures, if it captures it
    try:
        return stream.fileno()
    except OSError:
        return fd
def attempt(call):
    try:
        call()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
report = {"log_fds": [], "kinds": {}, "tries": {}}
for name in os.listdir("/proc/self/fd"):
    try:
        st = os.fstat(int(name))
    except OSError:
        continue
    if (st.st_dev, st.st_ino) == LOG:
        report["log_fds"].append(int(name))
st = os.fstat(0)
report["stdin"] = [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)]
outs = {original(sys.stdout, 1), original(sys.stderr, 2), sys.__stdout__.fileno(),
        sys.__stderr__.fileno(), 1, 2}
for fd in sorted(outs):
    report["kinds"][fd] = stat.S_ISFIFO(os.fstat(fd).st_mode)
    report["tries"][fd] = [
        attempt(lambda: os.ftruncate(fd, 0)),
        attempt(lambda: os.lseek(fd, 0, os.SEEK_SET)),
        attempt(lambda: os.pwrite(fd, b"FORGED-LINE\n", 0)),
    ]
    os.write(fd, b"APPENDED-%%d\n" %% fd)
report["originals"] = [original(sys.stdout, 1), original(sys.stderr, 2)]
print(json.dumps(report))
"""

# Runs inside: far more output than the kernelspec's limit, to the original stdout and
# stderr, in lines.
LOG_FLOOD = r"""
import os, sys
def original(stream, fd):
    try:
        return stream.fileno()
    except OSError:
        return fd
line = b"F" * 1023 + b"\n"
for fd in (original(sys.stdout, 1), original(sys.stderr, 2)):
    for _ in range(3 * 1024):
        os.write(fd, line)
print("flooded")
"""
LOG_LIMIT = 1 << 20  # the test kernelspec's limits.output


def test_the_kernel_never_holds_the_servers_log(tmp_path: Path) -> None:
    """F7 (red team r12): with the server's output going to a file, the sandboxed kernel
    held that file (fd 1/2 and ipykernel's copies of them): it could truncate the server's
    log, rewrite its earlier lines at the shared offset, or fill the disk. Now it holds
    pipes; what it writes is appended through the launcher, capped per start."""
    prefix = tmp_path / "prefix"
    install.install(name="nsk-test-log", prefix=str(prefix))
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec_file = kernels / "nsk-test-log" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["limits"] = {"output": "1M"}
    spec_file.write_text(json.dumps(spec))
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    os.chmod(tmp_path, 0o755)
    log = tmp_path / "server.log"
    # As `> log` makes it: no O_APPEND, one offset shared by everyone holding it.
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    st = os.fstat(log_fd)
    attack = LOG_ATTACK % (st.st_dev, st.st_ino)
    cells = [attack, "RESTART", attack, LOG_FLOOD]
    result_r, result_w = os.pipe()
    repo = str(Path(__file__).resolve().parent.parent)
    script = [sys.executable, "-c", LOG_SCRIPT, str(kernels), "nsk-test-log", str(notebooks)]
    script += [repo, str(result_w)]
    try:
        proc = subprocess.Popen(
            script,
            stdin=subprocess.PIPE,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(result_w,),
            start_new_session=True,
            cwd=notebooks,
        )
        os.close(result_w)
        result_w = -1
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cells).encode())
        proc.stdin.close()
        try:
            code = proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        text = log.read_bytes().decode(errors="replace")
        assert code == 0, text[-3000:]
        with os.fdopen(result_r, "rb") as f:
            result_r = -1
            result = json.loads(f.read())
    finally:
        os.close(log_fd)
        for fd in (result_w, result_r):
            if fd >= 0:
                os.close(fd)
    assert result["took_spare"], "the restart did not take the spare launcher"
    for out in result["outs"][:2]:
        assert out["error"] is None, out
        report = _last_json_object(out["stdout"])
        assert report["log_fds"] == [], f"the kernel holds the server's log: {report}"
        assert report["stdin"] == [True, 1, 3], report  # /dev/null
        for fd, is_pipe in report["kinds"].items():
            assert is_pipe, (fd, report)
            assert "ok" not in report["tries"][fd], (fd, report)
        for fd in report["originals"]:  # what they wrote there is appended, in the log
            assert f"APPENDED-{fd}\n" in text, (fd, text[-3000:])
    # The server's own lines, in order, none overwritten; nothing forged.
    assert text.startswith("SERVER-FIRST-LINE\n"), text[:3000]
    at = [text.index(f"SERVER-LINE-{i}\n") for i in range(4)] + [text.index("SERVER-LAST-LINE\n")]
    assert at == sorted(at), at
    assert "FORGED" not in text
    # The flood: at most the limit passed in the second start (its attack lines included),
    # one line says where it was cut, one at the end how much was dropped. (Where: the
    # launcher relays on its own time, so the kernel's lines may follow the server's next.)
    assert result["outs"][2]["stdout"] == "flooded\n", result["outs"][2]
    assert LOG_LIMIT // 2 < text.count("F" * 1023) * 1024 <= LOG_LIMIT, len(text)
    assert text.count("[nskernel: the sandboxed kernel wrote more than 1 MiB") == 1, text[-3000:]
    summary = "bytes of the sandboxed kernel's output dropped]"
    assert text.count(summary) == 1, text[-3000:]
    assert text.index(summary) < at[4]  # before the launcher ended
    n = int(text[: text.index(summary)].split("[nskernel: ")[-1].split()[0])
    assert 6 * 1024 * 1024 - LOG_LIMIT <= n <= 6 * 1024 * 1024, n


# Runs inside: 4 MiB of a byte that is not UTF-8, to the original stderr.
INVALID_FLOOD = r"""
import os, sys
try:
    fd = sys.stderr.fileno()
except OSError:
    fd = 2
chunk = b"\xff" * 65536
for _ in range(64):
    os.write(fd, chunk)
print("flooded")
"""


@pytest.mark.parametrize(
    ("locale", "shown_as"),
    [("C", b"\\ufffd"), ("C.UTF-8", "\ufffd".encode())],
    ids=["c-locale", "utf8-locale"],
)
def test_what_the_budget_lets_through_is_what_the_log_gets(
    tmp_path: Path, locale: str, shown_as: bytes
) -> None:
    """F2 (red team 13): the budget counted bytes read, but each invalid byte reaches the
    log as U+FFFD (3 bytes) or, when the server's locale is not UTF-8, as its escape (6):
    with limits.output 1M, 4 MiB of 0xff put 3 or 6 MiB into the server's log. Now what
    is written is what is charged."""
    kernels = _kernel_with_output_limit(tmp_path, "1M")
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    os.chmod(tmp_path, 0o755)
    log = tmp_path / "server.log"
    env = dict(os.environ, LANG=locale, LC_ALL=locale)
    env.pop("LC_CTYPE", None)
    with open(log, "wb") as log_file:
        out = _run_one_cell(kernels, "nsk-test-log", notebooks, INVALID_FLOOD, log_file, env)
    data = log.read_bytes()
    assert out["error"] is None and out["stdout"] == "flooded\n", (out, data[-3000:])
    shown = data.count(shown_as) * len(shown_as)
    assert LOG_LIMIT // 2 < shown <= LOG_LIMIT, (shown, len(data))
    # Beyond what the kernel wrote: the two notices and the server's own few lines.
    assert len(data) <= LOG_LIMIT + 16 * 1024, len(data)
    assert data.count(b"[nskernel: the sandboxed kernel wrote more than 1 MiB") == 1
    assert data.count(b"bytes of the sandboxed kernel's output dropped]") == 1


def _wait_for_driver(proc: subprocess.Popen[bytes], hung: str) -> int:
    """The driver process's exit code; killed, and ``hung`` raised, past the timeout."""
    try:
        return proc.wait(NEXT_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(hung) from None


def _kernel_with_output_limit(tmp_path: Path, limit: str) -> Path:
    """A kernelspec "nsk-test-log" whose provisioner caps the kernel's output at ``limit``;
    returns its kernels directory."""
    prefix = tmp_path / "prefix"
    install.install(name="nsk-test-log", prefix=str(prefix))
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec_file = kernels / "nsk-test-log" / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["limits"] = {"output": limit}
    spec_file.write_text(json.dumps(spec))
    return kernels


def _run_one_cell(
    kernels: Path,
    name: str,
    cwd: Path,
    code: str,
    stdout: Any,
    env: dict[str, str] | None = None,
    user: str | None = None,
    stderr: Any = None,
) -> dict[str, Any]:
    """Starts kernel ``name`` through jupyter_client in a process of its own (whose stdout
    is ``stdout`` and stderr ``stderr``, or ``stdout`` too; as ``user`` when given,
    through runuser), runs ``code`` in it, shuts it down; returns the cell's outputs."""
    result_r, result_w = os.pipe()
    repo = str(Path(__file__).resolve().parent.parent)
    script = [sys.executable, "-c", STUCK_SCRIPT, str(kernels), name, str(cwd), repo]
    script += [str(result_w)]
    if user is not None:
        home = f"/home/{user}"
        keep = {k: v for k, v in (env or os.environ).items() if k in ("PATH", "LANG", "LC_ALL")}
        keep.update(HOME=home, PYTHONDONTWRITEBYTECODE="1")
        script = ["runuser", "-u", user, "--", "env", "-i"]
        script += [f"{k}={v}" for k, v in keep.items()]
        script += [sys.executable, "-c", STUCK_SCRIPT, str(kernels), name, str(cwd), repo]
        script += [str(result_w)]
        env = None
    try:
        proc = subprocess.Popen(
            script,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stdout if stderr is None else stderr,
            pass_fds=(result_w,),
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
        os.close(result_w)
        result_w = -1
        assert proc.stdin is not None
        proc.stdin.write(code.encode())
        proc.stdin.close()
        code_ = _wait_for_driver(proc, "the kernel's start, cell or shutdown hung")
        assert code_ == 0, code_
        with os.fdopen(result_r, "rb") as f:
            result_r = -1
            return json.loads(f.read())
    finally:
        for fd in (result_w, result_r):
            if fd >= 0:
                os.close(fd)


# The server's stdout is a socket (a journal's) or a pipe nobody reads; the kernel writes
# without end to its original stdout. Its shutdown must still end it: jupyter_client is
# told to wait as long as it takes (no SIGKILL after a grace period hiding a stuck launcher).
STUCK_SCRIPT = r"""
import json, os, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
sys.path.insert(0, sys.argv[4])
from tests.kernel_helpers import run_cell
km = KernelManager(kernel_name=sys.argv[2],
                   kernel_spec_manager=KernelSpecManager(kernel_dirs=[sys.argv[1]]))
km.shutdown_wait_time = 3600
km.start_kernel(cwd=sys.argv[3])
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=60)
    out = run_cell(kc, sys.stdin.read())
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
out.pop("msgs")
os.write(int(sys.argv[5]), json.dumps(out).encode())
"""

STUCK_CELL = r"""
import os, sys, threading, time
SERVER_STDOUT, AT_LEAST = (%d, %d), %d
def original(stream, fd):
    try:
        return stream.fileno()
    except OSError:
        return fd
held = []
for n in os.listdir("/proc/self/fd"):
    try:
        st = os.fstat(int(n))
        if (st.st_dev, st.st_ino) == SERVER_STDOUT:
            held.append(int(n))
    except OSError:
        pass
fd = original(sys.stdout, 1)
written = [0]
def flood():
    chunk = b"\x1b[2J" + b"B" * 65532
    while True:
        written[0] += os.write(fd, chunk)
threading.Thread(target=flood, daemon=True).start()
while written[0] < AT_LEAST:  # past the limit, where there is a reader
    time.sleep(0.01)
print("held", held)
"""


@pytest.mark.parametrize("destination", ["socket", "pipe-nobody-reads"])
def test_output_the_server_cannot_take_never_stalls_the_kernels_end(
    kernels_dir: Path, tmp_path: Path, destination: str
) -> None:
    os.chmod(tmp_path, 0o755)
    received = bytearray()
    reader = None
    if destination == "socket":  # as journald gives a service its stdout
        theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdout = theirs.fileno()
        inode = os.fstat(stdout).st_dev, os.fstat(stdout).st_ino

        def read_all() -> None:
            while chunk := ours.recv(1 << 16):
                received.extend(chunk)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
    else:
        read_end, stdout = os.pipe()
        inode = os.fstat(stdout).st_dev, os.fstat(stdout).st_ino
    result_r, result_w = os.pipe()
    repo = str(Path(__file__).resolve().parent.parent)
    script = [sys.executable, "-c", STUCK_SCRIPT, str(kernels_dir), KERNEL_NAME, str(tmp_path)]
    script += [repo, str(result_w)]
    try:
        with open(tmp_path / "stderr", "wb") as stderr:
            proc = subprocess.Popen(
                script,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(result_w,),
                start_new_session=True,
                cwd=tmp_path,
            )
        os.close(result_w)
        result_w = -1
        if destination == "socket":
            theirs.close()
        else:
            os.close(stdout)
        assert proc.stdin is not None
        at_least = 17 << 20 if destination == "socket" else 0
        proc.stdin.write((STUCK_CELL % (*inode, at_least)).encode())
        proc.stdin.close()
        code = _wait_for_driver(proc, "the kernel's shutdown hung on output nobody took")
        assert code == 0, (tmp_path / "stderr").read_text()[-3000:]
        with os.fdopen(result_r, "rb") as f:
            result_r = -1
            out = json.loads(f.read())
    finally:
        for fd in (result_w, result_r):
            if fd >= 0:
                os.close(fd)
        if reader is not None:
            # EOF once the launcher (and the spare, at the script's exit) closed it.
            reader.join(30)
            ours.close()
        else:
            os.close(read_end)
    assert out["error"] is None and out["stdout"] == "held []\n", out
    if reader is not None:
        assert not reader.is_alive()
        assert b"^[[2J" + b"B" * 100 in received and b"\x1b" not in received
        assert b"[nskernel: the sandboxed kernel wrote more than 16 MiB" in received
        # The count, at the end, goes to the stderr (a file here).
        text = (tmp_path / "stderr").read_text()
        assert "bytes of the sandboxed kernel's output dropped]" in text, text[-3000:]


# Runs inside: a line to the original stdout and stderr each, then more than the kernel's
# output limit, so that the launcher's own lines (where it cut, how much it dropped) follow.
MARKED_OUTPUT = r"""
import os, sys
def original(stream, fd):
    try:
        return stream.fileno()
    except OSError:
        return fd
for fd in (original(sys.stdout, 1), original(sys.stderr, 2)):
    os.write(fd, b"KERNEL-LINE-%d\n" % fd)
for _ in range(20):
    os.write(original(sys.stdout, 1), b"Z" * (64 << 10))
print("done")
"""


def _another_users_pipe(write_end: int) -> str | None:
    """Makes the launcher unable to reopen the pipe (or terminal) ``write_end``, as when
    its stdout is one of another user's: as root, the server runs as nskci (returned)
    with root's; rootless, it refuses its owner a reopen for writing (mode 0400), as
    another user's does. Writing through the inherited descriptor works either way."""
    if IS_ROOT:
        return "nskci"
    os.fchmod(write_end, 0o400)
    return None


@pytest.mark.parametrize("reader", ["reads", "never-reads", "terminal-never-read"])
def test_a_server_whose_output_is_another_users_pipe_shows_the_kernels_output(
    var_tmp: Path, reader: str
) -> None:
    """F4 (red team 13): the launcher reopens a pipe through /proc/self/fd to write it
    without blocking, which checks the pipe's permissions: under runuser or sudo -u (a
    pipe of root's), a container runtime's FIFO or supervisord's, the kernel's output and
    the launcher's own messages were dropped. Now they arrive; and a reader that never
    reads still never stalls the kernel's end (jupyter_client waits as long as it takes),
    not even a terminal's, where the launcher's writer thread may wait inside a write."""
    kernels = _kernel_with_output_limit(var_tmp, "1M")
    notebooks = var_tmp / "nb"
    notebooks.mkdir()
    if reader == "terminal-never-read":
        read_end, write_end = pty.openpty()
    else:
        read_end, write_end = os.pipe()
    received = bytearray()
    thread = None
    try:
        user = _another_users_pipe(write_end)
        if reader == "reads":

            def read_all() -> None:
                while chunk := os.read(read_end, 1 << 16):
                    received.extend(chunk)

            thread = threading.Thread(target=read_all, daemon=True)
            thread.start()
            out = _run_one_cell(
                kernels, "nsk-test-log", notebooks, MARKED_OUTPUT, write_end, user=user
            )
            assert out["error"] is None and out["stdout"] == "done\n", out
        else:
            st = os.fstat(write_end)
            with open(var_tmp / "stderr", "wb") as stderr:
                out = _run_one_cell(
                    kernels,
                    "nsk-test-log",
                    notebooks,
                    STUCK_CELL % (st.st_dev, st.st_ino, 0),
                    write_end,
                    user=user,
                    stderr=stderr,
                )
            assert out["error"] is None and out["stdout"] == "held []\n", out
        # What the server, the launcher and everyone else holding it share stays blocking.
        assert os.get_blocking(write_end)
    finally:
        os.close(write_end)
        if thread is not None:
            thread.join(60)  # EOF: the server, its launchers and their threads are gone
        os.close(read_end)
    if thread is not None:
        assert not thread.is_alive()
        text = received.decode(errors="replace")
        assert "not shown here" not in text, text[-3000:]
        # One line through each relay (ipykernel's copies of the original stdout and stderr).
        assert len(set(re.findall(r"KERNEL-LINE-\d+\n", text))) == 2, text[:3000]
        assert "[nskernel: the sandboxed kernel wrote more than 1 MiB" in text, text[-3000:]
        assert "bytes of the sandboxed kernel's output dropped]" in text, text[-3000:]
