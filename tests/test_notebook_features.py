"""Everyday notebook features inside a sandbox (issue 16), through real kernels.

Two kernels are shared by the module (a kernel start costs about a second): the
sandboxed kernel ("Python 3 (sandboxed)", from a throwaway kernelspec) and a plain
ipykernel with ``%load_ext nskernel`` for ``%%sandbox`` cells and named sandboxes. Both
work in a notebook directory of their own. Tests that need fresh state make it (a new
named sandbox, a new module name). Runs for any caller: CI runs it as root and rootless.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from tests.conftest import nskernel_cmd
from tests.kernel_helpers import (
    KERNEL_NAME,
    descendants,
    install_kernelspecs,
    jupyter_env,
    started_kernel,
)
from tests.magic_helpers import Output, Result, execute
from tests.magic_helpers import kernel as plain_kernel

pytestmark = [pytest.mark.kernel, pytest.mark.userns]


class Kernel:
    def __init__(self, kc: BlockingKernelClient, km: KernelManager, nb: Path) -> None:
        self.kc, self.km, self.nb = kc, km, nb

    def run(self, code: str, timeout: float = 120) -> Result:
        return execute(self.kc, textwrap.dedent(code), timeout=timeout)

    def ok(self, code: str, timeout: float = 120) -> Result:
        res = self.run(code, timeout)
        assert res.status == "ok", res.error_text
        return res


def _notebook_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    # Sandbox root (an unprivileged host uid when root runs the suite) reads and, with
    # --bind ./SUBDIR, writes below.
    top = tmp_path_factory.mktemp(name)
    nb = top / "nb"
    nb.mkdir()
    os.chmod(top, 0o755)
    os.chmod(nb, 0o777)
    return nb


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("prefix")
    install_kernelspecs(p)
    return p


@pytest.fixture(scope="module")
def sk(prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """The sandboxed kernel; afterwards, nothing of it may be left."""
    nb = _notebook_dir(tmp_path_factory, "sk")
    ksm = KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])
    with started_kernel(ksm, nb) as (km, kc):
        yield Kernel(kc, km, nb)


@pytest.fixture(scope="module")
def hk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A plain ipykernel with %load_ext nskernel, working in a notebook dir of its own."""
    nb = _notebook_dir(tmp_path_factory, "hk")
    with plain_kernel() as (km, kc):
        k = Kernel(kc, km, nb)
        k.ok(f"import os; os.chdir({str(nb)!r})")
        try:
            yield k
        finally:
            k.run("%sandbox rm --all")


def named() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def make_wheel(where: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel, made by hand (no build backend, no network)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: nskernel-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={b64},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    os.chmod(wheel, 0o644)
    return wheel


# ------------------------------------------------------------------ keep working


def _streams_before_the_cell_ends(k: Kernel, prefix_line: str) -> None:
    """The cell prints, then waits for a file the test makes only once that print arrived.

    If output were held back until the cell ended, the test would never see it, never
    make the file, and the cell would give up and print "timed out".
    """
    go = k.nb / f"go-{uuid.uuid4().hex[:8]}"
    code = prefix_line + textwrap.dedent(
        f"""\
        import os, time
        print("waiting", flush=True)
        for _ in range(600):
            if os.path.exists({go.name!r}):
                print("released")
                break
            time.sleep(0.1)
        else:
            print("timed out")
        """
    )

    def on_output(o: Output) -> None:
        if o.kind == "stream" and "waiting" in o.text:
            go.touch()

    try:
        res = execute(k.kc, code, timeout=120, on_output=on_output)
    finally:
        go.unlink(missing_ok=True)
    assert res.status == "ok", res.error_text
    assert res.stdout.split() == ["waiting", "released"]


def test_output_streams_while_the_cell_waits_in_the_kernel(sk: Kernel) -> None:
    _streams_before_the_cell_ends(sk, "")


def test_output_streams_while_the_cell_waits_in_sandbox_cells(hk: Kernel) -> None:
    _streams_before_the_cell_ends(hk, "%%sandbox\n")
    _streams_before_the_cell_ends(hk, f"%%sandbox --name {named()}\n")


def test_ten_megabytes_of_output_arrive_and_more_ends_with_the_cap_notice(hk: Kernel) -> None:
    res = hk.ok("%%sandbox\nprint('x' * 10_000_000)\nprint('the end')")
    assert res.stdout == "x" * 10_000_000 + "\nthe end\n"  # under the 16M default cap
    res = hk.ok("%%sandbox\nfor _ in range(2):\n    print('x' * 10_000_000)\nprint('the end')")
    assert "output truncated after 16" in res.stderr, res.stderr
    assert "--max-output" in res.stderr and "the end" not in res.stdout
    assert len(res.stdout) == 16 << 20
    res = hk.ok("%%sandbox --max-output 1M\nprint('x' * 10_000_000)")
    assert "output truncated after 1" in res.stderr and len(res.stdout) == 1 << 20


CELL_WITH_ERROR = "x = 1\ndef f():\n    return 1 / 0\nf()\n"


def test_tracebacks_point_into_the_cell(sk: Kernel, hk: Kernel) -> None:
    for k, code in ((sk, CELL_WITH_ERROR), (hk, "%%sandbox\n" + CELL_WITH_ERROR)):
        res = k.run(code)
        assert res.status == "error"
        text = res.error_text
        assert "ZeroDivisionError" in text
        assert "Cell In[" in text, text
        assert "----> 3" in text or "line 3" in text, text
        assert "return 1 / 0" in text


def _iopub_until(kc: BlockingKernelClient, msg_id: str, kind: str, has: str = "") -> None:
    """Read iopub until a ``kind`` message of request ``msg_id`` (containing ``has``)."""
    while True:
        m = kc.get_iopub_msg(timeout=60)
        mine = m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == kind
        if mine and has in json.dumps(m["content"]):
            return


def test_interrupt_in_a_named_sandbox_of_the_sandboxed_kernel(sk: Kernel) -> None:
    # %%sandbox inside the sandboxed kernel: nested sandboxes, interrupted like any cell.
    name = named()
    sk.ok("%load_ext nskernel")
    sk.ok(f"%%sandbox --name {name}\nkept = 7")
    msg_id = sk.kc.execute(
        f"%%sandbox --name {name}\nimport time\nprint('sleeping', flush=True)\ntime.sleep(120)"
    )
    _iopub_until(sk.kc, msg_id, "stream", "sleeping")
    sk.km.interrupt_kernel()
    reply = sk.kc.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = sk.kc.get_shell_msg(timeout=60)
    assert reply["content"]["status"] == "error"
    assert "KeyboardInterrupt" in reply["content"]["ename"] + str(reply["content"])
    # After an error ipykernel aborts the requests that reach it until it has queued its
    # own "stop aborting" message, which it does before it says idle: so wait for idle.
    _iopub_until(sk.kc, msg_id, "status", '"idle"')
    assert sk.ok(f"%%sandbox --name {name}\nprint(kept)").stdout == "7\n"
    sk.ok(f"%sandbox rm {name}")


MULTIPROCESSING = """\
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

def square(n):
    return n * n

with multiprocessing.Pool(2) as pool:
    print(sum(pool.map(square, range(10))))
with ProcessPoolExecutor(2) as ex:
    print(sum(ex.map(square, range(10))))
q = multiprocessing.Queue()
p = multiprocessing.Process(target=q.put, args=("from a child",))
p.start(); print(q.get(timeout=60)); p.join()
"""


def test_multiprocessing_and_process_pools(sk: Kernel, hk: Kernel) -> None:
    for k, code in ((sk, MULTIPROCESSING), (hk, "%%sandbox\n" + MULTIPROCESSING)):
        assert k.ok(code).stdout == "285\n285\nfrom a child\n"


AWAIT = "import asyncio\nawait asyncio.sleep(0)\nprint(await asyncio.gather(asyncio.sleep(0, 'a')))"


def test_top_level_await(sk: Kernel, hk: Kernel) -> None:
    assert sk.ok(AWAIT).stdout == "['a']\n"
    assert hk.ok("%%sandbox\n" + AWAIT).stdout == "['a']\n"


ALARM = """\
import signal, time
class Alarm(Exception):
    pass
def ring(signum, frame):
    raise Alarm()
signal.signal(signal.SIGALRM, ring)
signal.alarm(1)
try:
    time.sleep(120)
except Alarm:
    print("rang")
"""


def test_signal_alarm(sk: Kernel, hk: Kernel) -> None:
    assert sk.ok(ALARM).stdout == "rang\n"
    assert hk.ok("%%sandbox\n" + ALARM).stdout == "rang\n"


def test_sys_exit_fails_the_cell_and_the_kernel_goes_on(sk: Kernel, hk: Kernel) -> None:
    res = sk.run("import sys\nsys.exit(3)")
    assert res.status == "error" and "SystemExit" in res.error_text
    assert sk.ok("print('alive')").stdout == "alive\n"
    name = named()
    hk.ok(f"%%sandbox --name {name}\nkept = 1")
    for line in ("%%sandbox", f"%%sandbox --name {name}"):
        res = hk.run(f"{line}\nimport sys\nsys.exit(3)")
        assert res.status == "error" and "SystemExit" in res.error_text, res.error_text
    assert hk.ok(f"%%sandbox --name {name}\nprint(kept)").stdout == "1\n"
    hk.ok(f"%sandbox rm {name}")


def test_run_magic(sk: Kernel, hk: Kernel) -> None:
    for k in (sk, hk):
        script = k.nb / "script_for_run.py"
        script.write_text("import sys\nran = 6 * 7\nprint('args', sys.argv[1:])\n")
        os.chmod(script, 0o644)
    assert sk.ok("%run script_for_run.py a b\nprint(ran)").stdout == "args ['a', 'b']\n42\n"
    res = hk.ok("%%sandbox\n%run script_for_run.py a b\nprint(ran)")
    assert res.stdout == "args ['a', 'b']\n42\n"


def _bump(path: Path, text: str) -> None:
    # autoreload compares modification times: make the new one differ for sure.
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_autoreload(sk: Kernel, hk: Kernel) -> None:
    for k, head in ((sk, ""), (hk, f"%%sandbox --name {named()}\n")):
        mod = f"autoreloaded_{uuid.uuid4().hex[:8]}"
        path = k.nb / f"{mod}.py"
        path.write_text("def f():\n    return 1\n")
        os.chmod(path, 0o644)
        res = k.ok(f"{head}%load_ext autoreload\n%autoreload 2\nimport {mod}\nprint({mod}.f())")
        assert res.stdout == "1\n"
        _bump(path, "def f():\n    return 2\n")
        assert k.ok(f"{head}print({mod}.f())").stdout == "2\n"
        if head:
            k.ok(f"%sandbox rm {head.split()[-1]}")


PAPERMILL_NB = {
    "cells": [
        {
            "cell_type": "code",
            "metadata": {"tags": ["parameters"]},
            "source": "x = 1",
            "outputs": [],
            "execution_count": None,
        },
        {
            "cell_type": "code",
            "metadata": {},
            "source": "import os, json\nprint(json.dumps({'x2': x * 2, 'pid': os.getpid()}))",
            "outputs": [],
            "execution_count": None,
        },
    ],
    "metadata": {"kernelspec": {"name": KERNEL_NAME, "display_name": "x", "language": "python"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_papermill_with_parameters_on_the_sandboxed_kernel(
    prefix: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("papermill", reason="pip install -e '.[test]' installs papermill")
    nb = _notebook_dir(tmp_path_factory, "papermill")
    tmp = nb.parent
    (nb / "in.ipynb").write_text(json.dumps(PAPERMILL_NB))
    run = subprocess.run(
        [sys.executable, "-m", "papermill", "in.ipynb", "out.ipynb", "-p", "x", "21"],
        cwd=nb,
        env=jupyter_env(tmp, prefix),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((nb / "out.ipynb").read_text())
    texts = [
        "".join(o.get("text", ""))
        for c in out["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
    ]
    found = json.loads(texts[-1])
    assert found["x2"] == 42
    assert found["pid"] == 2  # the kernel is PID 2 of its sandbox, under its init


# ------------------------------------------------------------------ item 3: %pip


def test_pip_install_in_the_sandboxed_kernel_is_imported_at_once(sk: Kernel) -> None:
    name = f"nskdemo_{uuid.uuid4().hex[:8]}"
    wheel = make_wheel(sk.nb, name, "1.0", {f"{name}.py": "VALUE = 42\n"})
    res = sk.ok(f"%pip install --no-index {wheel.name}\nimport {name}\nprint({name}.VALUE)")
    assert res.stdout.endswith("42\n"), res.stdout
    assert "WARNING" not in res.stdout + res.stderr, res.stdout + res.stderr
    # In the sandbox's private home, which subprocesses import from too.
    res = sk.ok(f"!python3 -c 'import {name}, os; print({name}.__file__)'")
    home = sk.ok("import os; print(os.path.expanduser('~'))").stdout.strip()
    assert res.stdout.startswith(home + "/.local/"), res.stdout


def test_a_failed_pip_install_fails_the_cell(sk: Kernel, hk: Kernel) -> None:
    for k, head in ((sk, ""), (hk, "%%sandbox\n")):
        res = k.run(f"{head}%pip install --no-index nskernel-no-such-package\nprint('went on')")
        assert res.status == "error", res.stdout
        assert "went on" not in res.stdout
        assert "pip failed (exit status 1)" in res.error_text, res.error_text


def test_pip_install_in_a_named_sandbox_lasts_across_its_cells(hk: Kernel) -> None:
    name, sb = f"nskdemo_{uuid.uuid4().hex[:8]}", named()
    wheel = make_wheel(hk.nb, name, "1.0", {f"{name}.py": "VALUE = 43\n"})
    res = hk.ok(f"%%sandbox --name {sb}\n%pip install --no-index {wheel.name}")
    assert "Successfully installed" in res.stdout
    assert "WARNING" not in res.stdout + res.stderr, res.stdout + res.stderr  # e.g. its cache
    assert hk.ok(f"%%sandbox --name {sb}\nimport {name}\nprint({name}.VALUE)").stdout == "43\n"
    # Another sandbox does not have it: each has its own home.
    res = hk.run(f"%%sandbox\nimport {name}")
    assert res.status == "error" and "ModuleNotFoundError" in res.error_text
    hk.ok(f"%sandbox rm {sb}")


# ------------------------------------------------------------------ items 4, 5: PATH

TOOLS = """\
import json, os, shutil, subprocess, sys
found = {t: shutil.which(t) for t in ("python3", "python", "pip")}
found["executable"] = sys.executable
try:
    subprocess.run(["nskernel-no-such-command"])
except Exception as e:
    found["missing"] = type(e).__name__
print(json.dumps(found))
"""


def test_path_leads_to_this_kernels_python_and_missing_commands_are_not_found(
    sk: Kernel, hk: Kernel
) -> None:
    for k, head in ((sk, ""), (hk, "%%sandbox\n")):
        res = k.ok(head + TOOLS + "!nskernel-no-such-command")
        found = json.loads(res.stdout.splitlines()[0])
        here = os.path.dirname(found["executable"])
        # Never another Python: python3/pip are this kernel's (with its packages).
        assert found["python3"] == os.path.join(here, "python3"), found
        assert found["pip"] == os.path.join(here, "pip"), found
        assert found["missing"] == "FileNotFoundError", found
        assert "not found" in res.stdout + res.stderr


def test_script_magic_finds_what_path_finds(sk: Kernel, hk: Kernel) -> None:
    for k, head in ((sk, ""), (hk, "%%sandbox\n")):
        res = k.ok(head + "%%script nskernel-no-such-command\necho hi")
        assert "Couldn't find program: 'nskernel-no-such-command'" in res.stdout  # as plainly
        res = k.ok(head + "%%script bash\ncommand -v python3")
        # The kernelspec's Python is this one (install_kernelspecs): python3 beside it.
        assert res.stdout.strip() == os.path.join(os.path.dirname(sys.executable), "python3")


def test_a_kernel_whose_python_the_sandbox_cannot_reach_starts(
    prefix: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A kernelspec naming another Python that lives where sandboxes cannot go (under
    /root for root, a home or /tmp for anyone: pyenv, conda) starts, with that Python."""
    import site

    top = tmp_path_factory.mktemp("elsewhere")
    os.chmod(top, 0o700)  # like /root: sandbox root (as root: an unprivileged uid) cannot enter
    venv = top / "venv"
    secret = top / "secret.txt"
    secret.write_text("beside the kernel's Python\n")
    subprocess.run(
        ["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    # It finds ipykernel where this Python has it (a .pth file), as a conda env would.
    (site_dir,) = venv.glob("lib/python3*/site-packages")
    (site_dir / "parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec_dir = kernels / "nsk-test-elsewhere"
    shutil.copytree(kernels / KERNEL_NAME, spec_dir)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["argv"][0] = str(venv / "bin" / "python")
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    nb = _notebook_dir(tmp_path_factory, "elsewhere-nb")
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
    km = KernelManager(kernel_name="nsk-test-elsewhere", kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(nb))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        res = execute(kc, "import sys, os; print(sys.prefix, os.getpid())")
        assert res.status == "ok", res.error_text
        assert res.stdout.split() == [str(venv), "2"]
        # Only that Python's environment came in, read-only: not what lies beside it.
        look = (
            f"print(os.path.exists({str(secret)!r}))\n"
            f"try:\n    open({str(venv / 'planted')!r}, 'w')\nexcept OSError as e:\n"
            "    print(e.strerror)"
        )
        res = execute(kc, look)
        assert res.stdout.splitlines() == ["False", "Read-only file system"], res.stdout
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(spec_dir)


def test_a_kernels_python_in_the_homes_own_bin_brings_no_more_of_the_home(
    prefix: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A kernelspec whose Python is a link in ~/.local/bin (uv's python3.12, a pip
    --user or pipx shim): its "prefix" was ~/.local, bound whole into the kernel's
    sandbox, and with it the Jupyter server's token in ~/.local/share/jupyter/runtime
    (15th red-team pass). Only the link's own directory comes in."""
    import site

    import nskernel

    home = tmp_path_factory.mktemp("home-with-local-bin")
    os.chmod(home, 0o755)
    local_bin = home / ".local" / "bin"
    runtime = home / ".local" / "share" / "jupyter" / "runtime"
    local_bin.mkdir(parents=True)
    runtime.mkdir(parents=True)
    token = runtime / "jpserver-4242.json"
    token.write_text('{"token": "the server\'s token"}\n')
    for d in (home / ".local", local_bin, home / ".local" / "share", runtime.parent, runtime):
        os.chmod(d, 0o755)
    os.chmod(token, 0o644)
    link = local_bin / "python3-nsk"
    link.symlink_to(os.path.realpath(sys.executable))  # the base Python, not this venv
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec_dir = kernels / "nsk-test-local-bin"
    shutil.copytree(kernels / KERNEL_NAME, spec_dir)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["argv"][0] = str(link)
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    # The base Python finds ipykernel and nskernel where this one has them.
    where = [*site.getsitepackages(), os.path.dirname(os.path.dirname(nskernel.__file__))]
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join(where)}
    nb = _notebook_dir(tmp_path_factory, "local-bin-nb")
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
    km = KernelManager(kernel_name="nsk-test-local-bin", kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(nb), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        look = f"import os, sys\nprint(sys.executable, os.path.exists({str(token)!r}))"
        res = execute(kc, look)
        assert res.status == "ok", res.error_text
        assert res.stdout.split() == [str(link), "False"], res.stdout
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        shutil.rmtree(spec_dir)


def test_a_kernels_python_is_never_looked_for_where_a_sandbox_writes(tmp_path: Path) -> None:
    """The notebook directory is writable inside: a link planted there (or a host link
    leading into it) must not make the launcher bind what the link points to."""
    from nskernel.kernel.launch import interpreter_binds

    elsewhere = tmp_path / "elsewhere"  # unreachable inside (/tmp is private there)
    (elsewhere / "bin").mkdir(parents=True)
    (elsewhere / "bin" / "python").touch()
    nb = tmp_path / "nb"
    nb.mkdir()
    (nb / "venv").symlink_to(elsewhere)  # "planted" by a sandbox
    (tmp_path / "via").symlink_to(nb / "venv")  # a host link into the notebook dir
    found = interpreter_binds([str(elsewhere / "bin" / "python")], [str(nb)])
    assert [b.source for b in found] == [str(elsewhere)]
    assert interpreter_binds([str(nb / "venv" / "bin" / "python")], [str(nb)]) == []
    assert interpreter_binds([str(tmp_path / "via" / "bin" / "python")], [str(nb)]) == []


# ------------------------------------------------------------------ item 6: caches


def test_matplotlib_and_pip_give_no_warnings_on_first_use(sk: Kernel, hk: Kernel) -> None:
    code = (
        "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 2]); plt.savefig('/tmp/p.png')\n%pip --version"
    )
    for k, head in ((sk, ""), (hk, "%%sandbox\n")):
        res = k.ok(head + code)
        assert res.stderr == "", res.stderr
        assert "pip " in res.stdout and "WARNING" not in res.stdout, res.stdout


def test_completion_of_attributes_works(sk: Kernel) -> None:
    sk.ok("import os")
    msg_id = sk.kc.complete("os.pa", 5)
    reply = sk.kc.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = sk.kc.get_shell_msg(timeout=60)
    content = reply["content"]
    assert content["status"] == "ok" and "path" in content["matches"], content
    assert (content["cursor_start"], content["cursor_end"]) == (3, 5)


# ------------------------------------------------------------------ item 7: IPython's state


def test_cd_bookmark_store_history_in_a_named_sandbox(hk: Kernel) -> None:
    sb = named()
    hk.ok(f"%%sandbox --name {sb}\nv = 'stored'\n%store v\n%cd /etc\n%bookmark usr /usr")
    res = hk.ok(
        f"%%sandbox --name {sb}\nimport os\nprint(os.getcwd())\n%cd -b usr\n"
        "del v\n%store -r v\nprint(v)\n%bookmark -l\n%history -n"
    )
    lines = res.stdout.splitlines()
    assert lines[0] == "/etc"
    assert "/usr" in lines[1]  # %cd -b prints where it went
    assert "stored" in lines
    assert any("usr -> /usr" in line for line in lines), lines
    assert "v = 'stored'" in res.stdout  # the sandbox's own history
    # The host kernel's directory did not move.
    assert hk.ok("import os; print(os.getcwd())").stdout.strip() == str(hk.nb)
    hk.ok(f"%sandbox rm {sb}")


def test_cd_store_history_in_a_sandbox_cell(hk: Kernel) -> None:
    res = hk.ok("%%sandbox\na = 5\n%store a\n%store -z\n%cd /\n%bookmark -l\n%history -l 1")
    assert "Stored 'a' (int)" in res.stdout
    assert "/\n" in res.stdout


# ------------------------------------------------------------------ item 9: next to the notebook


def test_a_subdirectory_of_the_notebooks_is_writable_with_bind(hk: Kernel) -> None:
    """The notebook's directory itself stays read-only for cells (the kernel imports code
    from it: test_magics_hostile.py::test_a_writable_bind_over_where_the_kernel_imports_
    from_is_refused); the error says how to write beside the notebook instead."""
    name = f"db-{uuid.uuid4().hex[:8]}.sqlite"
    code = "import sqlite3\nsqlite3.connect({!r}).execute('create table t(x)')"
    res = hk.run("%%sandbox\n" + code.format(name))
    assert res.status == "error"
    assert "read-only in this sandbox" in res.error_text
    assert "--bind ./SUBDIR makes a subdirectory of it writable" in res.error_text
    res = hk.run("%%sandbox\nopen('x.txt', 'w')")
    assert "--bind ./SUBDIR makes a subdirectory of it writable" in res.error_text
    data = hk.nb / f"data-{uuid.uuid4().hex[:8]}"
    data.mkdir()
    os.chmod(data, 0o777)
    try:
        hk.ok(f"%%sandbox --bind ./{data.name}\n" + code.format(f"{data.name}/{name}"))
        assert (data / name).exists()
    finally:
        shutil.rmtree(data)


# ------------------------------------------------------------------ item 10: small things


def test_sandbox_help_names_the_cell_magic(hk: Kernel) -> None:
    res = hk.run("%%sandbox?\n")
    pages = [p for p in res.reply["content"].get("payload", []) if p.get("source") == "page"]
    text = pages[0]["data"]["text/plain"] if pages else ""
    assert "%%sandbox [--pid]" in text, text[:500]
    assert "sandbox_cell" not in text


def test_nskernel_run_reports_a_bad_flag_with_runs_usage() -> None:
    run = subprocess.run(
        nskernel_cmd("run", "--no-such-flag", "--", "true"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("usage: nskernel run "), run.stderr
    assert "unrecognized arguments: --no-such-flag" in run.stderr


def test_ps_shows_the_sandboxed_kernel_as_its_kernel_command(sk: Kernel) -> None:
    inside = sk.ok("print(open('/proc/self/cmdline').read().replace('\\0', ' '))").stdout
    assert "-m ipykernel_launcher -f " in inside, inside
    assert "nskernel.kernel.launch" not in inside
    # And from the host: the launcher is there as itself, the kernel as a kernel.
    cmdlines = []
    for pid in descendants(sk.km.provisioner.pid):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdlines.append(f.read().replace(b"\0", b" ").decode())
    assert any(
        "-m ipykernel_launcher" in c and "nskernel.kernel.launch" not in c for c in cmdlines
    ), cmdlines


# ------------------------------------------------------------------ the README's example


def test_the_readme_example_gives_what_it_promises(hk: Kernel) -> None:
    res = hk.ok(
        "%%sandbox --pid --net --uts\nimport os, socket\n"
        "print(os.getpid(), socket.gethostname())\n!ps -e -o pid=,comm="
    )
    lines = res.stdout.splitlines()
    pid, host = lines[0].split()
    assert pid == "2"
    assert host.startswith("nsk-") and host != os.uname().nodename
    pids = [int(line.split()[0]) for line in lines[1:]]
    assert max(pids) < 100 and 1 in pids, lines  # only the sandbox's own processes
