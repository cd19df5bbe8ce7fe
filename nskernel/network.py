"""Sandbox networks: named virtual networks, address allocation, names, published ports.

One :class:`NetworkManager` belongs to one single-threaded process that creates the
sandboxes (the ``%%sandbox`` server, or a test helper). It decides everything that
needs no privileges (names, subnets, addresses, hosts files) and leaves the netlink
work to ``nskernel._linux.vnet``, which it imports only when a sandbox joins a network:
sandboxes with just ``--net`` never pay for pyroute2.

The layout::

    hub network namespace (no link to the host, no default route, no forwarding)
      nsk-br-lab   10.213.0.1/24 ── nskv1 ══ eth0 10.213.0.2  sandbox web1
                                 └─ nskv2 ══ eth0 10.213.0.3  sandbox client1
      nsk-br-other 10.213.1.1/24 ── nskv3 ══ eth0 10.213.1.2  sandbox lonely

- Subnets come from a pool, by default ``10.213.0.0/16`` (part of the RFC 1918 private
  range 10.0.0.0/8) cut into ``/24`` networks; set ``NSKERNEL_NETWORK_POOL`` and
  ``NSKERNEL_NETWORK_PREFIXLEN`` (or the constructor's arguments) to choose others.
  Because the hub is isolated, a pool overlapping the host's own networks still cannot
  reach them; pick another one only to avoid confusing addresses.
- ``.1`` of each subnet is the bridge in the hub (so published ports can be forwarded
  into the network); sandboxes get ``.2`` upwards, or the address asked with ``--ip``.
- Names resolve through a managed ``/etc/hosts`` in each sandbox (bound over the host's,
  read-only), rewritten in place whenever a peer joins or leaves.
- The hub lives as long as some network exists; everything netlink-made lives in it,
  so when the owning process dies (SIGKILL included) the kernel removes it all.
- ``publish`` forwards TCP from ``127.0.0.1:HOSTPORT`` in the caller's own network
  namespace to a sandbox's port, through a small forked relay process whose listening
  socket is made before it enters the hub (the only way the host side can reach in).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import re
import resource
import select
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._record import factory, record
from .errors import NskernelError

if TYPE_CHECKING:
    from ._linux.vnet import Hub

DEFAULT_POOL = "10.213.0.0/16"
DEFAULT_PREFIXLEN = 24
POOL_ENV = "NSKERNEL_NETWORK_POOL"
PREFIXLEN_ENV = "NSKERNEL_NETWORK_PREFIXLEN"

_NETWORK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOST_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class NetworkError(NskernelError):
    """A network request could not be met; the message says why and what to do."""


class AddressInUse(NetworkError):
    """``--ip`` asked for an address another sandbox (or the bridge) already has."""


class SubnetExhausted(NetworkError):
    """No free address left in a network's subnet, or no free subnet left in the pool."""


class NetworkInUse(NetworkError):
    """``network rm`` of a network that still has sandboxes on it."""


class PublishError(NetworkError):
    """``--publish`` could not listen on the host side or find its target."""


@record
class Network:
    name: str
    subnet: ipaddress.IPv4Network
    bridge: str
    members: dict[str, ipaddress.IPv4Address] = factory(dict)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnet": str(self.subnet),
            "bridge": self.bridge,
            "gateway": str(self.gateway),
            "members": {n: str(a) for n, a in sorted(self.members.items())},
        }


@record
class Endpoint:
    """One interface of a sandbox on one network."""

    network: str
    ifname: str  # inside the sandbox: eth0, eth1, ...
    hub_end: str  # the veth end on the bridge, in the hub
    address: ipaddress.IPv4Address
    prefixlen: int

    def info(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "interface": self.ifname,
            "address": f"{self.address}/{self.prefixlen}",
            "hub_link": self.hub_end,
        }


@record
class Forwarder:
    """A relay process: ``127.0.0.1:host_port`` on the host side → ``target:port``."""

    pid: int
    host: str
    host_port: int
    target: str
    port: int

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(self.pid)

    def info(self) -> dict[str, Any]:
        return {"host": f"{self.host}:{self.host_port}", "target": f"{self.target}:{self.port}"}


@record
class Member:
    name: str
    init_pid: int
    aliases: tuple[str, ...]
    endpoints: list[Endpoint]
    hosts_fd: int | None
    forwarders: list[Forwarder] = factory(list)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interfaces": [e.info() for e in self.endpoints],
            "networks": [e.network for e in self.endpoints],
            "published": [f.info() for f in self.forwarders],
        }


def parse_publish(text: str) -> tuple[int, int]:
    """``HOSTPORT:PORT`` (or just ``PORT``, the same on both sides) → (hostport, port)."""
    host_s, sep, port_s = text.partition(":")
    if not sep:
        port_s = host_s
    try:
        host_port, port = int(host_s), int(port_s)
    except ValueError:
        host_port = port = -1
    if not (1 <= host_port <= 65535 and 1 <= port <= 65535):
        msg = f"--publish {text!r}: expected HOSTPORT:PORT with ports 1-65535, e.g. 8080:80"
        raise NetworkError(msg)
    return host_port, port


def _pool_from_env() -> tuple[str, int]:
    pool = os.environ.get(POOL_ENV) or DEFAULT_POOL
    raw = os.environ.get(PREFIXLEN_ENV) or str(DEFAULT_PREFIXLEN)
    try:
        prefixlen = int(raw)
    except ValueError:
        msg = f"{PREFIXLEN_ENV}={raw!r}: expected a prefix length such as 24"
        raise NetworkError(msg) from None
    return pool, prefixlen


class NetworkManager:
    """All networks of one sandbox-creating process. Not thread-safe (nor needs to be)."""

    def __init__(self, pool: str | None = None, prefixlen: int | None = None) -> None:
        env_pool, env_prefixlen = _pool_from_env()
        pool = pool or env_pool
        prefixlen = prefixlen or env_prefixlen
        try:
            self.pool = ipaddress.IPv4Network(pool)
        except ValueError as e:
            msg = f"network pool {pool!r} is not an IPv4 network such as {DEFAULT_POOL}: {e}"
            raise NetworkError(msg) from None
        if not (self.pool.prefixlen <= prefixlen <= 30):
            msg = (
                f"subnet size /{prefixlen} does not fit the pool {self.pool}: use a prefix "
                f"length from {self.pool.prefixlen} to 30 (each network needs a bridge "
                "address and at least one sandbox address)"
            )
            raise NetworkError(msg)
        self.prefixlen = prefixlen
        self.networks: dict[str, Network] = {}
        self.members: dict[str, Member] = {}
        self._hub: Hub | None = None
        self._veth_counter = 0

    # ------------------------------------------------------------ queries

    def ls(self) -> list[dict[str, Any]]:
        """``%sandbox network ls``: every network, its subnet and members."""
        return [n.info() for _, n in sorted(self.networks.items())]

    def describe(self, name: str) -> dict[str, Any] | None:
        """The network part of ``%sandbox inspect NAME`` (None: not on any network)."""
        m = self.members.get(name)
        return m.info() if m else None

    def hub_links(self) -> list[str]:
        """The links in the hub (for tests and ``network ls --verbose``)."""
        return self._hub.links() if self._hub else []

    @property
    def hub_ns_fd(self) -> int | None:
        return self._hub.ns_fd if self._hub else None

    # ------------------------------------------------------------ attach / detach

    def check_request(self, name: str, networks: Sequence[str], ip: str | None = None) -> None:
        """Validate a request without changing anything (call before spawning)."""
        if not _HOST_NAME_RE.fullmatch(name):
            msg = (
                f"sandbox name {name!r} cannot be used on a network: names resolve as host "
                "names, so use 1-63 letters, digits and '-', not starting or ending with '-'"
            )
            raise NetworkError(msg)
        if name in self.members:
            msg = f"sandbox {name!r} is already on a network; remove it first"
            raise NetworkError(msg)
        if not networks:
            raise NetworkError("no network given: name one, e.g. --network lab")
        if len(set(networks)) != len(networks):
            msg = f"network listed twice: {', '.join(networks)}"
            raise NetworkError(msg)
        for net in networks:
            _check_network_name(net)
        if ip is not None:
            if len(networks) != 1:
                msg = "--ip applies to a single --network; give exactly one network with --ip"
                raise NetworkError(msg)
            addr = _parse_ip(ip)
            existing = self.networks.get(networks[0])
            if existing is not None:
                self._check_wanted(existing, addr)

    def attach(
        self,
        name: str,
        init_pid: int,
        networks: Sequence[str],
        *,
        ip: str | None = None,
        aliases: Sequence[str] = (),
        hosts_file: bool = True,
    ) -> list[Endpoint]:
        """Put the running sandbox ``name`` (init at host PID ``init_pid``) on ``networks``.

        Creates missing networks, one interface per network (``eth0``, ``eth1``...), an
        address on each, and (with ``hosts_file``: the sandbox has its own mount
        namespace) a managed /etc/hosts. Returns when every link is up, so the first
        packet is not lost. On failure nothing of this attachment remains.
        """
        networks = list(networks)
        self.check_request(name, networks, ip)
        from ._linux import vnet

        created_nets: list[str] = []
        endpoints: list[Endpoint] = []
        sock = None
        hosts_fd = None
        try:
            for i, net_name in enumerate(networks):
                net = self.networks.get(net_name)
                if net is None:
                    net = self._create_network(net_name)
                    created_nets.append(net_name)
                addr = self._allocate(net, _parse_ip(ip) if ip is not None and i == 0 else None)
                net.members[name] = addr  # reserved now; released on failure below
                self._veth_counter += 1
                endpoints.append(
                    Endpoint(net_name, f"eth{i}", f"nskv{self._veth_counter}", addr, self.prefixlen)
                )
            hub = self._ensure_hub()
            member = Member(name, init_pid, tuple(aliases), endpoints, None)
            hosts_text = self._hosts_text(member) if hosts_file else None
            # The hopper enters the sandbox while we make the veth pairs: both take about
            # a millisecond, and they need nothing from each other.
            hub.hopper.send_enter(init_pid, hosts_text=hosts_text)
            try:
                ns_fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    for ep in endpoints:
                        bridge = self.networks[ep.network].bridge
                        hub.add_veth(
                            ep.hub_end, bridge, ns_fd, ep.ifname, vnet.mac_for(str(ep.address))
                        )
                        hub.add_member(bridge, str(ep.address))
                finally:
                    os.close(ns_fd)
            finally:  # always take the answer, or the next request would read this one
                sock, hosts_fd = hub.hopper.receive_enter(init_pid)
            for ep in endpoints:
                vnet.attach_inside(sock, ep.ifname, str(ep.address), ep.prefixlen)
            for ep in endpoints:
                hub.wait_up(ep.hub_end)
        except BaseException:
            if hosts_fd is not None:
                os.close(hosts_fd)
            self._undo(name, endpoints, created_nets)
            raise
        finally:
            if sock is not None:
                sock.close()
        member.hosts_fd = hosts_fd
        self.members[name] = member
        self._refresh_hosts(exclude=name, networks=networks)
        return endpoints

    def detach(self, name: str) -> None:
        """Take ``name`` off its networks (call when the sandbox goes, or before).

        Releases its addresses, stops its published ports, removes its veth pairs and
        every network left without members; the hub goes with the last network.
        """
        member = self.members.pop(name, None)
        if member is None:
            return
        for fwd in member.forwarders:
            fwd.stop()
        if member.hosts_fd is not None:
            os.close(member.hosts_fd)
        nets = [ep.network for ep in member.endpoints]
        self._undo(name, member.endpoints, [])
        self._refresh_hosts(exclude=name, networks=nets)

    def remove_network(self, name: str) -> None:
        """``%sandbox network rm NAME``: only a network no sandbox is on."""
        net = self.networks.get(name)
        if net is None:
            known = ", ".join(sorted(self.networks)) or "none"
            msg = f"no network named {name!r} (networks: {known})"
            raise NetworkError(msg)
        if net.members:
            msg = (
                f"network {name!r} is in use by {', '.join(sorted(net.members))}: "
                "remove those sandboxes first (%sandbox rm NAME)"
            )
            raise NetworkInUse(msg)
        self._drop_network(net)

    def close(self) -> None:
        """Tear everything down (the owning process is about to exit)."""
        for name in list(self.members):
            try:
                self.detach(name)
            except NskernelError:
                pass
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        self.networks.clear()

    # ------------------------------------------------------------ publish

    def publish(
        self, name: str, host_port: int, port: int, *, host: str = "127.0.0.1"
    ) -> Forwarder:
        """Forward TCP ``host:host_port`` (caller's namespace) to ``name``'s ``port``.

        The relay runs until the sandbox is detached or the caller dies. Raises
        :class:`PublishError` if the host port is taken.
        """
        member = self.members.get(name)
        if member is None or not member.endpoints or self._hub is None:
            msg = (
                f"--publish needs sandbox {name!r} on a network: add --network NAME "
                "(the published port is forwarded into that network)"
            )
            raise PublishError(msg)
        target = str(member.endpoints[0].address)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, host_port))
            listener.listen(64)
        except OSError as e:
            listener.close()
            msg = (
                f"--publish {host_port}:{port}: cannot listen on {host}:{host_port}: "
                f"{e.strerror or e}; choose another host port"
            )
            raise PublishError(msg) from e
        pid = _start_relay(listener, self._hub.ns_fd, (target, port))
        listener.close()
        fwd = Forwarder(pid, host, host_port, target, port)
        member.forwarders.append(fwd)
        return fwd

    # ------------------------------------------------------------ internals

    def _ensure_hub(self) -> Hub:
        if self._hub is None:
            from ._linux.vnet import Hub

            self._hub = Hub()
        return self._hub

    def _create_network(self, name: str) -> Network:
        used = {n.subnet for n in self.networks.values()}
        for subnet in self.pool.subnets(new_prefix=self.prefixlen):
            if subnet not in used:
                break
        else:
            msg = (
                f"cannot create network {name!r}: all {len(used)} subnets of the pool "
                f"{self.pool} (/{self.prefixlen} each) are in use; remove a network "
                f"(%sandbox network rm) or set {POOL_ENV} to a larger pool"
            )
            raise SubnetExhausted(msg)
        net = Network(name, subnet, _bridge_name(name, (n.bridge for n in self.networks.values())))
        hub = self._ensure_hub()
        hub.add_bridge(net.bridge, str(net.gateway), self.prefixlen)
        self.networks[name] = net
        return net

    def _check_wanted(self, net: Network, addr: ipaddress.IPv4Address) -> None:
        if addr not in net.subnet:
            msg = (
                f"--ip {addr} is not in network {net.name!r}'s subnet {net.subnet}; "
                f"pick an address from {net.subnet.network_address + 2} to "
                f"{net.subnet.broadcast_address - 1}"
            )
            raise NetworkError(msg)
        if addr in (net.subnet.network_address, net.subnet.broadcast_address):
            msg = f"--ip {addr} is the network or broadcast address of {net.subnet}; pick another"
            raise NetworkError(msg)
        if addr == net.gateway:
            msg = f"--ip {addr} is the address of network {net.name!r}'s bridge; pick another"
            raise AddressInUse(msg)
        for other, used in net.members.items():
            if used == addr:
                msg = (
                    f"--ip {addr} is already used by sandbox {other!r} on network "
                    f"{net.name!r}; pick another address or leave out --ip"
                )
                raise AddressInUse(msg)

    def _allocate(
        self, net: Network, wanted: ipaddress.IPv4Address | None
    ) -> ipaddress.IPv4Address:
        if wanted is not None:
            self._check_wanted(net, wanted)
            return wanted
        used = set(net.members.values())
        for addr in net.subnet.hosts():
            if addr != net.gateway and addr not in used:
                return addr
        msg = (
            f"network {net.name!r} ({net.subnet}) has no free address: all "
            f"{net.subnet.num_addresses - 3} sandbox addresses are taken; remove a sandbox "
            "from it or use another network"
        )
        raise SubnetExhausted(msg)

    def _undo(self, name: str, endpoints: Sequence[Endpoint], created: Sequence[str]) -> None:
        for ep in endpoints:
            net = self.networks.get(ep.network)
            if self._hub is not None:
                try:
                    self._hub.delete_link(ep.hub_end)
                except OSError:
                    pass  # gone already: the sandbox's namespace took the pair with it
                if net is not None:
                    try:
                        self._hub.remove_member(net.bridge, str(ep.address))
                    except OSError:
                        pass  # the hub goes with its last network anyway
            if net is not None:
                net.members.pop(name, None)
        for net_name in {*created, *(ep.network for ep in endpoints)}:
            net = self.networks.get(net_name)
            if net is not None and not net.members:
                self._drop_network(net)

    def _drop_network(self, net: Network) -> None:
        self.networks.pop(net.name, None)
        if self._hub is not None:
            try:
                self._hub.delete_link(net.bridge)
            except OSError:
                pass
            if not self.networks:
                self._hub.close()
                self._hub = None

    def _hosts_text(self, member: Member) -> str:
        lines = [
            "# Managed by nskernel: sandboxes on this sandbox's networks. Rewritten as",
            "# sandboxes join and leave; changes made here are not kept.",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        seen: set[str] = set()
        for ep in member.endpoints:
            own = " ".join(dict.fromkeys((member.name, *member.aliases)))
            if member.name not in seen:
                lines.append(f"{ep.address}\t{own}")
                seen.add(member.name)
            net = self.networks.get(ep.network)
            for other, addr in sorted((net.members if net else {}).items()):
                if other in seen:
                    continue
                seen.add(other)
                peer = self.members.get(other)
                names = (other, *(peer.aliases if peer else ()))
                lines.append(f"{addr}\t{' '.join(dict.fromkeys(names))}")
        return "\n".join(lines) + "\n"

    def _refresh_hosts(self, *, exclude: str, networks: Sequence[str]) -> None:
        from ._linux import vnet

        affected: set[str] = set()
        for net_name in networks:
            net = self.networks.get(net_name)
            if net is not None:
                affected.update(net.members)
        for other in sorted(affected - {exclude}):
            m = self.members.get(other)
            if m is not None and m.hosts_fd is not None:
                try:
                    vnet.rewrite_hosts(m.hosts_fd, self._hosts_text(m))
                except OSError:
                    pass  # that sandbox is going away; its own detach will follow


# ---------------------------------------------------------------- helpers


def _check_network_name(name: str) -> None:
    if not _NETWORK_NAME_RE.fullmatch(name):
        msg = (
            f"invalid network name {name!r}: use up to 63 letters, digits, '_', '.' "
            "and '-', starting with a letter or digit"
        )
        raise NetworkError(msg)


def _parse_ip(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        msg = f"--ip {text!r} is not an IPv4 address such as 10.213.0.10"
        raise NetworkError(msg) from None


def _bridge_name(network: str, taken: Iterable[str] = ()) -> str:
    """The hub bridge of ``network``: its name when that fits (interface names hold 15
    bytes), else a digest of it; never one of ``taken`` (the other networks' bridges).
    A digest can equal another network's own name (network "lab.x" and network
    "5a5c4ccb" both wanted nsk-br-5a5c4ccb, red team 31 F1): the later one then gets a
    digest of its name with a counter."""
    taken = set(taken)
    name = f"nsk-br-{network}"
    if len(name) > 15 or "." in network:
        name = "nsk-br-" + hashlib.sha1(network.encode()).hexdigest()[:8]
    n = 0
    while name in taken:
        n += 1
        name = "nsk-br-" + hashlib.sha1(f"{network}#{n}".encode()).hexdigest()[:8]
    return name


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped elsewhere (a server's waitpid(-1)); it is gone either way


# ---------------------------------------------------------------- the relay process


def _start_relay(listener: socket.socket, hub_ns_fd: int, target: tuple[str, int]) -> int:
    """Fork the relay for one published port; returns its PID once it is serving."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the relay
        code = 1
        try:
            os.close(ready_r)
            code = _relay_main(listener, hub_ns_fd, target, ready_w)
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        answer = os.read(ready_r, 4096)
    finally:
        os.close(ready_r)
    if answer != b"ok":
        _reap(pid)
        why = answer.decode(errors="replace") or "it exited at once"
        raise PublishError(f"the port relay could not start: {why}")
    return pid


def _relay_main(
    listener: socket.socket, hub_ns_fd: int, target: tuple[str, int], ready_w: int
) -> int:
    from ._linux import syscalls as sc

    try:
        # The relay is a forked copy of its parent: it must not hold the parent's other
        # descriptors (a sandbox's lifeline held here would keep that sandbox alive).
        sc.close_fds_except({listener.fileno(), hub_ns_fd, ready_w})
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        sc.set_process_name("nskernel-relay")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        # The listener stays in the namespace it was made in; every socket made from
        # now on is in the hub, where the networks' bridges are.
        sc.setns(hub_ns_fd, sc.CLONE_NEWNET)
        os.close(hub_ns_fd)
        relay = _Relay(listener, target)  # its epoll set and limits, before "serving"
    except OSError as e:
        os.write(ready_w, f"{e}".encode())
        return 1
    os.write(ready_w, b"ok")
    os.close(ready_w)
    relay.run()
    return 0


# The relay copies bytes between host clients and a sandbox's port. The sandbox side is
# hostile (it decides when its half closes, how fast it reads, how much it sends), and
# host clients hold connections as long as they like (keep-alive pools, idle browser
# sockets). Whatever either does, the relay neither spins nor grows:
#
# - Interest follows state. A socket is polled for reading only while its direction is
#   open and has room in its buffer, for writing only while bytes or a FIN are owed to
#   it. A socket with nothing to wait for stays registered with no events: epoll still
#   reports its errors. (A socket at EOF is always readable; asking for that spun a core
#   for as long as a client kept its half of a half-closed pair open: red team r12 F3.)
#   Once a socket reports a hang-up, which it then reports for good, it is registered
#   only while there is something to ask of it.
# - Each direction holds at most _BUFFER bytes; beyond that the relay stops reading, the
#   kernel's windows fill and the sender waits. A slow reader holds back the writer,
#   never the relay's memory: at most _MAX_CONNECTIONS x 2 x _BUFFER bytes in all.
# - A FIN is passed on as shutdown(SHUT_WR) once the bytes before it are delivered, as
#   docker-proxy and socat do; the pair ends when both directions have ended, or at the
#   first error on either socket.
# - At most _MAX_CONNECTIONS pairs (fewer when the descriptor limit is low). Beyond that,
#   or when no descriptor is left, the listener is not polled: new clients wait in the
#   kernel's listen backlog, accepted when a pair ends (or, after an error not caused by
#   the relay's own pairs, _RETRY_ACCEPT seconds later), instead of accept() being
#   retried in a loop.

_BUFFER = 1 << 16
_MAX_CONNECTIONS = 256
_RETRY_ACCEPT = 1.0
_IN, _OUT, _ERR, _HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP


class _Side:
    """One socket of a relayed pair, and the bytes read from it that its peer is owed."""

    __slots__ = ("buf", "connecting", "eof", "fd", "hup", "mask", "peer", "shut", "sock")

    def __init__(self, sock: socket.socket, *, connecting: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = self
        self.buf = bytearray()
        self.eof = False  # this socket sent FIN
        self.shut = False  # the peer's FIN was passed on: this socket's sending half is shut
        self.connecting = connecting
        self.hup = False  # epoll reported a hang-up (both halves shut, or reset)
        self.mask: int | None = None  # events registered; None: not in the epoll set

    def wants(self) -> int:
        events = 0
        if not self.eof and len(self.buf) < _BUFFER:
            events |= _IN
        if self.connecting or self.peer.buf or (self.peer.eof and not self.shut):
            events |= _OUT
        return events


class _Relay:
    """Relays every connection accepted on ``listener`` to ``target``, both ways,
    half-closes included: one listener, every accepted pair, one epoll set."""

    def __init__(self, listener: socket.socket, target: tuple[str, int]) -> None:
        self.listener = listener
        self.target = target
        self.ep = select.epoll()
        self.sides: dict[int, _Side] = {}
        self.closing: list[socket.socket] = []
        self.pairs = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Two descriptors per pair; a few for the listener, the epoll set and stdio.
        self.max_pairs = max(1, min(_MAX_CONNECTIONS, (soft - 8) // 2))
        self.retry_at: float | None = None
        self.listening = True
        listener.setblocking(False)
        self.ep.register(listener.fileno(), _IN)

    def run(self) -> None:
        lfd = self.listener.fileno()
        while True:
            timeout = -1.0
            if self.retry_at is not None:
                timeout = max(0.0, self.retry_at - time.monotonic())
            for fd, ev in self.ep.poll(timeout):
                if fd == lfd:
                    self._accept()
                elif (side := self.sides.get(fd)) is not None:
                    self._handle(side, ev)
            # Closed only now, so no descriptor of this batch is reused within it.
            for s in self.closing:
                s.close()
            self.closing.clear()
            if self.retry_at is not None and time.monotonic() >= self.retry_at:
                self.retry_at = None
            self._listen()

    def _listen(self) -> None:
        want = self.pairs < self.max_pairs and self.retry_at is None
        if want != self.listening:
            self.ep.modify(self.listener.fileno(), _IN if want else 0)
            self.listening = want

    def _pause(self) -> None:
        self.retry_at = time.monotonic() + _RETRY_ACCEPT
        self._listen()

    def _accept(self) -> None:
        # The upstream socket first: without a descriptor for it, the client is left in
        # the backlog rather than accepted and dropped.
        try:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            self._pause()  # EMFILE, ENFILE, ENOBUFS: until a pair ends, or a while
            return
        try:
            client, _ = self.listener.accept()
        except OSError as e:
            upstream.close()
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED):
                self._pause()  # EMFILE and the like: the client is still queued
            return  # EAGAIN, ECONNABORTED: that client gave up; no entry is left behind
        client.setblocking(False)
        upstream.setblocking(False)
        if upstream.connect_ex(self.target) not in (0, errno.EINPROGRESS):
            client.close()
            upstream.close()
            return
        a, b = _Side(client), _Side(upstream, connecting=True)
        a.peer, b.peer = b, a
        self.sides[a.fd], self.sides[b.fd] = a, b
        self.pairs += 1
        self._arm(a)
        self._arm(b)
        self._listen()

    def _handle(self, side: _Side, ev: int) -> None:
        peer = side.peer
        if ev & _ERR:  # reset, refused, timed out: the pair is over
            self._close(side)
            return
        if ev & _HUP:
            side.hup = True
        try:
            if side.connecting and ev & (_OUT | _HUP):
                if side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._close(side)
                    return
                side.connecting = False
            if ev & (_IN | _HUP) and side.wants() & _IN:
                data = side.sock.recv(min(65536, _BUFFER - len(side.buf)))
                if data:
                    side.buf += data
                else:
                    side.eof = True
            self._flush(side)  # what was just read, to the peer
            self._flush(peer)  # what the peer is owed... into this socket, if it can take it
        except BlockingIOError:
            pass
        except OSError:
            self._close(side)
            return
        if side.shut and peer.shut:  # both directions ended
            self._close(side)
            return
        self._arm(side)
        self._arm(peer)

    @staticmethod
    def _flush(src: _Side) -> None:
        """Send what ``src`` holds to its peer, then pass on its FIN once all is sent."""
        dst = src.peer
        if dst.connecting or dst.shut:
            return
        if src.buf:
            try:
                sent = dst.sock.send(src.buf, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return  # the peer's window is full: its _OUT interest waits for room
            del src.buf[:sent]
        if src.eof and not src.buf:
            dst.sock.shutdown(socket.SHUT_WR)
            dst.shut = True

    def _arm(self, side: _Side) -> None:
        want = side.wants()
        if side.hup and not want:
            # A hung-up socket is reported on every poll; with nothing to ask of it, it
            # leaves the set until there is (its buffer drains, or bytes are owed to it).
            if side.mask is not None:
                self.ep.unregister(side.fd)
                side.mask = None
        elif side.mask is None:
            self.ep.register(side.fd, want)
            side.mask = want
        elif want != side.mask:
            self.ep.modify(side.fd, want)
            side.mask = want

    def _close(self, side: _Side) -> None:
        for x in (side, side.peer):
            if self.sides.pop(x.fd, None) is not None:
                if x.mask is not None:
                    self.ep.unregister(x.fd)
                self.closing.append(x.sock)
        self.pairs -= 1
        self.retry_at = None  # a descriptor is free again
        self._listen()


# ---------------------------------------------------------------- the sandbox server's hooks
#
# ``nskernel.magics.server`` calls these (see its ``_network_backend``). The server is
# single-threaded and lives as long as its kernel, so one manager per process suffices.

_manager: NetworkManager | None = None
_member_of: dict[int, str] = {}  # sandbox init PID → its name on the networks


def manager() -> NetworkManager:
    """This process's NetworkManager (created on first use)."""
    global _manager
    if _manager is None:
        _manager = NetworkManager()
    return _manager


def attach_sandbox(
    sandbox: Any,
    *,
    name: str | None,
    network: str | None = None,
    ip: str | None = None,
    publish: Sequence[str] = (),
) -> dict[str, Any]:
    """Server hook: put a just-spawned sandbox on ``network`` (comma-separated names).

    Called before any cell runs in it. Returns the facts ``%sandbox ls/inspect`` show.
    """
    if not network:
        what = "--ip" if ip else "--publish"
        msg = f"{what} needs --network NAME (the virtual network the sandbox joins)"
        raise NetworkError(msg)
    if "net" not in sandbox.namespaces:
        msg = "--network needs the sandbox's own network namespace: add --net (or no flag)"
        raise NetworkError(msg)
    ports = [parse_publish(p) for p in publish]  # all checked before anything is made
    nm = manager()
    member = name or sandbox.hostname or f"sandbox-{sandbox.pid}"
    aliases = (sandbox.hostname,) if sandbox.hostname and sandbox.hostname != member else ()
    networks = [n.strip() for n in network.split(",") if n.strip()]
    nm.attach(
        member,
        sandbox.pid,
        networks,
        ip=ip,
        aliases=aliases,
        hosts_file="mnt" in sandbox.namespaces,
    )
    _member_of[sandbox.pid] = member
    try:
        for host_port, port in ports:
            nm.publish(member, host_port, port)
    except BaseException:
        detach_sandbox(sandbox, name=name)
        raise
    info = nm.describe(member) or {}
    return {
        "ips": [i["address"].split("/")[0] for i in info.get("interfaces", [])],
        **info,
    }


def detach_sandbox(sandbox: Any, *, name: str | None = None) -> None:
    """Server hook: the sandbox is about to be killed; release what it had."""
    member = _member_of.pop(sandbox.pid, None)
    if member is not None and _manager is not None:
        _manager.detach(member)


def network_ls() -> list[dict[str, Any]]:
    """Server hook for ``%sandbox network ls`` (never loads pyroute2 by itself)."""
    return _manager.ls() if _manager is not None else []


def network_rm(name: str) -> None:
    """Server hook for ``%sandbox network rm NAME``."""
    if _manager is None:
        msg = f"no network named {name!r} (no networks exist yet)"
        raise NetworkError(msg)
    _manager.remove_network(name)
