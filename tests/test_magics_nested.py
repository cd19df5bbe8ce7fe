"""``%%sandbox`` inside the sandboxed kernel: sandboxes nested in the kernel's sandbox.

The sandboxed kernel (``nskernel install``) already runs in its own six namespaces, as
root of its own user namespace. ``%load_ext nskernel`` there starts a sandbox server
inside that sandbox, which creates each cell's sandbox nested in the kernel's: the cell
sees its own PID 1 and hostname, and from the kernel it is a child namespace, not the host's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from tests.kernel_helpers import KERNEL_NAME, install_kernelspecs
from tests.magic_helpers import execute, wait_gone

pytestmark = [pytest.mark.kernel, pytest.mark.userns]

NS = ("pid", "net", "mnt", "uts", "ipc", "user")
PROBE = (
    "import json, os, socket\n"
    f"print(json.dumps({{'pid': os.getpid(), 'hostname': socket.gethostname(), "
    f"'ns': {{t: os.stat(f'/proc/self/ns/{{t}}').st_ino for t in {NS}}}}}))"
)


@pytest.fixture(scope="module")
def sandboxed_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kernels = install_kernelspecs(tmp_path_factory.mktemp("prefix"))
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
    nbdir: Path = tmp_path_factory.mktemp("notebook")
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(nbdir))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        res = execute(kc, "%load_ext nskernel")
        assert res.status == "ok", res.error_text
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_cells_run_in_sandboxes_nested_in_the_kernels(sandboxed_kernel):
    _km, kc = sandboxed_kernel
    outer = json.loads(execute(kc, PROBE).stdout)
    res = execute(kc, "%%sandbox --hostname inner\n" + PROBE)
    assert res.status == "ok", res.error_text
    inner = json.loads(res.stdout)
    assert inner["hostname"] == "inner" and outer["hostname"] != "inner"
    assert inner["pid"] < 10
    for t in NS:
        assert inner["ns"][t] != outer["ns"][t], f"{t}: the cell must have its own"


def test_named_sandbox_inside_the_kernel_and_its_removal(sandboxed_kernel):
    _km, kc = sandboxed_kernel
    assert execute(kc, "%%sandbox --name n1 --pid --uts\nv = 7").status == "ok"
    res = execute(kc, "%%sandbox --name n1\nprint(v * 6)")
    assert res.stdout == "42\n", res.error_text
    assert "n1" in execute(kc, "%sandbox ls").result
    res = execute(
        kc,
        "from nskernel.magics.client import get_client\nprint(get_client().hello['userns'])",
    )
    assert res.stdout.strip() == "inherited"  # root of the kernel's user namespace
    res = execute(kc, "%sandbox rm n1")
    assert res.status == "ok" and "n1" in res.stdout


def test_the_server_ends_with_the_sandboxed_kernel(tmp_path_factory):
    kernels = install_kernelspecs(tmp_path_factory.mktemp("prefix2"))
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("nb2")))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        execute(kc, "%load_ext nskernel")
        assert execute(kc, "%%sandbox --name keep --uts\nx = 1").status == "ok"
        launcher = km.provisioner.pid
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    # Everything of the kernel, the server and its sandboxes included, lived under the
    # launcher; the leak check at session end also looks for any tagged process.
    assert wait_gone(launcher)


def test_a_nested_cell_never_reaches_the_kernels_own_files_under_any_runtime_base(
    tmp_path_factory, monkeypatch
):
    """The kernel's connection file (its key) and sockets are bound into its sandbox at
    their host paths, under nskernel's runtime base. A %%sandbox cell nested in the
    kernel covered only the bases its own environment named (/tmp, /run/user): with the
    base elsewhere ($XDG_RUNTIME_DIR=/var/tmp/..., as some sites set it), the cell read
    the kernel's key, connected to its shell socket and ran code in the kernel, outside
    its own sandbox (15th red-team pass, root and rootless)."""
    import os
    import shutil
    import tempfile

    base = tempfile.mkdtemp(prefix="nsk-xrt-", dir="/var/tmp")  # 0700, ours: private
    monkeypatch.setenv("XDG_RUNTIME_DIR", base)
    look = (
        "import glob, json, os\n"
        f"base = {base!r}\n"
        "files = glob.glob(base + '/**/kernel.json', recursive=True)\n"
        "socks = glob.glob(base + '/**/sock/*', recursive=True)\n"
        "print(json.dumps({'files': files, 'socks': socks}))"
    )
    kernels = install_kernelspecs(tmp_path_factory.mktemp("prefix3"))
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)])
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    try:
        km.start_kernel(cwd=str(tmp_path_factory.mktemp("nb3")))
        assert km.provisioner.kernel_dir.startswith(base + "/")
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            own = json.loads(execute(kc, look).stdout)
            assert own["files"] and own["socks"], own  # the kernel sees its own: the look works
            assert execute(kc, "%load_ext nskernel").status == "ok"
            for cell in ("%%sandbox\n", "%%sandbox --name nested-look\n"):
                res = execute(kc, cell + look)
                assert res.status == "ok", res.error_text
                assert json.loads(res.stdout) == {"files": [], "socks": []}, res.stdout
            execute(kc, "%sandbox rm nested-look")
        finally:
            kc.stop_channels()
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=False)
        shutil.rmtree(base, ignore_errors=True)
    assert not os.path.exists(base)
