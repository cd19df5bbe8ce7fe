"""A new named sandbox on a virtual network, until it answers TCP from another sandbox.

The figure (``network.nskernel``): from "create sandbox ``svcN`` on network ``bench``"
until a sandbox already on that network has connected to ``svcN:7000`` *by name* and
read its first byte. It covers spawning the sandbox (all six namespaces), the veth pair,
its address, the managed /etc/hosts of both sandboxes, waiting for the link, the server
in the new sandbox starting to listen, and the client's connect (retried on "refused"
until the listener exists). Teardown is not timed. Target: median <= 30 ms.

The timing loop runs in a fresh, lean, single-threaded interpreter that, when
unprivileged, first enters its own user namespace exactly as the ``%%sandbox`` server does
(so the rootless figure is the rootless path). ``docker run`` on a user-defined network is
the comparison the issue names: the same figure for a container on a user-defined
network, reached by name from a peer container (``engines.py``; root only).
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import time

from benchmarks.engines import EngineHost
from benchmarks.harness import (
    CaseFailed,
    Context,
    Measurement,
    NotAvailable,
    Plan,
    case,
    group,
    in_fresh_interpreter,
)

TARGET_MS = 30.0
PORT = 7000

group(
    "network",
    "new named sandbox on a network -> answers TCP (by name) from another sandbox",
    reference="network.nskernel",
)


@case("network", "nskernel", "nskernel --network", iterations=40, target=TARGET_MS)
def nskernel_network(ctx: Context, plan: Plan) -> Measurement:
    if importlib.util.find_spec("pyroute2") is None:
        raise NotAvailable("pyroute2 is not installed (pip install pyroute2)")
    samples = in_fresh_interpreter("benchmarks.cases_network:loop", plan, ctx)
    return Measurement(
        samples,
        "NetworkManager.attach(name, Sandbox.spawn(SandboxSpec(), target=serve).pid, ['bench'])"
        " + connect from a peer sandbox by name",
        {"namespaces": "user, pid, net, mnt, uts, ipc", "target_ms": TARGET_MS},
    )


@case("network", "nskernel-attach", "nskernel: the network part alone", iterations=40)
def nskernel_attach(ctx: Context, plan: Plan) -> Measurement:
    """Only ``NetworkManager.attach`` of the same loop: veth pair, address, hosts files,
    link up. The rest of the figure above is creating the sandbox and its server."""
    if importlib.util.find_spec("pyroute2") is None:
        raise NotAvailable("pyroute2 is not installed (pip install pyroute2)")
    samples = in_fresh_interpreter("benchmarks.cases_network:loop_attach", plan, ctx)
    return Measurement(samples, "NetworkManager.attach(name, pid, ['bench'])")


@case("network", "docker", "docker run --network", iterations=20)
def docker_network(ctx: Context, plan: Plan) -> Measurement:
    # Measured inside the engine host (benchmarks/engines.py, Docker._measure_network).
    reply = ctx.fixture("engines", EngineHost.open).time("docker", "network", plan)
    return Measurement(reply["samples"], reply["command"], reply["details"])


# ---------------------------------------------------------------- the timing loop
# Runs in benchmarks.worker's fresh interpreter.


def _serve_once(go_r: int) -> int:
    """The new sandbox: once on the network, listen and answer one connection."""
    if os.read(go_r, 1) != b"g":
        return 1
    with socket.create_server(("0.0.0.0", PORT)) as srv:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"x")
    return 0


def _client(cmd_r: int, res_w: int) -> int:
    """The peer sandbox: for each name it is sent, connect until answered; reply b"k"."""
    while True:
        name = os.read(cmd_r, 64).decode()
        if not name:
            return 0
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((name, PORT), timeout=5) as s:
                    if s.recv(1) == b"x":
                        break
            except OSError:
                # Refused until the listener exists; unresolvable until the hosts file
                # lists the name (it is written before the new sandbox is released).
                if time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
        os.write(res_w, b"k" if time.monotonic() <= deadline else b"f")


def loop(plan: Plan) -> list[float]:
    return _loop(plan, attach_only=False)


def loop_attach(plan: Plan) -> list[float]:
    return _loop(plan, attach_only=True)


def _loop(plan: Plan, *, attach_only: bool) -> list[float]:
    from nskernel import NskernelError, Sandbox, SandboxSpec
    from nskernel._linux.userns import in_initial_user_namespace
    from nskernel.magics.server import enter_own_user_namespace
    from nskernel.network import NetworkManager

    if os.geteuid() != 0 or not in_initial_user_namespace():
        enter_own_user_namespace()
    nm = NetworkManager()
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    client = Sandbox.spawn(
        SandboxSpec(hostname="client"),
        target=lambda: _client(cmd_r, res_w),
        pass_fds=(cmd_r, res_w),
    )
    os.close(cmd_r)
    os.close(res_w)
    samples: list[float] = []
    try:
        nm.attach("client", client.pid, ["bench"])
        for i in range(plan.warmup + plan.n):
            name = f"svc{i}"
            go_r, go_w = os.pipe()
            t0 = time.perf_counter()
            try:
                sb = Sandbox.spawn(
                    SandboxSpec(hostname=name),
                    target=lambda fd=go_r: _serve_once(fd),
                    pass_fds=(go_r,),
                )
            except NskernelError as e:
                raise CaseFailed(f"{type(e).__name__}: {e}") from e
            finally:
                os.close(go_r)
            try:
                t_attach = time.perf_counter()
                nm.attach(name, sb.pid, ["bench"])
                attach_ms = (time.perf_counter() - t_attach) * 1e3
                os.write(go_w, b"g")
                os.write(cmd_w, name.encode())
                if not select.select([res_r], [], [], 15)[0] or os.read(res_r, 1) != b"k":
                    raise CaseFailed(f"the peer sandbox could not reach {name}:{PORT}")
                took = (time.perf_counter() - t0) * 1e3
            finally:
                os.close(go_w)
                nm.detach(name)
                sb.kill()
            if i >= plan.warmup:
                samples.append(attach_ms if attach_only else took)
    finally:
        os.close(cmd_w)
        nm.close()
        client.kill()
        os.close(res_r)
    return samples
