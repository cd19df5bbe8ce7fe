"""The spare launcher: the next sandboxed kernel's launcher, started ahead of time.

Every kernel start used to begin with a fresh interpreter importing nskernel (about 50 ms
of the ~600 ms to a kernel's first reply, the whole of what the launcher added before
ipykernel's own imports). After each start, the provisioner now starts the next launcher
at once, and it waits, interpreter up, nskernel and ipykernel imported, until a kernel
start hands it that start's command line, environment, working directory and descriptors;
from there it goes on exactly as a launcher started with them would. A restart, or the
next notebook's kernel, no longer waits for the interpreter or for ipykernel's imports
(a start whose environment differs in what those imports read gets its kernel exec'd
inside instead: see launch._import_kernel_ahead); the first start after the server
started waits for both, as before.

Both ends of that hand-over live here, standard library only (the launcher imports it):

- the provisioner's side: :func:`take`, :func:`prepare`, :func:`discard` (one spare per
  process, for one interpreter configuration);
- the launcher's side: :func:`await_orders` (``--spare-fd``).

What keeps it safe and unsurprising:

- The orders come over a ``socketpair`` only the provisioner holds the other end of
  (close-on-exec here, so no kernel inherits it); the spare has no other descriptor but
  0-2 and that socket, and nothing of a sandbox's.
- A spare is used only for the interpreter configuration it was started with: the same
  ``sys.executable`` and the same values of everything Python and the dynamic linker read
  from the environment at start-up (``PYTHON*``, ``LD_*``, locale, ``HOME`` for the user
  site directory, ``PATH``). Anything else, or standard streams other than the server's,
  starts a fresh launcher, as before. Its environment until then is only those variables
  and the names every sandbox keeps (:func:`spare_environment`): the kernel forked from
  it keeps that first environment block in its memory.
- It runs as ``python -P -m`` like every host-side helper (see
  :func:`nskernel.environ.python_module_command`), and is started in ``/``: it never
  imports from a notebook's directory.
- It ends when the socket closes: :func:`discard` (also at exit), or the server's death
  (the kernel closes its end). A spare that died meanwhile is noticed and replaced.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..environ import kept_names, python_module_command

LAUNCHER_MODULE = "nskernel.kernel.launch"
# The launcher's options that name a descriptor: the spare receives these descriptors
# (SCM_RIGHTS) under new numbers, which replace the provisioner's in its command line.
FD_OPTIONS = ("--lifeline-fd", "--status-fd", "--seccomp-filter-fd")
ORDERS_MAX = 1 << 20  # bytes: a command line and an allow-listed environment
FDS_MAX = 8
# Room in the spare's command line for the kernel's: the in-process kernel shows itself
# in `ps` as its own command (launch.show_as), written over the launcher's arguments,
# which a fresh launcher has plenty of and a spare would not.
ARGV_ROOM = 2048

# What Python and the dynamic linker read from the environment before any code runs:
# a spare started with other values is another interpreter configuration. And OpenSSL's
# (OPENSSL_CONF, OPENSSL_ia32cap...), read with getenv when libcrypto loads, which the
# imports a spare makes ahead do (ssl, hashlib): no recording of os.environ sees that
# read, and a kernel forked from the spare keeps the configuration loaded then (red team
# 30 F1: a kernelspec's TLS policy was dropped on restarts).
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "GLIBC_", "MALLOC_", "OPENSSL_")
_STARTUP_NAMES = ("LANG", "LANGUAGE", "TZ", "HOME", "PATH")


def _startup_variable(name: str) -> bool:
    return name.startswith(_STARTUP_PREFIXES) or name in _STARTUP_NAMES


# Read by ipykernel's modules when they are imported, which a spare does ahead of its
# orders (launch._import_kernel_ahead): jupyter_client's Session takes USER as every
# message's username, IPython looks at TERM. The spare gets the values of the start that
# prepared it, so that the next start, which usually has the same, can use what it
# imported; one with other values gets its kernel exec'd instead (the launcher compares
# every name the imports read). Neither is a secret: every sandbox gets both (environ).
IMPORT_NAMES = ("USER", "TERM")


def spare_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What a spare starts with: the start-up variables (equal, by the key, for any start
    that takes it), the names every sandbox of this server keeps (NSKERNEL_KEEP_ENV) and
    ``IMPORT_NAMES``.
    Never a kernel's whole environment: the kernel forked from the spare keeps the
    spare's first environment block in its memory, so another kernel's ``--env`` values
    would be readable there (red team)."""
    started = {k: v for k, v in env.items() if _startup_variable(k) or k in IMPORT_NAMES}
    # The server's own values of the kept names (a kernel's --env may have set another).
    kept = {k: os.environ[k] for k in kept_names(os.environ) if k in os.environ}
    return {**kept, **started}


def startup_key(env: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    picked = ((k, v) for k, v in env.items() if _startup_variable(k))
    return sys.executable, tuple(sorted(picked))


class Spare:
    def __init__(self, key: Any, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.key = key
        self.proc = proc
        self.sock = sock

    def send(self, argv: Sequence[str], env: Mapping[str, str], cwd: str, fds: list[int]) -> None:
        """Hand this start over; afterwards the spare is the start's launcher (and
        ``self.proc`` the process jupyter_client watches)."""
        orders = {"argv": list(argv), "env": dict(env), "cwd": cwd, "fds": fds}
        data = json.dumps(orders).encode()
        if len(data) > ORDERS_MAX:
            raise OSError(f"the kernel's command and environment exceed {ORDERS_MAX} bytes")
        try:
            socket.send_fds(self.sock, [data], fds)
        finally:
            self.sock.close()

    def end(self) -> None:
        self.sock.close()  # its EOF: the spare exits by itself
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


_lock = threading.Lock()
_spare: Spare | None = None


def take(env: Mapping[str, str]) -> Spare | None:
    """The spare launcher for this environment's interpreter configuration, if one waits
    (it is then no longer the spare: the caller uses it or ends it)."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is None:
        return None
    if spare.key == startup_key(env) and spare.proc.poll() is None:
        return spare
    spare.end()
    return None


def prepare(env: Mapping[str, str]) -> None:
    """Start the spare for the next start, with ``env`` (a kernel's: the allow-list), unless
    one for the same configuration waits. Blocking (a fork and exec): a worker thread."""
    global _spare
    key = startup_key(env)
    with _lock:
        if _spare is not None and _spare.key == key and _spare.proc.poll() is None:
            return
        old, _spare = _spare, None
    if old is not None:
        old.end()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [
                *python_module_command(LAUNCHER_MODULE),
                "--spare-fd",
                str(theirs.fileno()),
                "--room",
                " " * ARGV_ROOM,
            ],
            pass_fds=(theirs.fileno(),),
            env=spare_environment(env),
            cwd="/",
            # As jupyter_client starts a kernel: stdin a pipe closed at once, stdout and
            # stderr the server's, a session of its own (interrupts are sent to its group).
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    if proc.stdin is not None:
        proc.stdin.close()
    spare = Spare(key, proc, ours)
    with _lock:
        old, _spare = _spare, spare
    if old is not None:  # another thread prepared one meanwhile
        old.end()


def discard() -> None:
    """End the waiting spare, if any (at exit; tests before their leak check)."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.end()


atexit.register(discard)


# ---------------------------------------------------------------- the launcher's side


def await_orders(fd: int) -> tuple[list[str], dict[str, str], str] | None:
    """``--spare-fd FD``: wait for a start's orders; its launcher arguments (descriptor
    options renumbered to the descriptors received), environment and working directory.
    None: the socket closed without orders (the spare is not needed: exit)."""
    sock = socket.socket(fileno=fd)
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, ORDERS_MAX, FDS_MAX)
    except ConnectionResetError:
        return None
    finally:
        sock.close()
    if not data:
        for received in fds:
            os.close(received)
        return None
    orders = json.loads(data)
    renumber = dict(zip((str(n) for n in orders["fds"]), (str(n) for n in fds), strict=True))
    argv = [str(a) for a in orders["argv"]]
    for i in range(1, len(argv)):
        if argv[i] == "--":
            break
        if argv[i - 1] in FD_OPTIONS:
            argv[i] = renumber[argv[i]]
    env = {str(k): str(v) for k, v in orders["env"].items()}
    return argv, env, str(orders["cwd"])
