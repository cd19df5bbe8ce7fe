"""The tutorials as shipped: outputs stored, widget state complete, collected alone.

nbval (tests/tutorials/plugin.py) re-runs every cell and compares it with what is
stored; these tests make sure there is something to compare: a code cell that lost its
output would otherwise only be checked for not raising, and a reader on GitHub or Binder
would see an empty notebook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.tutorials import (
    NOTEBOOKS,
    REPO,
    SHIPPED,
    is_silent,
    missing_outputs,
    shipped_paths,
)
from tests.tutorials.regenerate import LostOutputs, write_checked

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _read(name: str) -> Any:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def test_the_shipped_list_is_what_notebooks_holds() -> None:
    """A new tutorial must be added to SHIPPED, or nbval would never check it."""
    numbered = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
    assert numbered == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_code_cell_stores_its_output(name: str) -> None:
    nb = _read(name)
    assert missing_outputs(nb) == [], (
        f"{name}: code cells without stored outputs; run `python -m tests.tutorials."
        f"regenerate {name}` (cells silent by design get the cell tag 'no-output')"
    )
    for cell in nb.cells:
        if cell.cell_type == "code" and is_silent(cell):
            assert not cell.outputs, f"{name}: a cell tagged 'no-output' has output"


def _model_refs(value: Any) -> set[str]:
    """Model ids a widget's state refers to ("IPY_MODEL_<id>")."""
    text = json.dumps(value)
    return set(re.findall(r"IPY_MODEL_([0-9a-f]+)", text))


@pytest.mark.parametrize("name", SHIPPED)
def test_widget_outputs_are_stored_with_their_state(name: str) -> None:
    """What a static renderer (nbconvert's html-manager, nbviewer) needs to draw them."""
    nb = _read(name)
    views = [
        o["data"][WIDGET_VIEW]["model_id"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if WIDGET_VIEW in o.get("data", {})
    ]
    if not views:
        return
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    missing = [v for v in views if v not in state]
    assert not missing, f"{name}: widget views without stored state: {missing}"
    # Every model a stored model refers to (children, layouts, styles) is stored too.
    seen, todo = set(), list(views)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model in state, f"{name}: widget model {model} is referred to but not stored"
        todo += _model_refs(state[model]["state"])


def test_regenerate_refuses_a_notebook_that_lost_outputs(tmp_path: Path) -> None:
    nb = _read("04-uts")
    target = tmp_path / "04-uts.ipynb"
    lost = next(c for c in nb.cells if c.cell_type == "code" and not is_silent(c))
    saved = lost.outputs
    lost.outputs = []
    with pytest.raises(LostOutputs, match="cell 1: from preflight import check"):
        write_checked(nb, target)
    assert list(tmp_path.iterdir()) == []  # nothing written, no half-written file
    lost.outputs = saved
    write_checked(nb, target)
    assert nbformat.read(target, as_version=4) == nb


def _collect(cwd: Path, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_pytest_collects_exactly_the_shipped_tutorials(tmp_path: Path) -> None:
    """A reader's own notebook in notebooks/ (the README opens it in JupyterLab) is no test.

    Checked on a copy of the repository's test wiring with two notebooks a reader might
    save there, collected from another directory, as `pytest /path/to/checkout` would.
    """
    copy = tmp_path / "checkout"
    (copy / "tests").mkdir(parents=True)
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(REPO / name, copy / name)
    shutil.copytree(REPO / "notebooks", copy / "notebooks")
    for name in ("__init__.py", "leakcheck.py"):
        shutil.copy(REPO / "tests" / name, copy / "tests" / name)
    shutil.copytree(
        REPO / "tests" / "tutorials",
        copy / "tests" / "tutorials",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    mine = nbformat.read(NOTEBOOKS / "04-uts.ipynb", as_version=4)
    nbformat.write(mine, copy / "notebooks" / "my-notes.ipynb")
    nbformat.write(mine, copy / "notebooks" / "09-mine.ipynb")
    # The checkout's tests/ are left out of the copy: only notebooks are collected here.
    ids = _collect(tmp_path, str(copy / "notebooks"))
    files = {i.split("::")[0].rsplit("/", 1)[-1] for i in ids}
    assert files == {f"{name}.ipynb" for name in SHIPPED}
    cells = sum(
        1
        for p in shipped_paths()
        for c in nbformat.read(p, as_version=4).cells
        if c.cell_type == "code"
    )
    assert len(ids) == cells
