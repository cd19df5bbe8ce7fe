"""What the host looked like just before the sandbox was made, as JSON-ready data.

Captured by the launcher on the host side and written to a file the sandbox can read
(its path is in ``$NSKERNEL_HOST_FACTS`` inside), so the widgets can show host and
sandbox side by side from within the sandboxed kernel, which itself can see none of it.

It sits on the kernel's start path, so it must be cheap: /proc, /sys and one ioctl per
interface, no pyroute2 (its import alone costs ~0.2 s) and no subprocesses.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import time
from typing import Any

from .._linux import procfs

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ipv4(sock: socket.socket, name: str, request: int) -> str | None:
    try:
        res = fcntl.ioctl(sock, request, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(res[20:24])


def _prefixlen(netmask: str | None) -> int | None:
    if netmask is None:
        return None
    return bin(struct.unpack("!I", socket.inet_aton(netmask))[0]).count("1")


def interfaces() -> list[dict[str, Any]]:
    """Each interface with its state and addresses (IPv4 via ioctl, IPv6 from /proc)."""
    v6: dict[str, list[str]] = {}
    for line in (_read("/proc/net/if_inet6") or "").splitlines():
        f = line.split()
        if len(f) >= 6:
            addr = ":".join(f[0][i : i + 4] for i in range(0, 32, 4))
            packed = socket.inet_pton(socket.AF_INET6, addr)
            v6.setdefault(f[5], []).append(
                f"{socket.inet_ntop(socket.AF_INET6, packed)}/{int(f[2], 16)}"
            )
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in sorted(socket.if_nameindex()):
            flags = int(_read(f"/sys/class/net/{name}/flags") or "0", 16)
            addrs = []
            ip = _ipv4(s, name, _SIOCGIFADDR)
            if ip:
                addrs.append(f"{ip}/{_prefixlen(_ipv4(s, name, _SIOCGIFNETMASK))}")
            found.append(
                {
                    "name": name,
                    "up": bool(flags & 0x1),
                    "mac": _read(f"/sys/class/net/{name}/address"),
                    "addresses": addrs + v6.get(name, []),
                }
            )
    return found


def processes() -> list[dict[str, Any]]:
    """The PID table: pid, ppid, uid, command name."""
    table = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            uid = os.stat(f"/proc/{name}").st_uid
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        table.append({"pid": int(name), "ppid": int(rest[1]), "uid": uid, "comm": comm})
    table.sort(key=lambda p: p["pid"])
    return table


def capture() -> dict[str, Any]:
    return {
        "captured": time.time(),
        "hostname": socket.gethostname(),
        "interfaces": interfaces(),
        "processes": processes(),
        "uid": os.geteuid(),
        "gid": os.getegid(),
        "uid_map": procfs.id_map("self", "uid_map"),
        "gid_map": procfs.id_map("self", "gid_map"),
        "namespaces": procfs.namespace_ids("self"),
    }


def write(path: str, facts: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(facts, f)


def load() -> dict[str, Any] | None:
    """Inside the sandboxed kernel: the host's facts, or None outside of one."""
    path = os.environ.get("NSKERNEL_HOST_FACTS")
    if not path:
        return None
    with open(path) as f:
        return json.load(f)
