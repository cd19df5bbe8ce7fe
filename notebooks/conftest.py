"""nbval wiring for the tutorial notebooks (``python -m pytest`` validates them).

- ``--nbval`` comes from pyproject's addopts; the sanitizer file (``sanitize.cfg``
  next to this file) is filled in here unless given on the command line, so it is
  found from any working directory.
- ``08-sandboxed-kernel`` declares the "nskernel" kernel: it is installed into a
  temporary prefix on JUPYTER_PATH before nbval starts any kernel, and removed at the
  end — the user's real Jupyter config is never touched.
- nbval's cells are not pytest functions, so the suite's leak-check fixture never runs
  for them; the same check (tests/leakcheck.py) runs here around the session instead,
  unless the tests' own fixture already covers it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest

from notebooks.regenerate import temporary_kernelspec
from tests import leakcheck

HERE = Path(__file__).resolve().parent
_stack = contextlib.ExitStack()
_leaks: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "nbval_sanitize_with", "unset") is None:
        config.option.nbval_sanitize_with = str(HERE / "sanitize.cfg")
    _stack.enter_context(temporary_kernelspec())


def pytest_unconfigure(config: pytest.Config) -> None:
    _stack.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    if leakcheck.TAG_VAR in os.environ:
        return  # an outer session (or the tests' fixture) already checks
    tag = uuid.uuid4().hex
    os.environ[leakcheck.TAG_VAR] = tag
    _leaks.update(tag=tag, before=leakcheck.Snapshot.take())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _leaks or os.environ.get(leakcheck.TAG_VAR) != _leaks["tag"]:
        return  # the tests' fixture took over the tag and checks everything itself
    problems = leakcheck.leaks(_leaks["before"], str(_leaks["tag"]))  # type: ignore[arg-type]
    if os.environ.get("NSKERNEL_LEAKCHECK_PROCESSES_ONLY") == "1":
        problems = [p for p in problems if p.startswith("process")]
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "leaked after the notebook session:\n  " + "\n  ".join(problems)
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
