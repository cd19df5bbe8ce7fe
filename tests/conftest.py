"""Test tiers, capability probes and the end-of-session leak check.

Tiers, by marker:
- no marker: pure unit tests, or tests that work for any caller;
- ``root``: needs real root on the host (skipped for other users);
- ``rootless``: must run as an unprivileged user (skipped as root). CI runs the whole
  suite twice, as root and as an unprivileged user, so both paths are covered;
- ``userns``: needs namespaces to be creatable by the caller (probed once).

A capability that is missing turns into a skip whose reason says how to fix the
machine. With NSKERNEL_MUST_WORK=1 (set by CI) such a skip is a failure instead, so a
broken machine or a regression cannot hide behind skips.

The end-of-session leak check is a plugin of its own (tests/leakcheck.py, loaded by the
repository's root conftest.py), so that it covers the tutorial notebooks too.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

MUST_WORK = os.environ.get("NSKERNEL_MUST_WORK") == "1"
IS_ROOT = os.geteuid() == 0


@functools.cache
def userns_problem() -> str | None:
    """None if this caller can create all six namespaces, else the reason and fix.

    Probed through the CLI, a fresh process: the pytest process itself may have threads
    by then (kernel clients), and a threaded process may not create user namespaces.
    """
    r = subprocess.run(
        nskernel_cmd("run", "--", "true"), capture_output=True, text=True, timeout=60
    )
    if r.returncode != 0:
        return f"cannot create namespaces here: {r.stderr.strip()}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``spawns_here`` call Sandbox.spawn in the pytest process itself.

    That is only allowed while the process has a single thread, and kernel clients
    (ZMQ) start threads that outlive their tests, so these tests run first.
    """
    items.sort(key=lambda item: 0 if item.get_closest_marker("spawns_here") else 1)


@pytest.fixture(autouse=True)
def _single_threaded_for_spawns_here(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("spawns_here"):
        from nskernel.sandbox import _thread_count

        assert _thread_count() == 1, (
            "a spawns_here test runs after something started threads in the pytest process"
        )


def require(problem: str | None) -> None:
    """Skip with ``problem`` as the reason, or fail when CI says it must work."""
    if problem is None:
        return
    if MUST_WORK:
        pytest.fail(f"NSKERNEL_MUST_WORK=1 but: {problem}", pytrace=False)
    pytest.skip(problem)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and not IS_ROOT:
        pytest.skip("needs root: this tier runs when the suite runs as root (CI does both)")
    if item.get_closest_marker("rootless") and IS_ROOT:
        pytest.skip("needs an unprivileged caller: CI runs the suite again as one")
    if item.get_closest_marker("userns"):
        require(userns_problem())


def nskernel_cmd(*args: str) -> list[str]:
    """The `nskernel` command line, using this interpreter (never a PATH shim)."""
    return [sys.executable, "-m", "nskernel", *args]


@pytest.fixture
def nsk():
    """Run `nskernel ARGS...`; returns the CompletedProcess (text mode)."""

    def run(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            nskernel_cmd(*args), capture_output=True, text=True, timeout=timeout, **kw
        )

    return run


@pytest.fixture
def private_dir():
    """A directory like /root (mode 0700, the caller's) outside /tmp, which is private
    inside sandboxes anyway; made empty, removed afterwards."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="nsk-private-", dir="/var/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def var_tmp():
    """A directory outside /tmp (which is private inside sandboxes: there, the sandbox's
    own binds of what lives in /tmp would hide what a test looks for), mode 0755;
    removed afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="nsk-var-", dir="/var/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
