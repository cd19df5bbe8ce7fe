"""Sandbox networks through the real netlink layer, without the magics.

Each test drives a helper process (``tests/netlab.py``) that stands in for the sandbox
server: single-threaded, rootless in its own user namespace, it owns one
NetworkManager and its hub. Sandboxes run an agent that executes snippets inside them.
Runs as root and as an unprivileged user (CI does both); traffic goes only to
addresses inside namespaces these tests created, or is refused before leaving a
sandbox (host addresses are read locally, never sent to from the host side).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
import urllib.request

import pytest

from nskernel._linux import procfs
from nskernel._linux.vnet import mac_for
from tests.netlab import Lab, LabError

pytestmark = pytest.mark.userns

SERVE = r"""
import socket, threading
def _serve(sock, reply):
    while True:
        c, peer = sock.accept()
        with c:
            data = c.recv(100)
            c.sendall(reply + b" got " + data + b" from " + peer[0].encode())
_srv = socket.create_server(("0.0.0.0", {port}))
threading.Thread(target=_serve, args=(_srv, {reply!r}), daemon=True).start()
"""

CONNECT = r"""
import socket, time
def ask(host, port, timeout=3.0):
    t = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            return "ok " + s.recv(200).decode()
    except OSError as e:
        return f"error {type(e).__name__} {e.errno} after {time.monotonic() - t:.2f}s"
"""


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


def _host_addresses() -> list[str]:
    """This machine's own IPv4 interface addresses, read locally (no traffic)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return sorted({a.get("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_network_tcp_both_ways_by_ip_and_name(lab):
    a = lab.call("spawn", name="alpha", networks=["lab"])
    b = lab.call("spawn", name="beta", networks=["lab"])
    assert a["addresses"] != b["addresses"]
    ip_a, ip_b = a["addresses"][0], b["addresses"][0]
    assert ip_a.startswith("10.213.") and ip_b.startswith("10.213.")
    for name in ("alpha", "beta"):
        lab.run(name, SERVE.format(port=7000, reply=name.encode()) + CONNECT)

    # Inside: eth0 with the allocated address, a route for the subnet only.
    inside = lab.run(
        "alpha",
        "import os; print(sorted(os.listdir('/sys/class/net')));"
        "print(open('/proc/net/route').read())",
    )
    assert "['eth0', 'lo']" in inside
    assert "00000000\t00000000" not in inside.replace(" ", "\t"), "no default route expected"

    for src, dst, dst_ip in (("alpha", "beta", ip_b), ("beta", "alpha", ip_a)):
        src_ip = ip_a if src == "alpha" else ip_b
        for host in (dst, dst_ip):
            out = lab.run(src, f"print(ask({host!r}, 7000))")
            assert out.strip() == f"ok {dst} got ping from {src_ip}", (src, host, out)


def test_first_connection_after_attach_is_not_lost(lab):
    # The link is waited for: a connection right after attach must succeed at once,
    # with no retransmission (which would take >= 1 s).
    lab.call("spawn", name="srv", networks=["fast"])
    lab.run("srv", SERVE.format(port=7001, reply=b"srv"))
    lab.call("spawn", name="cli", networks=["fast"])
    out = lab.run(
        "cli",
        CONNECT + "t=time.monotonic(); r=ask('srv', 7001); print(r, round(time.monotonic()-t, 3))",
    )
    reply, took = out.rsplit(" ", 1)
    assert reply.startswith("ok srv got ping"), out
    assert float(took) < 0.9, out


def test_different_networks_cannot_reach_each_other(lab):
    a = lab.call("spawn", name="red1", networks=["red"])
    b = lab.call("spawn", name="blue1", networks=["blue"])
    lab.run("blue1", SERVE.format(port=7000, reply=b"blue1") + CONNECT)
    lab.run("red1", SERVE.format(port=7000, reply=b"red1") + CONNECT)
    nets = {n["name"]: n for n in lab.call("ls")}
    assert nets["red"]["subnet"] != nets["blue"]["subnet"]
    ip_b = b["addresses"][0]
    blue_gw = nets["blue"]["gateway"]
    for host in (ip_b, blue_gw, "blue1"):
        out = lab.run("red1", f"print(ask({host!r}, 7000, timeout=2.0))").strip()
        assert out.startswith("error"), (host, out)
        assert float(out.rsplit(" ", 1)[1].rstrip("s")) < 2.5, out
    out = lab.run("blue1", f"print(ask({a['addresses'][0]!r}, 7000, timeout=2.0))").strip()
    assert out.startswith("error"), out


ROUTE = r"""
from pyroute2 import IPRoute
with IPRoute() as _ipr:
    _eth0 = _ipr.link_lookup(ifname="eth0")[0]
    _ipr.route("replace", dst={dst!r}, dst_len={dst_len}, oif=_eth0, **{via})
"""

# From a member's own raw socket: one UDP datagram with a made-up source address, to a
# closed port (the hub answers such a datagram with ICMP port unreachable, to the source).
SPOOF = r"""
import socket, struct
def spoof(src, dst, port):
    udp = struct.pack("!HHHH", 40000, port, 8 + 4, 0) + b"nsk!"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP,
                     0, socket.inet_aton(src), socket.inet_aton(dst))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(ip + udp, (dst, 0))
"""

LISTEN_ICMP = r"""
import socket, time
_icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def icmp_from(addr, seconds):
    _icmp.settimeout(0.1)
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            pkt, peer = _icmp.recvfrom(2048)
        except TimeoutError:
            continue
        if peer[0] == addr:
            seen.append(pkt[20])  # the ICMP type
    return seen
"""


def test_a_member_routing_to_another_network_reaches_nothing_of_it(lab):
    """Red team 29: a member may change its own routes (it is root of its network
    namespace). Routing another network's subnet through its own link, on-link or through
    its own gateway, it must reach neither that network's gateway address in the hub
    (before the fix the hub's stack answered there: a refused connection, which told it
    the network existed) nor its members."""
    lab.call("spawn", name="red1", networks=["red"])
    b = lab.call("spawn", name="blue1", networks=["blue"])
    lab.run("blue1", SERVE.format(port=7000, reply=b"blue1"))
    lab.run("red1", CONNECT)
    nets = {n["name"]: n for n in lab.call("ls")}
    blue_net, blue_len = nets["blue"]["subnet"].split("/")
    for via in ({}, {"gateway": nets["red"]["gateway"]}):
        lab.run("red1", ROUTE.format(dst=blue_net, dst_len=int(blue_len), via=via))
        for host in (nets["blue"]["gateway"], b["addresses"][0]):
            out = lab.run("red1", f"print(ask({host!r}, 7000, timeout=1.0))").strip()
            assert out.startswith("error") and "Refused" not in out, (via, host, out)
    # Nor through IPv6, which the rules do not cover: the hub has none (its bridges got
    # link-local addresses before).
    assert lab.call("hub")["ipv6"] == []


def test_a_member_cannot_make_the_hub_answer_onto_another_network(lab):
    """A datagram sent to its own gateway from another network's member address: the
    hub must drop it (strict reverse-path check), not answer it onto that network."""
    a = lab.call("spawn", name="red1", networks=["red"])
    b = lab.call("spawn", name="blue1", networks=["blue"])
    nets = {n["name"]: n for n in lab.call("ls")}
    red_gw = nets["red"]["gateway"]
    lab.run("blue1", LISTEN_ICMP)
    lab.run("red1", SPOOF)
    # The check itself: from its own address the hub does answer (port unreachable).
    lab.run("red1", LISTEN_ICMP + f"spoof({a['addresses'][0]!r}, {red_gw!r}, 9)")
    assert lab.run("red1", f"print(icmp_from({red_gw!r}, 1.0))").strip() == "[3]"
    lab.run("red1", f"spoof({b['addresses'][0]!r}, {red_gw!r}, 9)")
    assert lab.run("blue1", f"print(icmp_from({red_gw!r}, 1.0))").strip() == "[]"


ARP = r"""
import socket, struct
def arp(op, sip, tip):
    mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, socket.inet_aton(sip),
                       b"\0" * 6, socket.inet_aton(tip))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
        s.bind(("eth0", 0))
        s.send(b"\xff" * 6 + mac + b"\x08\x06" + body)
"""


def test_a_member_cannot_fill_or_rewrite_the_hubs_neighbour_table(lab):
    """Red team 32 F1: the hub's ARP entries count against the host's one table, whose
    limit (gc_thresh3) every network namespace shares. A member sending ARP requests for
    its gateway, or datagrams to it, from made-up addresses of its subnet had the hub
    learn (or ask for) each: ~250 entries a network. Now the hub routes members'
    addresses only, drops what comes from any other (reverse-path check) and knows each
    member by a permanent entry, which a member's ARP claiming another's address cannot
    take over. Red team 33: those entries must outlive members coming and going (a
    bridge whose MAC changed flushed them, and a departed member's route stayed)."""
    a = lab.call("spawn", name="red1", networks=["red"])
    b = lab.call("spawn", name="red2", networks=["red"])
    nets = {n["name"]: n for n in lab.call("ls")}
    gw = nets["red"]["gateway"]
    me, other = a["addresses"][0], b["addresses"][0]
    base = gw.rsplit(".", 1)[0]
    bridge = nets["red"]["bridge"]
    for i in range(4):  # members coming and going
        c = lab.call("spawn", name=f"churn{i}", networks=["red"])
        lab.call("rm", name=f"churn{i}")
        hub = lab.call("hub")
        assert f"{c['addresses'][0]}/32" not in hub["routes"]
        # A bridge's MAC that changed would flush its neighbour entries, permanent ones too.
        assert hub["macs"][bridge] == mac_for(gw), hub["macs"]
    lab.run("red1", ARP + SPOOF + CONNECT)
    lab.run("red2", SERVE.format(port=7000, reply=b"red2"))
    made_up = [f"{base}.{i}" for i in range(100, 200)]
    lab.run("red1", f"for ip in {made_up!r}: arp(1, ip, {gw!r}); spoof(ip, {gw!r}, 9)")
    # red1 claims red2's address, as a request and as a reply
    lab.run("red1", f"arp(1, {other!r}, {gw!r}); arp(2, {other!r}, {gw!r})")
    time.sleep(0.5)
    hub = lab.call("hub")
    # (besides the multicast entries of the hub's own IGMP reports)
    seen = [tuple(n) for n in hub["neighbours"] if int(n[0].split(".")[0]) < 224]
    assert sorted(seen) == sorted([(me, mac_for(me)), (other, mac_for(other))]), seen
    assert hub["routes"] == sorted([f"{me}/32", f"{other}/32"]), hub["routes"]
    # Members still reach each other, and their gateway answers them.
    assert lab.run("red1", f"print(ask({other!r}, 7000))").strip().startswith("ok red2")


def test_network_names_that_map_to_one_bridge_name_get_bridges_of_their_own(lab):
    """Red team 31 F1: a long or dotted network name gets a digest as its bridge's name,
    which another network may have as its own name ("lab.x" and "5a5c4ccb" both wanted
    nsk-br-5a5c4ccb). The second network's creation failed and its clean-up deleted the
    first network's bridge; created again, the two networks shared one bridge, and a
    member that took an address of the other subnet reached the other's members. Each
    network now gets a bridge of its own, and both stay apart."""
    dotted = "lab.x"
    digest = hashlib.sha1(dotted.encode()).hexdigest()[:8]
    a = lab.call("spawn", name="red1", networks=[dotted])
    b = lab.call("spawn", name="blue1", networks=[digest])
    lab.run("red1", SERVE.format(port=7000, reply=b"red1") + CONNECT)
    lab.run("blue1", SERVE.format(port=7000, reply=b"blue1"))
    nets = {n["name"]: n for n in lab.call("ls")}
    assert nets[dotted]["bridge"] != nets[digest]["bridge"], nets
    assert {nets[dotted]["bridge"], nets[digest]["bridge"]} <= set(lab.call("hub")["links"])
    # The first network still works; its members cannot reach the second's even with an
    # address of the second's subnet (they would, on a shared bridge).
    red2 = lab.call("spawn", name="red2", networks=[dotted])
    lab.run("red2", CONNECT)
    assert lab.run("red2", f"print(ask({a['addresses'][0]!r}, 7000))").strip().startswith("ok")
    net, prefixlen = nets[digest]["subnet"].split("/")
    taken = net.rsplit(".", 1)[0] + ".200"
    lab.run(
        "red2",
        "from pyroute2 import IPRoute\n"
        "with IPRoute() as _ipr:\n"
        f"    _ipr.addr('add', index=_ipr.link_lookup(ifname='eth0')[0], address={taken!r},"
        f" prefixlen={prefixlen})\n",
    )
    out = lab.run("red2", f"print(ask({b['addresses'][0]!r}, 7000, timeout=1.0))").strip()
    assert out.startswith("error"), out
    assert red2["addresses"][0] != b["addresses"][0]
    # Below the network layer too: a bridge asked for under a name in use is refused,
    # and the failure takes nothing of the bridge that has it.
    bridge = nets[dotted]["bridge"]
    said = lab.call("add_bridge", bridge=bridge, address="10.213.99.1")
    assert "File exists" in said, said
    assert bridge in lab.call("hub")["links"]
    assert lab.run("red2", f"print(ask({a['addresses'][0]!r}, 7000))").strip().startswith("ok")


def test_sandbox_cannot_reach_host_addresses(lab):
    lab.call("spawn", name="jail", networks=["lab"])
    lab.run("jail", CONNECT)
    host_ips = [ip for ip in _host_addresses() if not ip.startswith("127.")]
    with socket.create_server(("0.0.0.0", 0)) as listener:
        port = listener.getsockname()[1]
        listener.setblocking(False)
        for ip in [*host_ips, "127.0.0.1"]:
            out = lab.run("jail", f"print(ask({ip!r}, {port}, timeout=2.0))").strip()
            assert out.startswith("error"), (ip, out)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from the sandbox ever arrived


def test_requested_ip_conflict_and_bad_addresses(lab):
    got = lab.call("spawn", name="fixed", networks=["lab"], ip="10.213.0.50")
    assert got["addresses"] == ["10.213.0.50"]
    assert "inet 10.213.0.50" in lab.run(
        "fixed",
        "import fcntl, socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "r = fcntl.ioctl(s, 0x8915, struct.pack('256s', b'eth0'))\n"
        "print('inet', socket.inet_ntoa(r[20:24]))",
    )
    with pytest.raises(LabError) as e:
        lab.call("spawn", name="clash", networks=["lab"], ip="10.213.0.50")
    assert e.value.kind == "AddressInUse"
    assert "already used by sandbox 'fixed'" in e.value.message
    with pytest.raises(LabError) as e:
        lab.call("spawn", name="clash", networks=["lab"], ip="10.213.0.1")
    assert e.value.kind == "AddressInUse" and "bridge" in e.value.message
    with pytest.raises(LabError) as e:
        lab.call("spawn", name="clash", networks=["lab"], ip="192.168.7.7")
    assert "not in network 'lab'" in e.value.message
    with pytest.raises(LabError) as e:
        lab.call("spawn", name="clash", networks=["lab"], ip="not-an-ip")
    assert "not an IPv4 address" in e.value.message
    # The failed requests left nothing behind: one member, one veth in the hub.
    assert lab.call("ls")[0]["members"] == {"fixed": "10.213.0.50"}
    assert [x for x in lab.call("hub")["links"] if x.startswith("nskv")] == ["nskv1"]


def test_subnet_and_pool_exhaustion():
    # /30 networks: the bridge takes .1, one sandbox fits (.2); the /29 pool holds two.
    with Lab(pool="10.213.7.0/29", prefixlen=30) as lab:
        assert lab.call("spawn", name="one", networks=["tiny"])["addresses"] == ["10.213.7.2"]
        with pytest.raises(LabError) as e:
            lab.call("spawn", name="two", networks=["tiny"])
        assert e.value.kind == "SubnetExhausted"
        assert "no free address" in e.value.message
        lab.call("spawn", name="three", networks=["tiny2"])
        with pytest.raises(LabError) as e:
            lab.call("spawn", name="four", networks=["tiny3"])
        assert e.value.kind == "SubnetExhausted"
        assert "10.213.7.0/29" in e.value.message and "NSKERNEL_NETWORK_POOL" in e.value.message
        # Addresses come back when their sandbox goes.
        lab.call("rm", name="one")
        assert lab.call("spawn", name="two", networks=["tiny"])["addresses"] == ["10.213.7.2"]


WEB = r"""
import http.server, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"web1 echoes " + body)
    def log_message(self, *a):
        pass
_httpd = http.server.HTTPServer(("0.0.0.0", 8000), H)
threading.Thread(target=_httpd.serve_forever, daemon=True).start()
"""


def test_publish_round_trips_http(lab):
    lab.call("spawn", name="web1", networks=["lab"])
    lab.run("web1", WEB)
    port = _free_port()
    fwd = lab.call("publish", name="web1", host_port=port, port=8000)
    assert fwd["host"] == f"127.0.0.1:{port}"
    body = os.urandom(300_000).hex().encode()  # bigger than a socket buffer
    for _ in range(3):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            assert r.read() == b"web1 echoes " + body
    # The same host port cannot be published twice.
    with pytest.raises(LabError) as e:
        lab.call("publish", name="web1", host_port=port, port=8000)
    assert e.value.kind == "PublishError" and "choose another host port" in e.value.message
    # Removing the sandbox stops the relay and frees the port.
    lab.call("rm", name="web1")
    assert not procfs.alive(fwd["pid"])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        s.bind(("127.0.0.1", port))
        s.listen()


FLOOD = r"""
import socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
dst = b"\xff\xff\xff\xff\xff\xfe"  # an unknown unicast MAC: flooded, never learned
for i in range({n}):
    s.send(dst + b"\x02\x99" + struct.pack("!I", i) + b"\x88\xb5" + bytes(46))
print("sent")
"""


def test_a_member_cannot_fill_the_hubs_forwarding_database(lab):
    """A learning bridge keeps an entry for every source MAC a port sends from, in kernel
    memory no cgroup is charged for, without bound: a member sending from a million MACs
    held ~125 MiB of the host's memory under --memory 64M (red team 18 F1). The hub's
    ports learn nothing; each knows its member's MAC by a static entry, and members
    still reach each other."""
    from nskernel._linux.vnet import mac_for

    a = lab.call("spawn", name="flood", networks=["lab"])
    b = lab.call("spawn", name="peer", networks=["lab"])
    lab.run("peer", SERVE.format(port=7000, reply=b"peer"))
    assert lab.run("flood", FLOOD.format(n=20_000)).strip() == "sent"
    fdb = lab.call("fdb", network="lab")
    # The two static entries and each port's own MAC (local): 4 (before: 20,004).
    assert fdb["count"] <= 8, f"{fdb['count']} entries in the hub's table after 20,000 frames"
    members = {mac_for(m["addresses"][0]) for m in (a, b)}
    assert {mac for mac, _port in fdb["static"]} == members, fdb
    assert len({port for _mac, port in fdb["static"]}) == 2, fdb
    out = lab.run("flood", CONNECT + "print(ask('peer', 7000))").strip()
    assert out.startswith("ok peer got ping"), out


def _holders_of(inode: int) -> list[str]:
    """Processes that have the network namespace ``inode`` (as their own or as an fd)."""
    found = []
    needle = f"net:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == needle:
                found.append(pid)
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == needle:
                    found.append(pid)
                    break
        except OSError:
            continue
    return found


def test_removal_takes_links_bridges_and_hub(lab):
    lab.call("spawn", name="n1", networks=["lab"])
    lab.call("spawn", name="n2", networks=["lab", "side"])
    hub = lab.call("hub")
    assert {"nsk-br-lab", "nsk-br-side", "nskv1", "nskv2", "nskv3"} <= set(hub["links"])
    assert lab.call("inspect", name="n2")["networks"] == ["lab", "side"]
    with pytest.raises(LabError) as e:
        lab.call("remove_network", name="lab")
    assert e.value.kind == "NetworkInUse" and "n1, n2" in e.value.message
    lab.call("rm", name="n2")
    links = lab.call("hub")["links"]
    assert "nsk-br-side" not in links and "nskv2" not in links and "nskv3" not in links
    assert "nsk-br-lab" in links and "nskv1" in links
    lab.call("rm", name="n1")
    assert lab.call("hub") == {
        "links": [],
        "inode": None,
        "ipv6": [],
        "neighbours": [],
        "macs": {},
        "routes": [],
    }
    assert lab.call("ls") == []
    assert _wait(lambda: not _holders_of(hub["inode"]), 10), "the hub namespace is still held"


def test_sigkill_of_the_helper_leaves_nothing():
    lab = Lab()
    try:
        a = lab.call("spawn", name="k1", networks=["lab"])
        b = lab.call("spawn", name="k2", networks=["lab"])
        lab.run("k1", WEB)
        fwd = lab.call("publish", name="k1", host_port=_free_port(), port=8000)
        hub = lab.call("hub")
        # Only the helper (by fd) and the relay (its own namespace) hold the hub.
        assert set(_holders_of(hub["inode"])) == {str(lab.proc.pid), str(fwd["pid"])}
        lab.proc.send_signal(signal.SIGKILL)
        lab.proc.wait()
        for pid in (a["pid"], b["pid"], fwd["pid"]):
            assert _wait(lambda pid=pid: not procfs.alive(pid), 10), f"process {pid} survived"
        assert _wait(lambda: not _holders_of(hub["inode"]), 10), "the hub namespace survived"
    finally:
        lab.close()


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
