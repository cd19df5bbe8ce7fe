"""`nskernel doctor`: what works on this machine, and for what doesn't, why and how to fix it.

Each namespace type is probed for real, as the current user, by creating a sandbox
with just that namespace (plus the user namespace an unprivileged caller needs), and
then all six together. Failures are explained from what the machine shows: the
namespace limits in /proc/sys/user, Ubuntu's AppArmor restriction, a seccomp filter
(Docker's default profile blocks unshare), a masked /proc, missing newuidmap.
"""

from __future__ import annotations

import errno as errno_mod
import os
import shutil
import time
from typing import Any

from ._linux.procfs import NS_TYPES

NAMESPACES = ("user", "pid", "net", "mnt", "uts", "ipc")

_SYSCTL_NAME = {
    "user": "user.max_user_namespaces",
    "pid": "user.max_pid_namespaces",
    "net": "user.max_net_namespaces",
    "mnt": "user.max_mnt_namespaces",
    "uts": "user.max_uts_namespaces",
    "ipc": "user.max_ipc_namespaces",
}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    return _read("/proc/sys/" + name.replace(".", "/"))


def seccomp_mode() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split()[1])
    return 0


def in_container() -> str | None:
    """A best guess at the container runtime we run under, or None."""
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    cg = _read("/proc/1/cgroup") or ""
    for name in ("kubepods", "docker", "containerd", "lxc"):
        if name in cg:
            return "kubernetes" if name == "kubepods" else name
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    return None


def proc_is_masked() -> bool:
    """Container runtimes hide parts of /proc by mounting over them; the kernel then
    refuses a fresh /proc mount in a new user namespace (it would reveal them)."""
    masked = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/acpi")
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in masked:
            return True
    return False


def explain_failure(*, step: str, namespace: str | None, errno: int | None) -> str:
    """The likely cause of a failed setup step, and the fix, as one paragraph."""
    unprivileged = os.geteuid() != 0
    runtime = in_container()
    if step.startswith("unshare") and namespace:
        limit = _SYSCTL_NAME.get(namespace)
        if errno == errno_mod.ENOSPC and limit:
            return (
                f"The limit on {namespace} namespaces is reached or set to 0 "
                f"({limit} = {_sysctl(limit)}). Raise it: sudo sysctl -w {limit}=15000"
            )
        if errno == errno_mod.EINVAL and namespace == "user":
            return "The calling process has several threads; the kernel refuses (EINVAL)."
        if errno in (errno_mod.EPERM, errno_mod.EACCES):
            if seccomp_mode() == 2:
                where = f" (this looks like {runtime})" if runtime else ""
                return (
                    f"A seccomp filter forbids unshare(2) in this process{where}. Docker's "
                    "default seccomp profile does this: run the container with "
                    "--security-opt seccomp=unconfined (or a profile that allows unshare), "
                    "or use a machine that allows namespaces."
                )
            if namespace == "user" and _sysctl("kernel.unprivileged_userns_clone") == "0":
                return (
                    "Unprivileged user namespaces are disabled: "
                    "sudo sysctl -w kernel.unprivileged_userns_clone=1"
                )
            if (
                namespace == "user"
                and _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1"
            ):
                return (
                    "Ubuntu's AppArmor restricts unprivileged user namespaces "
                    "(kernel.apparmor_restrict_unprivileged_userns=1). Allow them for this "
                    "Python with an AppArmor profile granting 'userns', or: "
                    "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
                )
            if runtime:
                return (
                    f"This is a {runtime} container without the privilege to create "
                    "namespaces (Binder and unprivileged Kubernetes pods are like this). "
                    "Run it with --privileged or --security-opt seccomp=unconfined, or use "
                    "a machine (VM) that allows namespaces."
                )
            if unprivileged:
                return (
                    f"Creating a {namespace} namespace needs CAP_SYS_ADMIN or a user "
                    "namespace; check that user namespaces work (nskernel doctor)."
                )
            return "The kernel refused; a security module (SELinux, AppArmor) may forbid it."
    if step == "uid_map" or "uid_map" in step:
        if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
            return (
                "Ubuntu's AppArmor restricts unprivileged user namespaces: the namespace is "
                "created but gets no capabilities, so its id maps cannot be written. "
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
            )
        if not shutil.which("newuidmap"):
            return (
                "Could not write the id maps. For a whole subordinate id range install "
                "newuidmap/newgidmap (Debian: apt install uidmap) and add /etc/subuid entries."
            )
        return "Could not write the id maps; check /etc/subuid and /etc/subgid for this user."
    if namespace == "mnt" and "proc" in step and errno == errno_mod.EPERM and proc_is_masked():
        return (
            "/proc is partly masked (a container runtime mounted over /proc/kcore and "
            "friends), so the kernel refuses a fresh /proc in a new user namespace. Run the "
            "container with --security-opt systempaths=unconfined, or without --mnt/--pid."
        )
    if errno == errno_mod.EPERM and runtime:
        return f"This {runtime} container does not allow it; see `nskernel doctor`."
    return "Run `nskernel doctor` for what this machine allows."


def _probe(namespaces: frozenset[str]) -> dict[str, Any]:
    from .errors import SandboxError
    from .sandbox import Sandbox
    from .spec import SandboxSpec

    try:
        sb = Sandbox.spawn(SandboxSpec(namespaces=namespaces), target=lambda: 0)
    except SandboxError as e:
        return {
            "ok": False,
            "step": e.step,
            "errno": errno_mod.errorcode.get(e.errno or 0, e.errno),
            "error": str(e).splitlines()[0],
            "fix": e.hint,
        }
    code = sb.wait(10)
    if code is None:
        sb.kill()
    return {"ok": code == 0, "created": sorted(sb.namespaces)}


def diagnose() -> dict[str, Any]:
    """Probe every namespace type; JSON-ready."""
    report: dict[str, Any] = {
        "uid": os.geteuid(),
        "kernel": os.uname().release,
        "container": in_container(),
        "seccomp": {0: "disabled", 1: "strict", 2: "filter"}.get(seccomp_mode(), "?"),
        "proc_masked": proc_is_masked(),
        "sysctls": {
            name: _sysctl(name)
            for name in (
                *_SYSCTL_NAME.values(),
                "kernel.unprivileged_userns_clone",
                "kernel.apparmor_restrict_unprivileged_userns",
            )
            if _sysctl(name) is not None
        },
        "newuidmap": shutil.which("newuidmap"),
        "newgidmap": shutil.which("newgidmap"),
        "namespaces": {},
    }
    from ._linux.userns import plan_id_maps

    report["id_maps"] = plan_id_maps().describe()
    for ns in NAMESPACES:
        report["namespaces"][ns] = _probe(frozenset({ns}))
    report["all"] = _probe(frozenset(NAMESPACES))
    report["ok"] = report["all"]["ok"]
    report["limits"] = limit_mechanisms()
    report["init"] = init_in_use() if report["ok"] else None
    return report


def init_in_use() -> dict[str, str]:
    """Which program is a sandbox's PID 1 here, seen in a real sandbox.

    ``native``: nskernel-init (built from init.c at install time), a few pages per
    sandbox. ``python``: the fallback loop, which keeps a copy of the launcher's heap.
    """
    from ._linux import init as init_mod
    from .sandbox import Sandbox
    from .spec import SandboxSpec

    r, w = os.pipe()
    try:
        sb = Sandbox.spawn(SandboxSpec(), target=lambda: len(os.read(r, 1)), pass_fds=(r,))
    except Exception as e:
        os.close(r)
        os.close(w)
        return {"init": "unknown", "why": f"no sandbox could be created: {e}"}
    try:
        exe = ""
        for _ in range(200):  # init execs the native program right after forking the target
            try:
                exe = os.readlink(f"/proc/{sb.pid}/exe")
            except OSError:
                exe = ""
            if exe == init_mod.NATIVE_INIT:
                return {"init": "native", "path": init_mod.NATIVE_INIT}
            time.sleep(0.005)
    finally:
        os.close(w)
        os.close(r)
        sb.kill()
    if os.environ.get(init_mod.INIT_ENV) == "python":
        why = f"{init_mod.INIT_ENV}=python is set"
    elif not os.path.exists(init_mod.NATIVE_INIT):
        why = (
            f"{init_mod.NATIVE_INIT} was not built (no C compiler when nskernel was "
            "installed): install gcc and reinstall nskernel"
        )
    else:
        why = f"{init_mod.NATIVE_INIT} could not be executed inside the sandbox (noexec mount?)"
    return {"init": "python", "why": why}


def limit_mechanisms() -> dict[str, str]:
    """Which mechanism --memory, --pids and --cpus would use here (probed for real)."""
    from ._linux.limits import Limits, create_from_parent

    try:
        applied = create_from_parent(Limits(memory=64 << 20, pids=64, cpus=0.5))
    except OSError as e:
        return {"error": f"cannot probe cgroups: {e}"}
    try:
        return {name: d["mechanism"] for name, d in applied.describe().items()}  # type: ignore[misc]
    finally:
        applied.remove_from_parent()


def format_report(report: dict[str, Any]) -> str:
    who = "root" if report["uid"] == 0 else f"uid {report['uid']} (unprivileged)"
    lines = [f"nskernel doctor: kernel {report['kernel']}, running as {who}"]
    if report["container"]:
        lines.append(f"  inside a container: {report['container']}")
    lines.append(f"  seccomp: {report['seccomp']}; /proc masked: {report['proc_masked']}")
    lines.append(f"  id maps: {report['id_maps']}")
    for ns, r in [*report["namespaces"].items(), ("all six", report["all"])]:
        if r["ok"]:
            lines.append(f"  ok    {ns}")
        else:
            lines.append(f"  FAIL  {ns}: {r['error']}")
            if r.get("fix"):
                lines.append(f"        fix: {r['fix']}")
    for name, mechanism in report.get("limits", {}).items():
        lines.append(f"  limit --{name}: {mechanism}")
    init = report.get("init")
    if init:
        detail = init.get("path") or init.get("why", "")
        lines.append(f"  sandbox init: {init['init']} ({detail})")
    lines.append(
        "Sandboxes work here."
        if report["ok"]
        else "Sandboxes do NOT work here; see the fixes above."
    )
    return "\n".join(lines)


__all__ = ["NS_TYPES", "diagnose", "explain_failure", "format_report"]
