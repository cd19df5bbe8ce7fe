"""Pure logic of ``nskernel.network``: parsing, validation, names, hosts files (no privileges).

What needs namespaces is in ``test_network.py``; these run anywhere, in milliseconds,
and check the decisions made before any netlink request.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from nskernel._linux.vnet import mac_for
from nskernel.network import (
    DEFAULT_POOL,
    AddressInUse,
    Endpoint,
    Member,
    Network,
    NetworkError,
    NetworkManager,
    _bridge_name,
    parse_publish,
)


def test_parse_publish():
    assert parse_publish("8080:80") == (8080, 80)
    assert parse_publish("9000") == (9000, 9000)
    for bad in ("", "x:80", "8080:", "0:80", "70000:80", "80:80:80"):
        with pytest.raises(NetworkError, match="HOSTPORT:PORT"):
            parse_publish(bad)


def test_default_pool_is_private_and_configurable(monkeypatch):
    nm = NetworkManager()
    assert str(nm.pool) == DEFAULT_POOL and nm.pool.is_private and nm.prefixlen == 24
    monkeypatch.setenv("NSKERNEL_NETWORK_POOL", "192.168.50.0/24")
    monkeypatch.setenv("NSKERNEL_NETWORK_PREFIXLEN", "26")
    nm = NetworkManager()
    assert str(nm.pool) == "192.168.50.0/24" and nm.prefixlen == 26
    with pytest.raises(NetworkError, match="prefix length from 24 to 30"):
        NetworkManager(prefixlen=20)
    with pytest.raises(NetworkError, match="not an IPv4 network"):
        NetworkManager(pool="10.213.0.0/33")


def test_requests_are_checked_before_anything_is_made():
    nm = NetworkManager()
    nm.networks["lab"] = Network("lab", ipaddress.IPv4Network("10.213.0.0/24"), "nsk-br-lab")
    nm.networks["lab"].members["web1"] = ipaddress.IPv4Address("10.213.0.2")
    nm.check_request("client1", ["lab"], "10.213.0.9")
    cases = [
        (("bad_name!", ["lab"], None), "cannot be used on a network"),
        (("ok", [], None), "no network given"),
        (("ok", ["lab", "lab"], None), "listed twice"),
        (("ok", ["no/slash"], None), "invalid network name"),
        (("ok", ["lab", "side"], "10.213.0.9"), "exactly one network"),
        (("ok", ["lab"], "10.213.1.9"), "not in network 'lab'"),
        (("ok", ["lab"], "10.213.0.255"), "broadcast"),
        (("ok", ["lab"], "300.1.1.1"), "not an IPv4 address"),
    ]
    for args, message in cases:
        with pytest.raises(NetworkError, match=message):
            nm.check_request(*args)
    with pytest.raises(AddressInUse, match="already used by sandbox 'web1'"):
        nm.check_request("ok", ["lab"], "10.213.0.2")
    with pytest.raises(AddressInUse, match="bridge"):
        nm.check_request("ok", ["lab"], "10.213.0.1")


def test_hosts_file_lists_peers_on_shared_networks_only():
    nm = NetworkManager()
    lab = Network("lab", ipaddress.IPv4Network("10.213.0.0/24"), "nsk-br-lab")
    side = Network("side", ipaddress.IPv4Network("10.213.1.0/24"), "nsk-br-side")
    nm.networks.update(lab=lab, side=side)
    ip = ipaddress.IPv4Address
    lab.members.update(a=ip("10.213.0.2"), b=ip("10.213.0.3"))
    side.members.update(c=ip("10.213.1.2"))
    a = Member("a", 1, ("nsk-abc",), [Endpoint("lab", "eth0", "nskv1", ip("10.213.0.2"), 24)], None)
    text = nm._hosts_text(a)
    assert "10.213.0.2\ta nsk-abc" in text and "10.213.0.3\tb" in text
    assert "10.213.1.2" not in text and "127.0.0.1\tlocalhost" in text


def test_interface_names_and_macs():
    assert _bridge_name("lab") == "nsk-br-lab"
    long = _bridge_name("a-very-long-network-name")
    assert len(long) <= 15 and long == _bridge_name("a-very-long-network-name")
    # Never another network's (red team 31 F1: "lab.x" -> nsk-br-5a5c4ccb, the name of
    # network "5a5c4ccb"'s bridge): a digest with a counter instead.
    taken = _bridge_name("lab.x")
    assert taken == "nsk-br-5a5c4ccb"
    other = _bridge_name("5a5c4ccb", [taken])
    assert other != taken and len(other) <= 15 and other.startswith("nsk-br-")
    assert _bridge_name("5a5c4ccb", [taken, other]) not in (taken, other)
    assert mac_for("10.213.0.2") == "02:6e:0a:d5:00:02"


def test_importing_the_module_does_not_load_pyroute2():
    code = "import sys, nskernel.network; print('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
