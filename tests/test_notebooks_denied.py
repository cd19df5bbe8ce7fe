"""The overview notebook where namespaces are denied (Binder, Docker's default profile).

Such hosts must get ``nskernel doctor``'s explanation at the top of 00-overview and a
clean stop — one short error line, nothing run after it — not a wall of tracebacks.
The kernel process is started under a real denial (tests/helpers/deny.py): a zero
namespace limit; nothing on the host changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parent.parent
OVERVIEW = REPO / "notebooks" / "00-overview.ipynb"

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


@pytest.mark.kernel
@pytest.mark.parametrize("denied_kernel", sorted(DENIALS), indirect=True)
def test_overview_explains_and_stops(denied_kernel: str) -> None:
    nb = nbformat.read(OVERVIEW, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    client = NotebookClient(
        nb,
        kernel_name=denied_kernel,
        timeout=60,
        resources={"metadata": {"path": str(OVERVIEW.parent)}},
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
