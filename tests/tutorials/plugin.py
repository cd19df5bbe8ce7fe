"""nbval wiring for the tutorials (loaded for every run by the repository's root conftest.py).

- Only the shipped tutorials (:data:`tests.tutorials.SHIPPED`) are collected: any other
  notebook, such as one a reader saved into ``notebooks/`` while following the README,
  is ignored wherever it is.
- ``--nbval`` comes from pyproject's addopts; the sanitizer file (``sanitize.cfg`` next
  to this file) is filled in unless given on the command line, by absolute path, so it
  is found from any working directory.
- ``08-sandboxed-kernel`` declares the "nskernel" kernel: once collection shows that a
  tutorial will run, it is installed into a temporary prefix on JUPYTER_PATH (before
  nbval starts any kernel) and removed at the end; the user's Jupyter config is never
  touched, and runs of tests/ alone do not see it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.tutorials import SANITIZE, is_shipped, temporary_kernelspec

_stack = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "nbval_sanitize_with", "unset") is None:
        config.option.nbval_sanitize_with = str(SANITIZE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".ipynb" and not is_shipped(collection_path):
        return True
    return None  # no opinion: the other hooks decide


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.path.suffix == ".ipynb" for item in session.items):
        _stack.enter_context(temporary_kernelspec())


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()
