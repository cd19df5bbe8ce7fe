"""A forked sandbox never changes the host's interpreter file (fourteenth red-team pass).

Every ``%%sandbox`` cell is a fork of the sandbox server, and the default sandboxed
kernel a fork of its launcher. A fork keeps its parent's executable, which
``/proc/self/exe`` opens on the host's writable mount, past the sandbox's read-only
root. Rootless, sandbox root is the user: an interpreter the user owns (conda, uv,
pyenv, ``venv --copies``) could be made setuid, world-writable or unusable from a cell.
Now the server runs from a read-only view of such an interpreter, and the launcher
execs the kernel inside instead of forking it (``nskernel._linux.exefile``).

The interpreter here is a ``venv --copies`` of the system Python, owned by the user
running the tests (rootless tier) or, as root, by another uid (root's own interpreter
is safe to fork from: sandbox root is never host root).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IS_ROOT

pytestmark = [pytest.mark.userns, pytest.mark.kernel]

OWNER = 4242 if IS_ROOT else os.geteuid()  # never host root, mapped inside rootless

TRY_EXE = r"""
import json, os
found = {"exe": os.readlink("/proc/self/exe")}
try:
    os.chmod("/proc/self/exe", 0o4777)
    found["chmod"] = "changed"
except OSError as e:
    found["chmod"] = e.strerror
try:
    os.utime("/proc/self/exe", (0, 0))
    found["utime"] = "changed"
except OSError as e:
    found["utime"] = e.strerror
print(json.dumps(found))
"""


@pytest.fixture
def own_python(var_tmp: Path) -> Iterator[Path]:
    """A copy of the system Python, owned by a user the sandbox may act as (rootless),
    that sees this environment's packages (nskernel, ipykernel) through a .pth file."""
    base = sys._base_executable  # type: ignore[attr-defined]
    venv = var_tmp / "venv"
    subprocess.run(
        [base, "-m", "venv", "--copies", "--without-pip", str(venv)], check=True, timeout=120
    )
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "zz_nskernel_test.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n"
    )
    python = venv / "bin" / "python"
    if IS_ROOT:
        for p in (venv, *venv.rglob("*")):
            os.lchown(p, OWNER, OWNER)
    before = python.stat()
    assert before.st_uid == OWNER and not before.st_mode & stat.S_ISUID
    yield python
    after = python.stat()
    # The one check that matters: the host file is as it was.
    assert after.st_mode == before.st_mode, oct(after.st_mode)
    assert after.st_mtime == before.st_mtime


def _kernelspec(where: Path, argv: list[str]) -> Path:
    d = where / "kernels" / "own-python"
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "own python", "language": "python"})
    )
    return where / "kernels"


def _start(kernels: Path, name: str, cwd: Path):  # type: ignore[no-untyped-def]
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    km = KernelManager(
        kernel_name=name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=90)
    return km, kc


def test_a_sandbox_cell_cannot_change_the_interpreter_it_was_forked_from(
    own_python: Path, var_tmp: Path
) -> None:
    from tests.magic_helpers import execute

    argv = [str(own_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    km, kc = _start(_kernelspec(var_tmp, argv), "own-python", var_tmp)
    try:
        res = execute(kc, "%load_ext nskernel")
        assert res.status == "ok", res.error_text
        res = execute(kc, "%%sandbox\n" + TRY_EXE, timeout=90)
        assert res.status == "ok", res.error_text
        seen = res.json_line()
        res = execute(kc, "%%sandbox --name keep\n" + TRY_EXE, timeout=90)
        assert res.status == "ok", res.error_text
        named = res.json_line()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert seen["exe"] == named["exe"] == os.path.realpath(own_python)  # forked from it
    for found in (seen, named):
        assert found["chmod"] != "changed" and found["utime"] != "changed", found


def test_the_sandboxed_kernel_cannot_change_its_interpreter(
    own_python: Path, var_tmp: Path
) -> None:
    from tests.kernel_helpers import run_cell

    prefix = var_tmp / "prefix"
    # The kernelspec as `nskernel install` writes it when run by this interpreter.
    code = (
        "from nskernel.kernel import install; "
        f"install.install(name='own-python', prefix={str(prefix)!r})"
    )
    subprocess.run([str(own_python), "-c", code], check=True, timeout=120)
    kernels = prefix / "share" / "jupyter" / "kernels"
    assert str(own_python) in (kernels / "own-python" / "kernel.json").read_text()
    nb = var_tmp / "nb"
    nb.mkdir(mode=0o755)
    km, kc = _start(kernels, "own-python", nb)
    try:
        out = run_cell(kc, TRY_EXE, timeout=90)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert out["error"] is None, out
    found = json.loads(out["stdout"].splitlines()[-1])
    assert found["chmod"] != "changed" and found["utime"] != "changed", found


def test_the_api_refuses_to_fork_a_target_that_could_change_its_interpreter(
    own_python: Path,
) -> None:
    """``Sandbox.spawn(target=...)`` from such an interpreter says why it refuses (a
    command runs, exec'd inside); nskernel's own probes (doctor) still run."""
    code = r"""
import json
from nskernel import Sandbox, SandboxError, SandboxSpec
found = {}
try:
    Sandbox.spawn(SandboxSpec(), target=lambda: 0)
    found["target"] = "forked"
except SandboxError as e:
    found["target"] = str(e)
sb = Sandbox.spawn(SandboxSpec(), ["true"])
found["argv"] = sb.wait(30)
print(json.dumps(found))
"""
    res = subprocess.run([str(own_python), "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout.splitlines()[-1])
    assert "writable host mount" in found["target"], found
    assert found["argv"] == 0, found
    res = subprocess.run(
        [str(own_python), "-m", "nskernel", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(res.stdout)
    assert report["all"]["ok"] and report["ok"], report
