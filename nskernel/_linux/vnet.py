"""Virtual networks at the netlink level: hub namespace, bridges, veth pairs (pyroute2).

The constraints that shape this module:

- **Who may do it.** Every step needs CAP_NET_ADMIN over both network namespaces
  involved (the hub's and the sandbox's). The caller is the single-threaded sandbox
  server (or a test helper standing in for it): as host root it has that everywhere;
  rootless it is root of its own user namespace, which owns the hub and, through the
  nesting, every sandbox's namespaces.
- **No way back.** A rootless server cannot ``setns`` back into the host's network
  namespace (the initial user namespace owns it), so the caller never changes its own
  namespaces. A netlink socket is bound to the namespace it was created in: a short
  forked child enters the target namespace, makes the socket and passes it back over
  SCM_RIGHTS (``_socket_in``), and the caller keeps using it from where it is.
- **Nothing leaks.** The hub namespace is kept alive only by file descriptors of the
  caller (no bind mount, no holder process): when the caller exits, even by SIGKILL, the
  kernel destroys the hub with its bridges, and destroying a veth end destroys its peer.
- **Fresh veths drop packets.** Until linkwatch activates a new link's qdisc, its
  packets go to ``noop_qdisc``; both ends are waited for until their operstate is UP.
- **Cost.** ``import pyroute2`` takes ~0.2 s, so this module is imported only when a
  sandbox actually joins a network. The sandbox side uses raw netlink messages (encoded
  with pyroute2's classes) on a socket passed back from the child, not a full
  ``IPRoute``, which would cost a few ms per sandbox for its event loop.
- **Names.** The sandbox sees its interfaces as ``eth0``, ``eth1``...: the veth peer is
  created directly in the sandbox's namespace under that name, never renamed.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import struct
import time
from typing import Any

from . import syscalls as sc

IFNAMSIZ = 15
HOSTS_PATH_INSIDE = "/tmp/.nskernel-hosts"  # the sandbox's private /tmp: dies with it


class VnetError(OSError):
    """A netlink step failed; ``step`` names it, the message says what to do."""

    def __init__(self, step: str, err: int | None, detail: str = "") -> None:
        why = os.strerror(err) if err else detail
        text = f"{step}: {why}" + (f" ({detail})" if detail and err else "")
        super().__init__(err, text)
        self.step = step

    def __str__(self) -> str:
        return self.strerror or ""


# ---------------------------------------------------------------- namespace hopping


def _send_fds(sock: socket.socket, fds: list[int], payload: bytes = b"\0") -> None:
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _recv_fds(sock: socket.socket, maxfds: int) -> tuple[bytes, list[int]]:
    msg, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(maxfds * 4))
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def _in_child(work, *, step: str) -> tuple[bytes, list[int]]:  # type: ignore[no-untyped-def]
    """Run ``work(sock)`` in a forked child; return what it sent back (bytes, fds).

    ``work`` sends exactly one message with ``_send_fds``; an exception becomes a
    message starting with ``b"E"`` followed by errno and text, re-raised here.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            parent.close()
            sc.prctl(sc.PR_SET_PDEATHSIG, 9)
            work(child)
            code = 0
        except BaseException as e:
            num = getattr(e, "errno", None) or 0
            try:
                child.send(b"E" + struct.pack("i", num) + str(e).encode()[:3000])
            except OSError:
                pass
        finally:
            os._exit(code)
    child.close()
    try:
        msg, fds = _recv_fds(parent, 8)
    finally:
        parent.close()
        _reap(pid)
    if not msg:
        raise VnetError(step, None, "the helper process exited without an answer")
    if msg[:1] == b"E":
        (num,) = struct.unpack("i", msg[1:5])
        for fd in fds:
            os.close(fd)
        raise VnetError(step, num or None, msg[5:].decode(errors="replace"))
    return msg, fds


def _reap(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:  # someone else's waitpid(-1) got it first
            return


def _rtnl_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
    s.bind((0, 0))
    return s


def new_hub() -> tuple[int, socket.socket]:
    """A new, empty network namespace: (an fd that keeps it alive, a netlink socket in it).

    The child that creates it exits at once; only the caller's descriptors hold the
    namespace, so it dies with the caller.
    """

    def work(sock: socket.socket) -> None:
        sc.unshare(sc.CLONE_NEWNET)
        # Forwarding is off in a new namespace by default; say so explicitly, because
        # a hub that forwarded would join networks that must stay apart.
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("0")
        ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        nl = _rtnl_socket()
        _send_fds(sock, [ns, nl.fileno()])

    _, fds = _in_child(work, step="create the hub network namespace (unshare(CLONE_NEWNET))")
    ns_fd, nl_fd = fds
    os.set_inheritable(ns_fd, False)
    return ns_fd, socket.socket(fileno=nl_fd)


def enter_sandbox(init_pid: int, *, hosts_text: str | None) -> tuple[socket.socket, int | None]:
    """Netlink socket in the sandbox's network namespace, and its managed hosts file.

    With ``hosts_text`` (the sandbox has a mount namespace) the child also enters the
    sandbox's mount namespace, writes the text to a file in the sandbox's private /tmp,
    binds it read-only onto /etc/hosts and passes back a writable fd to it, so later
    updates need no namespace hop. Returns (socket, hosts fd or None).
    """
    opened: dict[str, int] = {}
    try:
        for kind in ("net", "user", "mnt") if hosts_text is not None else ("net",):
            opened[kind] = os.open(f"/proc/{init_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        same_user = "user" in opened and (
            os.fstat(opened["user"]).st_ino == os.stat("/proc/self/ns/user").st_ino
        )

        def work(sock: socket.socket) -> None:
            sc.setns(opened["net"], sc.CLONE_NEWNET)
            nl = _rtnl_socket()
            fds = [nl.fileno()]
            if hosts_text is not None:
                if not same_user:
                    # Become the sandbox's root: files we create on its /tmp must be
                    # owned by an id mapped in its user namespace (host root is not).
                    sc.setns(opened["user"], sc.CLONE_NEWUSER)
                    with contextlib.suppress(OSError):
                        os.setgroups([])
                    os.setresgid(0, 0, 0)
                    os.setresuid(0, 0, 0)
                sc.setns(opened["mnt"], sc.CLONE_NEWNS)  # moves root and cwd there too
                hosts = os.open(
                    HOSTS_PATH_INSIDE, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
                )
                os.fchmod(hosts, 0o644)  # whatever the umask: every sandbox user reads it
                os.write(hosts, hosts_text.encode())
                sc.mount(HOSTS_PATH_INSIDE, "/etc/hosts", None, sc.MS_BIND)
                sc.mount(None, "/etc/hosts", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
                fds.append(hosts)
            _send_fds(sock, fds)

        _, fds = _in_child(work, step=f"enter the namespaces of sandbox init {init_pid}")
    finally:
        for fd in opened.values():
            os.close(fd)
    return socket.socket(fileno=fds[0]), (fds[1] if len(fds) > 1 else None)


def rewrite_hosts(fd: int, text: str) -> None:
    """Replace a managed hosts file's content in place (the bind mount pins the inode)."""
    data = text.encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


# ---------------------------------------------------------------- raw netlink


class Rtnl:
    """Minimal rtnetlink requests on a socket bound to some namespace.

    Just what the sandbox side needs (address, link up, link state), with pyroute2's
    message classes doing the encoding, at a fraction of ``IPRoute``'s setup cost.
    """

    def __init__(self, sock: socket.socket) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        self.sock = sock
        self._seq = 0
        self._marshal = MarshalRtnl()

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: Any, kind: int, flags: int, step: str) -> list[Any]:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR

        self._seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)
        replies: list[Any] = []
        while True:
            data = self.sock.recv(65536)
            for m in self._marshal.parse(data):
                if m["header"]["sequence_number"] != self._seq:
                    continue
                mtype = m["header"]["type"]
                if mtype == NLMSG_ERROR:
                    code = m["header"].get("error")
                    err = -m.get("error", 0) if code is None else getattr(code, "code", 0)
                    if err:
                        raise VnetError(step, abs(err))
                    return replies
                if mtype == NLMSG_DONE:
                    return replies
                replies.append(m)

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
        from pyroute2.netlink.rtnl import RTM_NEWADDR
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        m = ifaddrmsg()
        m["family"] = socket.AF_INET
        m["prefixlen"] = prefixlen
        m["index"] = index
        m["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        self.request(
            m, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, f"add {address}/{prefixlen} to link {index}"
        )

    def set_up(self, index: int) -> None:
        from pyroute2.netlink.rtnl import RTM_NEWLINK
        from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

        m = ifinfmsg()
        m["index"] = index
        m["flags"] = IFF_UP
        m["change"] = IFF_UP
        self.request(m, RTM_NEWLINK, 0, f"bring link {index} up")

    def operstate(self, index: int) -> str:
        from pyroute2.netlink.rtnl import RTM_GETLINK
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        m = ifinfmsg()
        m["index"] = index
        replies = self.request(m, RTM_GETLINK, 0, f"read the state of link {index}")
        return replies[0].get("IFLA_OPERSTATE") if replies else "ABSENT"

    def wait_up(self, index: int, timeout: float = 5.0) -> None:
        _poll_until_up(lambda: self.operstate(index), index, timeout)


def _poll_until_up(state_of, index: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Block until linkwatch has activated the link (operstate UP)."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while (state := state_of()) != "UP":
        if time.monotonic() > deadline:
            raise VnetError(
                f"wait for link {index} to come up",
                errno.ETIMEDOUT,
                f"still {state} after {timeout:g} s",
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


# ---------------------------------------------------------------- the hub


class Hub:
    """The hub network namespace: one bridge per network, one veth end per attachment.

    It has no link to the host and no route beyond its own subnets, and forwarding is
    off, so networks lead nowhere and cannot reach each other.
    """

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self.ns_fd, sock = new_hub()
        self.ipr = IPRoute(use_socket=sock)

    def close(self) -> None:
        """Drop the hub: the kernel destroys its bridges and veth pairs with it."""
        if self.ns_fd >= 0:
            self.ipr.close()
            os.close(self.ns_fd)
            self.ns_fd = -1

    def _index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def add_bridge(self, name: str, address: str, prefixlen: int) -> int:
        try:
            self.ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            index = self._index(name)
            assert index is not None
            self.ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            self.ipr.link("set", index=index, state="up")
        except Exception as e:
            raise _as_vnet_error(f"create bridge {name} ({address}/{prefixlen})", e) from e
        return index

    def delete_link(self, name: str) -> None:
        index = self._index(name)
        if index is None:
            return
        try:
            self.ipr.link("del", index=index)
        except Exception as e:
            raise _as_vnet_error(f"delete link {name}", e) from e

    def links(self) -> list[str]:
        return sorted(link.get("IFLA_IFNAME") for link in self.ipr.get_links())

    def add_veth(
        self, hub_end: str, bridge: str, sandbox_ns_fd: int, inside_name: str, inside_mac: str
    ) -> int:
        """A veth pair: ``hub_end`` on ``bridge`` (up), its peer ``inside_name`` created
        directly in the sandbox's namespace with ``inside_mac``. Returns the peer's
        ifindex there."""
        step = f"create veth {hub_end} <-> {inside_name} on {bridge}"
        try:
            self.ipr.link(
                "add",
                ifname=hub_end,
                kind="veth",
                peer={"ifname": inside_name, "net_ns_fd": sandbox_ns_fd, "address": inside_mac},
            )
            index = self._index(hub_end)
            master = self._index(bridge)
            assert index is not None and master is not None
            self.ipr.link("set", index=index, master=master, state="up")
            info = self.ipr.get_links(index)[0]
        except Exception as e:
            raise _as_vnet_error(step, e) from e
        # For a veth, IFLA_LINK is the peer's ifindex in the peer's namespace.
        peer = info.get("IFLA_LINK")
        if not peer:
            raise VnetError(step, None, "the kernel did not report the peer's index")
        return int(peer)

    def wait_up(self, hub_end: str, timeout: float = 5.0) -> None:
        index = self._index(hub_end)
        if index is None:
            raise VnetError(f"wait for {hub_end} to come up", errno.ENODEV)
        _poll_until_up(lambda: self.ipr.get_links(index)[0].get("IFLA_OPERSTATE"), index, timeout)


def _as_vnet_error(step: str, e: BaseException) -> VnetError:
    if isinstance(e, VnetError):
        return e
    code = getattr(e, "code", None) or getattr(e, "errno", None)
    return VnetError(step, code if isinstance(code, int) and code > 0 else None, str(e))


def mac_for(address: str) -> str:
    """The MAC address of the interface holding IPv4 ``address``: derived from it.

    When an address is released and handed to a new sandbox, the peers' neighbour
    caches still map it to the old interface's MAC for up to a minute; with the MAC a
    function of the IP (as Docker does) those cached entries stay right. ``02:`` marks
    a locally administered unicast address.
    """
    return "02:6e:" + ":".join(f"{int(b):02x}" for b in address.split("."))


def attach_inside(
    sock: socket.socket, index: int, address: str, prefixlen: int, timeout: float = 5.0
) -> None:
    """Inside the sandbox: address on the new interface, up, wait until it is UP.

    The kernel adds the route for the subnet with the address; there is no default
    route, so anything outside the subnet is unreachable at once (ENETUNREACH).
    """
    rt = Rtnl(sock)
    rt.add_address(index, address, prefixlen)
    rt.set_up(index)
    rt.wait_up(index, timeout)
