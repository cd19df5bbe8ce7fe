"""Facts about a place — the host or one sandbox — as plain, JSON-ready data.

The widgets, ``%sandbox inspect`` and the sandboxed kernel all show the same thing: for
each place, its hostname, interfaces, PID table, id maps, namespace ids and limits. This
module is the one schema for that, and the code that reads it from Linux.

Constraint: :func:`gather_here` runs *inside* sandboxes (from a forked child of the
sandbox server, or in the sandboxed kernel), so this module imports only the standard
library — no IPython, ipywidgets or pyroute2 — and reads everything from /proc, /sys and
two ioctls. It must also be cheap: the kernel launcher calls :func:`capture_host_facts`
before every kernel start (budget: 50 ms).

Hazard: the host and a sandbox see different things. From inside, ``NSpid`` in a fresh
/proc shows only the inner PID, so host PIDs are unknown; from the host, another UTS
namespace's hostname cannot be read at all, and an interface's UP/DOWN state is only
readable through the sandbox's own /sys. Whatever a side cannot know is left ``None`` and
explained in ``errors`` (a section name → why), never guessed and never raised.

Schema (``SCHEMA_VERSION`` 1)::

    {
      "schema": 1, "name": "host", "kind": "host" | "sandbox", "alive": true,
      "gathered_at": 1700000000.0,          # time.time()
      "seen_from": "inside" | "host",       # who read these facts
      "host_pid": 1234 | null,              # sandboxes: host PID of the sandbox's init
      "hostname": "nsk-1a2b3c" | null,
      "interfaces": [{"name": "lo", "state": "UP" | "DOWN" | null,
                      "addresses": ["127.0.0.1/8", "::1/128"]}],
      "processes": [{"pid": 1, "host_pid": 1234 | null, "uid": 0, "user": "root",
                     "command": "nskernel-init"}],
      "uid_map": [[0, 1000, 1]], "gid_map": [[0, 1000, 1]],
      "namespaces": {"pid": 4026532290, "net": ..., "mnt": ..., "uts": ...,
                     "ipc": ..., "user": ..., "cgroup": ...},
      "created": ["pid", "net", ...] | null,  # namespace types the sandbox made itself
      "limits": {"memory": "512 MiB (cgroup v1)"},
      "errors": {"hostname": "why it is unknown", "namespace.net": "why unavailable",
                 "interfaces_cut": "what a bounded read left out"}
    }

Process tables list user processes only: kernel threads (children of ``kthreadd``) are
left out of the host's table, as they never belong to a sandbox.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ._linux import syscalls
from ._linux.limits import LEAF as _LIMITS_LEAF
from ._linux.procfs import NS_TYPES, namespace_ids
from ._linux.procfs import id_map as _id_map

SCHEMA_VERSION = 1

# NS_TYPES: the namespace types a place reports, in display order.

#: The environment variable the kernel launcher sets to the captured host facts file.
HOST_FACTS_ENV = "NSKERNEL_HOST_FACTS"

Facts = dict[str, Any]


class FactsError(Exception):
    """Facts could not be read or loaded; the message says which file and what to do."""


# ------------------------------------------------------------------ the schema


def empty_facts(name: str, kind: str, *, seen_from: str = "inside") -> Facts:
    """A facts dict with every section present and nothing known yet."""
    return {
        "schema": SCHEMA_VERSION,
        "name": name,
        "kind": kind,
        "alive": True,
        "gathered_at": time.time(),
        "seen_from": seen_from,
        "host_pid": None,
        "hostname": None,
        "interfaces": [],
        "processes": [],
        "uid_map": [],
        "gid_map": [],
        "namespaces": {},
        "created": None,
        "limits": {},
        "errors": {},
    }


def exited_facts(name: str, *, host_pid: int | None = None, why: str = "") -> Facts:
    """The facts of a sandbox that is gone: ``alive`` is False and ``errors`` says so."""
    f = empty_facts(name, "sandbox", seen_from="host")
    f["alive"] = False
    f["host_pid"] = host_pid
    f["errors"]["alive"] = why or "the sandbox has exited"
    return f


def normalize(facts: Mapping[str, Any]) -> Facts:
    """Fill in missing sections so renderers never meet a KeyError (e.g. older JSON)."""
    base = empty_facts(str(facts.get("name") or "?"), str(facts.get("kind") or "sandbox"))
    base.update({k: v for k, v in facts.items() if v is not None or k in base})
    for key in ("interfaces", "processes", "uid_map", "gid_map"):
        base[key] = list(base.get(key) or [])
    for key in ("namespaces", "limits", "errors"):
        base[key] = dict(base.get(key) or {})
    return base


# ------------------------------------------------------------------ small readers


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# What the host reads of a sandbox is bounded, in bytes and in items. A sandbox decides how
# long its /proc/PID/net files are (it has CAP_NET_ADMIN over its own network namespace:
# thousands of addresses, routes or links take it under a second), and the host reads them
# in the single-threaded %%sandbox server (which answers nothing meanwhile, not even an
# interrupt) and in the kernel. With these caps one read of a sandbox's facts costs the host
# milliseconds whatever the sandbox did; ``errors["interfaces_cut"]`` says what was left out.

#: Bytes read of each of a sandbox's /proc/PID/net files (dev, fib_trie, route, if_inet6).
NET_READ_MAX = 128 * 1024
#: Interfaces listed per place: each costs the host a few syscalls (its UP/DOWN state).
MAX_INTERFACES = 128
#: Bytes read of a process's command line (``command`` keeps 200 characters).
CMDLINE_READ_MAX = 4096
COMMAND_MAX = 200
#: Processes listed per place, read on the host. Finding a sandbox's processes takes a
#: look at every process's status, but the rest (command lines, user names, rows of the
#: panel's table and its HTML) stops here: a sandbox with 8,000 processes cost the
#: host 0.8 s of CPU, 100 MiB and 8.7 MB of HTML per panel before (red team 32 F2).
MAX_PROCESSES = 500


def _read_bounded(path: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` bytes of ``path``, in whole lines, and whether there was more.

    Bytes that are not UTF-8 (interface names may be any bytes but "/", ":" and spaces)
    come back as U+FFFD, never as an exception.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        chunks: list[bytes] = []
        n = 0
        while n <= limit:  # procfs hands out a page or so per read
            chunk = os.read(fd, limit + 1 - n)
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    cut = n > limit
    if cut:
        data = data[: data.rfind(b"\n", 0, limit) + 1]
    return data.decode("utf-8", "replace"), cut


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} ({e.filename})" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}"


def _status(pid: int | str) -> dict[str, str]:
    """``/proc/PID/status`` as a dict of its first-column keys."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _namespaces(pid: int | str, facts: Facts) -> None:
    for t in NS_TYPES:
        try:
            facts["namespaces"][t] = os.stat(f"/proc/{pid}/ns/{t}").st_ino
        except FileNotFoundError:
            facts["errors"][f"namespace.{t}"] = (
                f"this kernel has no {t} namespaces (no /proc/{pid}/ns/{t})"
            )
        except OSError as e:
            facts["errors"][f"namespace.{t}"] = f"cannot read /proc/{pid}/ns/{t}: {_why(e)}"


_user_names: dict[int, str] = {}


def _user_name(uid: int) -> str:
    if uid not in _user_names:
        try:
            _user_names[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _user_names[uid] = str(uid)
    return _user_names[uid]


def _map_to_inside(host_id: int, id_map: Iterable[Iterable[int]]) -> int | None:
    """The id inside a user namespace for a host id, through its ``uid_map``."""
    for inside, outside, count in id_map:
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    return None


# ------------------------------------------------------------------ processes


_FORKED_WITHOUT_EXEC = frozenset({"nskernel-init"})


def _parent_and_pids(status: dict[str, str], pid: int) -> tuple[int, list[int]]:
    """From ``/proc/PID/status``: the parent's PID, and the PIDs in every namespace."""
    nspid = [int(x) for x in status.get("NSpid", str(pid)).split()]
    return int(status.get("PPid", "0") or 0), nspid


class _Proc:
    __slots__ = ("_command", "name", "nspid", "pid", "ppid", "uid")

    def __init__(self, pid: int) -> None:
        st = _status(pid)
        self.pid = pid
        self.ppid, self.nspid = _parent_and_pids(st, pid)
        self.uid = int(st.get("Uid", "0").split()[0])
        self.name = st.get("Name", "?")
        self._command: str | None = None

    @property
    def command(self) -> str:
        """Its command line, read on first use: only for the rows that are listed."""
        if self._command is None:
            try:
                # Bounded: a process's arguments can be megabytes, and a sandbox has many.
                with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                    raw = f.read(CMDLINE_READ_MAX)
            except OSError:
                raw = b""  # it exited meanwhile
            if raw and not self._still_the_one_scanned():
                # It exited after the scan and its PID went to another process, maybe a
                # host one: those arguments are not its own, and may hold secrets (red
                # team 34). Only its name, as for any process that exited meanwhile.
                raw = b""
            args = raw.rstrip(b"\0").split(b"\0") if raw else []
            if self.name in _FORKED_WITHOUT_EXEC:
                # nskernel's init and setup processes are forks of the launcher: their
                # argv is still the launcher's, but their name says what they are.
                args = [self.name.encode()]
            text = " ".join(a.decode(errors="replace") for a in args) or f"[{self.name}]"
            self._command = text[:COMMAND_MAX]
        return self._command

    def _still_the_one_scanned(self) -> bool:
        """Whether ``pid`` is, after its command line was read, the process the scan saw:
        the same parent and PIDs in every namespace. A process that took a freed PID has
        another parent, or lives in other PID namespaces (a host process in none)."""
        try:
            return _parent_and_pids(_status(self.pid), self.pid) == (self.ppid, self.nspid)
        except OSError:
            return False

    @property
    def kernel_thread(self) -> bool:
        return (self.ppid == 2 or self.pid == 2) and self.command.startswith("[")


def _scan_processes() -> list[_Proc]:
    procs = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            procs.append(_Proc(int(name)))
        except (OSError, ValueError):
            continue  # it exited while we looked
    return [p for p in procs if not p.kernel_thread]


def _pid_ns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _processes_here(
    facts: Facts, host_namespaces: Mapping[str, int] | None, arguments: bool = True
) -> None:
    """The PID table of the caller's PID namespace, with PIDs as the caller sees them;
    without ``arguments``, each command is only the process's name (``ps -e``'s CMD)."""
    # NSpid's leftmost entry is relative to the PID namespace that mounted this /proc.
    # With a fresh /proc (the normal sandbox) that is ours: depth 0, host PIDs unknown.
    # A sandbox with a PID namespace but the host's /proc has depth > 0.
    me = _status("self")
    depth = len(me.get("NSpid", "").split() or ["x"]) - 1
    my_ns = _pid_ns("self")
    hosts_pid_ns = facts["kind"] == "host" or bool(
        host_namespaces and host_namespaces.get("pid") == my_ns
    )
    seen = []
    for p in _scan_processes():
        if len(p.nspid) <= depth:
            continue  # lives in an outer PID namespace: invisible from here
        if depth and _pid_ns(p.pid) != my_ns:
            continue
        seen.append(p)
    seen.sort(key=lambda p: p.nspid[depth])
    if len(seen) > MAX_PROCESSES:
        facts["errors"]["processes"] = _processes_cut(len(seen))
    facts["processes"] = [
        {
            "pid": p.nspid[depth],
            "host_pid": p.nspid[0] if (depth or hosts_pid_ns) else None,
            "uid": p.uid,
            "user": _user_name(p.uid),
            "command": p.command if arguments else p.name,
        }
        for p in seen[:MAX_PROCESSES]
    ]
    if not depth and not hosts_pid_ns:
        facts["errors"]["host_pids"] = (
            "host PIDs are not visible from inside a PID namespace with its own /proc"
        )


def _processes_cut(total: int) -> str:
    return f"{total} processes; the first {MAX_PROCESSES} are listed"


def sandbox_processes_from_host(
    init_pid: int, id_map: list[list[int]] | None = None, cut: list[int] | None = None
) -> list[Facts]:
    """The PID table of the sandbox whose init has host PID ``init_pid``, read on the host.

    A process belongs to the sandbox when it descends from the init (this includes
    nested PID namespaces) or lives in the init's PID namespace. ``pid`` is the PID
    inside the sandbox's namespace; ``uid``/``user`` are as seen inside when ``id_map``
    (the sandbox's ``uid_map``) is given, with ``host_uid`` alongside. At most
    ``MAX_PROCESSES`` rows, the lowest PIDs; ``cut`` gets the whole count when there
    were more.
    """
    procs = _scan_processes()
    by_pid = {p.pid: p for p in procs}
    init = by_pid.get(init_pid)
    if init is None:
        return []
    level = len(init.nspid) - 1
    init_ns = _pid_ns(init_pid)
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    members = set()
    todo = [init_pid]
    while todo:
        pid = todo.pop()
        if pid not in members:
            members.add(pid)
            todo.extend(children.get(pid, ()))
    if init_ns is not None and level > 0:
        members |= {p.pid for p in procs if len(p.nspid) > level and _pid_ns(p.pid) == init_ns}
    inside = sorted(
        (by_pid[pid] for pid in members if len(by_pid[pid].nspid) > level),
        key=lambda p: p.nspid[level],
    )
    if len(inside) > MAX_PROCESSES and cut is not None:
        cut.append(len(inside))
    rows = []
    for p in inside[:MAX_PROCESSES]:
        inside_uid = _map_to_inside(p.uid, id_map) if id_map else p.uid
        rows.append(
            {
                "pid": p.nspid[level],
                "host_pid": p.pid,
                "uid": inside_uid,
                "user": _user_name(inside_uid) if inside_uid is not None else "?",
                "host_uid": p.uid,
                "command": p.command,
            }
        )
    return rows


# ------------------------------------------------------------------ interfaces

_SIOCGIFFLAGS = 0x8913
_SIOCGIFCONF = 0x8912
_SIOCGIFNETMASK = 0x891B
_IFF_UP = 0x1
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union


def _dev_names(net_dir: str, cut: list[str]) -> list[str]:
    """Interface names from ``dev``, at most ``MAX_INTERFACES``; ``cut`` gets what was not."""
    text, more = _read_bounded(f"{net_dir}/dev", NET_READ_MAX)
    names = []
    for line in text.splitlines()[2:]:
        name = line.split(":", 1)[0].strip()
        if name:
            names.append(name)
    if len(names) > MAX_INTERFACES or more:
        left = max(len(names) - MAX_INTERFACES, 0)
        cut.append(
            f"interfaces after the first {min(len(names), MAX_INTERFACES)} "
            f"({left}{' or more' if more else ''} left out)"
        )
    return names[:MAX_INTERFACES]


def _ipv6_addresses(net_dir: str, cut: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        text, more = _read_bounded(f"{net_dir}/if_inet6", NET_READ_MAX)
    except FileNotFoundError:
        return out  # IPv6 disabled
    if more:
        cut.append(f"IPv6 addresses after the first {len(text.splitlines())}")
    for line in text.splitlines():
        cols = line.split()
        if len(cols) != 6:
            continue
        hexaddr, _idx, plen, _scope, _flags, dev = cols
        try:
            addr = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr))
            out.setdefault(dev, []).append(f"{addr}/{int(plen, 16)}")
        except ValueError:
            continue
    return out


def _ipv4_addresses_ioctl() -> dict[str, list[str]]:
    """IPv4 addresses of the caller's network namespace (``SIOCGIFCONF``)."""
    out: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        size = 64 * _IFREQ_SIZE
        while True:
            buf = array.array("B", b"\0" * size)
            addr, _ = buf.buffer_info()
            ifconf = struct.pack("iL", size, addr)
            used = struct.unpack("iL", fcntl.ioctl(s, _SIOCGIFCONF, ifconf))[0]
            if used < size:
                break
            size *= 2
        data = buf.tobytes()[:used]
        for off in range(0, used, _IFREQ_SIZE):
            name = data[off : off + 16].split(b"\0", 1)[0]
            ip = socket.inet_ntoa(data[off + 20 : off + 24])
            req = struct.pack("16s24x", name)
            try:
                mask = fcntl.ioctl(s, _SIOCGIFNETMASK, req)[20:24]
                plen = bin(int.from_bytes(mask, "big")).count("1")
            except OSError:
                plen = 32
            dev = name.decode().split(":", 1)[0]  # "eth0:1" labels an extra address
            out.setdefault(dev, []).append(f"{ip}/{plen}")
    return out


def _flags_ioctl(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", name.encode(), 0)
        return struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]


def _ipv4_addresses_procfs(net_dir: str, cut: list[str]) -> dict[str, list[str]]:
    """IPv4 addresses of another network namespace, from its /proc/PID/net.

    ``fib_trie`` lists the local addresses (``/32 host LOCAL``) but not their interface;
    the interface and prefix come from the longest connected route in ``route`` that
    contains the address. Loopback addresses have no such route: they belong to ``lo``
    as /8. Only addresses of interfaces that are UP are in the FIB.

    Linear in what is read (a sandbox makes both lists as long as it likes): routes are
    indexed by prefix length, so each address costs at most 32 lookups.
    """
    text, more = _read_bounded(f"{net_dir}/fib_trie", NET_READ_MAX)
    # The "Main" and "Local" tables are one trie, listed twice, until a policy rule splits
    # them, and a long listing is cut before "Local:": a local /32 counts in either.
    local: dict[str, None] = {}  # ordered, and a set
    last_ip = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not line.startswith(" "):
            last_ip = ""  # a table's heading
        elif stripped.startswith("|--"):
            last_ip = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last_ip:
            local[last_ip] = None
    if more:
        cut.append(f"IPv4 addresses after the first {len(local)}")
    text, more = _read_bounded(f"{net_dir}/route", NET_READ_MAX)
    if more:
        cut.append("routes (so some addresses show no interface)")
    by_length: dict[int, dict[int, str]] = {}  # prefix length -> network -> interface
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            # Each __be32 is printed as a number in host byte order: ntohl gives it back.
            dest, gateway, mask = (socket.ntohl(int(cols[i], 16)) for i in (1, 2, 7))
        except (ValueError, OverflowError):
            continue
        plen = bin(mask).count("1")
        if gateway or not mask or mask != _mask(plen):
            continue  # only connected routes with a prefix say where an address lives
        by_length.setdefault(plen, {}).setdefault(dest & mask, cols[0])  # first one wins
    lengths = sorted(by_length, reverse=True)
    out: dict[str, list[str]] = {}
    for ip in local:
        if ip.startswith("127."):
            out.setdefault("lo", []).append(f"{ip}/8")
            continue
        try:
            n = int.from_bytes(socket.inet_aton(ip), "big")
        except OSError:
            continue
        for plen in lengths:
            dev = by_length[plen].get(n & _mask(plen))
            if dev is not None:
                out.setdefault(dev, []).append(f"{ip}/{plen}")
                break
        else:
            out.setdefault("?", []).append(f"{ip}/32")
    return out


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF


def _cut_note(cut: list[str], where: str) -> str:
    return (
        f"not all of it is shown: {'; '.join(cut)}. The host reads at most "
        f"{NET_READ_MAX // 1024} KiB of each of {where} and {MAX_INTERFACES} interfaces, "
        "so that no network configuration makes reading it slow"
    )


def _interfaces_here(facts: Facts) -> None:
    cut: list[str] = []
    try:
        names = _dev_names("/proc/self/net", cut)
        v4 = _ipv4_addresses_ioctl()
        v6 = _ipv6_addresses("/proc/self/net", cut)
    except OSError as e:
        facts["errors"]["interfaces"] = f"cannot read the network interfaces: {_why(e)}"
        return
    rows = []
    for name in names:
        try:
            state: str | None = "UP" if _flags_ioctl(name) & _IFF_UP else "DOWN"
        except OSError:
            state = None
        rows.append(
            {"name": name, "state": state, "addresses": v4.get(name, []) + v6.get(name, [])}
        )
    facts["interfaces"] = _sorted_interfaces(rows)
    if cut:
        facts["errors"]["interfaces_cut"] = _cut_note(cut, "/proc/self/net/dev and if_inet6")


def _sorted_interfaces(rows: list[Facts]) -> list[Facts]:
    return sorted(rows, key=lambda r: (r["name"] != "lo", r["name"]))


SYSFS_READ_MAX = 64  # bytes: a sysfs attribute such as a link's flags


class _SysfsInside:
    """Sysfs attributes as the sandbox of ``pid`` sees them (paths under its ``sys/``),
    read from the host, where the sandbox may have put anything: it can mount a tmpfs over
    its own /sys, or bind another sysfs file (some block when read, or act) over one.

    Each path is resolved inside the sandbox's root only (its symlinks cannot lead to a
    host path), no magic links; opened non-blocking (no FIFO holds the reader); accepted
    only as a regular file on the very mount of its /sys (nothing mounted over or under it
    since), which must be a sysfs; read up to a bound. The root and /sys are opened once
    for all the reads (one per interface).
    """

    _RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS

    def __init__(self, pid: int) -> None:
        self.root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.sys_dir = syscalls.openat2(
                self.root, "sys", os.O_PATH | os.O_DIRECTORY, self._RESOLVE
            )
            try:
                self.sys_mount = _mount_id(self.sys_dir)
            except OSError:
                os.close(self.sys_dir)
                raise
        except OSError:
            os.close(self.root)
            raise

    def read(self, path: str) -> str:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
        fd = syscalls.openat2(self.root, path, flags, self._RESOLVE)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path} is not a regular file")
            if _mount_id(fd) != self.sys_mount:
                raise OSError(errno.EINVAL, f"{path} is not on the sandbox's /sys mount")
            if syscalls.filesystem_type(fd) != syscalls.SYSFS_MAGIC:
                raise OSError(errno.EINVAL, f"{path} is not on a sysfs")
            return os.read(fd, SYSFS_READ_MAX).decode("ascii", "replace")
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.sys_dir)
        os.close(self.root)


def _read_sysfs_inside(pid: int, path: str) -> str:
    """One sysfs attribute as the sandbox of ``pid`` sees it (see :class:`_SysfsInside`)."""
    sys_inside = _SysfsInside(pid)
    try:
        return sys_inside.read(path)
    finally:
        sys_inside.close()


def _mount_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.EINVAL, "no mount id in fdinfo")


def _interfaces_from_host(pid: int, facts: Facts, host_ns: Mapping[str, int]) -> None:
    net_dir = f"/proc/{pid}/net"
    cut: list[str] = []
    try:
        names = _dev_names(net_dir, cut)
        v4 = _ipv4_addresses_procfs(net_dir, cut)
        v6 = _ipv6_addresses(net_dir, cut)
    except OSError as e:
        facts["errors"]["interfaces"] = f"cannot read {net_dir}: {_why(e)}"
        return
    own_net = facts["namespaces"].get("net") != host_ns.get("net")
    own_mnt = facts["namespaces"].get("mnt") != host_ns.get("mnt")
    sys_inside = None
    if own_net and own_mnt:
        # The sandbox's own /sys (mounted inside its network namespace) shows its links.
        try:
            sys_inside = _SysfsInside(pid)
        except OSError:
            pass
    rows = []
    unknown_state = False
    try:
        for name in names:
            state: str | None = None
            if not own_net:
                try:
                    state = "UP" if _flags_ioctl(name) & _IFF_UP else "DOWN"
                except OSError:
                    pass
            elif sys_inside is not None:
                try:
                    flags = int(sys_inside.read(f"sys/class/net/{name}/flags"), 16)
                    state = "UP" if flags & _IFF_UP else "DOWN"
                except (OSError, ValueError):
                    pass
            unknown_state |= state is None
            rows.append(
                {"name": name, "state": state, "addresses": v4.get(name, []) + v6.get(name, [])}
            )
    finally:
        if sys_inside is not None:
            sys_inside.close()
    facts["interfaces"] = _sorted_interfaces(rows)
    if cut:
        facts["errors"]["interfaces_cut"] = _cut_note(
            cut, f"{net_dir}/dev, fib_trie, route and if_inet6"
        )
    if unknown_state:
        facts["errors"]["interface_state"] = (
            "the host can read UP/DOWN of a sandbox's interfaces only through the sandbox's "
            "own /sys (a sandbox with --net and --mnt)"
        )


# ------------------------------------------------------------------ limits


CGROUP_READ_MAX = 4096  # bytes of /proc/PID/cgroup, and of each limit file (a number)


def _cgroup_limits(pid: int | str) -> dict[str, str]:
    """Limits of the cgroups ``pid`` is in, where any is set (v2 and v1 controllers).

    A sandbox with a delegated cgroup names its own child cgroups, with any bytes but "/"
    (newlines too, which forge lines of /proc/PID/cgroup): a line that is not
    ``id:controllers:/path``, or whose path has a ".." step, is skipped; the files read
    are opened non-blocking and read up to a bound. A process in the leaf of an nskernel
    cgroup (``nsk-<pid>-<n>/sandbox``, see ``_linux/limits.py``) has its limits read
    from the cgroup above, which holds them.
    """
    out: dict[str, str] = {}
    try:
        text, _ = _read_bounded(f"/proc/{pid}/cgroup", CGROUP_READ_MAX)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/") or ".." in parts[2].split("/"):
            continue
        _, controllers, path = parts
        path = _limit_cgroup(path)
        if not controllers:
            base = f"/sys/fs/cgroup/unified{path}"
            if not os.path.isdir(base):
                base = f"/sys/fs/cgroup{path}"
            checks = [
                ("pids", "pids.max", "cgroup v2"),
                ("memory", "memory.max", "cgroup v2"),
                ("cpu", "cpu.max", "cgroup v2"),
            ]
        else:
            ctl = controllers.split(",")[0]
            base = f"/sys/fs/cgroup/{ctl}{path}"
            checks = {
                "memory": [("memory", "memory.limit_in_bytes", "cgroup v1")],
                "pids": [("pids", "pids.max", "cgroup v1")],
            }.get(ctl, [])
        for key, fname, how in checks:
            try:
                value = _read_bounded(f"{base}/{fname}", CGROUP_READ_MAX)[0].strip()
            except OSError:
                continue
            if key in out or value.startswith("max") or not value:
                continue
            try:
                if key == "memory":
                    n = int(value)
                    if n >= 1 << 60:  # v1 writes "unlimited" as a page-rounded LONG_MAX
                        continue
                    value = f"{n / (1 << 20):.0f} MiB"
                elif key == "cpu":
                    quota, period = value.split()
                    value = f"{int(quota) / int(period):.2f} CPUs"
            except ValueError:
                continue
            out[key] = f"{value} ({how})"
    return out


def _limit_cgroup(path: str) -> str:
    """``path``, or its parent when ``path`` is the leaf of an nskernel limit cgroup."""
    parent, _, last = path.rpartition("/")
    parts = parent.rpartition("/")[2].split("-")
    if last == _LIMITS_LEAF and len(parts) == 3 and parts[0] == "nsk" and parts[1].isdigit():
        return parent
    return path


# ------------------------------------------------------------------ public API


def gather_here(
    name: str | None = None,
    kind: str | None = None,
    *,
    host_namespaces: Mapping[str, int] | None = None,
    arguments: bool = True,
) -> Facts:
    """Facts of the namespaces the calling process is in, read from inside.

    ``host_namespaces`` (the host's namespace ids) tells whether this PID namespace is
    the host's, so PIDs are host PIDs too; it defaults to those in the host facts the
    launcher left (``NSKERNEL_HOST_FACTS``). ``kind`` defaults to "sandbox" when those
    differ from ours, else "host"; ``name`` defaults to "host" for the host and to the
    hostname for a sandbox.
    """
    if host_namespaces is None:
        path = os.environ.get(HOST_FACTS_ENV)
        if path:
            try:
                host_namespaces = json.loads(_read(path)).get("namespaces") or None
            except (OSError, ValueError):
                host_namespaces = None
    if kind is None:
        kind = "sandbox" if host_namespaces and host_namespaces != _own_namespace_ids() else "host"
    hostname = socket.gethostname()
    facts = empty_facts(name or ("host" if kind == "host" else hostname), kind)
    facts["hostname"] = hostname
    _namespaces("self", facts)
    for which in ("uid_map", "gid_map"):
        try:
            facts[which] = _id_map("self", which)
        except OSError as e:
            facts["errors"][which] = f"cannot read /proc/self/{which}: {_why(e)}"
    _interfaces_here(facts)
    try:
        _processes_here(facts, host_namespaces, arguments)
    except OSError as e:
        facts["errors"]["processes"] = f"cannot read the process table: {_why(e)}"
    facts["limits"] = _cgroup_limits("self")
    if kind == "host":
        facts["host_pid"] = None
    return facts


def _own_namespace_ids() -> dict[str, int]:
    return namespace_ids("self")


def host_facts(*, arguments: bool = False) -> Facts:
    """Facts of the host: the namespaces this (host-side) process is in.

    Processes by name only (what ``ps -e`` shows any local user) unless ``arguments``:
    command lines carry secrets (a server's ``--IdentityProvider.token=...``, passwords
    given as arguments), and the host column goes where they must not: into a sandbox
    (the sandboxed kernel's snapshot) and into notebooks people save and share.
    """
    return gather_here(name="host", kind="host", arguments=arguments)


def sandbox_facts_from_host(
    pid: int,
    *,
    name: str | None = None,
    hostname: str | None = None,
    created: Iterable[str] | None = None,
    limits: Mapping[str, str] | None = None,
    host: Mapping[str, Any] | None = None,
) -> Facts:
    """What the host can read about the sandbox whose init has host PID ``pid``.

    ``hostname`` and ``created`` are what the launcher knows (``Sandbox.hostname``,
    ``Sandbox.namespaces``): the host cannot read another UTS namespace's hostname.
    ``host`` (host facts) tells which namespaces are shared; default: the caller's.
    A sandbox that has exited yields :func:`exited_facts`, not an exception.
    """
    label = name or hostname or f"sandbox {pid}"
    try:
        st = _status(pid)
    except (FileNotFoundError, ProcessLookupError):
        return exited_facts(label, host_pid=pid, why=f"the sandbox has exited (PID {pid} is gone)")
    if st.get("State", "").startswith(("Z", "X")):
        return exited_facts(label, host_pid=pid, why="the sandbox has exited")
    facts = empty_facts(label, "sandbox", seen_from="host")
    facts["host_pid"] = pid
    facts["created"] = sorted(created) if created is not None else None
    _namespaces(pid, facts)
    host_ns = dict(host["namespaces"]) if host else _own_namespace_ids()
    if facts["namespaces"].get("uts") == host_ns.get("uts"):
        facts["hostname"] = socket.gethostname()
    else:
        facts["hostname"] = hostname
        if hostname is None:
            facts["errors"]["hostname"] = (
                "the host cannot read another UTS namespace's hostname; pass the one the "
                "sandbox was created with"
            )
    for which in ("uid_map", "gid_map"):
        try:
            facts[which] = _id_map(pid, which)
        except OSError as e:
            facts["errors"][which] = f"cannot read /proc/{pid}/{which}: {_why(e)}"
    _interfaces_from_host(pid, facts, host_ns)
    try:
        cut: list[int] = []
        facts["processes"] = sandbox_processes_from_host(pid, facts["uid_map"] or None, cut)
        if cut:
            facts["errors"]["processes"] = _processes_cut(cut[0])
    except OSError as e:
        facts["errors"]["processes"] = f"cannot read the process table: {_why(e)}"
    facts["limits"] = dict(limits) if limits is not None else _cgroup_limits(pid)
    if not os.path.exists(f"/proc/{pid}"):
        return exited_facts(label, host_pid=pid, why="the sandbox exited while being read")
    return facts


def mark_sandbox_processes(host: Facts, *sandboxes: Mapping[str, Any]) -> Facts:
    """Label the host's processes that belong to a sandbox: ``row["sandbox"] = name``.

    Matching is by host PID, so it needs sandbox facts with host PIDs (read from the
    host). Returns ``host`` (changed in place) for chaining.
    """
    owner: dict[int, str] = {}
    for sb in sandboxes:
        for row in sb.get("processes") or ():
            if row.get("host_pid") is not None:
                owner[int(row["host_pid"])] = str(sb.get("name"))
        if sb.get("host_pid") is not None:
            owner.setdefault(int(sb["host_pid"]), str(sb.get("name")))
    for row in host.get("processes") or ():
        hp = row.get("host_pid", row.get("pid"))
        if hp in owner:
            row["sandbox"] = owner[hp]
        else:
            row.pop("sandbox", None)
    return host


def shared_namespaces(place: Mapping[str, Any], host: Mapping[str, Any]) -> dict[str, str]:
    """Per namespace type: "own" (differs from the host), "shared", or "unknown"."""
    out = {}
    mine, theirs = place.get("namespaces") or {}, host.get("namespaces") or {}
    for t in NS_TYPES:
        if t not in mine or t not in theirs:
            out[t] = "unknown"
        else:
            out[t] = "shared" if mine[t] == theirs[t] else "own"
    return out


def capture_host_facts(path: str) -> Facts:
    """Write the host's facts to ``path`` (atomically, 0600) for the sandboxed kernel.

    Called by the kernel launcher before it creates the sandbox; the kernel then finds
    the file through ``NSKERNEL_HOST_FACTS``. The path must be visible inside the
    sandbox at the same place (e.g. next to the connection file).
    """
    facts = host_facts(arguments=False)
    tmp = f"{path}.tmp{os.getpid()}.{os.urandom(4).hex()}"
    # A fresh name, never an existing entry: nothing planted there is followed.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(facts, f)
    os.replace(tmp, path)
    return facts


def load_host_facts_captured_at_launch() -> Facts:
    """The host facts the launcher captured before creating this kernel's sandbox."""
    path = os.environ.get(HOST_FACTS_ENV)
    if not path:
        msg = (
            f"no host facts: {HOST_FACTS_ENV} is not set. Only the sandboxed kernel "
            "('Python 3 (sandboxed)') has them; elsewhere pass host facts explicitly"
        )
        raise FactsError(msg)
    try:
        facts = json.loads(_read(path))
    except OSError as e:
        msg = f"cannot read the host facts captured at launch ({path}): {_why(e)}"
        raise FactsError(msg) from e
    except ValueError as e:
        msg = f"the host facts file {path} is not valid JSON ({e}); restart the kernel"
        raise FactsError(msg) from e
    return normalize(facts)


def to_json(facts: Mapping[str, Any]) -> str:
    return json.dumps(facts, sort_keys=True)
