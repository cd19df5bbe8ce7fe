"""`nskernel doctor` and the failure path: denied namespaces give a clear error, and
the command never runs unsandboxed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nskernel import _record
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
    # Not in a container: who installs filters on a host, and the runtimes' settings.
    assert "Seccomp: a seccomp filter forbids unshare to this process" in r.stderr
    assert "SystemCallFilter=" in r.stderr and "seccomp=unconfined" in r.stderr
    assert "`nskernel doctor`" not in r.stderr  # the fix itself, not a pointer to it
    assert not marker.exists(), "the command ran although the sandbox failed"


def test_doctor_under_seccomp_names_the_cause_once(tmp_path):
    r, _ = run_denied(["seccomp"], "doctor", "--json", tmp_path=tmp_path)
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["seccomp"] == "filter"
    assert report["ok"] is False
    # The probe tells the filter's refusal from the kernel's: only unshare is blocked
    # (clone3 too, but nskernel does not need it).
    assert [n for n, v in report["syscalls"].items() if v != "allowed"] == ["unshare", "userns"]
    assert [b["id"] for b in report["blockers"]] == ["seccomp"]
    assert {r["blocker"] for r in [*report["namespaces"].values(), report["all"]]} == {"seccomp"}
    text, _ = run_denied(["seccomp"], "doctor", tmp_path=tmp_path)
    why = report["blockers"][0]["why"]
    assert text.stdout.count(why) == 1, text.stdout  # one paragraph, not one per namespace
    assert "FAIL  user, pid, net, mnt, uts, ipc, all six:" in text.stdout
    assert "`nskernel doctor`" not in text.stdout


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
    assert report["namespaces"]["uts"]["blocker"] == "ns-limit-uts"
    [blocker] = report["blockers"]
    assert "user.max_uts_namespaces" in blocker["why"]
    assert blocker["fix"] == ["sudo sysctl -w user.max_uts_namespaces=15000."]
    for ns in ("pid", "net", "mnt", "ipc"):
        assert report["namespaces"][ns]["ok"], ns


# ---------------------------------------------------------------- probes on this machine


@pytest.mark.userns
def test_the_syscall_probe_sees_no_filter_here():
    from nskernel import doctor

    probe = doctor.probe_syscalls()
    assert set(probe) >= {*doctor.NEEDED_SYSCALLS, "userns", "mount-in-userns"}
    assert all(v == "allowed" for v in probe.values()), probe


@pytest.mark.root
def test_root_without_cap_sys_admin_is_told_apart(nsk):
    """Root in a container has uid 0 but no CAP_SYS_ADMIN: sandboxes still work (with
    their user namespace), and a namespace asked for without one is explained as such."""
    drop = ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"]
    code = (
        "from nskernel import doctor; print(doctor.explain_failure("
        "step='unshare(CLONE_NEWPID)', namespace='pid', errno=1))"
    )
    r = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True)
    assert "root here lacks CAP_SYS_ADMIN" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [*drop, *nskernel_cmd("doctor", "--json")], capture_output=True, text=True, timeout=120
    )
    report = json.loads(r.stdout)
    assert report["cap_sys_admin"] is False and report["uid"] == 0
    assert report["ok"] is True, report


# ---------------------------------------------------------------- pure logic

DOCKER = {"name": "docker", "evidence": "", "engine": None, "jupyterhub": False, "binder": False}
PODMAN = {**DOCKER, "name": "podman"}
K8S = {**DOCKER, "name": "kubernetes", "engine": "containerd"}
HUB = {**K8S, "jupyterhub": True}
HOST = {**DOCKER, "name": None}


@pytest.mark.parametrize(
    ("rt", "blocker", "expected"),
    [
        (DOCKER, "seccomp", "docker run --security-opt seccomp=nskernel-seccomp.json"),
        (DOCKER, "masked", "docker run --security-opt systempaths=unconfined."),
        (DOCKER, "apparmor", "--security-opt apparmor=unconfined"),
        (DOCKER, "selinux", "--security-opt label=disable"),
        (PODMAN, "seccomp", "podman run --security-opt seccomp=nskernel-seccomp.json"),
        (PODMAN, "masked", "podman run --security-opt unmask=ALL."),
        (K8S, "seccomp", "seccompProfile: {type: Localhost, localhostProfile: nskernel-seccomp"),
        (K8S, "masked", "hostUsers: false"),
        (K8S, "masked", "procMount: Unmasked"),
        (K8S, "masked", "'restricted' always rejects an Unmasked procMount"),
        (K8S, "apparmor", "appArmorProfile: {type: Unconfined}"),
        (HUB, "masked", "extra_pod_config: {hostUsers: false}"),
        (HUB, "seccomp", "kubespawner_override: {container_security_context: {seccompProfile"),
        (HOST, "seccomp", "SystemCallFilter="),
        (HOST, "apparmor", "kernel.apparmor_restrict_unprivileged_userns=0"),
    ],
)
def test_each_runtime_gets_its_own_setting(rt, blocker, expected):
    from nskernel import doctor

    fix = " ".join(doctor._settings(blocker, rt))
    assert expected in fix, fix
    assert "nskernel doctor`" not in fix
    assert "/proc:/proc" not in fix and "host's /proc" not in fix


def test_the_fixes_combine_into_one_command_or_pod_spec():
    from nskernel import doctor

    both = [{"id": "seccomp"}, {"id": "masked"}]
    assert doctor.combined_fix(both, DOCKER) == (
        "docker run --security-opt seccomp=nskernel-seccomp.json "
        "--security-opt systempaths=unconfined IMAGE ..."
    )
    assert "--security-opt unmask=ALL" in doctor.combined_fix(both, PODMAN)
    pod = doctor.combined_fix(both, K8S)
    assert pod.splitlines()[:2] == ["spec:", "  hostUsers: false"]
    assert "      procMount: Unmasked" in pod.splitlines()
    # A sysctl is not a flag of the container's command: no combined line.
    assert doctor.combined_fix([{"id": "seccomp"}, {"id": "ns-limit-net"}], DOCKER) is None


def _mountinfo_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


# What Docker's default gives a container (abridged), and what a plain host has.
DOCKER_MOUNTINFO = """
600 500 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X
601 600 0:53 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
602 600 0:54 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
603 602 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
604 600 254:0 /var/lib/docker/containers/abc/hostname /etc/hostname rw - ext4 /dev/vda rw
605 601 0:53 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
606 601 0:53 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
607 601 0:57 / /proc/acpi ro,relatime - tmpfs tmpfs ro
608 601 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw,mode=755
609 602 0:58 / /sys/firmware ro,relatime - tmpfs tmpfs ro
"""
HOST_MOUNTINFO = """
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 22 0:40 / /proc/sys/fs/binfmt_misc rw,relatime - binfmt_misc binfmt_misc rw
34 23 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
"""


def test_masked_proc_and_sys_are_read_from_mountinfo(monkeypatch):
    from nskernel import doctor

    monkeypatch.setattr(doctor, "_mountinfo", lambda: _mountinfo_rows(DOCKER_MOUNTINFO))
    assert doctor.masked_paths() == {
        "/proc": ["/proc/bus", "/proc/sys", "/proc/acpi", "/proc/kcore"],
        "/sys": ["/sys/firmware"],
    }
    # Mounts on the kernel's own empty mount points hide nothing.
    monkeypatch.setattr(doctor, "_mountinfo", lambda: _mountinfo_rows(HOST_MOUNTINFO))
    assert doctor.masked_paths() == {"/proc": [], "/sys": []}


def test_a_leftover_dockerenv_is_not_a_container(monkeypatch):
    """Root filesystems made from Docker images keep /.dockerenv (this project's VM has
    one): only together with the /etc files Docker bind-mounts does it mean Docker."""
    from nskernel import doctor

    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/.dockerenv" or real_exists(p))
    for var in ("KUBERNETES_SERVICE_HOST", "container"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(doctor, "_read", lambda p: "" if p == "/proc/self/cgroup" else None)
    monkeypatch.setattr(doctor, "_mountinfo", lambda: _mountinfo_rows(HOST_MOUNTINFO))
    assert doctor.detect_runtime()["name"] is None
    monkeypatch.setattr(doctor, "_mountinfo", lambda: _mountinfo_rows(DOCKER_MOUNTINFO))
    assert doctor.detect_runtime()["name"] == "docker"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert doctor.detect_runtime()["name"] == "kubernetes"


def test_degraded_modes_are_offered_only_where_they_would_help():
    from nskernel import doctor

    masked = {"/proc": ["/proc/kcore"], "/sys": ["/sys/firmware"]}
    report = {"ok": False, "masked": masked, "syscalls": {}, "blockers": [{"id": "masked"}]}
    deg = doctor.degraded_modes(report, supported=True)
    assert deg["option"] == f"{doctor.DEGRADED_OPTION} proc,sys"
    assert set(deg["loses"]) == {"proc", "sys"}
    assert "every process of the container is listed" in deg["loses"]["proc"]
    # Something else in the way too: no degraded mode runs sandboxes.
    report["blockers"].append({"id": "seccomp"})
    report["syscalls"] = {"unshare": "blocked (EPERM)"}
    assert doctor.degraded_modes(report, supported=True) is None
    # Podman's default profile refuses only sethostname.
    only_hostname = {
        "ok": False,
        "masked": {"/proc": [], "/sys": []},
        "syscalls": {"sethostname": "blocked (EPERM)"},
        "blockers": [{"id": "seccomp"}],
    }
    assert doctor.degraded_modes(only_hostname, supported=True)["option"].endswith(" hostname")
    # Offered as supported only once the sandbox core has the option (the lead's side).
    from nskernel.spec import SandboxSpec

    has = "allow_degraded" in _record.fields(SandboxSpec)
    assert doctor.degraded_modes(report | {"blockers": [{"id": "masked"}]})["supported"] is has


def test_the_container_profile_is_the_default_plus_what_sandboxes_need():
    from nskernel import doctor

    default = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            {"names": ["read", "write", "mount"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        ],
    }
    profile = doctor.derive_container_profile(default)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    rules = profile["syscalls"]
    assert rules[0]["names"] == ["read", "write"]  # everything else of a rule stays
    assert {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1} in rules
    # Sandboxes are made with fork and unshare: clone and clone3 keep their rules.
    assert default["syscalls"][2] in rules and default["syscalls"][3] in rules
    allow = rules[-1]
    assert allow["action"] == "SCMP_ACT_ALLOW" and "args" not in allow
    assert set(allow["names"]) == set(doctor.NEEDED_SYSCALLS)
    # No other rule mentions them: nothing narrows or refuses them any more.
    assert all(not set(r["names"]) & set(allow["names"]) for r in rules[:-1])
    assert default["syscalls"][0]["names"] == ["read", "write", "mount"]  # not modified


def test_print_seccomp_profile(nsk):
    """The profile docs/deploy.md tells operators to use (tests/test_containers.py runs
    Docker with exactly this output)."""
    from nskernel import doctor

    r = nsk("doctor", "--print-seccomp-profile")
    assert r.returncode == 0, r.stderr
    profile = json.loads(r.stdout)
    with open(doctor._default_profile_path()) as f:
        default = json.load(f)
    assert profile == doctor.derive_container_profile(default)
    allowed = {
        n
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args") and not rule.get("includes")
        for n in rule["names"]
    }
    assert set(doctor.NEEDED_SYSCALLS) <= allowed


def test_a_missing_default_profile_is_said_plainly(monkeypatch, tmp_path, capsys):
    import argparse

    from nskernel import doctor

    monkeypatch.setattr(doctor, "_default_profile_path", lambda: tmp_path / "default.json")
    assert doctor.main(argparse.Namespace(print_seccomp_profile=True, json=False)) == 1
    err = capsys.readouterr().err
    assert "has no default seccomp profile" in err and "seccomp=unconfined" in err


def test_degraded_mode_warnings_say_what_is_lost_and_the_real_fix():
    from nskernel import doctor

    for what in ("proc", "sys", "hostname"):
        text = doctor.degraded_warning(what)
        assert text.startswith("nskernel: warning: ")
        assert f"{doctor.DEGRADED_OPTION} {what}" in text
        assert doctor.DEGRADED_LOSSES[what] in text
        assert "docs/deploy.md" in text
    assert "environment, memory" in doctor.degraded_warning("proc")


def test_a_filter_is_blamed_only_for_the_calls_it_refuses(monkeypatch):
    """Podman's default profile refuses sethostname only: a refused /proc there is the
    masking's doing, a refused hostname the filter's."""
    import errno

    from nskernel import doctor

    probe = {n: "allowed" for n in doctor.NEEDED_SYSCALLS} | {"sethostname": "blocked (EPERM)"}
    monkeypatch.setattr(doctor, "seccomp_mode", lambda: 2)
    monkeypatch.setattr(doctor, "probe_syscalls", lambda: probe)
    monkeypatch.setattr(doctor, "masked_paths", lambda: {"/proc": ["/proc/kcore"], "/sys": []})
    proc = doctor.classify(
        step="mount(proc) on /proc", namespace="mnt", errno=errno.EPERM, rt=PODMAN
    )
    assert proc.id == "masked" and "podman run --security-opt unmask=ALL." in proc.fix
    host = doctor.classify(
        step="sethostname('nsk-1')", namespace="uts", errno=errno.EPERM, rt=PODMAN
    )
    assert host.id == "seccomp" and "forbids sethostname to this process" in host.why
