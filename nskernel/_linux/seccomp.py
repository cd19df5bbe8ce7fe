"""The sandbox's syscall filter: chosen and compiled in the launcher, installed in the command.

Design note. Namespaces hide the host; they do not shrink the kernel a sandbox can call.
A seccomp filter does. Two halves, on the two sides of the fork:

- ``load`` (launcher, before fork): reads a profile in Docker's/OCI's JSON format (nskernel's
  own ``profiles/default.json``, or a file the user names), keeps the entries that apply to
  the sandbox's capability set, this architecture and this kernel, and compiles them with
  libseccomp (through the ``pyseccomp`` ctypes binding) into a classic BPF program. The
  program is plain bytes: it crosses the fork for free, and the child never imports the
  binding nor loads libseccomp. Compiled filters are cached per (choice, capabilities,
  nesting flag), so a warm sandbox server compiles once.
- ``install_from_child`` (the command process, after fork, just before exec or the target
  callable): ``prctl(PR_SET_NO_NEW_PRIVS)`` -- always, also for ``unconfined`` -- and then
  ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)``. Standard library and ctypes only.

Profiles are read the way Docker (moby) and runc read them: ``defaultAction`` and
``defaultErrnoRet``; per entry ``names``/``name``, ``action``, ``errnoRet``, ``args``
(``index``, ``value``, ``valueTwo``, ``op``; several conditions on one argument become
separate rules, as runc does, because libseccomp cannot AND them), ``includes``/``excludes``
by ``caps`` (all listed must be held / none may be), ``arches`` (Go names: amd64, arm64)
and ``minKernel``; ``archMap`` or ``architectures``; ``flags``. Syscall names libseccomp
does not know are skipped, as runc skips them, unless they are recent syscalls this module
knows the number of (``_RECENT_SYSCALLS``: Debian 12's libseccomp predates Linux 6.5).
Everything else that cannot be compiled is a :class:`SeccompError` naming the entry.

Argument width. libseccomp compares all 64 bits of an argument register; the kernel reads
an ``int`` argument (socket's family and protocol, personality, prctl's option...) from the
low 32 only. A rule "allow unless the protocol is NETLINK_NETFILTER" (``SCMP_CMP_NE 12``)
let ``socket(AF_NETLINK, SOCK_RAW, 12 | 1 << 32)`` through to nf_tables, and Docker's own
``AF_VSOCK`` rule has the same hole (red team 17). So every compiled filter starts with a
short guard of our own (``_int_argument_guard``): for each argument a rule compares, unless
it is read as 64 bits (``_WIDE_ARGUMENTS``), the upper half must be the zero or sign
extension of the lower one (for umode_t, ``_MODE_ARGUMENTS``, the upper 48 bits clear), or
the call fails with EPERM. What reaches the
rules then compares as the kernel reads it; a value with bit 31 set still has both its
extensions, so compare such values with ``SCMP_CMP_MASKED_EQ`` and mask ``0xffffffff``.
A 32-bit ABI a profile lets in (x86's ``int 0x80``, through Docker's ``archMap``) has its
arguments compared over 32 bits by libseccomp, which is how the kernel reads them, except
the 16-bit ones: umode_t and that ABI's old 16-bit uid calls (``_UID16_ARGUMENTS``). The
guard has a section for each such ABI that checks those (red team 20 F2).

Filters stack: a sandbox made inside a sandbox (``%%sandbox`` in the sandboxed kernel)
runs under both, and the stricter verdict wins. The sandboxed kernel itself gets the
variant that allows new user namespaces (``allow_new_userns=True``) so that its sandbox
server can create them; the cells' sandboxes then get the default on top.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import functools
import json
import os
import stat
import struct
import sys
from collections.abc import Iterable

from .._record import record
from ..errors import SpecError
from . import syscalls

# typing is only for annotations (strings, with the __future__ import): importing it
# cost every `nskernel run` ~2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT = "default"
DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles/default.json")
UNCONFINED = "unconfined"

# prctl(2) / seccomp(2).
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277}
FILTER_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 0,  # one thread between fork and exec: nothing to sync
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}

# seccomp return values (linux/seccomp.h), for describing a verdict.
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
_RET_ACTION_FULL = 0xFFFF0000
_RET_DATA = 0x0000FFFF

CLONE_NEWUSER = syscalls.CLONE_NEWUSER
CLONE_NEWCGROUP = syscalls.CLONE_NEWCGROUP
MAX_PROFILE_BYTES = 1 << 20
BPF_MAXINSNS = 4096  # linux/bpf_common.h: the most one classic BPF program may hold

# Syscalls newer than the libseccomp that Debian 12 ships (2.5.4 knows up to futex_wake).
# Numbers from the kernel's unified syscall table, the same on x86_64 and aarch64; used only
# when libseccomp cannot resolve the name itself.
_RECENT_SYSCALLS: dict[str, int] = {
    "cachestat": 451,
    "fchmodat2": 452,
    "map_shadow_stack": 453,
    "futex_wake": 454,
    "futex_wait": 455,
    "futex_requeue": 456,
    "statmount": 457,
    "listmount": 458,
    "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460,
    "lsm_list_modules": 461,
    "mseal": 462,
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_getattr": 468,
    "file_setattr": 469,
}

# Go's GOARCH names (what Docker's includes/excludes "arches" use) by uname machine.
_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
}

# The syscalls that create a user namespace with their flags in a register: the nesting
# variant allows them without CLONE_NEWUSER's check (clone3 stays ENOSYS).
_NEW_USERNS_CALLS = ("clone", "unshare")

# Which arguments the guard (see the module note) checks, of those a profile's rules
# compare: all of them as the kernel's 32-bit types (int, unsigned int, pid_t, uid_t...:
# most arguments; clone even reads its flags through lower_32_bits), except
# - the arguments read as 64 bits whose values do exceed 32 bits (addresses, lengths,
#   offsets, and what prctl and ptrace pass through): compared whole, never guarded;
# - umode_t, 16 bits: the guard wants the 16 above them clear too.
# Failing closed: an argument missing from both lists is guarded as 32 bits, which at
# worst refuses a call with a value no 32-bit argument can hold (red team 19 F3: a list of
# the 32-bit ones missed setuid's, so "setuid(uid != 0)" let setuid(1 << 32) through).
_WIDE_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "mmap": (0, 1, 5),
    "munmap": (0, 1),
    "mprotect": (0, 1),
    "pkey_mprotect": (0, 1),
    "madvise": (0, 1),
    "process_madvise": (1,),
    "mremap": (0, 1, 2, 4),
    "msync": (0, 1),
    "mlock": (0, 1),
    "mlock2": (0, 1),
    "munlock": (0, 1),
    "mincore": (0, 1),
    "brk": (0,),
    "mseal": (0, 1),
    "prctl": (1, 2, 3, 4),
    "arch_prctl": (1,),
    "ptrace": (2, 3),
    "ioctl": (2,),
    "fcntl": (2,),
    "lseek": (1,),
    "pread64": (1, 2, 3),
    "pwrite64": (1, 2, 3),
    "read": (1, 2),
    "write": (1, 2),
    "truncate": (1,),
    "ftruncate": (1,),
    "fallocate": (2, 3),
    "fadvise64": (1, 2),
    "readahead": (1, 2),
    "sync_file_range": (1, 2),
    "sendfile": (2, 3),
    "copy_file_range": (1, 3, 4),
    "splice": (1, 3, 4),
}
_MODE_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "chmod": (1,),
    "fchmod": (1,),
    "fchmodat": (2,),
    "fchmodat2": (2,),
    "mkdir": (1,),
    "mkdirat": (2,),
    "mknod": (1,),
    "mknodat": (2,),
    "creat": (1,),
    "open": (2,),
    "openat": (3,),
    "mq_open": (2,),
}

# The old uid calls of x86's and arm's 32-bit ABIs (the names without "32": setuid is
# setuid16 there) read old_uid_t/old_gid_t, 16 bits: "setuid(uid != 0)" would pass
# setuid(0x10000), which sets uid 0. The native ABIs have no such calls.
_UID16_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "setuid": (0,),
    "setgid": (0,),
    "setfsuid": (0,),
    "setfsgid": (0,),
    "setreuid": (0, 1),
    "setregid": (0, 1),
    "setresuid": (0, 1, 2),
    "setresgid": (0, 1, 2),
    "chown": (1, 2),
    "lchown": (1, 2),
    "fchown": (1, 2),
}
_UID16_ABIS = frozenset({"X86", "ARM"})
_AUDIT_ARCH_64BIT = 0x80000000

_ERRNO_HINT = (
    "Install it (Debian/Ubuntu: apt-get install libseccomp2; Fedora: dnf install libseccomp) "
    "and the Python binding (pip install pyseccomp), or run without a syscall filter with "
    "--seccomp unconfined."
)


class SeccompError(SpecError):
    """A seccomp profile cannot be read or compiled here; nothing was started."""


@record(frozen=True)
class Filter:
    """A compiled filter: plain data, cheap to carry across fork."""

    name: str  # "default", "unconfined", or the profile's path
    program: bytes | None  # struct sock_filter[]; None for unconfined
    allows_new_userns: bool  # whether unshare/clone(CLONE_NEWUSER) get through
    flags: int = 0  # SECCOMP_FILTER_FLAG_* from the profile's "flags"
    architectures: tuple[str, ...] = ()
    # Names in the profile that libseccomp does not know (skipped, as runc does).
    unknown_syscalls: tuple[str, ...] = ()

    @property
    def instructions(self) -> int:
        return 0 if self.program is None else len(self.program) // 8

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for --status-json, ``%sandbox inspect`` and doctor."""
        out: dict[str, Any] = {
            "name": self.name,
            "mode": "unconfined" if self.program is None else "filter",
            "no_new_privs": True,
            "allows_new_userns": self.allows_new_userns,
        }
        if self.program is not None:
            out["instructions"] = self.instructions
            import hashlib  # here, not at import: OpenSSL's load showed in `nskernel run`

            out["sha256"] = hashlib.sha256(self.program).hexdigest()
            out["architectures"] = list(self.architectures)
            if self.flags:
                out["flags"] = [k for k, v in FILTER_FLAGS.items() if v and self.flags & v]
            if self.unknown_syscalls:
                out["unknown_syscalls"] = list(self.unknown_syscalls)
        return out

    def verdict(self, syscall: str | int, *args: int) -> str:
        """What this filter answers to ``syscall(args...)`` on the native architecture:
        ``"allow"``, ``"errno EPERM"``, ``"kill-process"``... (for reports and tests)."""
        if self.program is None:
            return "allow"
        nr = syscall if isinstance(syscall, int) else _resolve_native(syscall)
        if nr is None:
            msg = f"{syscall!r} is not a syscall libseccomp knows on this architecture"
            raise ValueError(msg)
        return describe_action(evaluate(self.program, nr, _binding().system_arch(), args))


# ---------------------------------------------------------------- parent side


# Filters compiled elsewhere by the host side and handed over (``preload``): the sandboxed
# kernel's launcher is a fresh process for every start, and compiling there again cost
# ~9 ms of every kernel start (the provisioner has it compiled already).
_PRELOADED: dict[tuple[str, frozenset[str], bool], Filter] = {}


def serialize(f: Filter) -> bytes:
    """``f`` as bytes for :func:`preload` in another process of the host side."""
    return json.dumps(_to_json(f)).encode()


def preload(
    data: bytes, choice: str, *, capabilities: frozenset[str], allow_new_userns: bool
) -> None:
    """Make :func:`load` return the filter ``serialize`` wrote for exactly this choice.

    Only for bytes from the host side itself (the provisioner, through a descriptor it
    passed): a sandbox never gets to hand a filter to anything.
    """
    f = _from_json(json.loads(data))
    key = (choice, frozenset(_cap_name(c) for c in capabilities), allow_new_userns)
    _PRELOADED[key] = f


def _to_json(f: Filter) -> dict[str, Any]:
    return {
        "name": f.name,
        "program": None if f.program is None else f.program.hex(),
        "allows_new_userns": f.allows_new_userns,
        "flags": f.flags,
        "architectures": list(f.architectures),
        "unknown_syscalls": list(f.unknown_syscalls),
    }


def _from_json(d: dict[str, Any]) -> Filter:
    program = None if d["program"] is None else bytes.fromhex(d["program"])
    if program is not None and (not program or len(program) % 8):
        raise SeccompError("a precompiled filter that is not a BPF program")
    return Filter(
        str(d["name"]),
        program,
        bool(d["allows_new_userns"]),
        int(d["flags"]),
        tuple(str(a) for a in d["architectures"]),
        tuple(str(u) for u in d["unknown_syscalls"]),
    )


def load(choice: str, *, capabilities: frozenset[str], allow_new_userns: bool = False) -> Filter:
    """The filter for ``--seccomp CHOICE``: "default", "unconfined" or a profile's path.

    ``capabilities``: the sandbox's capability set (``caps.plan``), which decides the
    profile's ``includes``/``excludes`` by ``caps``. ``allow_new_userns``: for the default
    profile, the variant that lets the sandbox create user namespaces (the sandboxed
    kernel's own sandbox, so that ``%%sandbox`` works inside it); a profile given by path is
    used as written. Raises :class:`SeccompError` for a profile that cannot be read or
    compiled, or when libseccomp is missing.
    """
    caps_key = frozenset(_cap_name(c) for c in capabilities)
    preloaded = _PRELOADED.get((choice, caps_key, allow_new_userns))
    if preloaded is not None:
        return preloaded
    if choice == UNCONFINED:
        return Filter(UNCONFINED, None, True)
    if choice == DEFAULT:
        return _load_default(caps_key, allow_new_userns)
    if not choice:
        msg = "--seccomp: give default, unconfined, or the path of a Docker/OCI JSON profile"
        raise SeccompError(msg)
    path = os.path.abspath(choice)
    text = _read_profile(path)
    return _load_text(path, text, caps_key)


@functools.lru_cache(maxsize=16)
def _load_default(caps_key: frozenset[str], allow_new_userns: bool) -> Filter:
    # A plain file beside this module (nskernel is never imported from a zip: it ships a
    # binary): importlib.resources would cost `nskernel run` ~4 ms of imports.
    with open(DEFAULT_PROFILE, encoding="utf-8") as f:
        text = f.read()
    built = _precompiled(text, caps_key, allow_new_userns)
    if built is not None:
        return built
    return _compile_default(text, caps_key, allow_new_userns)


def _compile_default(text: str, caps_key: frozenset[str], allow_new_userns: bool) -> Filter:
    profile = _parse(DEFAULT, text)
    if allow_new_userns:
        profile = nesting_variant(profile)
    return compile_profile(DEFAULT, profile, caps_key)


# The default filter, compiled when nskernel was installed (``precompile``, called by
# hatch_build.py), for the default capability set, with and without the nesting variant.
# Loading libseccomp and compiling cost every fresh process ~10 ms (`nskernel run` takes
# ~80): this file makes that a read. It lies in the package, as trusted as the code, and is
# used only when everything the compiled program depends on is exactly as it was then:
# the profile's text, this module's source (the compiler and the guard), the kernel's
# release (minKernel) and the machine. Anything else compiles as before. A newer
# libseccomp is not noticed until nskernel is installed again: the program it made stays
# a valid and equivalent filter.
PRECOMPILED = os.path.join(os.path.dirname(DEFAULT_PROFILE), "default.precompiled.json")


def _precompiled_inputs(text: str) -> dict[str, str]:
    with open(__file__, encoding="utf-8") as f:
        compiler = f.read()
    uname = os.uname()
    return {
        "profile": text,
        "compiler": compiler,
        "kernel": uname.release,
        "machine": uname.machine,
    }


def precompile(path: str = PRECOMPILED) -> None:
    """Compile the default filter into ``path`` (see :data:`PRECOMPILED`); at build time."""
    from . import caps

    with open(DEFAULT_PROFILE, encoding="utf-8") as f:
        text = f.read()
    held = frozenset(_cap_name(c) for c in caps.DEFAULT)
    filters = [
        {
            "capabilities": sorted(held),
            "nesting": nesting,
            "filter": _to_json(_compile_default(text, held, nesting)),
        }
        for nesting in (False, True)
    ]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"inputs": _precompiled_inputs(text), "filters": filters}, f)
    os.replace(tmp, path)


def _precompiled(text: str, caps_key: frozenset[str], allow_new_userns: bool) -> Filter | None:
    try:
        with open(PRECOMPILED, encoding="utf-8") as f:
            stored = json.load(f)
        if stored["inputs"] != _precompiled_inputs(text):
            return None
        for entry in stored["filters"]:
            if entry["nesting"] is allow_new_userns and set(entry["capabilities"]) == caps_key:
                return _from_json(entry["filter"])
    except (OSError, ValueError, KeyError, TypeError, SeccompError):
        return None  # absent (not built here) or not usable: compile instead
    return None


@functools.lru_cache(maxsize=16)
def _load_text(path: str, text: str, caps_key: frozenset[str]) -> Filter:
    return compile_profile(path, _parse(path, text), caps_key)


def nesting_variant(profile: dict[str, Any]) -> dict[str, Any]:
    """``profile`` with clone and unshare allowed with any flags but CLONE_NEWCGROUP.

    New user namespaces are what the sandboxed kernel's own server needs. A cgroup
    namespace is not: it would let that code mount cgroupfs, where rootless the cgroup it
    runs in (the user's own, under systemd) is writable by it, ``cgroup.kill`` included
    (red team 18 F2). clone3 keeps the profile's answer (ENOSYS: glibc falls back to
    clone), as its flags lie in memory a filter cannot read.
    """
    entries = []
    for entry in profile.get("syscalls") or []:
        names = _entry_names(entry)
        kept = [n for n in names if n not in _NEW_USERNS_CALLS]
        if kept:
            entries.append({**{k: v for k, v in entry.items() if k != "name"}, "names": kept})
    entries.append(
        {
            "names": list(_NEW_USERNS_CALLS),
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": CLONE_NEWCGROUP, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
            ],
            "comment": "nesting variant: new user namespaces, for sandboxes made inside; "
            "never a cgroup namespace",
        }
    )
    return {**profile, "syscalls": entries}


def _read_profile(path: str) -> str:
    """The profile's text. Never blocks (a FIFO) and never reads without bound (/dev/zero):
    the path may be one that a sandbox could write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        msg = f"cannot read seccomp profile {path}: {e.strerror}. Give the path of a JSON file."
        raise SeccompError(msg) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            msg = f"seccomp profile {path} is not a regular file: give a JSON file"
            raise SeccompError(msg)
        data = b""
        while len(data) <= MAX_PROFILE_BYTES:
            chunk = os.read(fd, MAX_PROFILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        msg = f"seccomp profile {path} is larger than {MAX_PROFILE_BYTES} bytes: not a profile"
        raise SeccompError(msg)
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise SeccompError(f"seccomp profile {path} is not UTF-8 text: {e}") from e


def _parse(name: str, text: str) -> dict[str, Any]:
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"seccomp profile {name} is not valid JSON: {e}. Fix the file or choose another."
        raise SeccompError(msg) from e
    if not isinstance(profile, dict):
        raise SeccompError(f"seccomp profile {name}: expected a JSON object at the top")
    return profile


def compile_profile(name: str, profile: dict[str, Any], caps_held: frozenset[str]) -> Filter:
    """Compile a parsed Docker/OCI profile into a :class:`Filter` (see the module note)."""
    sc = _binding()
    where = f"seccomp profile {name}"
    default = _action(
        sc,
        profile.get("defaultAction"),
        profile.get("defaultErrnoRet"),
        profile.get("defaultErrno"),
        f"{where}: defaultAction",
    )
    if profile.get("listenerPath"):
        msg = f"{where}: listenerPath needs a seccomp agent, which nskernel does not run"
        raise SeccompError(msg)
    flags = 0
    for flag in profile.get("flags") or []:
        if flag not in FILTER_FLAGS:
            msg = f"{where}: unsupported flag {flag!r}; nskernel knows {', '.join(FILTER_FLAGS)}"
            raise SeccompError(msg)
        flags |= FILTER_FLAGS[flag]

    filt = sc.SyscallFilter(default)
    # A syscall of another ABI (x86's int 0x80, x32) that the profile did not allow kills
    # the process: seccomp argument checks cannot see through socketcall/ipc there.
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    try:
        filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # a binary tree: O(log n) per syscall
    except OSError:
        pass  # libseccomp < 2.5: a linear filter, still correct
    arches = _architectures(sc, profile, where)
    for code in arches.values():
        if code != sc.system_arch():
            try:
                filt.add_arch(code)
            except OSError as e:
                raise SeccompError(f"{where}: libseccomp cannot add an architecture: {e}") from e

    machine = os.uname().machine
    kernel = _kernel_version(os.uname().release)
    unknown: list[str] = []
    # architecture -> syscall number -> {compared argument: bits}
    guarded: dict[int, dict[int, dict[int, int]]] = {}
    native = sc.system_arch()
    x32_code = getattr(sc.Arch, "X32", None)
    x32 = x32_code in arches.values()
    # x32 is not among them: its calls come with x86_64's arch (its section, just below).
    narrow_abis = {
        code: name.removeprefix("SCMP_ARCH_") in _UID16_ABIS
        for name, code in arches.items()
        if not code & _AUDIT_ARCH_64BIT and code != x32_code
    }
    entries = profile.get("syscalls") or []
    if not isinstance(entries, list):
        raise SeccompError(f"{where}: 'syscalls' must be a list of entries")
    for i, entry in enumerate(entries):
        at = f"{where}: syscalls[{i}]"
        if not isinstance(entry, dict):
            raise SeccompError(f"{at}: expected an object with names and action")
        names = _entry_names(entry)
        if not names:
            raise SeccompError(f"{at}: no syscall names ('names': [...])")
        at = f"{at} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        if not _applies(entry, caps_held, machine, kernel, at):
            continue
        action = _action(
            sc, entry.get("action"), entry.get("errnoRet"), entry.get("errno"), f"{at}: action"
        )
        if action == default:
            continue  # libseccomp refuses a rule that repeats the default (runc skips it)
        groups = _conditions(sc, entry.get("args"), at)
        compared = {arg["index"] for arg in entry.get("args") or []}  # checked by _conditions
        for syscall in names:
            nr = _resolve(sc, syscall, machine)
            if nr is None:
                unknown.append(syscall)
                continue
            narrow = _widths(syscall, compared)
            if narrow:
                guarded.setdefault(native, {}).setdefault(nr, {}).update(narrow)
                if x32:  # x32's calls come as x86_64's arch, with numbers of their own
                    nr32 = int(sc.resolve_syscall(sc.Arch.X32, syscall))
                    if nr32 >= 0:
                        guarded[native].setdefault(nr32, {}).update(narrow)
            for code, uid16 in narrow_abis.items():
                narrow = _widths_32bit_abi(syscall, compared, uid16)
                nr_abi = int(sc.resolve_syscall(code, syscall)) if narrow else -1
                if nr_abi >= 0:  # negative: not there, or libseccomp's multiplexed stand-in
                    guarded.setdefault(code, {}).setdefault(nr_abi, {}).update(narrow)
            try:
                for conds in groups:
                    filt.add_rule(action, nr, *conds)
            except OSError as e:
                if _RECENT_SYSCALLS.get(syscall) == nr and len(arches) > 1:
                    # libseccomp translates a rule to the other architectures by name,
                    # and it does not know this one: skipped, as an unknown name is.
                    unknown.append(syscall)
                    continue
                msg = f"{at}: libseccomp refused the rule for {syscall}: {e.strerror}"
                raise SeccompError(msg) from e
    program = _int_argument_guard(native, guarded) + _export(filt)
    if len(program) // 8 > BPF_MAXINSNS:
        msg = (
            f"{where} compiles to {len(program) // 8} BPF instructions; the kernel accepts at "
            f"most {BPF_MAXINSNS}: merge entries or drop architectures"
        )
        raise SeccompError(msg)
    try:
        nr = _resolve_native("unshare") or -1
        new_userns = evaluate(program, nr, sc.system_arch(), (CLONE_NEWUSER,)) == RET_ALLOW
    except ValueError:  # an instruction evaluate() does not know: report the worst case
        new_userns = True
    return Filter(
        name=name,
        program=program,
        allows_new_userns=new_userns,
        flags=flags,
        architectures=tuple(arches),
        unknown_syscalls=tuple(dict.fromkeys(unknown)),
    )


def _entry_names(entry: dict[str, Any]) -> list[str]:
    names = entry.get("names")
    if names is None and entry.get("name"):
        names = [entry["name"]]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        return []
    return names


def _applies(
    entry: dict[str, Any], held: frozenset[str], machine: str, kernel: tuple[int, ...], at: str
) -> bool:
    """Docker's includes/excludes: every included cap held, no excluded cap held, the
    native architecture listed (or not excluded), the kernel at least minKernel."""
    goarch = _GOARCH.get(machine, machine)
    inc = entry.get("includes") or {}
    exc = entry.get("excludes") or {}
    if not isinstance(inc, dict) or not isinstance(exc, dict):
        raise SeccompError(f"{at}: includes/excludes must be objects")
    if inc.get("caps") and not all(_cap_name(c) in held for c in inc["caps"]):
        return False
    if exc.get("caps") and any(_cap_name(c) in held for c in exc["caps"]):
        return False
    if inc.get("arches") and goarch not in inc["arches"] and machine not in inc["arches"]:
        return False
    if exc.get("arches") and (goarch in exc["arches"] or machine in exc["arches"]):
        return False
    if inc.get("minKernel"):
        try:
            need = _kernel_version(str(inc["minKernel"]), strict=True)
        except ValueError:
            msg = f"{at}: minKernel {inc['minKernel']!r} is not a kernel version like '5.8'"
            raise SeccompError(msg) from None
        if kernel < need:
            return False
    return True


def _cap_name(name: str) -> str:
    up = str(name).strip().upper()
    return up[4:] if up.startswith("CAP_") else up


def _kernel_version(release: str, *, strict: bool = False) -> tuple[int, ...]:
    parts = []
    for piece in release.split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if not strict else piece
        if not digits.isdigit():
            if strict:
                raise ValueError(release)
            break
        parts.append(int(digits))
    if strict and not parts:
        raise ValueError(release)
    return tuple(parts)


_ACTIONS = {
    "SCMP_ACT_ALLOW": "ALLOW",
    "SCMP_ACT_LOG": "LOG",
    "SCMP_ACT_TRAP": "TRAP",
    "SCMP_ACT_KILL": "KILL_THREAD",  # Docker's name for the thread-killing action
    "SCMP_ACT_KILL_THREAD": "KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS": "KILL_PROCESS",
}


def _action(sc: Any, name: Any, errno_ret: Any, errno_name: Any, at: str) -> int:
    if name in _ACTIONS:
        return int(getattr(sc, _ACTIONS[name]))
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        code = errno_mod.EPERM
        if errno_name is not None:
            code = getattr(errno_mod, str(errno_name), None)  # Podman's "errno": "ENOSYS"
            if not isinstance(code, int):
                raise SeccompError(f"{at}: unknown errno name {errno_name!r}")
        elif errno_ret is not None:
            if not isinstance(errno_ret, int) or not 0 <= errno_ret <= 0xFFFF:
                raise SeccompError(f"{at}: errnoRet must be a number 0-65535, not {errno_ret!r}")
            code = errno_ret
        return int(sc.ERRNO(code) if name == "SCMP_ACT_ERRNO" else sc.TRACE(code))
    if name == "SCMP_ACT_NOTIFY":
        raise SeccompError(f"{at}: SCMP_ACT_NOTIFY needs a seccomp agent; nskernel runs none")
    known = ", ".join([*_ACTIONS, "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"])
    raise SeccompError(f"{at}: unknown action {name!r}; use one of {known}")


_OPS = {
    "SCMP_CMP_NE": "NE",
    "SCMP_CMP_LT": "LT",
    "SCMP_CMP_LE": "LE",
    "SCMP_CMP_EQ": "EQ",
    "SCMP_CMP_GE": "GE",
    "SCMP_CMP_GT": "GT",
    "SCMP_CMP_MASKED_EQ": "MASKED_EQ",
}


def _conditions(sc: Any, args: Any, at: str) -> list[list[Any]]:
    """The argument conditions as groups of rules: one group (all ANDed) normally; one
    rule per condition (ORed) when two conditions name the same argument, as runc does."""
    if not args:
        return [[]]
    if not isinstance(args, list):
        raise SeccompError(f"{at}: 'args' must be a list")
    conds = []
    seen: list[int] = []
    for j, arg in enumerate(args):
        where = f"{at}: args[{j}]"
        if not isinstance(arg, dict):
            raise SeccompError(f"{where}: expected an object with index, value and op")
        index, value, two = arg.get("index"), arg.get("value", 0), arg.get("valueTwo", 0)
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise SeccompError(f"{where}: index must be 0-5, not {index!r}")
        for v in (value, two):
            if not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise SeccompError(f"{where}: values must be numbers 0 to 2^64-1, not {v!r}")
        op = _OPS.get(arg.get("op"))
        if op is None:
            msg = f"{where}: unknown op {arg.get('op')!r}; use one of {', '.join(_OPS)}"
            raise SeccompError(msg)
        # MASKED_EQ: Docker's value is the mask and valueTwo the datum, as libseccomp's.
        conds.append(sc.Arg(index, getattr(sc, op), value, two))
        seen.append(index)
    if len(set(seen)) < len(seen):
        return [[c] for c in conds]
    return [conds]


# Classic BPF opcodes (linux/bpf_common.h) for the guard; struct seccomp_data offsets.
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_JA = 0x05  # BPF_JMP | BPF_JA
_RET = 0x06  # BPF_RET | BPF_K
_NR, _ARCH, _ARGS = 0, 4, 16
_EPERM = RET_ERRNO | errno_mod.EPERM


def _widths(syscall: str, compared: set[int]) -> dict[int, int]:
    """The bits the kernel reads of each compared argument that the guard must check."""
    wide = _WIDE_ARGUMENTS.get(syscall, ())
    mode = _MODE_ARGUMENTS.get(syscall, ())
    return {i: 16 if i in mode else 32 for i in compared if i not in wide}


def _widths_32bit_abi(syscall: str, compared: set[int], uid16: bool) -> dict[int, int]:
    """The same on a 32-bit ABI, where libseccomp compares the 32 bits the kernel reads:
    only the 16-bit arguments need the guard."""
    narrow = (
        *_MODE_ARGUMENTS.get(syscall, ()),
        *(_UID16_ARGUMENTS.get(syscall, ()) if uid16 else ()),
    )
    return {i: 16 for i in compared if i in narrow}


def _check(index: int, bits: int, abi_bits: int) -> list[tuple[int, int | str, int | str, int]]:
    """Instructions that fall through when argument ``index`` holds a value of ``bits``
    bits as the kernel reads it, and jump to "deny" otherwise. On a 32-bit ABI
    (``abi_bits`` 32) the kernel and libseccomp ignore the upper half of the register."""
    hi, lo = (4, 0) if sys.byteorder == "little" else (0, 4)
    hi_k, lo_k = _ARGS + 8 * index + hi, _ARGS + 8 * index + lo
    if bits == 16:  # umode_t, old_uid_t: zero-extended by every caller
        upper_half = [(_LD_ABS, 0, 0, hi_k), (_JEQ, 0, "deny", 0)] if abi_bits == 64 else []
        return [*upper_half, (_LD_ABS, 0, 0, lo_k), (_JSET, "deny", 0, 0xFFFF0000)]
    return [
        (_LD_ABS, 0, 0, hi_k),
        (_JEQ, 3, 0, 0),  # zero extension: the next check
        (_JEQ, 0, "deny", 0xFFFFFFFF),
        (_LD_ABS, 0, 0, lo_k),
        (_JSET, 0, "deny", 0x80000000),  # a sign extension of a negative value
    ]


def _int_argument_guard(native: int, guarded: dict[int, dict[int, dict[int, int]]]) -> bytes:
    """BPF that runs before libseccomp's program (see the module note): a section per
    architecture in ``guarded`` (the native one first; x32's numbers are in its section,
    as they come with x86_64's arch), in which each listed argument of each listed
    syscall number must hold a value of its width (``_check``), or the call returns
    EPERM. Everything else falls through to the program after it. Classic BPF jumps only
    forward and by relative offsets, so libseccomp's program needs no change behind it.
    """
    insns: list[tuple[int, int | str, int | str, int | str]] = []
    starts = []  # where each section begins
    for arch in sorted(guarded, key=lambda a: a != native):
        starts.append(len(insns))
        abi_bits = 64 if arch & _AUDIT_ARCH_64BIT else 32
        # Not this arch: on to the next section ("ja" with k "next"; the last one's next
        # is the end of the guard).
        insns += [(_LD_ABS, 0, 0, _ARCH), (_JEQ, 1, 0, arch), (_JA, 0, 0, "next")]
        insns.append((_LD_ABS, 0, 0, _NR))
        for nr in sorted(guarded[arch]):
            checks = [
                op
                for index, bits in sorted(guarded[arch][nr].items())
                for op in _check(index, bits, abi_bits)
            ]
            # jeq nr (else the next block); the checks; "ja" to the end; EPERM.
            block = [
                (_JEQ, 0, len(checks) + 2, nr),
                *checks,
                (_JA, 0, 0, "end"),
                (_RET, 0, 0, _EPERM),
            ]
            deny = len(block) - 1
            for pc, (code, jt, jf, k) in enumerate(block):
                jt, jf = (deny - pc - 1 if j == "deny" else j for j in (jt, jf))
                insns.append((code, jt, jf, k))
        insns.append((_JA, 0, 0, "end"))  # a number this section does not list
    out = []
    for pc, (code, jt, jf, k) in enumerate(insns):
        if k == "end":
            k = len(insns) - pc - 1
        elif k == "next":
            k = next((s for s in starts if s > pc), len(insns)) - pc - 1
        if not (isinstance(jt, int) and isinstance(jf, int) and 0 <= jt <= 255 and 0 <= jf <= 255):
            raise SeccompError("too many argument conditions on one syscall for the guard")
        out.append(struct.pack("=HBBI", code, jt, jf, k))  # struct sock_filter, native order
    return b"".join(out)


def _architectures(sc: Any, profile: dict[str, Any], where: str) -> dict[str, int]:
    """Architecture names -> libseccomp codes: the native one, plus Docker's rule (the
    archMap entry whose architecture is native brings its subArchitectures), plus any
    listed under the older ``architectures`` key."""
    by_code = {
        getattr(sc.Arch, n): f"SCMP_ARCH_{n}" for n in dir(sc.Arch) if n.isupper() and n != "NATIVE"
    }
    native = by_code.get(sc.system_arch(), f"native({sc.system_arch():#x})")
    wanted = [native]
    listed, archmap = profile.get("architectures"), profile.get("archMap")
    if listed and archmap:
        msg = f"{where}: give either 'architectures' or 'archMap', not both (as Docker requires)"
        raise SeccompError(msg)
    for item in archmap or []:
        if isinstance(item, dict) and item.get("architecture") == native:
            wanted += item.get("subArchitectures") or []
    wanted += listed or []
    out: dict[str, int] = {}
    for arch in wanted:
        if arch == native:
            out[arch] = sc.system_arch()
            continue
        code = getattr(sc.Arch, str(arch).removeprefix("SCMP_ARCH_"), None)
        if not isinstance(code, int) or code == 0:
            raise SeccompError(f"{where}: unknown architecture {arch!r}")
        out[arch] = code
    return out


def _resolve(sc: Any, name: str, machine: str) -> int | None:
    nr = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    if nr != -1:  # -1: unknown; other negatives are libseccomp's pseudo numbers (valid)
        return nr
    if machine in ("x86_64", "aarch64"):
        return _RECENT_SYSCALLS.get(name)
    return None


def _resolve_native(name: str) -> int | None:
    sc = _binding()
    return _resolve(sc, name, os.uname().machine)


def _export(filt: Any) -> bytes:
    fd = os.memfd_create("nskernel-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "r+b") as f:
            filt.export_bpf(f)
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


@functools.cache
def _binding() -> Any:
    """The libseccomp binding, imported on first use (and only in the launcher)."""
    try:
        pyseccomp = _import_binding()
    except ImportError as e:
        msg = f"cannot compile seccomp filters: the Python binding is missing ({e}). {_ERRNO_HINT}"
        raise SeccompError(msg) from e
    except (OSError, RuntimeError, AttributeError) as e:
        # pyseccomp raises RuntimeError when libseccomp.so.2 is absent and AttributeError
        # when it is older than 2.4 (no seccomp_api_get).
        msg = f"cannot compile seccomp filters: libseccomp is missing or too old ({e}). "
        raise SeccompError(msg + _ERRNO_HINT) from e
    return pyseccomp


_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _import_binding() -> Any:
    """``import pyseccomp``, without its two ``ctypes.util.find_library`` searches when the
    usual sonames load: each runs ``ldconfig -p`` in a subprocess, ~55 ms of every
    ``nskernel run`` measured on this project's VM. Elsewhere (musl...) it searches."""
    import ctypes.util

    try:
        for soname in _SONAMES.values():
            ctypes.CDLL(soname)
    except OSError:
        import pyseccomp

        return pyseccomp
    search = ctypes.util.find_library
    ctypes.util.find_library = lambda name: _SONAMES.get(name) or search(name)
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = search
    return pyseccomp


def available() -> str | None:
    """None if filters can be compiled and installed here, else why and what to do."""
    try:
        _binding()  # a cached filter would not tell whether libseccomp is (still) here
        filt = load(DEFAULT, capabilities=frozenset())
    except SeccompError as e:
        return str(e)
    if not os.path.exists("/proc/sys/kernel/seccomp/actions_avail"):
        return "this kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)"
    # The real thing, in a child: a container's own filter or an LSM may still refuse it.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            install_from_child(filt)
            code = 0
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return "installing a seccomp filter failed here (prctl PR_SET_SECCOMP refused)"
    return None


# ---------------------------------------------------------------- child side


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_from_child(f: Filter) -> None:
    """``no_new_privs``, then the filter: the last setup step before exec or the target.

    Stdlib and ctypes only. Raises OSError naming the call that failed; the caller must
    not run the command then (a sandbox never runs unfiltered by accident).
    """
    libc = syscalls._libc
    if libc.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    if f.program is None:
        return
    buf = ctypes.create_string_buffer(f.program, len(f.program))
    prog = _SockFprog(len(f.program) // 8, ctypes.addressof(buf))
    if f.flags:
        nr = _SECCOMP_NR.get(os.uname().machine)
        if nr is None:
            raise OSError(38, f"seccomp(2) flags: unsupported architecture {os.uname().machine}")
        ret = libc.syscall(
            ctypes.c_long(nr),
            ctypes.c_long(SECCOMP_SET_MODE_FILTER),
            ctypes.c_long(f.flags),
            ctypes.byref(prog),
        )
        what = f"seccomp(SECCOMP_SET_MODE_FILTER, {f.flags:#x})"
    else:
        ret = libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0)
        what = "prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)"
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} ({f.name}, {f.instructions} instructions): {os.strerror(err)}")


# ---------------------------------------------------------------- reading a program


def evaluate(program: bytes, nr: int, arch: int, args: Iterable[int] = ()) -> int:
    """Run a classic BPF seccomp program on ``struct seccomp_data`` as the kernel would,
    returning its verdict (``SECCOMP_RET_*``). For reports and tests, never for enforcing.

    Covers the instructions libseccomp emits (loads, ALU with constants, jumps, return).
    """
    argv = [*args, 0, 0, 0, 0, 0, 0][:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(a & (1 << 64) - 1 for a in argv))
    insns = list(struct.iter_unpack("<HBBI", program))
    a = x = 0
    mem = [0] * 16
    pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if cls == 0x00:  # LD
            mode = code & 0xE0
            if mode == 0x20 and code & 0x18 == 0:  # BPF_W | BPF_ABS
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = mem[k]
            else:
                raise ValueError(f"BPF load {code:#x} not supported")
        elif cls == 0x01:  # LDX
            x = k if code & 0xE0 == 0x00 else mem[k]
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            src = x if code & 0x08 else k
            a = _alu(code & 0xF0, a, src) & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & 0x08 else k
            taken = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}.get(op)
            if taken is None:
                raise ValueError(f"BPF jump {code:#x} not supported")
            pc += jt if taken else jf
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        elif cls == 0x07:  # MISC
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
    raise ValueError("the BPF program ran off its end")


def _alu(op: int, a: int, src: int) -> int:
    if op == 0x00:
        return a + src
    if op == 0x10:
        return a - src
    if op == 0x20:
        return a * src
    if op == 0x40:
        return a | src
    if op == 0x50:
        return a & src
    if op == 0x60:
        return a << src
    if op == 0x70:
        return a >> src
    if op == 0x80:
        return -a
    if op == 0xA0:
        return a ^ src
    raise ValueError(f"BPF ALU operation {op:#x} not supported")


def describe_action(ret: int) -> str:
    action = ret & _RET_ACTION_FULL
    data = ret & _RET_DATA
    if action == RET_ALLOW:
        return "allow"
    if action == RET_ERRNO:
        return f"errno {errno_mod.errorcode.get(data, data)}"
    names = {
        RET_KILL_PROCESS: "kill-process",
        RET_KILL_THREAD: "kill-thread",
        RET_TRAP: "trap",
        RET_USER_NOTIF: "notify",
        RET_TRACE: "trace",
        RET_LOG: "log",
    }
    return names.get(action, f"{ret:#x}")
