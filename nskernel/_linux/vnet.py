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
import ctypes
import errno
import json
import os
import socket
import struct
import time
from typing import Any

from . import idmap
from . import syscalls as sc

IFNAMSIZ = 15
HOSTS_PATH_INSIDE = "/tmp/.nskernel-hosts"  # a prefix; a fresh name each time, unlinked once bound


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


# Set in the hub before any bridge exists ("default" is what new interfaces get).
HUB_SYSCTLS = (
    # Forwarding is off in a new namespace by default; say so explicitly, because a hub
    # that forwarded would join networks that must stay apart.
    ("/proc/sys/net/ipv4/ip_forward", "0"),
    # Strict reverse-path check: what comes in on a bridge must come from that bridge's
    # side. Otherwise a member of one network, sending from another network's member
    # address to its own gateway, makes the hub answer (ICMP, RST) onto that other
    # network.
    ("/proc/sys/net/ipv4/conf/all/rp_filter", "1"),
    ("/proc/sys/net/ipv4/conf/default/rp_filter", "1"),
    # No IPv6 in the hub: its bridges would get link-local addresses, a second way in
    # that the IPv4 rules below do not cover, and nothing of nskernel uses it. Members
    # still exchange IPv6 with each other: a bridge forwards frames whatever its own
    # addresses.
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
)

# Policy routing in the hub (red team 29): Linux accepts a packet for any of a host's
# addresses on any of its interfaces, so a member of one network that routed the pool
# through its own link reached every other network's gateway address (the hub's stack
# answered, telling it which networks exist), and anything that ever listened there.
# So what comes in on a bridge is looked up first in a table of that bridge's own,
# which holds only its gateway address; anything else that came in on it is dropped
# (blackhole). The shared local table, normally consulted first of all, comes after
# (for what the hub sends itself, and what comes in on the veths, which carry no
# address).
BRIDGE_RULE_PRIORITY = 100  # +1: the blackhole behind it
IFA_F_NOPREFIXROUTE = 0x200  # <linux/if_addr.h>
LOCAL_RULE_PRIORITY = 1000  # where the "lookup local" rule moves from priority 0
RT_TABLE_LOCAL = 255
BRIDGE_TABLE_BASE = 100000  # + the bridge's ifindex: never a reserved table (253-255)


def new_hub() -> tuple[int, socket.socket, socket.socket]:
    """A new, empty network namespace: an fd that keeps it alive, two netlink sockets in it
    (one for pyroute2's ``IPRoute``, one for our raw requests).

    The child that creates it exits at once; only the caller's descriptors hold the
    namespace, so it dies with the caller.
    """

    def work(sock: socket.socket) -> None:
        sc.unshare(sc.CLONE_NEWNET)
        for path, value in HUB_SYSCTLS:
            try:
                with open(path, "w") as f:
                    f.write(value)
            except FileNotFoundError:
                if "/ipv6/" not in path:  # a kernel without IPv6 has nothing to turn off
                    raise
        ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _send_fds(sock, [ns, _rtnl_socket().detach(), _rtnl_socket().detach()])

    _, fds = _in_child(work, step="create the hub network namespace (unshare(CLONE_NEWNET))")
    ns_fd, nl_fd, raw_fd = fds
    os.set_inheritable(ns_fd, False)
    return ns_fd, socket.socket(fileno=nl_fd), socket.socket(fileno=raw_fd)


class Hopper:
    """A helper process that enters sandboxes' namespaces for us, on request.

    Forking a child per attachment costs a copy of the caller's page tables (tens of ms
    for a big caller on a busy machine). This process is forked once, drops every
    descriptor it inherited, and then serves requests: join a sandbox's network (and
    mount) namespace, make a netlink socket there (and the managed /etc/hosts), pass them
    back, return home. "Home" is a private network and mount namespace of its own, made
    at start: a rootless hopper could not return to the host's, and staying in a
    sandbox's namespaces would keep them alive after the sandbox is gone. It never joins
    a sandbox's user namespace, so it can always hop to the next one; files it creates
    for a sandbox get that sandbox's root as owner through setfsuid.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the hopper
            code = 1
            try:
                ours.close()
                os.close(ready_r)
                code = _hopper_main(theirs, ready_w)
            finally:
                os._exit(code)
        theirs.close()
        os.close(ready_w)
        try:
            answer = os.read(ready_r, 4096)
        finally:
            os.close(ready_r)
        if answer != b"ok":
            ours.close()
            _reap(pid)
            raise VnetError("start the namespace helper", None, answer.decode() or "it died")
        self.pid = pid
        self.sock = ours

    def close(self) -> None:
        if self.pid:
            self.sock.close()  # EOF: the hopper exits
            _reap(self.pid)
            self.pid = 0

    def send_enter(self, init_pid: int, *, hosts_text: str | None) -> None:
        """Ask the hopper into the sandbox; the caller may work meanwhile, then takes the
        answer with ``receive_enter``: a netlink socket in the sandbox's network
        namespace, and its managed hosts file.

        With ``hosts_text`` (the sandbox has a mount namespace) the hopper also writes
        the text to a file in the sandbox's private /tmp, binds it read-only onto
        /etc/hosts and passes back a writable fd to it, so later updates need no hop.
        """
        kinds = ("net", "mnt") if hosts_text is not None else ("net",)
        fds = [os.open(f"/proc/{init_pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds]
        try:
            # Who sandbox root is, as seen from here: its files must be owned by an id
            # mapped inside (host root is not, in a sandbox that a root caller made).
            uid = _root_of(init_pid, "uid_map")
            gid = _root_of(init_pid, "gid_map")
            header = json.dumps({"hosts": hosts_text, "uid": uid, "gid": gid}).encode()
            _send_fds(self.sock, fds, header)
        finally:
            for fd in fds:
                os.close(fd)

    def receive_enter(self, init_pid: int) -> tuple[socket.socket, int | None]:
        """The hopper's answer to ``send_enter``."""
        step = f"enter the namespaces of sandbox init {init_pid}"
        msg, got = _recv_fds(self.sock, 4)
        if not msg:
            raise VnetError(step, None, "the namespace helper exited")
        if msg[:1] == b"E":
            for fd in got:
                os.close(fd)
            (num,) = struct.unpack("i", msg[1:5])
            raise VnetError(step, num or None, msg[5:].decode(errors="replace"))
        return socket.socket(fileno=got[0]), (got[1] if len(got) > 1 else None)


def _root_of(pid: int, which: str) -> int:
    with open(f"/proc/{pid}/{which}") as f:
        for line in f:
            inside, outside, _count = (int(x) for x in line.split())
            if inside == 0:
                return outside
    return os.geteuid() if which == "uid_map" else os.getegid()


def _hopper_main(sock: socket.socket, ready_w: int) -> int:
    try:
        sc.close_fds_except({sock.fileno(), ready_w})
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
        sc.set_process_name("nskernel-netns")
        sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWNET)  # a home we may always return to
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        home_net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        home_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        os.write(ready_w, str(e).encode())
        return 1
    os.write(ready_w, b"ok")
    os.close(ready_w)
    while True:
        try:
            msg, fds = _recv_fds(sock, 2)
        except OSError:
            return 0
        if not msg:
            return 0
        out: list[int] = []
        try:
            _hop(json.loads(msg), fds, out)
            _send_fds(sock, out)
        except OSError as e:
            sock.send(b"E" + struct.pack("i", e.errno or 0) + str(e).encode()[:3000])
        finally:
            for fd in (*fds, *out):
                os.close(fd)
            sc.setns(home_net, sc.CLONE_NEWNET)
            sc.setns(home_mnt, sc.CLONE_NEWNS)


def _hop(req: dict[str, Any], fds: list[int], out: list[int]) -> None:
    sc.setns(fds[0], sc.CLONE_NEWNET)
    out.append(_rtnl_socket().detach())
    text = req.get("hosts")
    if text is None:
        return
    sc.setns(fds[1], sc.CLONE_NEWNS)  # moves our root and cwd to the sandbox's
    me = os.geteuid()
    _setfsids(req["uid"], req["gid"])
    # The sandbox can write its /tmp: a fresh name, made here (O_EXCL), so that what is
    # opened is a new regular file, never a link, FIFO or device it put in place (a FIFO
    # at a fixed name blocked this process, and the server waiting on it, for good).
    name = f"{HOSTS_PATH_INSIDE}-{os.urandom(8).hex()}"
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        hosts = os.open(name, flags, 0o644)
        out.append(hosts)
        os.fchmod(hosts, 0o644)  # whatever the umask: every sandbox user reads it
        os.write(hosts, text.encode())
    finally:
        _setfsids(me, os.getegid())
        # A change of the fs ids clears the parent-death signal: arm it again.
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    # Bound from the descriptor just written, not by its path (which the sandbox could
    # swap meanwhile for a link to a file it cannot otherwise reach).
    clone = idmap.open_tree_clone("", dir_fd=hosts)
    try:
        idmap.move_mount(clone, "/etc/hosts")
    finally:
        os.close(clone)
    _setfsids(req["uid"], req["gid"])
    try:
        os.unlink(name)  # the mount holds the file; the name in /tmp is not needed
    except OSError:
        pass
    finally:
        _setfsids(me, os.getegid())
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    # The bind inherits /tmp's nosuid/nodev/noexec; in a mount namespace that is less
    # privileged than its parent's they are locked, and a remount that left them out
    # would be refused (EPERM). statvfs's ST_* bits equal the MS_* ones.
    keep = os.statvfs("/etc/hosts").f_flag & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.mount(None, "/etc/hosts", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | keep)


_libc = ctypes.CDLL(None, use_errno=True)


def _setfsids(uid: int, gid: int) -> None:
    # setfsuid(2) reports no errors; the open(2) that follows fails if this did not work.
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)


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

    def _send(self, msg: Any, kind: int, flags: int) -> None:
        """Stamp ``msg`` with the next sequence number and send it."""
        from pyroute2.netlink import NLM_F_REQUEST

        self._seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self.sock.send(msg.data)

    def request(self, msg: Any, kind: int, flags: int, step: str) -> list[Any]:
        from pyroute2.netlink import NLM_F_ACK, NLMSG_DONE, NLMSG_ERROR

        self._send(msg, kind, NLM_F_ACK | flags)
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

    def index(self, ifname: str) -> int:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        m = ifinfmsg()
        m["attrs"] = [("IFLA_IFNAME", ifname)]
        return self._link_header(m, f"find link {ifname}")[0]

    def running(self, index: int) -> bool:
        """Whether linkwatch has activated the link: IFF_RUNNING, i.e. operstate UP."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        m = ifinfmsg()
        m["index"] = index
        return bool(self._link_header(m, f"read the state of link {index}")[1] & IFF_RUNNING)

    def wait_up(self, index: int, timeout: float = 5.0) -> None:
        _poll_until_up(lambda: self.running(index), index, timeout)

    def _link_header(self, m: Any, step: str) -> tuple[int, int]:
        """RTM_GETLINK for one link: its (index, flags), read from the fixed header.

        Decoding the whole reply with pyroute2 costs ~0.5 ms (dozens of attributes);
        these two fields sit at fixed offsets: nlmsghdr (16 bytes), then ifinfomsg's
        family, pad, type (4 bytes), index (int32) and flags (uint32).
        """
        from pyroute2.netlink.rtnl import RTM_GETLINK

        self._send(m, RTM_GETLINK, 0)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                if seq == self._seq:
                    if kind == _NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, offset + 16)
                        raise VnetError(step, abs(err) or errno.EIO)
                    if kind == _RTM_NEWLINK:
                        index, flags = struct.unpack_from("=iI", data, offset + 20)
                        return index, flags
                offset += max(length, 16)


_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
IFF_RUNNING = 0x40


def _poll_until_up(state_of, index: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Block until linkwatch has activated the link (operstate UP).

    That takes about a millisecond for a veth (its events are urgent for linkwatch), so
    the polls are close together: a doubling backoff would overshoot by as much again.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0001
    while not state_of():
        if time.monotonic() > deadline:
            raise VnetError(
                f"wait for link {index} to come up",
                errno.ETIMEDOUT,
                f"not running (operstate UP) after {timeout:g} s",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.005)


# ---------------------------------------------------------------- the hub


def _member_messages(index: int, address: str) -> tuple[Any, Any]:
    """The route to a member's address on the bridge ``index``, and its neighbour entry,
    as netlink messages: what ``Hub.add_member`` adds (with more) and ``remove_member``
    deletes. Both use these, so a delete matches the scope of the add (red team 33 F2)."""
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    r = rtmsg()
    r["family"] = socket.AF_INET
    r["dst_len"] = 32
    r["table"] = 254  # main
    r["scope"] = 253  # link
    r["attrs"] = [["RTA_DST", address], ["RTA_OIF", index]]
    n = ndmsg()
    n["family"] = socket.AF_INET
    n["ifindex"] = index
    n["attrs"] = [["NDA_DST", address]]
    return r, n


class Hub:
    """The hub network namespace: one bridge per network, one veth end per attachment.

    It has no link to the host and no route beyond its own subnets, and forwarding is
    off, so networks lead nowhere and cannot reach each other; what comes in on a bridge
    is delivered only to that bridge's own address (``BRIDGE_RULE_PRIORITY``).

    The bridges learn nothing. A learning bridge makes a forwarding-database entry for
    every source MAC a port sends from, without bound by default, for 300 s after the
    last frame, from kernel memory no memory cgroup or rlimit is charged for: a member
    sending frames from a million made-up MACs held ~125 MiB of the host's unreclaimable
    slab, under ``--memory 64M`` (red team 18). Every member's MAC is known (it is
    ``mac_for`` its address), so each port gets one static entry for it instead and
    learning off: the table holds one entry per member, whatever it sends. (A member
    that changes its MAC is still reached: frames to an unknown MAC are flooded.)
    """

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self.ns_fd, sock, raw = new_hub()
        self.ipr = IPRoute(use_socket=sock)
        self.raw = Rtnl(raw)
        try:  # the bridges' own tables go before the shared local one (see above)
            self.ipr.rule("add", table=RT_TABLE_LOCAL, priority=LOCAL_RULE_PRIORITY)
            self.ipr.rule("del", table=RT_TABLE_LOCAL, priority=0)
        except Exception as e:
            self.ipr.close()
            self.raw.close()
            os.close(self.ns_fd)
            raise _as_vnet_error("move the hub's local routing rule", e) from e
        self.hopper = Hopper()
        self._bridges: dict[str, int] = {}

    def close(self) -> None:
        """Drop the hub: the kernel destroys its bridges and veth pairs with it."""
        if self.ns_fd >= 0:
            self.hopper.close()
            self.ipr.close()
            self.raw.close()
            os.close(self.ns_fd)
            self.ns_fd = -1

    def _index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def add_bridge(self, name: str, address: str, prefixlen: int) -> int:
        if name in self._bridges:  # another network's: never touched here (red team 31)
            raise VnetError(f"create bridge {name}", errno.EEXIST)
        made = False
        try:
            # A MAC of its own, fixed (``mac_for`` its address): a bridge without one takes
            # the lowest of its ports' and changes it as members come and go, and each
            # change flushes the bridge's neighbour entries, permanent ones included,
            # after which a member could claim another's address in the hub and receive
            # the host's connections to that member's published ports (red team 33 F1).
            self.ipr.link(
                "add",
                ifname=name,
                kind="bridge",
                address=mac_for(address),
                br_stp_state=0,
                br_forward_delay=0,
            )
            made = True
            index = self._index(name)
            assert index is not None
            self._bridges[name] = index
            # Its own table and rules first, so no packet comes in on it before they hold.
            table = BRIDGE_TABLE_BASE + index
            self.ipr.rule("add", table=table, priority=BRIDGE_RULE_PRIORITY, iifname=name)
            self.ipr.rule(
                "add", priority=BRIDGE_RULE_PRIORITY + 1, iifname=name, action="FR_ACT_BLACKHOLE"
            )
            # No route for the subnet: only for each member's address (add_member). What
            # comes from another address is then dropped by the reverse-path check before
            # the hub answers it or learns a neighbour from it (see add_member).
            self.ipr.addr(
                "add",
                index=index,
                address=address,
                prefixlen=prefixlen,
                flags=IFA_F_NOPREFIXROUTE,
            )
            self.ipr.route(
                "add",
                table=table,
                type="local",
                dst=address,
                dst_len=32,
                oif=index,
                prefsrc=address,
                scope=254,  # host
            )
            self.ipr.link("set", index=index, state="up")
        except Exception as e:
            if made:  # what this call made of it, gone; nothing it did not make
                with contextlib.suppress(Exception):
                    self.delete_link(name)
            raise _as_vnet_error(f"create bridge {name} ({address}/{prefixlen})", e) from e
        return index

    def delete_link(self, name: str) -> None:
        bridge = self._bridges.pop(name, None)
        index = self._index(name)
        if index is not None:
            try:
                self.ipr.link("del", index=index)
            except Exception as e:
                raise _as_vnet_error(f"delete link {name}", e) from e
        if bridge is not None:
            # Rules name the interface, and outlive it: a later bridge of the same name
            # gets rules of its own. (Its table's route went with the link.)
            self._delete_rules(name, BRIDGE_TABLE_BASE + bridge)

    def _delete_rules(self, name: str, table: int) -> None:
        for kwargs in (
            {"table": table, "priority": BRIDGE_RULE_PRIORITY},
            {"priority": BRIDGE_RULE_PRIORITY + 1, "action": "FR_ACT_BLACKHOLE"},
        ):
            try:
                self.ipr.rule("del", iifname=name, **kwargs)
            except Exception as e:
                if getattr(e, "code", None) != errno.ENOENT:
                    raise _as_vnet_error(f"delete the routing rules of {name}", e) from e

    def links(self) -> list[str]:
        return sorted(link.get("IFLA_IFNAME") for link in self.ipr.get_links())

    def add_veth(
        self, hub_end: str, bridge: str, sandbox_ns_fd: int, inside_name: str, inside_mac: str
    ) -> None:
        """A veth pair: ``hub_end`` on ``bridge``, up, and its peer ``inside_name`` (with
        ``inside_mac``) created directly in the sandbox's namespace; the port learns
        nothing and knows ``inside_mac`` by a static entry (see the class).

        Sent as raw messages: ``IPRoute.link`` costs ~2 ms more per call in its event loop.
        The hub end is made down and brought up only once learning is off, so that not
        one frame is learned. The peer cannot be brought up in the creating request (the
        kernel opens it before it is paired, ENOTCONN); ``attach_inside`` does that from
        the sandbox's side.
        """
        from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
        from pyroute2.netlink.rtnl import RTM_NEWLINK, RTM_NEWNEIGH
        from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
        from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NUD_NOARP, ndmsg

        peer = [
            ["IFLA_IFNAME", inside_name],
            ["IFLA_NET_NS_FD", sandbox_ns_fd],
            ["IFLA_ADDRESS", inside_mac],
        ]
        m = ifinfmsg()
        m["attrs"] = [
            ["IFLA_IFNAME", hub_end],
            ["IFLA_MASTER", self._bridges[bridge]],
            [
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ["IFLA_INFO_KIND", "veth"],
                        ["IFLA_INFO_DATA", {"attrs": [["VETH_INFO_PEER", {"attrs": peer}]]}],
                    ]
                },
            ],
        ]
        step = f"create veth {hub_end} <-> {inside_name} on {bridge}"
        self.raw.request(m, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, step)
        index = self.raw.index(hub_end)

        # `bridge fdb add INSIDE_MAC dev HUB_END master static`
        n = ndmsg()
        n["family"] = socket.AF_BRIDGE
        n["ifindex"] = index
        n["state"] = NUD_NOARP  # static: forwarded to the port (NUD_PERMANENT means local)
        n["flags"] = NTF_MASTER
        n["attrs"] = [["NDA_LLADDR", inside_mac]]
        step = f"add the static forwarding entry {inside_mac} on {hub_end}"
        self.raw.request(n, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, step)

        # `ip link set HUB_END type bridge_slave learning off up`: the port's settings are
        # applied before the flags, in one request.
        m = ifinfmsg()
        m["index"] = index
        m["flags"] = IFF_UP
        m["change"] = IFF_UP
        brport = [["IFLA_BRPORT_LEARNING", 0]]
        m["attrs"] = [
            [
                "IFLA_LINKINFO",
                {
                    "attrs": [
                        ["IFLA_INFO_SLAVE_KIND", "bridge"],
                        ["IFLA_INFO_SLAVE_DATA", {"attrs": brport}],
                    ]
                },
            ]
        ]
        self.raw.request(m, RTM_NEWLINK, 0, f"turn learning off on {hub_end} and bring it up")

    def add_member(self, bridge: str, address: str) -> None:
        """What the hub knows of a member at ``address`` on ``bridge``: a route for that
        address alone, and its MAC (``mac_for``) as a permanent neighbour entry.

        The hub's neighbour (ARP) entries count against the host's one table, whose size
        limit (gc_thresh3) every network namespace shares: a member sending ARP requests
        for its gateway from made-up addresses of its subnet, or datagrams from them, had
        the hub learn (or ask for) each one, ~250 entries a network (red team 32 F1).
        With routes for members' addresses only and the strict reverse-path check, what
        comes from any other address is dropped before the hub answers it or learns
        anything from it; and a permanent entry cannot be taken over by a member's ARP
        replies claiming another member's address. So the hub holds one entry a member.
        """
        from pyroute2.netlink import NLM_F_CREATE, NLM_F_REPLACE
        from pyroute2.netlink.rtnl import RTM_NEWNEIGH, RTM_NEWROUTE
        from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

        route, neigh = _member_messages(self._bridges[bridge], address)
        route["proto"] = 4  # static
        route["type"] = 1  # unicast
        step = f"add the route to member {address} on {bridge}"
        self.raw.request(route, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, step)
        neigh["state"] = NUD_PERMANENT
        neigh["attrs"].append(["NDA_LLADDR", mac_for(address)])
        step = f"add the neighbour entry of member {address} on {bridge}"
        self.raw.request(neigh, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, step)

    def remove_member(self, bridge: str, address: str) -> None:
        """Undo ``add_member`` (gone already with the bridge: nothing to do)."""
        from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_DELROUTE

        index = self._bridges.get(bridge)
        if index is None:
            return
        r, n = _member_messages(index, address)
        for msg, kind, what in ((r, RTM_DELROUTE, "route"), (n, RTM_DELNEIGH, "neighbour entry")):
            try:
                self.raw.request(msg, kind, 0, f"remove the {what} of member {address}")
            except VnetError as e:
                if e.errno not in (errno.ENOENT, errno.ESRCH):
                    raise

    def wait_up(self, hub_end: str, timeout: float = 5.0) -> None:
        self.raw.wait_up(self.raw.index(hub_end), timeout)


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
    sock: socket.socket, ifname: str, address: str, prefixlen: int, timeout: float = 5.0
) -> None:
    """Inside the sandbox: address on the new interface, up, wait until it is UP.

    The kernel adds the route for the subnet with the address; there is no default
    route, so anything outside the subnet is unreachable at once (ENETUNREACH).
    """
    rt = Rtnl(sock)
    index = rt.index(ifname)
    rt.add_address(index, address, prefixlen)
    rt.set_up(index)
    rt.wait_up(index, timeout)
