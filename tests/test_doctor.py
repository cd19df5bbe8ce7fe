"""`nskernel doctor` and the failure path: denied namespaces give a clear error, and
the command never runs unsandboxed."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.conftest import nskernel_cmd, require

DENY = [sys.executable, "-m", "tests.helpers.deny"]


@pytest.mark.userns
def test_doctor_reports_every_namespace_ok(nsk):
    r = nsk("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    for ns in ("user", "pid", "net", "mnt", "uts", "ipc", "all six"):
        assert f"ok    {ns}" in r.stdout
    assert "Sandboxes work here." in r.stdout


@pytest.mark.userns
def test_doctor_json(nsk):
    r = nsk("doctor", "--json")
    report = json.loads(r.stdout)
    assert report["ok"] is True
    assert set(report["namespaces"]) == {"user", "pid", "net", "mnt", "uts", "ipc"}
    assert all(v["ok"] for v in report["namespaces"].values())
    # Which mechanism each limit uses here, probed for real (and the probe cleaned up).
    assert set(report["limits"]) == {"memory", "pids", "cpus"}
    known = ("cgroup v2", "cgroup v1", "rlimit ", "not enforced: ")
    assert all(m.startswith(known) for m in report["limits"].values()), report["limits"]
    if os.geteuid() == 0:  # root can always write its own cgroup (v1 or v2)
        assert report["limits"]["memory"].startswith("cgroup")


@pytest.mark.userns
@pytest.mark.parametrize("forced", [False, True])
def test_doctor_says_which_init_sandboxes_get(nsk, forced, monkeypatch):
    from nskernel._linux import init

    if forced:
        monkeypatch.setenv(init.INIT_ENV, "python")
    else:
        monkeypatch.delenv(init.INIT_ENV, raising=False)
        require(None if os.access(init.NATIVE_INIT, os.X_OK) else "nskernel-init not built")
    report = json.loads(nsk("doctor", "--json").stdout)
    if forced:
        assert report["init"] == {"init": "python", "why": "NSKERNEL_INIT=python is set"}
    else:
        assert report["init"] == {"init": "native", "path": init.NATIVE_INIT}
    text = nsk("doctor").stdout
    assert f"sandbox init: {report['init']['init']} (" in text


def run_denied(mode: list[str], *args: str, tmp_path):
    import subprocess

    marker = tmp_path / "ran"
    cmd = [*DENY, *mode, "--", *nskernel_cmd(*args)]
    # The command would leave a marker if it ever ran, sandboxed or not.
    cmd = [c.replace("MARKER", str(marker)) for c in cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=_repo_root())
    return r, marker


def _repo_root() -> str:
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_seccomp_denial_is_explained_and_nothing_runs(tmp_path):
    r, marker = run_denied(["seccomp"], "run", "--", "touch", "MARKER", tmp_path=tmp_path)
    assert r.returncode == 125, r.stderr
    assert "unshare(CLONE_NEW" in r.stderr
    assert "seccomp" in r.stderr and "--security-opt seccomp=unconfined" in r.stderr
    assert not marker.exists(), "the command ran although the sandbox failed"


def test_doctor_under_seccomp_names_the_cause(tmp_path):
    r, _ = run_denied(["seccomp"], "doctor", "--json", tmp_path=tmp_path)
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["seccomp"] == "filter"
    assert report["ok"] is False
    assert "seccomp" in report["all"]["fix"]


@pytest.mark.userns
@pytest.mark.parametrize("ns", ["net", "pid", "ipc"])
def test_zero_namespace_limit_names_the_namespace_and_the_sysctl(tmp_path, ns):
    r, marker = run_denied(["limit", ns], "run", "--", "touch", "MARKER", tmp_path=tmp_path)
    assert r.returncode == 125, r.stdout + r.stderr
    flag = {"net": "NET", "pid": "PID", "ipc": "IPC"}[ns]
    assert f"unshare(CLONE_NEW{flag})" in r.stderr
    assert f"user.max_{ns}_namespaces" in r.stderr and "sysctl -w" in r.stderr
    assert not marker.exists()


@pytest.mark.userns
def test_doctor_with_a_zero_limit_fails_only_that_namespace(tmp_path):
    r, _ = run_denied(["limit", "uts"], "doctor", "--json", tmp_path=tmp_path)
    report = json.loads(r.stdout)
    assert report["namespaces"]["uts"]["ok"] is False
    assert report["namespaces"]["uts"]["errno"] == "ENOSPC"
    assert "user.max_uts_namespaces" in report["namespaces"]["uts"]["fix"]
    for ns in ("pid", "net", "mnt", "ipc"):
        assert report["namespaces"][ns]["ok"], ns
