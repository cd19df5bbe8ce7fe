"""Helpers for the facts and widgets tests: real sandboxes that report their own facts.

Also a small command to re-record the facts under tests/data/facts from this machine
(run it as root and as an unprivileged user)::

    python -m tests.facts_helpers record tests/data/facts
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from nskernel import Sandbox, SandboxSpec, facts

DATA_DIR = os.path.join(os.path.dirname(__file__), "data", "facts")


def gather_inside(spec: SandboxSpec, name: str = "inside") -> dict[str, Any]:
    """Create a real sandbox whose command is ``gather_here()``; return what it saw.

    The facts travel back as JSON over a pipe, never pickled.
    """
    host_ns = facts.host_facts()["namespaces"]
    r, w = os.pipe()

    def target() -> int:
        data = json.dumps(
            facts.gather_here(name=name, kind="sandbox", host_namespaces=host_ns)
        ).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]
        os.close(w)
        return 0

    try:
        sb = Sandbox.spawn(spec, target=target, pass_fds=[w])
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    code = sb.wait(30)
    if code is None:
        sb.kill()
    assert code == 0, f"the gathering sandbox exited with {code}"
    return json.loads(b"".join(chunks))


def load(name: str) -> dict[str, Any]:
    with open(os.path.join(DATA_DIR, name)) as f:
        return json.load(f)


def record(out_dir: str) -> None:
    """Record host facts, a sandbox read from the host, and one read from inside."""
    who = "root" if os.geteuid() == 0 else "rootless"
    os.makedirs(out_dir, exist_ok=True)

    def dump(fname: str, data: dict[str, Any]) -> None:
        with open(os.path.join(out_dir, f"{fname}-{who}.json"), "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")

    spec = SandboxSpec(hostname="web1")
    with Sandbox.spawn(spec, ["sleep", "30"]) as sb:
        from_host = facts.sandbox_facts_from_host(
            sb.pid, name="web1", hostname=sb.hostname, created=sb.namespaces
        )
        host = facts.mark_sandbox_processes(facts.host_facts(), from_host)
    dump("host", host)
    dump("sandbox-from-host", from_host)
    dump("sandbox-inside", gather_inside(SandboxSpec(hostname="web2"), name="web2"))
    only_uts = SandboxSpec(namespaces=frozenset({"uts"}), hostname="uts1")
    dump("sandbox-uts-only-inside", gather_inside(only_uts, name="uts1"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        record(sys.argv[2] if len(sys.argv) > 2 else DATA_DIR)
    else:
        sys.exit("usage: python -m tests.facts_helpers record [DIR]")


def notebook_cell(workdir: str, name: str = "web1") -> str:
    """Code for a notebook cell: start a real sandbox and show the compare panel for it.

    A Jupyter kernel is threaded, so it must not create namespaces itself: the sandbox
    comes from `nskernel run` in a subprocess, which writes its facts (init PID,
    hostname) to a status file. The `nskernel run` PID goes to ``workdir/run.pid`` so
    the test can end it whatever happens in the kernel.
    """
    return f"""\
import json, os, subprocess, sys, time
from nskernel import facts
from nskernel.widgets import compare

status = os.path.join({workdir!r}, "status.json")
proc = subprocess.Popen([sys.executable, "-m", "nskernel", "run", "--hostname", {name!r},
                         "--status-json", status, "--", "sleep", "600"])
with open(os.path.join({workdir!r}, "run.pid"), "w") as f:
    f.write(str(proc.pid))
deadline = time.monotonic() + 30
while not os.path.exists(status) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
with open(status) as f:
    st = json.load(f)
panel = compare(lambda: facts.sandbox_facts_from_host(
    st["pid"], name={name!r}, hostname=st["hostname"], created=st["created"]))
panel
"""


def end_run_process(workdir: str) -> None:
    """End the `nskernel run` a notebook cell started (its sandbox dies with it)."""
    import signal

    try:
        with open(os.path.join(workdir, "run.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)  # only if it is our child (it is the kernel's, normally)
    except ChildProcessError:
        pass
