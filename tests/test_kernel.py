"""The sandboxed kernel end to end through jupyter_client, against real processes.

Runs for any caller (root and rootless: CI runs both), through a throwaway kernelspec.
What is checked is what the issue promises a notebook user: the sandbox's hostname, its
own PID 1, only ``lo``, root inside while the host sees an unprivileged uid, a private
/tmp, a notebook directory read-only unless installed writable (never a home, never
host root's), streams, errors, interrupt (also of a subprocess),
restart into a fresh sandbox, graceful shutdown, ipywidgets comms, and that nothing —
process or socket directory — is left after each kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from tests.conftest import IS_ROOT
from tests.kernel_helpers import (
    KERNEL_NAME,
    RW_KERNEL_NAME,
    alive,
    descendants,
    hold_namespaces,
    install_kernelspecs,
    run_cell,
    started_kernel,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

NS_TYPES = ("pid", "net", "mnt", "uts", "ipc", "user")
NOT_ROOT = 4242  # an unprivileged uid/gid that owns notebook directories in root's tests


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_kernelspecs(tmp_path_factory.mktemp("prefix"))


@pytest.fixture(scope="module")
def ksm(kernels_dir: Path) -> KernelSpecManager:
    return KernelSpecManager(kernel_dirs=[str(kernels_dir)])


class Running:
    def __init__(self, km: KernelManager, kc: Any, cwd: Path) -> None:
        self.km, self.kc, self.cwd = km, kc, cwd
        self.launcher = km.provisioner.pid
        self.kernel_dir = km.provisioner.kernel_dir

    def run(self, code: str, timeout: float = 60) -> dict[str, Any]:
        return run_cell(self.kc, textwrap.dedent(code), timeout)

    def ns_ids(self) -> dict[str, int]:
        out = self.run(
            "import json, os\n"
            f"print(json.dumps({{t: os.stat(f'/proc/self/ns/{{t}}').st_ino for t in {NS_TYPES}}}))"
        )
        return json.loads(out["stdout"])


@contextlib.contextmanager
def kernel(
    ksm: KernelSpecManager,
    cwd: Path,
    name: str = KERNEL_NAME,
    env: dict[str, str] | None = None,
) -> Iterator[Running]:
    """A started sandboxed kernel; afterwards, asserts nothing of it is left."""
    with started_kernel(ksm, cwd, name, env) as (km, kc):
        yield Running(km, kc, cwd)


def not_roots(directory: Path) -> None:
    """As root, give a notebook directory to an unprivileged uid: one of host root's stays
    read-only inside even when installed writable."""
    if IS_ROOT:
        os.chown(directory, NOT_ROOT, NOT_ROOT)


@pytest.fixture(scope="module")
def shared(ksm: KernelSpecManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One kernel for the read-only checks (each kernel start costs about a second)."""
    nbdir = tmp_path_factory.mktemp("notebook")
    with kernel(ksm, nbdir) as k:
        yield k


# ---------------------------------------------------------------- inside the sandbox


def test_hostname_is_derived_from_the_kernel_id(shared: Running) -> None:
    out = shared.run("!hostname")
    assert out["stdout"].strip() == f"nsk-{shared.km.kernel_id[:8]}"
    assert socket.gethostname() != out["stdout"].strip()


def test_ps_shows_init_as_pid_1_and_only_the_kernels_processes(shared: Running) -> None:
    out = shared.run("!ps -e -o pid=,ppid=,comm=")
    rows = [line.split(None, 2) for line in out["stdout"].strip().splitlines()]
    table = {int(pid): (int(ppid), comm) for pid, ppid, comm in rows}
    assert table[1] == (0, "nskernel-init")
    assert table[2][0] == 1  # ipykernel, the init's only child
    for pid, (ppid, comm) in table.items():
        if pid > 2:  # everything else descends from the kernel (the shell, ps)
            while ppid > 2:
                ppid = table[ppid][0]
            assert ppid == 2, f"{pid} {comm} is not the kernel's"
    # The host sees the same processes with other PIDs, all below our launcher.
    assert len(descendants(shared.launcher)) >= 2


def test_only_lo_and_it_is_up(shared: Running) -> None:
    out = shared.run(
        """
        import socket, os
        print(sorted(n for _, n in socket.if_nameindex()), os.listdir('/sys/class/net'))
        print(int(open('/sys/class/net/lo/flags').read(), 16) & 1)
        """
    )
    names, up = out["stdout"].strip().splitlines()
    assert names == "['lo'] ['lo']"
    assert up == "1"


def test_root_inside_unprivileged_on_the_host(shared: Running) -> None:
    out = shared.run("!id -u; id -g")
    assert out["stdout"].split() == ["0", "0"]
    host_uids = set()
    for pid in descendants(shared.launcher):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    host_uids.add(int(line.split()[1]))
    if IS_ROOT:
        assert 0 not in host_uids, "sandbox root must never be host root"
    else:
        assert host_uids == {os.getuid()}


def test_tmp_is_private(shared: Running, tmp_path: Path) -> None:
    host_marker = Path("/tmp") / f"nsk-host-marker-{uuid.uuid4().hex}"
    host_marker.write_text("host")
    inside_name = f"nsk-inside-marker-{uuid.uuid4().hex}"
    try:
        out = shared.run(
            f"import os; open('/tmp/{inside_name}', 'w').write('x'); "
            f"print(os.path.exists('{host_marker}'))"
        )
        assert out["stdout"].strip() == "False"
        assert not (Path("/tmp") / inside_name).exists()
    finally:
        host_marker.unlink()


def test_notebook_directory_is_readable_but_not_writable_by_default(shared: Running) -> None:
    # Jupyter and the user's shell meet later what a kernel writes there (a symlink in
    # place of a notebook is followed by Jupyter's next save): read-only unless asked.
    (shared.cwd / "data.csv").write_text("a,b\n1,2\n")
    out = shared.run(
        """
        import os
        print(os.getcwd())
        print(open('data.csv').read().splitlines()[1])
        open('result.txt', 'w').write('written inside')
        """
    )
    assert out["error"] == "OSError", out
    cwd, row = out["stdout"].strip().splitlines()
    assert cwd == str(shared.cwd)
    assert row == "1,2"
    assert "Read-only file system" in str(out["msgs"])
    # The hint says why and what to do, after the traceback.
    assert "is read-only inside the sandboxed kernel" in out["stderr"], out
    assert "--writable-notebook-dir" in out["stderr"]
    assert not (shared.cwd / "result.txt").exists()
    out = shared.run("open('/etc/nsk-not-here', 'w')")  # not the notebook's directory
    assert out["error"] in ("OSError", "PermissionError") and not out["stderr"], out


def test_notebook_directory_is_writable_when_installed_so(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    nbdir = tmp_path / "notebook"
    nbdir.mkdir()
    (nbdir / "data.csv").write_text("a,b\n1,2\n")
    not_roots(nbdir)
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME) as k:
        out = k.run(
            """
            import os
            print(open('data.csv').read().splitlines()[1])
            open('result.txt', 'w').write('written inside')
            os.makedirs('out/sub', exist_ok=True)
            open('out/sub/x', 'w').write('deep')
            """
        )
    assert out["error"] is None, out
    assert (nbdir / "result.txt").read_text() == "written inside"
    assert (nbdir / "out/sub/x").read_text() == "deep"
    # What the sandbox writes belongs to the directory's owner on the host (as root:
    # through the idmapped mount, not by running as that owner).
    owner = nbdir.stat().st_uid
    assert (nbdir / "result.txt").stat().st_uid == owner


def test_code_host_python_loads_stays_read_only_in_a_writable_notebook_directory(
    ksm: KernelSpecManager, var_tmp: Path
) -> None:
    """A project directory holds what host-side Python loads code from (here a directory
    on the launcher's PYTHONPATH; often the .venv Jupyter runs from) and a .git whose hooks
    git runs on the host. Writable, the kernel would leave a .pth there that the next
    launcher runs outside every sandbox (red team, as root and rootless): those stay
    read-only inside, the rest of the directory is writable. A directory that is itself on
    sys.path stays read-only as a whole. (Not under /tmp, which is private inside: there
    the environment's own read-only binds would cover the places by chance.)"""
    nbdir = var_tmp / "project"
    for d in ("pylib", ".git/hooks", "data"):
        (nbdir / d).mkdir(parents=True)
    for d in (nbdir, nbdir / "pylib", nbdir / ".git", nbdir / ".git/hooks", nbdir / "data"):
        not_roots(d)
    env = {**os.environ, "PYTHONPATH": str(nbdir / "pylib")}
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME, env=env) as k:
        out = k.run(
            """
            import errno
            for path in ('pylib/evil.pth', '.git/hooks/pre-commit', 'data/ok.txt', 'ok.txt'):
                try:
                    open(path, 'w').write('x')
                    print(path, 'written')
                except OSError as e:
                    print(path, errno.errorcode[e.errno])
            """
        )
    assert out["stdout"].splitlines() == [
        "pylib/evil.pth EROFS",
        ".git/hooks/pre-commit EROFS",
        "data/ok.txt written",
        "ok.txt written",
    ], out
    assert not (nbdir / "pylib" / "evil.pth").exists()
    # The directory itself on sys.path: read-only inside, and the kernel says why.
    env = {**os.environ, "PYTHONPATH": str(nbdir)}
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME, env=env) as k:
        out = k.run("open('again.txt', 'w')")
    assert out["error"] in ("OSError", "PermissionError"), out
    assert "loads code from" in out["stderr"] or "read-only" in out["stderr"], out
    assert not (nbdir / "again.txt").exists()


def test_a_link_to_where_host_python_loads_code_keeps_the_notebook_directory_read_only(
    ksm: KernelSpecManager, var_tmp: Path
) -> None:
    """``.venv -> /elsewhere/env`` in a project directory, Jupyter started through it: the
    real environment is outside, but a writable directory would let the sandbox put its
    own ``.venv`` in the link's place, which the next launcher runs from (red team, as
    root and rootless). The directory stays read-only as a whole, and says why."""
    real_env, nbdir = var_tmp / "real-env", var_tmp / "project"
    (real_env / "pylib").mkdir(parents=True)
    nbdir.mkdir()
    (nbdir / ".venv").symlink_to(real_env)
    not_roots(nbdir)
    if IS_ROOT:  # the project's owner owns its link too
        os.lchown(nbdir / ".venv", NOT_ROOT, NOT_ROOT)
    env = {**os.environ, "PYTHONPATH": str(nbdir / ".venv" / "pylib")}
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME, env=env) as k:
        out = k.run("import os\nos.rename('.venv', 'gone')")
    assert out["error"] in ("OSError", "PermissionError"), out
    assert "holds a link to" in out["stderr"] or "read-only" in out["stderr"], out
    assert (nbdir / ".venv").is_symlink()


def test_search_paths_never_lead_a_host_side_helper_into_the_notebook_directory(
    ksm: KernelSpecManager, var_tmp: Path
) -> None:
    """``PYTHONPATH=src jupyter lab`` in a project, or an entry not created yet: host-side
    helpers start in the notebook's directory, where a relative entry would land and
    where the sandbox could create a missing one with a ``json.py`` in it (red team: ran
    as host root in the next launcher). Relative and empty entries are made absolute
    against the server's directory; a missing entry inside keeps the directory read-only."""
    nbdir = var_tmp / "project"
    nbdir.mkdir()
    not_roots(nbdir)
    env = {**os.environ, "PYTHONPATH": f"src:{nbdir / 'lib'}:"}
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME, env=env) as k:
        out = k.run("import os\nprint(os.environ['PYTHONPATH'])\nos.makedirs('lib', exist_ok=True)")
    here = os.getcwd()  # the server's (this process's); inside, %pip's prefix comes first
    assert out["stdout"].endswith(f":{here}/src:{nbdir / 'lib'}:{here}\n"), out
    assert out["error"] in ("OSError", "PermissionError"), out  # read-only: lib is missing
    assert not (nbdir / "lib").exists()


def test_jupyters_own_places_in_a_writable_notebook_directory_stay_read_only(
    ksm: KernelSpecManager, var_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project-local Jupyter (``JUPYTER_CONFIG_DIR=.jupyter``): its config directory in a
    writable notebook directory would let the kernel plant a ``jupyter_server_config.py``
    or a kernelspec without the sandbox, run at the next start (red team). The places the
    server takes code and config from stay read-only; one not made yet keeps the whole
    directory read-only."""
    nbdir = var_tmp / "project"
    (nbdir / ".jupyter").mkdir(parents=True)
    not_roots(nbdir)
    not_roots(nbdir / ".jupyter")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(nbdir / ".jupyter"))
    code = """
        import errno
        for path in ('.jupyter/jupyter_server_config.py', 'ok.txt'):
            try:
                open(path, 'w').write('x')
                print(path, 'written')
            except OSError as e:
                print(path, errno.errorcode[e.errno])
        """
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME) as k:
        out = k.run(code)
    assert out["stdout"].splitlines() == [
        ".jupyter/jupyter_server_config.py EROFS",
        "ok.txt written",
    ], out
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(nbdir / "share-not-made-yet"))
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME) as k:
        out = k.run("open('again.txt', 'w')")
    assert out["error"] in ("OSError", "PermissionError"), out
    assert not (nbdir / "again.txt").exists()


def test_a_home_as_notebook_directory_is_never_writable(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    # JupyterHub's default: the notebook directory is the home. A new .bash_profile or
    # ~/bin/ls from the sandbox would run outside it at the next login.
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    env = {**os.environ, "HOME": str(home)}
    with kernel(ksm, home, name=RW_KERNEL_NAME, env=env) as k:
        out = k.run(
            """
            import os
            print(open('notes.txt').read().strip())
            for name in ('.bash_profile', 'bin'):
                try:
                    os.mkdir(name) if name == 'bin' else open(name, 'w').close()
                    print(name, 'made')
                except OSError as e:
                    print(name, e.strerror)
            """
        )
    assert out["stdout"].split("\n")[0] == "mine", out
    assert "made" not in out["stdout"], out
    assert not (home / ".bash_profile").exists() and not (home / "bin").exists()


def test_host_facts_are_readable_inside(shared: Running) -> None:
    out = shared.run(
        """
        import json, os
        f = json.load(open(os.environ['NSKERNEL_HOST_FACTS']))
        print(json.dumps({'hostname': f['hostname'], 'ns': f['namespaces'],
                          'mine': os.stat('/proc/self/ns/pid').st_ino}))
        """
    )
    facts = json.loads(out["stdout"])
    assert facts["hostname"] == socket.gethostname()
    assert facts["ns"]["pid"] == os.stat("/proc/self/ns/pid").st_ino
    assert facts["ns"]["pid"] != facts["mine"]


def test_streams_and_errors(shared: Running) -> None:
    out = shared.run("import sys; print('to stdout'); print('to stderr', file=sys.stderr)")
    assert out["stdout"] == "to stdout\n"
    assert out["stderr"] == "to stderr\n"
    out = shared.run("raise ValueError('boom')")
    assert out["error"] == "ValueError"
    assert out["reply"]["status"] == "error"
    out = shared.run("1 + 1")
    assert out["data"] == [{"text/plain": "2"}]


@pytest.mark.parametrize(
    "code",
    ["import time; time.sleep(60)", "import subprocess; subprocess.run(['sleep', '60'])"],
    ids=["time.sleep", "subprocess"],
)
def test_interrupt(shared: Running, code: str) -> None:
    before = descendants(shared.launcher)
    msg_id = shared.kc.execute(code)
    # Wait until the cell really runs (and its subprocess exists) before interrupting.
    wait_for(lambda: len(descendants(shared.launcher)) > len(before) or "time" in code, 10, "")
    time.sleep(0.5)
    t0 = time.monotonic()
    shared.km.interrupt_kernel()
    reply = shared.kc.get_shell_msg(timeout=15)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 5
    # ipykernel aborts what arrives after an error until it has queued its own "stop
    # aborting", which it does before it says idle: the next cell waits for that.
    while True:
        msg = shared.kc.get_iopub_msg(timeout=15)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    wait_for(lambda: descendants(shared.launcher) <= before, 5, "the sleep to be gone")
    assert shared.run("print('still alive')")["stdout"] == "still alive\n"


def test_ipywidgets_comm(shared: Running) -> None:
    out = shared.run("import ipywidgets as w; s = w.IntSlider(value=5); display(s)")
    opens = [m for m in out["msgs"] if m["msg_type"] == "comm_open"]
    slider = [
        m for m in opens if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
    ]
    assert slider, "no IntSlider comm was opened"
    comm_id = slider[0]["content"]["comm_id"]
    assert slider[0]["content"]["target_name"] == "jupyter.widget"
    views = [d for d in out["data"] if "application/vnd.jupyter.widget-view+json" in d]
    assert views[0]["application/vnd.jupyter.widget-view+json"]["model_id"] == comm_id
    # The frontend side: change the value through the comm, as a slider drag does.
    kc = shared.kc
    msg = kc.session.msg(
        "comm_msg",
        {
            "comm_id": comm_id,
            "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []},
        },
    )
    kc.shell_channel.send(msg)
    wait_for(lambda: shared.run("print(s.value)")["stdout"] == "7\n", 10, "the update")


# ---------------------------------------------------------------- lifecycle


def test_restart_gives_a_fresh_sandbox_and_shutdown_is_graceful(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    with kernel(ksm, tmp_path) as k:
        ids1 = k.ns_ids()
        old = descendants(k.launcher) | {k.launcher}
        held = hold_namespaces(old)
        try:
            k.km.restart_kernel(now=False)
            k.kc.wait_for_ready(timeout=60)
            ids2 = k.ns_ids()
        finally:
            for fd in held:
                os.close(fd)
        for t in NS_TYPES:
            assert ids1[t] != ids2[t], f"{t} namespace was reused across restart"
        assert not any(alive(p) for p in old), "the first sandbox outlived the restart"
        assert k.km.provisioner.kernel_dir == k.kernel_dir  # same socket paths
        assert os.path.isdir(k.kernel_dir)
        assert k.run("print(6 * 7)")["stdout"] == "42\n"

        launcher = k.km.provisioner.pid
        proc = k.km.provisioner.process
        t0 = time.monotonic()
        k.km.shutdown_kernel(now=False)
        took = time.monotonic() - t0
        # shutdown_request honoured: no fall-through to SIGTERM/SIGKILL after the
        # 5 s shutdown_wait_time; the launcher exited with the kernel's status 0.
        assert took < 4, f"shutdown took {took:.1f}s"
        assert proc.returncode == 0
        assert not alive(launcher)


def test_shutdown_lets_the_control_thread_finish_before_the_exit_handlers(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    # After a shutdown_request, ipykernel's control thread still publishes "idle" while
    # the main thread runs the exit handlers, which stop IOPub and then join the control
    # thread. A publish that lands while IOPub's thread is ending blocks forever, and so
    # does the join (SIGTERM after 2.5 s, exit 143): about once in ten shutdowns on a
    # busy machine. The launcher lets the control thread finish first. A profile startup
    # file makes the control thread late and logs both events, in the notebook directory.
    home = tmp_path / "home"
    startup = home / ".ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-late-control.py").write_text(
        textwrap.dedent(
            """\
            # Everything these need is bound as a default: at exit, IPython clears the
            # user namespace (these globals) before ipykernel's handlers run.
            import time
            from ipykernel.kernelapp import IPKernelApp

            _log = open("events.log", "a", buffering=1)
            _kernel = get_ipython().kernel
            _app = IPKernelApp.instance()

            def _late(status, channel, *args, _publish=_kernel._publish_status_and_flush,
                      _log=_log, _sleep=time.sleep, **kwargs):
                if (status, channel) != ("idle", "control"):
                    return _publish(status, channel, *args, **kwargs)
                _sleep(0.5)
                _publish(status, channel, *args, **kwargs)
                _log.write("control thread published idle\\n")

            def _closing(_reset_io=_app.reset_io, _log=_log):  # what IPKernelApp.close does first
                _log.write("exit handlers close the channels\\n")
                _reset_io()

            _kernel._publish_status_and_flush = _late
            _app.reset_io = _closing
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "IPYTHONDIR"}
    env["HOME"] = str(home)
    home.chmod(0o700)
    nbdir = tmp_path / "nb"  # beside the home: a directory holding a home is not bound
    nbdir.mkdir()
    not_roots(nbdir)
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME, env=env) as k:
        assert k.run("print(_late.__name__)")["stdout"] == "_late\n"  # the delay is in place
        proc = k.km.provisioner.process
        k.km.shutdown_kernel(now=False)
        assert proc.returncode == 0
    assert (nbdir / "events.log").read_text().splitlines() == [
        "control thread published idle",
        "exit handlers close the channels",
    ]


def _exec_kernelspec(kernels_dir: Path, tmp_path: Path) -> KernelSpecManager:
    """The sandboxed kernelspec, but running ``python -m ipykernel``: a command the
    launcher execs inside the sandbox instead of running ipykernel in its own process."""
    spec = json.loads((kernels_dir / KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][1:3] == ["-m", "ipykernel_launcher"]
    spec["argv"][1:3] = ["-m", "ipykernel"]
    exec_dir = tmp_path / "exec-kernels" / KERNEL_NAME
    exec_dir.mkdir(parents=True)
    (exec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(exec_dir.parent)])


@pytest.mark.parametrize("command", ["in-process", "exec"])
def test_the_users_ipython_profile_is_loaded_inside(
    ksm: KernelSpecManager, kernels_dir: Path, tmp_path: Path, command: str
) -> None:
    # Inside, the home is a private, empty one: the kernel runs on a copy of the
    # profile's config and startup files in its own IPython dir there. The launcher's
    # own ipykernel gets it in memory; an exec'd kernel command, in its socket dir.
    # (The notebook's directory here holds the home, so it is not bound: the kernel
    # runs in its private home.)
    if command == "exec":
        ksm = _exec_kernelspec(kernels_dir, tmp_path)
    home = tmp_path / "home"
    profile = home / ".ipython" / "profile_default"
    (profile / "startup").mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        "c.IPKernelApp.exec_lines = ['FROM_CONFIG = 1']\n"
    )
    (profile / "startup" / "00-first.py").write_text("FROM_STARTUP = 2\n")
    (profile / "startup" / "10-second.ipy").write_text("%xmode Minimal\n")
    env = {k: v for k, v in os.environ.items() if k != "IPYTHONDIR"}
    env["HOME"] = str(home)
    home.chmod(0o700)  # private, as a home directory is
    with kernel(ksm, tmp_path, env=env) as k:
        out = k.run(
            "import os, sys\n"
            "print(FROM_CONFIG, FROM_STARTUP, get_ipython().InteractiveTB.mode)\n"
            "print(os.environ['IPYTHONDIR'])\n"
            "print(os.getpid(), sys.argv[0].rsplit('/', 1)[-1])"
        )
        lines = out["stdout"].splitlines()
        assert len(lines) == 3, out  # a NameError here: the profile was not loaded
        assert lines[0].split() == ["1", "2", "Minimal"], out
        if command == "exec":
            assert lines[1] == os.path.join(k.kernel_dir, "sock", "ipython")
            assert lines[2].split() == ["2", "__main__.py"]  # python -m ipykernel, as PID 2
        else:
            assert lines[1] == str(home / ".ipython")
            assert lines[2].split() == ["2", "ipykernel_launcher.py"]
        # The host's profile is untouched by the kernel's history and the like.
        assert sorted(p.name for p in profile.iterdir()) == ["ipython_kernel_config.py", "startup"]


def test_host_facts_name_processes_without_their_arguments(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    # The compare panel's host column comes from a snapshot taken at launch; command
    # lines carry secrets (jupyter_server's --IdentityProvider.token=..., passwords).
    secret = f"nsk-secret-{uuid.uuid4().hex}"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", secret])
    try:
        with kernel(ksm, tmp_path) as k:
            out = k.run(
                """
                import json, os
                raw = open(os.environ['NSKERNEL_HOST_FACTS']).read()
                procs = json.loads(raw)['processes']
                print(json.dumps({'raw': raw, 'pids': [p['pid'] for p in procs],
                                  'names': {p['pid']: p['command'] for p in procs}}))
                """
            )
    finally:
        holder.kill()
        holder.wait()
    seen = json.loads(out["stdout"])
    assert holder.pid in seen["pids"]  # the host's processes are listed...
    assert seen["names"][str(holder.pid)] == Path(sys.executable).name[:15]  # ...by name
    assert secret not in seen["raw"]


@pytest.mark.root
def test_as_root_notebook_and_modules_in_a_directory_sandbox_root_cannot_enter(
    ksm: KernelSpecManager, private_dir: str
) -> None:
    # Jupyter run by root from /root/notebooks, with the user's code in /root/src: sandbox
    # root (an unprivileged host uid) may not enter /root, yet both must work inside.
    # Writable even when installed so? No: the directory is host root's, and sandbox root
    # is never host root, not even there (it could leave a setuid-root file).
    nbdir, src = Path(private_dir, "notebooks"), Path(private_dir, "src")
    nbdir.mkdir()
    src.mkdir()
    (src / "nsk_private_mod.py").write_text("VALUE = 7\n")
    (nbdir / "data.txt").write_text("readable\n")
    env = {**os.environ, "PYTHONPATH": str(src)}
    with kernel(ksm, nbdir, name=RW_KERNEL_NAME, env=env) as k:
        out = k.run(
            "import os, nsk_private_mod\n"  # imported inside, after the kernel started
            "print(os.getcwd(), nsk_private_mod.VALUE, open('data.txt').read())\n"
            "with open('written.txt', 'w') as f: f.write('inside')"
        )
        assert out["stdout"].split() == [str(nbdir), "7", "readable"], out
        assert out["error"] == "OSError", out
        assert "is host root's" in out["stderr"], out
    assert not (nbdir / "written.txt").exists()


def test_sigterm_to_the_launcher_reaches_the_kernel(ksm: KernelSpecManager, tmp_path: Path) -> None:
    with kernel(ksm, tmp_path) as k:
        kernel_pids = descendants(k.launcher)
        proc = k.km.provisioner.process
        proc.send_signal(signal.SIGTERM)  # the launcher only, not the process group
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert not any(alive(p) for p in kernel_pids)


def test_side_by_side_kernelspec_with_fewer_namespaces(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    assert {"nsk-test", "nsk-test-net"} <= set(ksm.find_kernel_specs())
    with kernel(ksm, tmp_path, name="nsk-test-net") as k:
        ids = k.ns_ids()
        mine = {t: os.stat(f"/proc/self/ns/{t}").st_ino for t in NS_TYPES}
        assert ids["net"] != mine["net"]
        assert ids["uts"] != mine["uts"]
        assert ids["user"] != mine["user"]  # always: sandbox root is never host root
        assert ids["pid"] == mine["pid"]
        assert ids["mnt"] == mine["mnt"] or IS_ROOT  # root: the launcher's private mount ns
        assert k.run("!hostname")["stdout"].strip() == f"nsk-{k.km.kernel_id[:8]}"
        # Without a mount namespace /tmp is the host's: IPython's dir is the kernel's own
        # (removed with it), not a temporary directory left in the host's /tmp.
        ipdir = k.run("import os; print(os.environ['IPYTHONDIR'])")["stdout"].strip()
        assert ipdir == os.path.join(k.kernel_dir, "sock", "ipython")
        assert k.run("print(get_ipython().profile_dir.location)")["stdout"].startswith(ipdir)


OUTSIDE_A_SERVER = """
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="nsk-test", kernel_spec_manager=KernelSpecManager(
    kernel_dirs=[sys.argv[1]]))
km.start_kernel(cwd=sys.argv[2])
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=60)
kc.stop_channels()
km.shutdown_kernel(now=False)
server = ("jupyter_server", "jsonschema")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in server)))
"""


def test_outside_a_jupyter_server_a_start_imports_nothing_of_one(
    kernels_dir: Path, tmp_path: Path
) -> None:
    """nbclient, papermill and nbval start kernels with a plain KernelManager. Looking
    for a ServerApp's secret files imported jupyter_server.serverapp there, and with it
    jsonschema, which builds grammars as it is imported: ~1 s of a first kernel start,
    for a server that does not exist."""
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run(
        [sys.executable, "-c", OUTSIDE_A_SERVER, str(kernels_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------- where it is denied

DENIED_SCRIPT = """
import json, sys, time
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="nsk-test", kernel_spec_manager=KernelSpecManager(
    kernel_dirs=[sys.argv[1]]))
t0 = time.monotonic()
try:
    km.start_kernel(cwd=sys.argv[2])
except Exception as e:
    print(json.dumps({"type": type(e).__name__, "error": str(e),
                      "seconds": time.monotonic() - t0}))
else:
    km.shutdown_kernel(now=True)
    print(json.dumps({"type": None}))
"""


@pytest.mark.parametrize(
    ("how", "expect"),
    [
        (["limit", "net"], "max_net_namespaces"),
        (["limit", "user"], "max_user_namespaces"),
        (["seccomp"], "seccomp"),  # like Docker's default profile
    ],
    ids=["max_net_namespaces=0", "max_user_namespaces=0", "seccomp"],
)
def test_denied_namespaces_fail_at_once_with_the_cause(
    kernels_dir: Path, tmp_path: Path, how: list[str], expect: str
) -> None:
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "tests.helpers.deny", *how, "--"]
    cmd += [sys.executable, "-c", DENIED_SCRIPT, str(kernels_dir), str(tmp_path)]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent.parent
    )
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["type"] == "KernelSandboxUnavailable", result
    assert expect in result["error"], result["error"]
    assert "nskernel doctor" in result["error"]
    assert result["seconds"] < 10
    assert "ipykernel" not in res.stderr  # the kernel itself never ran
