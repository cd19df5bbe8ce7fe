"""`nskernel doctor`: what works on this machine, and for what doesn't, why and how to fix it.

Each namespace type is probed for real, as the current user, by creating a sandbox with
just that namespace and the user namespace that owns it (as every default sandbox has),
and then all six together. What fails is then put down to one *blocker*, the thing in
the way, from what the machine shows:

- ``userns-disabled`` / ``ns-limit``: the kernel's own switches (sysctls), always the
  host's (the node's) to change, never a container's;
- ``seccomp``: a syscall filter (Docker's and containerd's default profiles, systemd's
  SystemCallFilter=/RestrictNamespaces=). Told apart from a capability check by calling
  each syscall nskernel needs with arguments the kernel rejects *before* any privilege
  check: EINVAL/ENOENT/EBADF means the call got through, EPERM means a filter said no;
- ``masked``: a runtime mounted over parts of /proc or /sys (/proc/kcore, /sys/firmware,
  ...); the kernel then refuses a fresh procfs/sysfs in a new user namespace, since it
  would reveal what was hidden;
- ``apparmor`` / ``selinux``: a security module's veto (EACCES);
- ``threads``, ``id-maps``, ``no-cap-sys-admin``: the caller's own situation.

Containers get the exact setting for *their* runtime (the ``docker run`` flags, the
Podman flags, the pod-spec fields and Zero to JupyterHub keys), printed once for all the
namespaces it blocks. What a runtime would block next is predicted from the same facts,
so one round of fixes is enough. Nothing here ever advises mounting the host's /proc.

This module also words the errors sandbox creation raises (:func:`explain_failure`).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._linux.procfs import NS_TYPES
from ._linux.userns import id_map_tool
from ._record import asdict, fields, record

NAMESPACES = ("user", "pid", "net", "mnt", "uts", "ipc")

_SYSCTL_NAME = {
    "user": "user.max_user_namespaces",
    "pid": "user.max_pid_namespaces",
    "net": "user.max_net_namespaces",
    "mnt": "user.max_mnt_namespaces",
    "uts": "user.max_uts_namespaces",
    "ipc": "user.max_ipc_namespaces",
}

# The syscalls nskernel makes to build a sandbox, in the order it makes them. A seccomp
# profile for containers that run nskernel must allow all of them (see
# container_seccomp_profile); Docker's default allows none of them without CAP_SYS_ADMIN.
NEEDED_SYSCALLS = (
    "unshare",
    "mount",
    "umount2",
    "pivot_root",
    "sethostname",
    "setns",
    "open_tree",
    "move_mount",
    "mount_setattr",
)

# The file `--print-seccomp-profile` writes, as the fixes name it.
PROFILE_FILE = "nskernel-seccomp.json"

# Opt-in degraded modes (issue 18, item 4), implemented in the sandbox core: where a
# fresh /proc or /sys is refused (or sethostname), keep what the container has. Doctor
# offers them only once the core has them (see _degraded_supported), under this name;
# the core says degraded_warning(...) wherever one is in use (every cell, every run).
DEGRADED_OPTION = "--allow-degraded"
DEGRADED_ENV = "NSKERNEL_ALLOW_DEGRADED"
DEGRADED_LOSSES = {
    # A fresh procfs is refused outright there (subset=pid and hidepid too, measured
    # with Docker 20.10 on Linux 6.18), so the container's own is all there is.
    "proc": (
        "the sandbox sees the container's own /proc, read-only: every process of the "
        "container is listed with its command line (tokens passed on command lines "
        "included), and those that run as the same user as the sandbox (in a container "
        "run as one user: the Jupyter server and the kernel) can be read further through "
        "/proc/PID (environment, memory) unless the kernel's Yama ptrace_scope forbids it; "
        "none of them can be signalled or traced by PID"
    ),
    "sys": (
        "the sandbox sees the container's own /sys, read-only: /sys/class/net lists the "
        "container's network interfaces, not the sandbox's"
    ),
    "hostname": "the sandbox keeps the container's hostname (its UTS namespace is still its own)",
}


def degraded_warning(what: str) -> str:
    """The warning a sandbox running in degraded mode ``what`` must show, each time."""
    cause = {
        "proc": "the container's runtime refuses a fresh /proc",
        "sys": "the container's runtime refuses a fresh /sys",
        "hostname": "a seccomp filter refuses sethostname",
    }[what]
    return (
        f"nskernel: warning: {cause}, and {DEGRADED_OPTION} {what} is set: "
        f"{DEGRADED_LOSSES[what]}. To get the full sandbox, change the container's "
        "settings as `nskernel doctor` says (docs/deploy.md)."
    )


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _sysctl(name: str) -> str | None:
    return _read("/proc/sys/" + name.replace(".", "/"))


def _status_field(name: str) -> str | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def seccomp_mode() -> int:
    return int(_status_field("Seccomp") or 0)


def no_new_privs() -> bool:
    return _status_field("NoNewPrivs") == "1"


def has_cap_sys_admin() -> bool:
    """CAP_SYS_ADMIN in the effective set: what the kernel checks, whatever the uid.
    (Root in a container usually lacks it; an unprivileged user never has it.)"""
    return bool(int(_status_field("CapEff") or "0", 16) & (1 << 21))


def _in_initial_user_namespace() -> bool:
    from ._linux.userns import in_initial_user_namespace

    return in_initial_user_namespace()


# ---------------------------------------------------------------- where are we?


def _mountinfo() -> list[list[str]]:
    return [line.split() for line in (_read("/proc/self/mountinfo") or "").splitlines()]


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    return path.encode().decode("unicode_escape") if "\\" in path else path


def detect_runtime() -> dict[str, Any]:
    """Which container runtime this process runs under, and the evidence; name None on a
    plain host (or a runtime that leaves no trace).

    A marker file alone proves nothing (``/.dockerenv`` stays in root filesystems made
    from Docker images, virtual machines' included): Docker, Podman and Kubernetes also
    bind-mount /etc/hostname, /etc/hosts or /etc/resolv.conf into every container.
    """
    env = os.environ
    rows = _mountinfo()
    points = {_unescape(r[4]) for r in rows if len(r) > 4}
    sources = " ".join(r[3] for r in rows if len(r) > 4)
    cgroup = _read("/proc/self/cgroup") or ""
    etc_bound = bool(points & {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})
    name: str | None = None
    evidence = ""
    engine = None
    # Kubernetes first: its pods run under containerd or CRI-O, but the fix is the pod
    # spec, whatever the engine.
    if env.get("KUBERNETES_SERVICE_HOST"):
        name, evidence = "kubernetes", "KUBERNETES_SERVICE_HOST is set"
    elif os.path.isdir("/var/run/secrets/kubernetes.io/serviceaccount") and etc_bound:
        name, evidence = "kubernetes", "a service account is mounted"
    elif "/kubelet/pods/" in sources or "kubepods" in cgroup:
        name, evidence = "kubernetes", "mounts or cgroups of a kubelet pod"
    if name == "kubernetes":
        if "containerd" in sources or "containerd" in cgroup:
            engine = "containerd"
        elif "crio" in sources or "crio" in cgroup or os.path.exists("/run/.containerenv"):
            engine = "cri-o"
    elif os.path.exists("/run/.containerenv") and etc_bound:
        name, evidence = "podman", "/run/.containerenv and bind-mounted /etc files"
        for line in (_read("/run/.containerenv") or "").splitlines():
            if line.startswith("engine="):
                engine = line.split("=", 1)[1].strip('"')
    elif os.path.exists("/.dockerenv") and etc_bound:
        name, evidence = "docker", "/.dockerenv and bind-mounted /etc files"
    elif "/docker/containers/" in sources or "/docker/" in cgroup or "docker-" in cgroup:
        name, evidence = "docker", "mounts or cgroups of a Docker container"
    elif "io.containerd" in sources or "containerd" in cgroup:
        name, evidence = "containerd", "mounts or cgroups of a containerd container"
    elif "/lxc" in cgroup or env.get("container") == "lxc":
        name, evidence = "lxc", "cgroups of an LXC container"
    elif etc_bound:
        name, evidence = "unknown", "bind-mounted /etc/hostname, /etc/hosts or /etc/resolv.conf"
    binder = bool(env.get("BINDER_LAUNCH_HOST") or env.get("BINDER_REPO_URL"))
    return {
        "name": name,
        "evidence": evidence,
        "engine": engine,
        # A runtime that gives the container a user namespace of its own (rootless
        # Podman, Kubernetes hostUsers: false, Docker userns-remap).
        "own_user_namespace": not _in_initial_user_namespace(),
        "jupyterhub": bool(env.get("JUPYTERHUB_API_URL")),
        "binder": binder,
    }


def in_container() -> str | None:
    """A best guess at the container runtime we run under, or None."""
    return detect_runtime()["name"]


# Directories the kernel creates permanently empty, as mount points for other file
# systems (sysfs_create_mount_point, register_sysctl_mount_point): a mount on one of
# them hides nothing, so the kernel does not count it against a fresh proc/sysfs.
_EMPTY_MOUNT_POINTS = {
    "/proc": {"sys/fs/binfmt_misc"},
    "/sys": {
        "fs/cgroup",
        "fs/bpf",
        "fs/pstore",
        "fs/fuse/connections",
        "fs/selinux",
        "fs/smackfs",
        "kernel/debug",
        "kernel/tracing",
        "kernel/security",
        "kernel/config",
        "firmware/efi/efivars",
    },
}


def masked_paths() -> dict[str, list[str]]:
    """What is mounted over parts of /proc and /sys, as container runtimes do to hide
    them (``/proc/kcore``, ``/proc/sys`` read-only, ``/sys/firmware``...).

    The kernel refuses a fresh procfs or sysfs in a new user namespace unless an existing
    one is fully visible, so any such mount blocks it (fs/namespace.c,
    mount_too_revealing).
    """
    rows = _mountinfo()
    found: dict[str, list[str]] = {"/proc": [], "/sys": []}
    for top, fstype in (("/proc", "proc"), ("/sys", "sysfs")):
        ids = {
            r[0]
            for r in rows
            if len(r) > 4 and _unescape(r[4]) == top and fstype in r[r.index("-") + 1 : -1]
        }
        for r in rows:
            if len(r) <= 4 or r[1] not in ids:
                continue
            point = _unescape(r[4])
            rel = point[len(top) + 1 :]
            if point.startswith(top + "/") and rel not in _EMPTY_MOUNT_POINTS[top]:
                found[top].append(point)
    return found


def proc_is_masked() -> bool:
    return bool(masked_paths()["/proc"])


def security_module() -> dict[str, Any]:
    """The Linux security module confining this process, if any, and its label."""
    modules = (_read("/sys/kernel/security/lsm") or "").split(",")
    label = _read("/proc/self/attr/apparmor/current")
    if label is not None or os.path.isdir("/sys/module/apparmor"):
        name = "apparmor"
    elif os.path.exists("/sys/fs/selinux/enforce") or "selinux" in modules:
        name = "selinux"
        label = _read("/proc/self/attr/current")
    else:
        name = None
    if name == "apparmor" and label is None:
        label = _read("/proc/self/attr/current")
    confined = (
        bool(label)
        and label not in ("unconfined", "kernel")
        and not (name == "selinux" and ":unconfined_t:" in (label or ""))
    )
    if name == "selinux" and _read("/sys/fs/selinux/enforce") == "0":
        confined = False  # permissive: it logs, it does not refuse
    return {"name": name, "label": label.rstrip("\x00") if label else None, "confined": confined}


# ---------------------------------------------------------------- syscall probe

_CLONE_VFORK = 0x4000  # valid for clone(2), never for unshare(2): EINVAL
_NO_SUCH_PATH = b"/nonexistent-nskernel-probe/x"
_NR_NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "mount_setattr": 442}
_NR_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


# The order in which the child reports (a filter that kills ends the list early).
_PROBE_ORDER = (
    "unshare",
    "mount",
    "umount2",
    "setns",
    "open_tree",
    "mount_setattr",
    "userns",
    "pivot_root",
    "sethostname",
    "move_mount",
    "mount-in-userns",
)


def _call_errno(fn: Any, *args: Any) -> int:
    ctypes.set_errno(0)
    return 0 if fn(*args) >= 0 else ctypes.get_errno()


def _probe_syscalls_in_child(w: int) -> None:
    """Runs in a forked child: one line per syscall, "name errno expected" (so the parent
    knows which one a filter that kills, rather than refuses, killed)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    cp, vp = ctypes.c_char_p, ctypes.c_void_p

    def say(name: str, err: int, expected: int) -> None:
        os.write(w, f"{name} {err} {expected}\n".encode())

    # 1. Arguments the kernel rejects before it checks any privilege.
    flags = 0x10000000 | 0x00020000 | _CLONE_VFORK  # NEWUSER|NEWNS|VFORK
    say("unshare", _call_errno(libc.unshare, ctypes.c_int(flags)), errno_mod.EINVAL)
    say(
        "mount",
        _call_errno(libc.mount, cp(b"none"), cp(_NO_SUCH_PATH), cp(b"tmpfs"), 0, vp(None)),
        errno_mod.ENOENT,
    )
    say("umount2", _call_errno(libc.umount2, cp(b"/"), ctypes.c_int(0x10)), errno_mod.EINVAL)
    say("setns", _call_errno(libc.setns, ctypes.c_int(-1), ctypes.c_int(0)), errno_mod.EBADF)
    nr = _NR_NEW_MOUNT_API
    say(
        "open_tree",
        _call_errno(libc.syscall, nr["open_tree"], -1, cp(b""), ctypes.c_uint(0x2)),
        errno_mod.EINVAL,
    )
    say(
        "mount_setattr",
        _call_errno(
            libc.syscall, nr["mount_setattr"], -1, cp(b""), ctypes.c_uint(0x2), vp(None), 0
        ),
        errno_mod.EINVAL,
    )
    # 2. pivot_root, sethostname and move_mount check the capability first: ask them from
    # a user namespace of our own (with a mount and a UTS namespace), which this child may make
    # where the filter lets unshare through. It dies with the child.
    err = _call_errno(libc.unshare, ctypes.c_int(0x10000000 | 0x00020000 | 0x04000000))
    say("userns", err, 0)
    if err:
        return
    pivot = _NR_PIVOT_ROOT.get(os.uname().machine)
    if pivot is not None:
        err = _call_errno(libc.syscall, pivot, cp(_NO_SUCH_PATH), cp(_NO_SUCH_PATH))
        say("pivot_root", err, errno_mod.ENOENT)
    say("sethostname", _call_errno(libc.sethostname, cp(b"nsk-probe"), 9), 0)
    move = _call_errno(
        libc.syscall, nr["move_mount"], -1, cp(b""), -1, cp(b""), ctypes.c_uint(0x80)
    )
    say("move_mount", move, errno_mod.EINVAL)
    # A real mount in the child's own mount namespace: what a security module says to it
    # (AppArmor's container profiles deny mount with EACCES). Private first, so nothing
    # could propagate anywhere even in principle.
    err = _call_errno(libc.mount, cp(b"none"), cp(b"/"), vp(None), 0x4000 | 0x40000, vp(None))
    say("mount-in-userns", err, 0)


@functools.cache
def probe_syscalls() -> dict[str, str]:
    """Whether a seccomp filter lets each syscall nskernel needs through: ``allowed``,
    ``blocked (EPERM)`` and the like, or ``unknown``. Cached: the answer cannot change
    for this process (filters are only ever added, and inherited)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            _probe_syscalls_in_child(w)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    with open(r, "rb") as f:
        chunks.append(f.read())
    _, status = os.waitpid(pid, 0)
    results: dict[str, str] = {}
    for line in b"".join(chunks).decode().splitlines():
        name, err, expected = line.split()
        e, x = int(err), int(expected)
        if e == x:
            results[name] = "allowed"
        elif e in (errno_mod.EPERM, errno_mod.EACCES, errno_mod.ENOSYS):
            results[name] = f"blocked ({errno_mod.errorcode.get(e, e)})"
        else:
            results[name] = f"unexpected {errno_mod.errorcode.get(e, e)}"
    if os.WIFSIGNALED(status):
        # A filter that kills (SECCOMP_RET_KILL_*): the call after the last one reported.
        nxt = next((n for n in _PROBE_ORDER if n not in results), "?")
        results[nxt] = f"blocked (killed by signal {os.WTERMSIG(status)})"
    return results


def blocked_syscalls(probe: dict[str, str]) -> list[str]:
    """The needed syscalls a seccomp filter refuses (ask only where there is a filter:
    without one, a refusal is the kernel's own)."""
    return [n for n in NEEDED_SYSCALLS if probe.get(n, "").startswith("blocked")]


# ---------------------------------------------------------------- blockers and fixes


@record
class Blocker:
    """One thing in the way, why, and the fix for the runtime we are in."""

    id: str
    what: str
    why: str
    fix: list[str]
    seen: bool = True  # False: predicted from the machine's state, not yet hit

    def paragraph(self) -> str:
        return f"{self.what}: {self.why} Fix: {' '.join(self.fix)}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _on_host(runtime: str | None) -> str:
    if runtime == "kubernetes":
        return "on every node that runs these pods (a pod cannot change it)"
    if runtime:
        return "on the host (a container cannot change it)"
    return ""


def _settings(blocker: str, rt: dict[str, Any]) -> list[str]:
    """The exact setting that removes ``blocker`` under runtime ``rt``."""
    name = rt["name"]
    profile = (
        f"{PROFILE_FILE} (written by: nskernel doctor --print-seccomp-profile > {PROFILE_FILE})"
    )
    if blocker == "seccomp":
        if name in ("docker", "podman", "containerd"):
            cli = {"docker": "docker run", "podman": "podman run", "containerd": "nerdctl run"}
            return [
                f"{cli[name]} --security-opt seccomp={profile};",
                "or, allowing every syscall: --security-opt seccomp=unconfined.",
            ]
        if name == "kubernetes":
            return [
                "in the container's securityContext: seccompProfile: {type: Localhost, "
                f"localhostProfile: {PROFILE_FILE}}} with {profile} copied to the kubelet's "
                "seccomp directory (/var/lib/kubelet/seccomp/) on every node;",
                "or, allowing every syscall: seccompProfile: {type: Unconfined}.",
                *_z2jh(rt, "seccomp"),
            ]
        return [
            "whatever started this process installed the filter: a systemd unit "
            "(SystemCallFilter=, RestrictNamespaces=, PrivateUsers=), a sandbox (firejail, "
            "bwrap --seccomp) or a container runtime doctor did not recognise. Let it "
            f"allow {', '.join(NEEDED_SYSCALLS)} (Docker, Podman: --security-opt "
            f"seccomp={PROFILE_FILE} or seccomp=unconfined; Kubernetes: "
            "securityContext.seccompProfile)."
        ]
    if blocker == "masked":
        if name == "docker":
            return ["docker run --security-opt systempaths=unconfined."]
        if name == "podman":
            return ["podman run --security-opt unmask=ALL."]
        if name == "containerd":
            return ["nerdctl run --security-opt systempaths=unconfined."]
        if name == "kubernetes":
            return [
                "in the pod spec hostUsers: false, and in the container's securityContext "
                "procMount: Unmasked (Kubernetes 1.33 or later with user namespaces: Linux "
                "6.3 or later, containerd 2.0 or CRI-O 1.25 or later). Pod Security "
                "admission: 'restricted' always rejects an Unmasked procMount, 'baseline' "
                "allows it for hostUsers: false pods from Kubernetes 1.35 on (before, only "
                "'privileged' does): label the pods' namespace "
                "pod-security.kubernetes.io/enforce accordingly.",
                *_z2jh(rt, "masked"),
            ]
        return [
            "ask the runtime that masks them to leave /proc and /sys unmasked for this "
            "container (Docker: systempaths=unconfined, Podman: unmask=ALL, Kubernetes: "
            "procMount: Unmasked)."
        ]
    if blocker == "apparmor":
        if name in ("docker", "podman", "containerd"):
            cli = {"docker": "docker run", "podman": "podman run", "containerd": "nerdctl run"}
            return [
                f"{cli[name]} --security-opt apparmor=unconfined (or a profile of your own "
                "that allows mount and userns)."
            ]
        if name == "kubernetes":
            return [
                "in the container's securityContext: appArmorProfile: {type: Unconfined} "
                "(Kubernetes 1.30 or later; before, the annotation "
                "container.apparmor.security.beta.kubernetes.io/CONTAINER: unconfined).",
                *_z2jh(rt, "apparmor"),
            ]
        return [
            "Ubuntu 23.10 and later restrict unprivileged user namespaces: allow them for "
            "this Python with an AppArmor profile that grants 'userns,', or, for the whole "
            "machine, sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0."
        ]
    if blocker == "selinux":
        if name in ("docker", "podman"):
            return [f"{name} run --security-opt label=disable (or a policy that allows it)."]
        if name == "kubernetes":
            return [
                "in the container's securityContext: seLinuxOptions: {type: spc_t} (or a "
                "policy module that allows mount and user namespaces for container_t)."
            ]
        return ["allow mount and user namespaces for this domain in the SELinux policy."]
    raise KeyError(blocker)


def _z2jh(rt: dict[str, Any], blocker: str) -> list[str]:
    """The same setting for Zero to JupyterHub: KubeSpawner options in config.yaml."""
    if not rt.get("jupyterhub"):
        return []
    value = {
        "seccomp": (
            "container_security_context: {seccompProfile: {type: Localhost, "
            f"localhostProfile: {PROFILE_FILE}}}}}"
        ),
        "masked": (
            "extra_pod_config: {hostUsers: false}, "
            "container_security_context: {procMount: Unmasked}"
        ),
        "apparmor": "container_security_context: {appArmorProfile: {type: Unconfined}}",
    }[blocker]
    return [
        f"Zero to JupyterHub (config.yaml): in a singleuser.profileList entry, "
        f"kubespawner_override: {{{value}}} (merge with the other settings it needs)."
    ]


def _blocker(bid: str, rt: dict[str, Any], *, seen: bool = True, **kw: Any) -> Blocker:
    """The blocker ``bid``, worded for the runtime ``rt``."""
    name = rt["name"]
    where = f" ({name})" if name else ""
    host = _on_host(name)
    if bid == "seccomp":
        calls = kw.get("calls") or ["unshare"]
        what = "Seccomp"
        why = (
            f"a seccomp filter forbids {', '.join(calls)} to this process{where}: nskernel needs "
            f"{', '.join(NEEDED_SYSCALLS)} to build a sandbox. Docker's and containerd's "
            "default profiles allow them only with CAP_SYS_ADMIN (which a sandbox does not "
            "need: it gets its privileges in its own user namespace) and never pivot_root."
        )
        return Blocker(bid, what, why, _settings("seccomp", rt), seen)
    if bid == "masked":
        paths = kw.get("paths") or []
        shown = ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
        why = (
            f"the runtime{where} mounted over parts of /proc and /sys ({shown}), and the "
            "kernel refuses a fresh /proc or /sys in a new user namespace while something "
            "is hidden that it would reveal."
        )
        return Blocker(bid, "Masked /proc and /sys", why, _settings("masked", rt), seen)
    if bid in ("apparmor", "selinux"):
        label = kw.get("label") or "?"
        title = {"apparmor": "AppArmor", "selinux": "SELinux"}[bid]
        why = f"the profile {label!r} confining this process{where} refuses {kw.get('call')}."
        return Blocker(bid, title, why, _settings(bid, rt), seen)
    if bid == "apparmor-userns":
        why = (
            "kernel.apparmor_restrict_unprivileged_userns=1: an unprivileged user namespace "
            "is created without capabilities, so nothing can be set up inside it."
        )
        fix = [
            "allow user namespaces for this Python with an AppArmor profile that grants "
            "'userns,', or run " + (host + ": " if host else "") + "sudo sysctl -w "
            "kernel.apparmor_restrict_unprivileged_userns=0."
        ]
        return Blocker(bid, "Ubuntu's AppArmor restriction", why, fix, seen)
    if bid == "userns-disabled":
        why = "unprivileged user namespaces are switched off (kernel.unprivileged_userns_clone=0)."
        fix = [(host + ": " if host else "") + "sudo sysctl -w kernel.unprivileged_userns_clone=1."]
        return Blocker(bid, "User namespaces disabled", why, fix, seen)
    if bid == "ns-limit":
        ns = kw["namespace"]
        limit = _SYSCTL_NAME[ns]
        why = f"the limit on {ns} namespaces is reached or set to 0 ({limit} = {_sysctl(limit)})."
        fix = [(host + ": " if host else "") + f"sudo sysctl -w {limit}=15000."]
        return Blocker(f"ns-limit-{ns}", f"The {ns} namespace limit", why, fix, seen)
    if bid == "threads":
        why = (
            "the calling process has several threads, and the kernel refuses a new user "
            "namespace to a threaded process (EINVAL)."
        )
        fix = [
            "create sandboxes from a single-threaded process: a fresh `nskernel run`, or a "
            "process started for it (Jupyter processes never call Sandbox.spawn directly)."
        ]
        return Blocker(bid, "Threads", why, fix, seen)
    if bid == "no-cap-sys-admin":
        ns = kw.get("namespace") or "this"
        why = (
            f"root here lacks CAP_SYS_ADMIN (as root in a container does), so a {ns} "
            "namespace can only be made inside a user namespace of the sandbox's own."
        )
        fix = ["keep the user namespace: leave out the option that turns it off."]
        return Blocker(bid, "No CAP_SYS_ADMIN", why, fix, seen)
    if bid == "id-maps":
        return Blocker(bid, "Id maps", kw["why"], kw["fix"], seen)
    raise KeyError(bid)


def _id_map_blocker(rt: dict[str, Any]) -> Blocker:
    if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return _blocker("apparmor-userns", rt)
    if no_new_privs() and id_map_tool("newuidmap"):
        why = (
            "newuidmap/newgidmap need their setuid bit, and no_new_privs is set for this "
            "process (Kubernetes allowPrivilegeEscalation: false, Docker "
            "no-new-privileges), so they cannot write a subordinate id range."
        )
        fix = [
            "remove this user's /etc/subuid and /etc/subgid entries inside the container "
            "(a single-id map needs no helper), or allow privilege escalation."
        ]
        return _blocker("id-maps", rt, why=why, fix=fix)
    if not id_map_tool("newuidmap"):
        why = "the user namespace's id maps could not be written, and newuidmap is missing."
        fix = [
            "for a whole subordinate id range install newuidmap/newgidmap (Debian: apt "
            "install uidmap) and add /etc/subuid and /etc/subgid entries for this user."
        ]
        return _blocker("id-maps", rt, why=why, fix=fix)
    why = "the user namespace's id maps could not be written."
    fix = ["check this user's entries in /etc/subuid and /etc/subgid (newuidmap refused them)."]
    return _blocker("id-maps", rt, why=why, fix=fix)


def _syscalls_of(step: str) -> set[str] | None:
    """The syscalls a setup step (as the sandbox core names it) makes; None: unknown."""
    prefixes = {
        ("unshare", "lock the mounts", "create the hub network"): {"unshare"},
        ("sethostname",): {"sethostname"},
        ("pivot_root",): {"pivot_root"},
        ("detach the old root",): {"umount2"},
        ("setns",): {"setns"},
        ("mount(", "bind ", "make "): {"mount", "mount_setattr"},
        ("attach the idmapped",): {"open_tree", "move_mount", "mount_setattr"},
    }
    for starts, calls in prefixes.items():
        if step.startswith(starts):
            return calls
    return None


def classify(
    *, step: str, namespace: str | None, errno: int | None, rt: dict[str, Any] | None = None
) -> Blocker | None:
    """The blocker behind one failed setup step, or None if nothing here explains it."""
    rt = rt if rt is not None else detect_runtime()
    denied = errno in (errno_mod.EPERM, errno_mod.EACCES)
    if step == "uid_map" or "uid_map" in step:
        return _id_map_blocker(rt)
    if step.startswith(("unshare", "lock the mounts")) and namespace:
        if errno == errno_mod.ENOSPC and namespace in _SYSCTL_NAME:
            return _blocker("ns-limit", rt, namespace=namespace)
        if errno == errno_mod.EINVAL and namespace == "user":
            return _blocker("threads", rt)
    if denied and seccomp_mode() == 2:
        blocked = blocked_syscalls(probe_syscalls())
        made = _syscalls_of(step)
        # The filter is to blame if it refuses the call this step made (a filter that
        # refuses only sethostname does not explain a refused /proc).
        if blocked and (made is None or made & set(blocked)):
            return _blocker("seccomp", rt, calls=blocked)
    if denied:
        lsm = security_module()
        if errno == errno_mod.EACCES and lsm["confined"] and lsm["name"]:
            return _blocker(lsm["name"], rt, label=lsm["label"], call=step)
        if (
            namespace == "user"
            and step.startswith("unshare")
            and _sysctl("kernel.unprivileged_userns_clone") == "0"
        ):
            return _blocker("userns-disabled", rt)
        if (
            namespace == "mnt"
            and ("proc" in step or "sysfs" in step)
            and any(masked_paths().values())
        ):
            paths = [p for ps in masked_paths().values() for p in ps]
            return _blocker("masked", rt, paths=paths)
        if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1" and os.geteuid():
            return _blocker("apparmor-userns", rt)
        if lsm["confined"] and lsm["name"]:
            return _blocker(lsm["name"], rt, label=lsm["label"], call=step)
        if (
            step.startswith("unshare")
            and namespace not in (None, "user")
            and os.geteuid() == 0
            and not has_cap_sys_admin()
        ):
            return _blocker("no-cap-sys-admin", rt, namespace=namespace)
    return None


# Why a bind destination was refused, by errno. Destinations are looked up as the sandbox
# will see them (links resolved inside its root, never a /proc link; see mntns): what is
# there now is not a place to bind onto.
_LINK_IN_PATH = (
    ": a symbolic link is in its path (one a sandbox may have left in a writable bind). "
    "Remove the link, or bind onto a path under /tmp or one that exists inside."
)
_BIND_ONTO = {
    errno_mod.EROFS: "The destination leads onto the read-only host filesystem, where a "
    "missing destination cannot be made" + _LINK_IN_PATH,
    errno_mod.ELOOP: "The destination leads through a /proc link, which is never followed"
    + _LINK_IN_PATH,
    errno_mod.ENOENT: "The destination does not exist inside the sandbox and cannot be made "
    "there (only in the sandbox's own tmpfs: /tmp, the homes), or a symbolic link on its "
    "path leads nowhere. Bind onto a path that exists inside, or under /tmp.",
    errno_mod.EACCES: "A directory on the way to the destination may not be entered by "
    "sandbox root (when you are root, sandbox root is an unprivileged host uid, and a bind "
    "keeps its source's owner and mode): let others search it (chmod o+x), or bind onto a "
    "path outside it.",
}


def explain_failure(*, step: str, namespace: str | None, errno: int | None) -> str:
    """The likely cause of a failed setup step, and the fix, as one paragraph."""
    blocker = classify(step=step, namespace=namespace, errno=errno)
    if blocker is not None:
        return blocker.paragraph()
    if step.startswith("bind onto") and errno in _BIND_ONTO:
        return _BIND_ONTO[errno]
    err = errno_mod.errorcode.get(errno or 0, str(errno)) if errno else "an error"
    return (
        f"The kernel refused {step} with {err}, and nothing this process can see explains "
        "it (no seccomp filter or security module refusing it, no namespace limit reached, "
        "/proc and /sys not masked). `nskernel doctor` probes each namespace type; please "
        "report its output (`nskernel doctor --json`) with this message."
    )


# ---------------------------------------------------------------- the report


def _probe(namespaces: frozenset[str]) -> dict[str, Any]:
    from .errors import SandboxError
    from .sandbox import Sandbox
    from .spec import SandboxSpec

    # Namespaces only: the filter and the groups are checked on their own (diagnose).
    spec = SandboxSpec(namespaces=namespaces, seccomp="unconfined", keep_groups=True)
    try:
        sb = Sandbox.spawn(spec, target=lambda: 0, trusted_target=True)
    except SandboxError as e:
        return {
            "ok": False,
            "step": e.step,
            "errno": errno_mod.errorcode.get(e.errno or 0, e.errno),
            "errno_number": e.errno,
            "error": str(e).splitlines()[0],
            "namespace": e.namespace,
        }
    code = sb.wait(10)
    if code is None:
        sb.kill()
    return {"ok": code == 0, "created": sorted(sb.namespaces)}


def _predicted(report: dict[str, Any], rt: dict[str, Any]) -> list[Blocker]:
    """What would stop sandboxes after the blockers already hit are fixed."""
    out: list[Blocker] = []
    blocked = blocked_syscalls(report["syscalls"]) if report["seccomp"] == "filter" else []
    if blocked:
        out.append(_blocker("seccomp", rt, seen=False, calls=blocked))
    lsm = report["security_module"]
    if report["syscalls"].get("mount-in-userns", "").startswith("blocked") and lsm["name"]:
        out.append(_blocker(lsm["name"], rt, seen=False, label=lsm["label"], call="mount"))
    paths = [p for ps in report["masked"].values() for p in ps]
    if paths:
        out.append(_blocker("masked", rt, seen=False, paths=paths))
    return out


def diagnose() -> dict[str, Any]:
    """Probe every namespace type, find what is in the way; JSON-ready."""
    rt = detect_runtime()
    report: dict[str, Any] = {
        "uid": os.geteuid(),
        "kernel": os.uname().release,
        "runtime": rt,
        "container": rt["name"],
        "seccomp": {0: "disabled", 1: "strict", 2: "filter"}.get(seccomp_mode(), "?"),
        "syscalls": probe_syscalls(),
        "masked": masked_paths(),
        "security_module": security_module(),
        "cap_sys_admin": has_cap_sys_admin(),
        "no_new_privs": no_new_privs(),
        "sysctls": {
            name: _sysctl(name)
            for name in (
                *_SYSCTL_NAME.values(),
                "kernel.unprivileged_userns_clone",
                "kernel.apparmor_restrict_unprivileged_userns",
            )
            if _sysctl(name) is not None
        },
        "newuidmap": id_map_tool("newuidmap"),
        "newgidmap": id_map_tool("newgidmap"),
        "namespaces": {},
    }
    report["proc_masked"] = bool(report["masked"]["/proc"])
    report["id_maps"], report["groups"] = _id_maps_and_groups()
    from ._linux import seccomp as seccomp_filter

    why = seccomp_filter.available()
    report["sandbox_filter"] = {"available": why is None, "why": why}
    # Each type with the user namespace that owns it, as every default sandbox has it.
    for ns in NAMESPACES:
        report["namespaces"][ns] = _probe(frozenset({ns, "user"}))
    report["all"] = _probe(frozenset(NAMESPACES))
    report["ok"] = (
        report["all"]["ok"]
        and report["sandbox_filter"]["available"]
        and not report["groups"]["usable_inside"]
    )
    blockers: dict[str, Blocker] = {}
    for r in [*report["namespaces"].values(), report["all"]]:
        if r["ok"]:
            continue
        b = classify(
            step=r.get("step", ""), namespace=r.get("namespace"), errno=r.get("errno_number"), rt=rt
        )
        if b is None:
            r["blocker"] = None
            continue
        r["blocker"] = b.id
        blockers.setdefault(b.id, b)
    if not report["ok"]:
        for b in _predicted(report, rt):
            blockers.setdefault(b.id, b)
    order = ["userns-disabled", "apparmor-userns", "threads", "id-maps", "seccomp"]
    report["blockers"] = [
        b.to_json()
        for b in sorted(
            blockers.values(),
            key=lambda b: (not b.seen, order.index(b.id) if b.id in order else len(order)),
        )
    ]
    report["fix"] = combined_fix(report["blockers"], rt) if report["blockers"] else None
    report["degraded"] = degraded_modes(report)
    report["limits"] = limit_mechanisms()
    report["init"] = init_in_use() if report["ok"] else None
    return report


def _id_maps_and_groups() -> tuple[str, dict[str, Any]]:
    """The id maps sandboxes get, and whether the caller's supplementary groups would stay
    usable inside (they cannot be dropped without a newgidmap range: sandboxes refuse)."""
    from ._linux import userns

    try:
        return userns.plan_id_maps().describe(), {"usable_inside": False}
    except userns.GroupsStayUsable as e:
        from .sandbox import _group_names, _user_name

        plan = userns.plan_id_maps(keep_groups=True)
        return plan.describe(), {
            "usable_inside": True,
            "groups": _group_names(e.groups),
            "fix": "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
            f"{_user_name()}, and newuidmap/newgidmap (Debian: apt install uidmap); or run "
            "with --keep-groups to accept them",
        }


def combined_fix(blockers: list[dict[str, Any]], rt: dict[str, Any]) -> str | None:
    """One command line (or pod-spec fragment) with every setting, for runtimes that
    have one; None where the fixes are not options of one command."""
    ids = {b["id"] for b in blockers}
    name = rt["name"]
    if not ids or not ids <= {"seccomp", "masked", "apparmor", "selinux"}:
        return None
    if name in ("docker", "podman", "containerd"):
        cli = {"docker": "docker run", "podman": "podman run", "containerd": "nerdctl run"}[name]
        opts = []
        if "seccomp" in ids:
            opts.append(f"--security-opt seccomp={PROFILE_FILE}")
        if "masked" in ids:
            opts.append(
                "--security-opt unmask=ALL"
                if name == "podman"
                else "--security-opt systempaths=unconfined"
            )
        if "apparmor" in ids:
            opts.append("--security-opt apparmor=unconfined")
        if "selinux" in ids:
            opts.append("--security-opt label=disable")
        return f"{cli} {' '.join(opts)} IMAGE ..."
    if name == "kubernetes":
        lines = ["spec:"]
        if "masked" in ids:
            lines.append("  hostUsers: false")
        lines += ["  containers:", "  - name: notebook", "    securityContext:"]
        if "seccomp" in ids:
            lines.append(
                f"      seccompProfile: {{type: Localhost, localhostProfile: {PROFILE_FILE}}}"
            )
        if "masked" in ids:
            lines.append("      procMount: Unmasked")
        if "apparmor" in ids:
            lines.append("      appArmorProfile: {type: Unconfined}")
        if "selinux" in ids:
            lines.append("      seLinuxOptions: {type: spc_t}")
        return "\n".join(lines)
    return None


def _degraded_supported() -> bool:
    """Whether the sandbox core offers the opt-in degraded modes yet."""
    from .spec import SandboxSpec

    return "allow_degraded" in set(fields(SandboxSpec))


def degraded_modes(
    report: dict[str, Any], *, supported: bool | None = None
) -> dict[str, Any] | None:
    """When the only things in the way are a masked /proc or /sys (or a refused
    sethostname), the opt-in that would run sandboxes anyway, and what it gives up."""
    if report["ok"] or not report["blockers"]:
        return None
    wanted: list[str] = []
    for b in report["blockers"]:
        if b["id"] == "masked":
            if report["masked"]["/proc"]:
                wanted.append("proc")
            if report["masked"]["/sys"]:
                wanted.append("sys")
        elif b["id"] == "seccomp" and set(blocked_syscalls(report["syscalls"])) == {"sethostname"}:
            wanted.append("hostname")
        else:
            return None  # something else is in the way too: no degraded mode helps
    if not wanted:
        return None
    if supported is None:
        supported = _degraded_supported()
    return {
        "option": f"{DEGRADED_OPTION} {','.join(wanted)}",
        "supported": supported,
        "loses": {w: DEGRADED_LOSSES[w] for w in wanted},
    }


def init_in_use() -> dict[str, str]:
    """Which program is a sandbox's PID 1 here, seen in a real sandbox.

    ``native``: nskernel-init (built from init.c at install time), a few pages per
    sandbox. ``python``: the fallback loop, which keeps a copy of the launcher's heap.
    """
    from ._linux import init as init_mod
    from .sandbox import Sandbox
    from .spec import SandboxSpec

    r, w = os.pipe()
    spec = SandboxSpec(seccomp="unconfined", keep_groups=True)
    try:
        sb = Sandbox.spawn(
            spec, target=lambda: len(os.read(r, 1)), pass_fds=(r,), trusted_target=True
        )
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
            f"{init_mod.NATIVE_INIT} was not built ({init_mod.fallback_reason()}): install "
            "a C compiler (Debian: gcc libc6-dev) and reinstall nskernel"
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


_RUNTIME_TITLE = {
    "docker": "Docker",
    "podman": "Podman",
    "kubernetes": "Kubernetes",
    "containerd": "containerd",
    "lxc": "LXC",
}


def _where(rt: dict[str, Any]) -> str:
    if not rt["name"]:
        return "not in a container"
    if rt["name"] == "unknown":
        return f"in a container of a runtime doctor does not recognise ({rt['evidence']})"
    title = _RUNTIME_TITLE.get(rt["name"], rt["name"])
    engine = f" on {rt['engine']}" if rt.get("engine") else ""
    return f"in a {title} container{engine} ({rt['evidence']})"


def format_report(report: dict[str, Any]) -> str:
    rt = report.get("runtime") or {"name": report.get("container"), "evidence": ""}
    who = "root" if report["uid"] == 0 else f"uid {report['uid']} (unprivileged)"
    if report["uid"] == 0 and not report.get("cap_sys_admin", True):
        who += " without CAP_SYS_ADMIN"
    lines = [f"nskernel doctor: kernel {report['kernel']}, {who}, {_where(rt)}"]
    seccomp = report["seccomp"]
    blocked = blocked_syscalls(report.get("syscalls", {})) if seccomp == "filter" else []
    if blocked:
        seccomp += f", refusing {', '.join(blocked)}"
    elif report["seccomp"] == "filter":
        seccomp += ", allowing what nskernel needs"
    masked = [p for ps in report.get("masked", {}).values() for p in ps]
    lsm = report.get("security_module") or {}
    lsm_text = f"{lsm['name']} ({lsm['label']})" if lsm.get("name") else "none"
    lines.append(f"  seccomp: {seccomp}")
    lines.append(f"  /proc and /sys: {'masked: ' + ', '.join(masked) if masked else 'not masked'}")
    lines.append(f"  security module: {lsm_text}")
    lines.append(f"  id maps: {report['id_maps']}")
    groups = report.get("groups") or {}
    if groups.get("usable_inside"):
        lines.append(
            f"  supplementary groups: {groups['groups']} CANNOT be dropped inside sandboxes, "
            "which therefore refuse to start (they would keep the groups' access)"
        )
        lines.append(f"        fix: {groups['fix']}")
    else:
        lines.append("  supplementary groups: dropped inside sandboxes")
    sf = report.get("sandbox_filter") or {}
    if sf.get("available", True):
        lines.append(
            "  sandbox confinement: default seccomp filter, no_new_privs, reduced capabilities"
        )
    else:
        lines.append(f"  sandbox confinement: the seccomp filter is UNAVAILABLE: {sf['why']}")
    titles = {b["id"]: b["what"] for b in report.get("blockers", [])}
    # One line per namespace that works; one per distinct failure (six namespaces
    # refused for one reason are one line, not six).
    failures: dict[str, list[str]] = {}
    for ns, r in [*report["namespaces"].items(), ("all six", report["all"])]:
        if r["ok"]:
            lines.append(f"  ok    {ns}")
        else:
            cause = titles.get(r.get("blocker") or "", "cause unknown, see below")
            failures.setdefault(f"{r['error']}  [{cause}]", []).append(ns)
    lines.extend(f"  FAIL  {', '.join(names)}: {what}" for what, names in failures.items())
    for name, mechanism in report.get("limits", {}).items():
        lines.append(f"  limit --{name}: {mechanism}")
    init = report.get("init")
    if init:
        detail = init.get("path") or init.get("why", "")
        lines.append(f"  sandbox init: {init['init']} ({detail})")
    if report["ok"]:
        lines.append("Sandboxes work here.")
        return "\n".join(lines)
    if report["all"]["ok"]:
        # The namespaces work; what stops every sandbox is said above, with its fix.
        lines.append(
            "Sandboxes do NOT start here (nskernel fails closed): see the supplementary "
            "groups or the confinement line above, and its fix."
        )
        return "\n".join(lines)
    lines.append("Sandboxes do NOT work here (nskernel fails closed: nothing runs unsandboxed).")
    if rt.get("binder"):
        lines.append(
            "This is mybinder.org, whose pods allow none of this and cannot be changed: "
            "the tutorials' stored outputs show what each cell does."
        )
    blockers = report.get("blockers", [])
    if blockers:
        lines.append("In the way (fix all of them):")
        for i, b in enumerate(blockers, 1):
            later = "" if b["seen"] else " (next, once the above is fixed)"
            lines.append(f"  {i}. {b['what']}{later}: {b['why']}")
            lines.extend(f"     {'fix:' if j == 0 else '    '} {f}" for j, f in enumerate(b["fix"]))
    else:
        lines.append(
            "Nothing this process can see explains the failures above: please report this "
            "output (and `nskernel doctor --json`)."
        )
    if report.get("fix"):
        lines.append("All together:")
        lines.extend("  " + line for line in report["fix"].splitlines())
    deg = report.get("degraded")
    if deg and deg["supported"]:
        lines.append(f"Or, giving up some isolation, opt in with {deg['option']}:")
        lines.extend(f"  {w}: {loss}" for w, loss in deg["loses"].items())
    return "\n".join(lines)


# ---------------------------------------------------------------- the container profile


def _default_profile_path() -> Path:
    return Path(__file__).parent / "_linux" / "profiles" / "default.json"


class ProfileUnavailable(RuntimeError):
    """This nskernel has no default seccomp profile to derive the container profile from."""


def container_seccomp_profile(default: dict[str, Any] | None = None) -> dict[str, Any]:
    """The seccomp profile for a container that runs nskernel, in Docker's JSON format.

    Derived from nskernel's own default filter for sandboxes (``_linux/profiles/
    default.json``, modelled on Docker's default profile): the same rules, plus what
    creating sandboxes needs — new user namespaces and the namespace and mount syscalls —
    without any capability condition, since the container's processes do not hold
    CAP_SYS_ADMIN (they get it in their own user namespaces).
    """
    if default is None:
        path = _default_profile_path()
        try:
            with open(path) as f:
                default = json.load(f)
        except FileNotFoundError:
            msg = (
                f"{path} is missing: this nskernel has no default seccomp profile to derive "
                "the container profile from. Run the container with --security-opt "
                "seccomp=unconfined meanwhile (docs/deploy.md)."
            )
            raise ProfileUnavailable(msg) from None
    return derive_container_profile(default)


def derive_container_profile(default: dict[str, Any]) -> dict[str, Any]:
    """Docker-format profile ``default`` plus an unconditional allow rule for
    NEEDED_SYSCALLS; the rules that named them (to refuse them, or to allow them only
    with CAP_SYS_ADMIN or some arguments) lose those names.

    clone and clone3 keep the default's rules: sandboxes are made with fork and
    unshare. Measured in Docker (tests/test_containers.py's steps, root and uid 1000):
    without umount2, mount_setattr, sethostname or pivot_root no sandbox is made;
    open_tree and move_mount serve the idmapped binds of a root caller, setns the
    sandbox networks of ``%%sandbox --network``.
    """
    needed = set(NEEDED_SYSCALLS)
    profile = json.loads(json.dumps(default))  # a deep copy
    rules = []
    for rule in profile.get("syscalls", []):
        names = [n for n in rule.get("names", []) if n not in needed]
        if not names:
            continue
        rule["names"] = names
        rules.append(rule)
    rules.append(
        {
            "names": sorted(needed),
            "action": "SCMP_ACT_ALLOW",
            "comment": (
                "nskernel: create namespaces (new user namespaces included) and build a "
                "sandbox's mount tree in them; no capability condition, the container has "
                "none of the capabilities these would need on the host"
            ),
        }
    )
    profile["syscalls"] = rules
    return profile


# ---------------------------------------------------------------- the command


def main(args: Any) -> int:
    """`nskernel doctor [--json] [--print-seccomp-profile]`."""
    if getattr(args, "print_seccomp_profile", False):
        try:
            profile = container_seccomp_profile()
        except ProfileUnavailable as e:
            print(f"nskernel doctor: {e}", file=sys.stderr)
            return 1
        print(json.dumps(profile, indent=2))
        return 0
    report = diagnose()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


__all__ = [
    "NS_TYPES",
    "container_seccomp_profile",
    "detect_runtime",
    "diagnose",
    "explain_failure",
    "format_report",
    "probe_syscalls",
]
