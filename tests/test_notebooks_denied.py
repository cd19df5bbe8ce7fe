"""The tutorials where namespaces are denied (Binder, Docker's default profile).

Such hosts must get ``nskernel doctor``'s explanation once, at the top of each tutorial,
and a clean stop — one short error line, nothing run after it — not a wall of
tracebacks, and not the same fix paragraph at every cell; the notebook's note at the top
says so before anything runs. The tutorial that runs on the sandboxed kernel cannot run
a cell at all there: the kernel's own failure must name the cause. The kernel process is
started under a real denial (tests/helpers/deny.py): a seccomp filter or a zero
namespace limit; nothing on the host changes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.tutorials import NOTEBOOKS, REPO, SANDBOXED_KERNEL, SHIPPED

OVERVIEW = NOTEBOOKS / "00-overview.ipynb"

# Each runs the kernel where namespaces are denied the way real hosts deny them.
DENIALS = {
    # A seccomp filter like Docker's default profile: unshare(2) fails with EPERM.
    "seccomp": ["seccomp", "--"],
    # user.max_user_namespaces=0, like Binder's unprivileged pods: no rooms at all.
    "user-limit": ["limit", "user", "--"],
    # user.max_net_namespaces=0: every room but NET; the notebook needs all six.
    "net-limit": ["limit", "net", "--"],
}


@pytest.fixture
def denied_kernel(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A kernelspec whose kernel runs under the denial; its name."""
    denial = DENIALS[request.param]
    spec_dir = tmp_path / "share" / "jupyter" / "kernels" / "nsk-denied"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "tests.helpers.deny", *denial]
    argv += [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {
        "argv": argv,
        "display_name": f"Python 3 (namespaces denied: {request.param})",
        "language": "python",
        "env": {"PYTHONPATH": str(REPO)},  # the kernel starts in notebooks/
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    tmp_path.chmod(0o755)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    return "nsk-denied"


def _on_ipykernel() -> list[str]:
    return [
        n
        for n in SHIPPED
        if nbformat.read(NOTEBOOKS / f"{n}.ipynb", as_version=4).metadata.kernelspec.name
        != SANDBOXED_KERNEL
    ]


# The overview under every kind of denial; each other tutorial under Binder's.
CASES = [(d, "00-overview") for d in sorted(DENIALS)]
CASES += [("user-limit", n) for n in _on_ipykernel() if n != "00-overview"]


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("denied_kernel", "name"), CASES, indirect=["denied_kernel"], ids=[f"{d}-{n}" for d, n in CASES]
)
def test_tutorial_explains_once_and_stops(denied_kernel: str, name: str) -> None:
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    # Before anything runs, the note at the top says where the notebook runs and that
    # the stored outputs stay readable.
    top = next(c for c in nb.cells if c.cell_type == "markdown").source
    assert "Where this runs" in top and "stored in this notebook" in top, top
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    client = NotebookClient(
        nb,
        kernel_name=denied_kernel,
        timeout=60,
        resources={"metadata": {"path": str(path.parent)}},
    )
    with pytest.raises(CellExecutionError) as stopped:
        client.execute()
    assert "NamespacesDenied" in str(stopped.value)

    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    text = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream")
    # The doctor's own report: what failed, why, and the fix.
    assert "Sandboxes do NOT work here" in text, text
    assert "FAIL" in text and "fix:" in text, text
    errors = [o for o in first.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["NamespacesDenied"]
    # One line, not a traceback through nskernel or IPython internals.
    assert len(errors[0].traceback) == 1, errors[0].traceback
    assert "stored outputs" in errors[0].traceback[0]
    # "Run All" stopped there: no sandbox cell ran and failed on its own.
    assert all(c.execution_count is None and not c.outputs for c in code[1:])


_RUN_ON_SANDBOXED_KERNEL = """
import sys, nbformat
from nbclient import NotebookClient
from tests.tutorials import temporary_kernelspec
path, name = sys.argv[1], sys.argv[2]
nb = nbformat.read(path, as_version=4)
for c in nb.cells:
    if c.cell_type == "code":
        c.outputs, c.execution_count = [], None
with temporary_kernelspec():
    client = NotebookClient(nb, kernel_name=name, timeout=60, startup_timeout=60)
    try:
        client.execute()
    except Exception as e:
        ran = [c for c in nb.cells if c.cell_type == "code" and c.execution_count]
        print(f"{type(e).__name__}: {e}")
        print(f"cells run: {len(ran)}")
        sys.exit(3)
print("the kernel started")
"""


@pytest.mark.kernel
@pytest.mark.parametrize("denial", ["seccomp", "user-limit"])
def test_sandboxed_kernel_tutorial_fails_naming_the_cause(denial: str) -> None:
    """Jupyter (here nbclient, under the denial) gets the provisioner's reason and fix."""
    path = NOTEBOOKS / "08-sandboxed-kernel.ipynb"
    kernel = nbformat.read(path, as_version=4).metadata.kernelspec.name
    assert kernel == SANDBOXED_KERNEL
    deny = [sys.executable, "-m", "tests.helpers.deny", *DENIALS[denial]]
    run = [sys.executable, "-c", _RUN_ON_SANDBOXED_KERNEL, str(path), kernel]
    r = subprocess.run(
        [*deny, *run],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 3, r.stdout + r.stderr
    out = r.stdout
    assert "KernelSandboxUnavailable" in out and "cells run: 0" in out, out
    cause = {"seccomp": "seccomp filter forbids unshare", "user-limit": "max_user_namespaces"}
    assert cause[denial] in out, out
    assert "nskernel doctor" in out and "never runs unsandboxed" in out, out
