"""Helpers for the escape and fault tests: run hostile code in a sandbox, watch the host.

The scripts that run inside print one JSON line (their findings); the test compares
that with what the host sees. Everything here starts real `nskernel run` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from nskernel._linux import procfs
from tests.conftest import nskernel_cmd

# Prepended to every script run inside: try an operation, name the errno it fails with.
PRELUDE = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn, *args):
    try:
        fn(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def c_call(fn, *args):
    # A libc call that returns -1 and sets errno, as an OSError.
    if fn(*args) == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

def write_file(path, data="x"):
    with open(path, "w") as f:
        f.write(data)

def report(**found):
    print(json.dumps(found), flush=True)
"""


def inside(nsk, script: str, *flags: str, timeout: float = 60) -> dict:
    """Run ``script`` (Python, after PRELUDE) in `nskernel run FLAGS`; its JSON report."""
    r = nsk("run", *flags, "--", sys.executable, "-I", "-c", PRELUDE + script, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


host_pid_alive = procfs.alive


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_background(tmp_path, *args: str, **kw) -> tuple[subprocess.Popen, dict]:
    """Start `nskernel run --status-json ... -- args`; return once the sandbox exists."""
    status = tmp_path / f"status-{uuid.uuid4().hex[:8]}.json"
    proc = subprocess.Popen(nskernel_cmd("run", "--status-json", str(status), *args), **kw)
    wait_for(status.exists, what="the status JSON")
    return proc, json.loads(status.read_text())


def descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        out += kids
        stack += kids
    return out


def pids_with_cmdline(needle: str) -> list[int]:
    """Host PIDs whose command line contains ``needle`` (zombies excluded)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd and host_pid_alive(int(name)):
            found.append(int(name))
    return found


def host_scratch_dir() -> str:
    """A fresh directory on the host's root filesystem, outside /tmp.

    /tmp is private inside a sandbox, so a directory there would prove nothing about
    writes to the host; /var/tmp is visible inside (read-only) at the same path.
    """
    path = f"/var/tmp/nsk-test-{uuid.uuid4().hex[:12]}"
    os.mkdir(path)
    # Sandbox root is another host uid when the suite runs as root: let it try.
    os.chmod(path, 0o777)
    return path


def status_ids(pid: int) -> tuple[list[int], list[int]]:
    """Real/effective/saved/fs uids and gids of a host process, as the host sees them."""
    uids: list[int] = []
    gids: list[int] = []
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uids = [int(x) for x in line.split()[1:]]
            elif line.startswith("Gid:"):
                gids = [int(x) for x in line.split()[1:]]
    return uids, gids
