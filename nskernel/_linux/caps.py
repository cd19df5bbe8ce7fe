"""The capability set of sandbox root: decided in the launcher, applied in the command.

Design note: sandbox root is uid 0 in its own user namespace and starts with every
capability there. Those reach only what that user namespace owns (its mount, UTS, IPC and
network namespaces, files owned by mapped ids), yet every capability also unlocks kernel
code: the fewer sandbox root holds, the less of the kernel a hostile command can reach.
The set kept is Docker's default plus the two that nskernel's features and tutorials use
over the sandbox's own namespaces (SYS_ADMIN: mount, sethostname, setns; NET_ADMIN: its own
interfaces). SYS_PTRACE is dropped: with fewer capabilities than its init, the kernel
refuses a command's ptrace of init even for the same uid (commoncap's "tracee's permitted
set must be a subset of the tracer's"), so a sandbox cannot stop its own PID 1.

``apply_from_child`` runs in the command process between fork and exec (or before the
target callable): standard library and ctypes only, no allocation-heavy work. It drops the
rest from the bounding set (so an exec cannot regain them), from the permitted, effective
and inheritable sets (so a target that never execs is limited too) and clears the ambient
set. Run by root, a command's capabilities after exec are then exactly ``keep``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from ..errors import SpecError
from . import syscalls

# linux/capability.h, in number order. Index = capability number.
NAMES: tuple[str, ...] = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
NUMBERS: dict[str, int] = {name: i for i, name in enumerate(NAMES)}

# Docker's default capability set (moby's oci/caps/defaults.go), each only over what the
# sandbox's user namespace owns.
DOCKER_DEFAULT: frozenset[str] = frozenset(
    {
        "CHOWN",  # chown files of mapped ids (package managers, tar)
        "DAC_OVERRIDE",  # root ignores file modes on mapped files, as tools expect
        "FSETID",  # keep setgid bits when root writes a file
        "FOWNER",  # chmod/utime files root does not own (mapped ids only)
        "MKNOD",  # FIFOs and sockets by mknod; device nodes stay refused in a user namespace
        "NET_RAW",  # ping over raw sockets, AF_PACKET, in the sandbox's own network
        "SETGID",  # become another mapped gid (su, setpriv, a server dropping privileges)
        "SETUID",  # become another mapped uid
        "SETFCAP",  # file capabilities; also required to map uid 0 in a nested user namespace
        "SETPCAP",  # lower its own bounding set further (nested sandboxes do)
        "NET_BIND_SERVICE",  # bind ports below 1024 in its own network namespace
        "SYS_CHROOT",  # chroot(2), used by build tools and package managers
        "KILL",  # signal processes of other mapped uids inside
        "AUDIT_WRITE",  # login tools send audit records (refused outside the host's namespace)
    }
)
DEFAULT: frozenset[str] = DOCKER_DEFAULT | {
    "SYS_ADMIN",  # mount in its own mount namespace, sethostname, setns/unshare of its own
    "NET_ADMIN",  # configure its own interfaces and routes (ip link/addr/route)
}

ALL = "ALL"

# prctl(2) and capset(2).
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


# Made and looked up once, in the launcher: creating a ctypes array type or resolving a
# libc symbol in every sandbox's command cost ~0.1 ms (measured, benchmarks/cases_confine).
_CapData2 = _CapData * 2
_libc = syscalls._libc
_prctl = _libc.prctl
_capget = _libc.capget
_capset = _libc.capset


def canonical(name: str) -> str:
    """``"cap_net_admin"``, ``"NET_ADMIN"`` -> ``"NET_ADMIN"``; ``"all"`` -> ``"ALL"``.

    Raises SpecError naming the valid names for anything else.
    """
    up = name.strip().upper()
    if up.startswith("CAP_"):
        up = up[4:]
    if up == ALL or up in NUMBERS:
        return up
    valid = ", ".join(NAMES)
    msg = (
        f"unknown capability {name!r}: use one of {valid} (with or without CAP_, any case), or ALL"
    )
    raise SpecError(msg)


def plan(add: Iterable[str] = (), drop: Iterable[str] = ()) -> frozenset[str]:
    """The capability set for ``--cap-add``/``--cap-drop``, with Docker's semantics.

    ``ALL`` in ``add``: every capability except those dropped. ``ALL`` in ``drop``: only
    those added. Otherwise the default set, minus ``drop``, plus ``add`` (a name in both
    is kept, as Docker keeps it).
    """
    adds = [canonical(n) for n in add]
    drops = [canonical(n) for n in drop]
    if ALL in adds:
        return frozenset(n for n in NAMES if n not in drops)
    if ALL in drops:
        return frozenset(adds)
    return frozenset((DEFAULT - set(drops)) | set(adds))


def mask(names: Iterable[str]) -> int:
    """The capability bit mask of ``names`` (canonical names)."""
    bits = 0
    for n in names:
        bits |= 1 << NUMBERS[n]
    return bits


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(NAMES) - 1


def apply_from_child(keep: frozenset[str], *, last: int | None = None) -> None:
    """Limit this process (sandbox root, in its user namespace) to ``keep``.

    Bounding set first (each drop needs CAP_SETPCAP, so that one goes last), then
    capset(2) for permitted/effective/inheritable, then the ambient set. Raises
    OSError naming the call that failed: the caller must not run the command then.
    ``last``: the kernel's highest capability number, read by the parent (``last_cap``)
    so the child need not open /proc.
    """
    apply_mask_from_child(mask(keep), last_cap() if last is None else last)


def apply_mask_from_child(wanted: int, top: int) -> None:
    """``apply_from_child`` with the mask and the kernel's last capability computed in
    the launcher (``confine`` does): the command process only makes the calls."""
    setpcap = NUMBERS["SETPCAP"]
    for cap in [*(c for c in range(top + 1) if c != setpcap), setpcap]:
        if wanted & (1 << cap):
            continue
        # Dropping what is already gone succeeds: no PR_CAPBSET_READ first (half the calls).
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            name = NAMES[cap] if cap < len(NAMES) else str(cap)
            raise OSError(err, f"prctl(PR_CAPBSET_DROP, CAP_{name}): {os.strerror(err)}")

    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapData2()
    if _capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    for i in range(2):
        part = (wanted >> (32 * i)) & 0xFFFFFFFF
        # Only lower: what the process does not hold cannot be given (root in a container
        # without CAP_SYS_ADMIN keeps lacking it).
        data[i].permitted &= part
        data[i].effective &= part
        data[i].inheritable = 0
    if _capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset(permitted={wanted:#x}): {os.strerror(err)}")
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != 22:  # EINVAL: a kernel without ambient capabilities (< 4.3) has none
            raise OSError(err, f"prctl(PR_CAP_AMBIENT_CLEAR_ALL): {os.strerror(err)}")


def decode(bits: int) -> list[str]:
    """Capability names of a mask, in number order (unknown bits as their number)."""
    out = []
    for i in range(bits.bit_length()):
        if bits & (1 << i):
            out.append(NAMES[i] if i < len(NAMES) else str(i))
    return out


def current(pid: int | str = "self") -> dict[str, object]:
    """What /proc/PID/status says about capabilities, no_new_privs and seccomp, decoded.

    ``{"bounding": [...], "effective": [...], "permitted": [...], "inheritable": [...],
    "ambient": [...], "no_new_privs": bool, "seccomp": "disabled"|"strict"|"filter",
    "seccomp_filters": int}`` (keys absent when the kernel does not report them).
    """
    fields = {
        "CapBnd": "bounding",
        "CapEff": "effective",
        "CapPrm": "permitted",
        "CapInh": "inheritable",
        "CapAmb": "ambient",
    }
    out: dict[str, object] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if key in fields:
                out[fields[key]] = decode(int(value, 16))
            elif key == "NoNewPrivs":
                out["no_new_privs"] = value == "1"
            elif key == "Seccomp":
                out["seccomp"] = {"0": "disabled", "1": "strict", "2": "filter"}.get(value, value)
            elif key == "Seccomp_filters":
                out["seccomp_filters"] = int(value)
    return out
