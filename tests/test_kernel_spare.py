"""The spare launcher (nskernel/kernel/spare.py): the next kernel's launcher, started ahead.

After a start, a launcher waits with its interpreter up and nskernel imported; the next
start of the same interpreter configuration hands it its command line, environment,
working directory and descriptors. Through real kernels (jupyter_client): a restart takes
it and gets a fresh sandbox that works like any (interrupts included); the spare holds
nothing while it waits; another interpreter configuration never gets it; and it ends
with the process that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from nskernel._linux import procfs
from tests.kernel_helpers import (
    cmdline,
    install_kernelspecs,
    run_cell,
    started_kernel,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

NS = (
    "import os, json; print(json.dumps({t: os.stat('/proc/self/ns/' + t).st_ino "
    "for t in ('pid', 'net', 'mnt', 'uts', 'ipc', 'user')}))"
)


@pytest.fixture(scope="module")
def ksm(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    kernels = install_kernelspecs(tmp_path_factory.mktemp("prefix"))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def _waiting_spares(parent: int) -> list[int]:
    kids: list[int] = []
    found = []
    for tid in os.listdir(f"/proc/{parent}/task"):
        with open(f"/proc/{parent}/task/{tid}/children") as f:
            kids += [int(k) for k in f.read().split()]
    for pid in set(kids):
        if "--spare-fd" in cmdline(pid):
            found.append(pid)
    return found


def _one_spare() -> int:
    return wait_for(
        lambda: (lambda s: s[0] if len(s) == 1 else None)(_waiting_spares(os.getpid())),
        30,
        "one spare launcher",
    )


def test_a_restart_takes_the_spare_and_gets_a_fresh_working_sandbox(
    ksm: KernelSpecManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NSK_TEST_SECRET_TOKEN", "s3cret")
    from nskernel.kernel import spare

    spare.discard()
    with started_kernel(ksm, tmp_path) as (km, kc):
        first = run_cell(kc, NS)
        waiting = _one_spare()
        # While it waits it holds nothing: fds 0-2 and its socket, in /, no secret.
        fds = sorted(os.listdir(f"/proc/{waiting}/fd"), key=int)
        assert fds[:3] == ["0", "1", "2"] and len(fds) == 4, fds
        assert os.readlink(f"/proc/{waiting}/fd/{fds[3]}").startswith("socket:")
        assert os.readlink(f"/proc/{waiting}/cwd") == "/"
        with open(f"/proc/{waiting}/environ", "rb") as f:
            assert b"NSK_TEST_SECRET_TOKEN" not in f.read()
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        assert km.provisioner.pid == waiting, "the restart did not take the spare"
        shown = cmdline(waiting)
        assert "--spare-fd" not in shown and "--namespaces" in shown, shown
        second = run_cell(kc, NS)
        assert first["stdout"] and second["stdout"] and first["stdout"] != second["stdout"]
        # Its working directory and sys.path are the notebook's, as for a fresh launcher.
        check = f"import os, sys; print(os.getcwd() == sys.path[0] == {str(tmp_path)!r})"
        out = run_cell(kc, check)
        assert out["stdout"] == "True\n", out
        # Interrupts reach it (its own process group, as jupyter_client makes one).
        msg_id = kc.execute("import time; time.sleep(60)")
        time.sleep(1.0)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        # And a new spare waits for the next start.
        assert _one_spare() != waiting
    spare.discard()
    assert _waiting_spares(os.getpid()) == []


def test_another_interpreter_configuration_never_gets_the_spare(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    from nskernel.kernel import spare

    spare.discard()
    with started_kernel(ksm, tmp_path):
        waiting = _one_spare()
    env = dict(os.environ, PYTHONWARNINGS="ignore::UserWarning")
    with started_kernel(ksm, tmp_path, env=env) as (km, kc):
        assert km.provisioner.pid != waiting
        assert wait_for(lambda: not procfs.alive(waiting), 10, "the old spare")
        out = run_cell(kc, "import sys; print(sys.warnoptions)")
        assert out["stdout"] == "['ignore::UserWarning']\n", out
    spare.discard()


def test_a_spare_ends_with_the_process_that_started_it(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    """Its socket's other end closes when that process dies, however it dies."""
    code = (
        "import os, sys, time\n"
        "from jupyter_client.kernelspec import KernelSpecManager\n"
        "from jupyter_client.manager import KernelManager\n"
        f"ksm = KernelSpecManager(kernel_dirs=[{ksm.kernel_dirs[0]!r}])\n"
        "km = KernelManager(kernel_name='nsk-test', kernel_spec_manager=ksm)\n"
        f"km.start_kernel(cwd={str(tmp_path)!r})\n"
        "km.shutdown_kernel(now=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        waiting = wait_for(lambda: _waiting_spares(proc.pid) or None, 30, "a spare")[0]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert wait_for(lambda: not procfs.alive(waiting), 10, "the spare to end")


def test_a_spare_holds_no_kernels_environment(ksm: KernelSpecManager, tmp_path: Path) -> None:
    """The kernel forked from a spare keeps the spare's first environment block in its
    memory: it must hold nothing of the kernel before it (another kernel's ``--env``
    values, its notebook's name), only the start-up variables every taker shares."""
    from nskernel.kernel import spare

    spare.discard()
    env = dict(os.environ, MPLBACKEND="module://only-for-kernel-a", JPY_SESSION_NAME="a.ipynb")
    with started_kernel(ksm, tmp_path, env=env):
        waiting = _one_spare()
        with open(f"/proc/{waiting}/environ", "rb") as f:
            block = f.read()
    assert b"only-for-kernel-a" not in block and b"a.ipynb" not in block, block
    names = {v.split(b"=", 1)[0].decode() for v in block.split(b"\0") if v}
    shared = {k for k in os.environ if spare._startup_variable(k)} | spare.kept_names(os.environ)
    # JPY_PARENT_PID=1, which every kernel gets, set for the imports made ahead.
    assert names <= shared | {*spare.IMPORT_NAMES, "JPY_PARENT_PID"}, names
    with started_kernel(ksm, tmp_path) as (km, _kc):
        assert km.provisioner.pid == waiting  # the next kernel took it
    spare.discard()


KERNEL_IMPORTS = (
    "import sys; from jupyter_client.session import Session; "
    "print('nskernel.kernel.spare' in sys.modules, Session.username.default_value)"
)


def _maps_zmq(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "/zmq/backend/" in f.read()


def test_a_spare_imports_ipykernel_ahead_only_for_starts_that_would_import_the_same(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    """A spare imports ipykernel before its orders come (most of what a start waited for).
    Some modules read the environment as they are imported (jupyter_client's Session
    takes USER as every message's username): a start whose environment agrees in all of
    them runs in the spare's process; one that does not gets its kernel exec'd inside,
    which imports for itself, and never a username from another start."""
    from nskernel.kernel import spare

    spare.discard()
    alice = dict(os.environ, USER="alice")
    with started_kernel(ksm, tmp_path, env=alice):
        waiting = _one_spare()
        assert wait_for(lambda: _maps_zmq(waiting), 30, "the spare's imports")
    with started_kernel(ksm, tmp_path, env=alice) as (km, kc):
        assert km.provisioner.pid == waiting
        out = run_cell(kc, KERNEL_IMPORTS)
        assert out["stdout"] == "True alice\n", out  # forked from the spare: imported ahead
        following = _one_spare()
        assert wait_for(lambda: _maps_zmq(following), 30, "the next spare's imports")
    with started_kernel(ksm, tmp_path, env=dict(os.environ, USER="bob")) as (km, kc):
        assert km.provisioner.pid == following  # the same interpreter configuration
        out = run_cell(kc, KERNEL_IMPORTS)
        assert out["stdout"] == "False bob\n", out  # exec'd inside: its own imports
    spare.discard()


TLS_POLICY = (
    "openssl_conf = init\n[init]\nssl_conf = s\n[s]\nsystem_default = d\n"
    "[d]\nMinProtocol = TLSv1.3\n"
)
TLS_MINIMUM = "import ssl; print(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).minimum_version.name)"


def test_a_kernel_from_the_spare_keeps_its_own_openssl_configuration(
    ksm: KernelSpecManager, tmp_path: Path
) -> None:
    """Red team 30 F1: OpenSSL reads OPENSSL_CONF with getenv when it loads, which the
    imports a spare makes ahead do, unseen by their recording of os.environ: a kernel
    forked from the spare ran with the configuration the spare loaded, and a kernel's
    TLS policy (TLS 1.3 at least) was dropped from the second start on. OPENSSL_* now
    tell interpreter configurations apart, as PYTHON* do."""
    from nskernel.kernel import spare

    policy = tmp_path / "tls13.cnf"
    policy.write_text(TLS_POLICY)
    policy.chmod(0o644)
    env = dict(os.environ, OPENSSL_CONF=str(policy), NSKERNEL_KEEP_ENV="OPENSSL_CONF")
    spare.discard()
    with started_kernel(ksm, tmp_path, env=env) as (_km, kc):
        assert run_cell(kc, TLS_MINIMUM)["stdout"] == "TLSv1_3\n"
        waiting = _one_spare()
        assert wait_for(lambda: _maps_zmq(waiting), 30, "the spare's imports")
    with started_kernel(ksm, tmp_path, env=env) as (km, kc):
        assert km.provisioner.pid == waiting
        assert run_cell(kc, TLS_MINIMUM)["stdout"] == "TLSv1_3\n"
    with started_kernel(ksm, tmp_path) as (km, kc):  # without it: not that spare
        assert run_cell(kc, TLS_MINIMUM)["stdout"] != "TLSv1_3\n"
    spare.discard()
