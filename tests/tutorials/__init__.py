"""The tutorials' plumbing, kept out of ``notebooks/`` (which readers open in JupyterLab).

- :data:`SHIPPED`: the tutorials, and the only notebooks pytest validates (nbval). A
  reader's own notebook saved into ``notebooks/`` is not a test.
- :func:`missing_outputs`: code cells that should show an output and store none. Cells
  that produce nothing by design (``%load_ext``, a definition) carry the cell tag
  :data:`SILENT_TAG`; nbval then checks they stay silent.
- :func:`temporary_kernelspec`: "Python 3 (sandboxed)" in a throwaway prefix, for the
  notebook that runs on it, without touching the user's Jupyter config.
- ``sanitize.cfg``: what nbval may ignore (run-dependent values only).
- ``plugin.py``: the nbval wiring; ``regenerate.py``: ``python -m tests.tutorials.regenerate``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NOTEBOOKS = REPO / "notebooks"
SANITIZE = HERE / "sanitize.cfg"

#: The tutorials, in reading order (file names without ``.ipynb``).
SHIPPED: tuple[str, ...] = (
    "00-overview",
    "01-pid",
    "02-net",
    "03-mnt",
    "04-uts",
    "05-ipc",
    "06-user",
    "07-two-containers",
    "08-sandboxed-kernel",
)

#: Cell tag of a code cell that produces no output by design.
SILENT_TAG = "no-output"

#: The kernelspec name the sandboxed notebooks declare (what ``nskernel install`` writes).
SANDBOXED_KERNEL = "nskernel"


def shipped_paths() -> list[Path]:
    return [NOTEBOOKS / f"{name}.ipynb" for name in SHIPPED]


def is_shipped(path: str | os.PathLike[str]) -> bool:
    p = Path(path).resolve()
    return p.parent == NOTEBOOKS and p.suffix == ".ipynb" and p.stem in SHIPPED


def is_silent(cell: Any) -> bool:
    return SILENT_TAG in cell.get("metadata", {}).get("tags", [])


def missing_outputs(nb: Any) -> list[str]:
    """Code cells that store no output although they are not tagged silent.

    Returned as ``"cell N: first line"`` (N counts code cells from 1, as a reader would).
    """
    missing = []
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for n, cell in enumerate(code, 1):
        if not cell.get("outputs") and not is_silent(cell):
            first = "".join(cell["source"]).strip().splitlines()[:1] or [""]
            missing.append(f"cell {n}: {first[0]}")
    return missing


@contextlib.contextmanager
def temporary_kernelspec() -> Iterator[str]:
    """Install "Python 3 (sandboxed)" into a throwaway prefix; JUPYTER_PATH points at it."""
    from nskernel.kernel import install

    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="nsk-notebooks-") as tmp:
        # Readable by everyone: an unprivileged CI user may run under a root-made prefix.
        os.chmod(tmp, 0o755)
        install.install(name=SANDBOXED_KERNEL, prefix=tmp)
        share = os.path.join(tmp, "share", "jupyter")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, old) if p)
        try:
            yield share
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old
