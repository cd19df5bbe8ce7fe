"""SECURITY.md names a test for every claim: each of those tests must exist.

A claim whose test was renamed or removed would be backed by nothing, silently. The
references look like ``tests/test_x.py::test_name`` (optionally ``[param]``); a bare
``::test_name`` after one continues the same file, as the page writes them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = re.compile(r"(tests/[\w/]+\.py)?::(test_\w+)")


def _references(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    current = None
    for m in REF.finditer(text):
        path, name = m.group(1), m.group(2)
        current = path or current
        assert current, f"::{name} without a file before it in SECURITY.md"
        out.append((current, name))
    return out


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


def test_every_test_security_md_names_exists() -> None:
    refs = _references((ROOT / "SECURITY.md").read_text())
    assert len(refs) > 50, "SECURITY.md should back its claims with tests"
    missing = []
    for path, name in refs:
        file = ROOT / path
        if not file.is_file() or name not in _test_functions(file):
            missing.append(f"{path}::{name}")
    assert not missing, "SECURITY.md names tests that do not exist:\n" + "\n".join(missing)
