"""The sandbox server: one per kernel, single-threaded, forks every ``%%sandbox``.

The constraint: a Jupyter kernel runs threads (ZMQ, heartbeat, output flushing), and
``unshare(CLONE_NEWUSER)`` fails with EINVAL in a process with more than one thread. So the
kernel starts this server (``python -m nskernel.magics.server --fd N``) on first use and
talks to it over a socketpair of framed JSON (:mod:`.protocol`). The server stays
single-threaded for its whole life and creates every sandbox with ``Sandbox.start``
(``Sandbox.spawn`` taken in steps): while a sandbox is set up in its child processes,
the server goes on serving.

Choices:

- **Lifeline.** The server exits when the kernel's end of the socket closes (kernel shut
  down, restarted, crashed or SIGKILLed); every sandbox it made then dies through its own
  lifeline. It runs in its own session, so the SIGINT jupyter_client sends to the kernel's
  process group does not reach it: the kernel decides what an interrupt means.
- **Rootless: its own user namespace first.** An unprivileged server puts itself into a
  new user namespace at startup (a forked helper, still outside, writes the maps: the
  user's own id as root, plus their /etc/subuid range through newuidmap when available).
  Every sandbox is then a *nested* user namespace of that one, so the server holds
  CAP_NET_ADMIN over all of them (the network hub of ``--network`` relies on this). As
  root, or when already root of a user namespace (the sandboxed kernel), it stays put.
- **Warm, then fork.** IPython is imported and a shell built and warmed up (one trivial
  cell) before anything is forked; ``gc.freeze()`` keeps the collector from touching
  (and so copying) the inherited heap in every child. See :mod:`.cellrunner`.
- **A warm sandbox ahead of time.** After each unnamed cell the server creates the next
  sandbox for the same options while the user reads the output (after a quiet spell of
  ``WARM_AFTER_IDLE``), so the next cell only pays for sending the cell over (see
  ``benchmarks/cases_magic.py`` for the figures). When cells come back to back, as "Run
  All" sends them, the next cell's sandbox is started as soon as a cell is sent, and set
  up on the other core while that cell runs; a cell that comes before its sandbox is
  ready waits for the rest of its setup. At most one sandbox a set of options is made
  ahead; the server's end makes them all end with it (``Creation.cancel``).
  ``NSKERNEL_MAGIC_PREWARM=0`` turns this off (every cell then creates its sandbox).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from nskernel import Bind, NskernelError, Sandbox, SandboxError, SandboxSpec, SpecError
from nskernel._linux import exefile, procfs, syscalls, userns
from nskernel.sandbox import Creation
from nskernel.spec import ALL_NAMESPACES, make_limits, python_environment_binds

from .._record import record, replace
from . import messages, protocol

NETWORK_OPTIONS = ("network", "ip", "publish")
# How long `%sandbox ls/inspect` waits for the named sandboxes' answers, all asked at once.
# A healthy sandbox answers in milliseconds; one that has not answered is not waited for
# again until it does.
FACTS_TIMEOUT = 2.0
# How long a completion or inspection may take in a named sandbox: the first one in a
# sandbox sets up jedi (~1 s here, more on a loaded machine). The kernel waits, as a
# plain kernel's completer makes it wait; a sandbox busy with a cell is not asked.
ASK_TIMEOUT = 5.0  # longer would stall the kernel on a sandbox that never answers
WARM_AFTER_IDLE = 0.02  # seconds without requests before a warm sandbox is made
# A cell asked for within this long after the previous one was done came from "Run All",
# nbval or papermill, not from a person: as such a cell is sent, the next sandbox is
# started, instead of after WARM_AFTER_IDLE, since the next request is already on its
# way (a person's next cell comes hundreds of ms later, and keeps the quiet spell, so
# the cell and the kernel's reply do not share the CPU with a creation).
BACK_TO_BACK = 0.05
# After SIGKILL, how long a reply may wait for the sandbox to be reaped before it says
# the sandbox has not exited (SIGKILL takes effect at once unless a process is stuck in
# the kernel, e.g. uninterruptible I/O).
KILL_WAIT = 5.0
# When a runner's channel closes mid-cell, how long its init has to exit on its own (with
# the runner's status) before it is ended.
EXIT_GRACE = 2.0
REAP_INTERVAL = 0.05
DEFAULT_MAX_OUTPUT = 16 << 20  # the magic's --max-output default; the kernel sends its own
# How many bytes of frames of one kind (stream, display, error) a cell may have decoded,
# per byte of its --max-output for that kind. Past that, or once the cell may show no
# more of a kind, its frames are dropped without being decoded: decoding costs the server
# tens of times what writing costs the sandbox (red team 17 F4), and the server runs
# outside the sandbox's --cpus. 8: text escaped as JSON takes up to 6 bytes a character.
WIRE_FACTOR = 8
# Frames dropped undecoded still cost the server ~1 µs each in Python (header, copy,
# kind, budget): with 21-byte frames ~40 ns a byte, 20 times what writing them costs
# the sandbox (red team 19 F2). So once a cell has had DROP_FREE frames dropped (past
# its budgets, or answers nobody awaits), its sandbox is read in bursts: after every
# DROP_BURST more, not for DROP_PAUSE seconds (its writes block meanwhile, on its own
# time). That holds the server to ~1% of a core however a cell writes; the cell's
# end, input requests, kill and timeout still get through (within DROP_PAUSE). A
# normal cell never gets there: its stream text goes out in batches (cellrunner).
# Frames decoded within a cell's budgets cost the server (and the kernel they go on to)
# more: a cell writing empty stream frames kept both at a full core each while its
# sandbox used 0.3% of one (red team 20 F1). Each counts as DECODED_COST dropped frames.
DROP_FREE = 1 << 14
DROP_BURST = 1 << 10
DROP_PAUSE = 0.1
DECODED_COST = 8
# What a frame read while the server does not wait for it may cost: what a sandbox
# wrote while no cell of it ran (nobody reads it then: see Server._watch), read when
# the next request comes. Above what a blocked writer can leave in the socket.
DRAIN_LIMIT = 4 << 20
# Most JSON values (protocol.json_values) a frame of each kind may decode to: kinds that
# carry no bulk data get far fewer than protocol.MAX_VALUES. A stream frame holds 4, an
# error one line per traceback line, a facts answer a few thousand.
_KIND_VALUES = {
    "stream": 1 << 10,
    "clear_output": 1 << 10,
    "input_request": 1 << 10,
    "error": 1 << 16,
    "facts": 1 << 18,
    "answer": 1 << 18,
}
# Which per-cell budget a kind of output is charged to.
_GROUP = {
    "stream": "stream",
    "error": "error",
    **dict.fromkeys(("display_data", "execute_result", "clear_output"), "display"),
    **dict.fromkeys(messages.COMM_KINDS, "display"),
}


class NetworkNotSupported(SandboxError):
    """``--network``/``--ip``/``--publish`` were given but no network backend exists."""


# ---------------------------------------------------------------- network extension point


def _network_backend() -> Any:
    """``nskernel.network`` when it provides the sandbox hooks, else raise.

    Extension point for virtual networks (issue 5). The backend module provides::

        attach_sandbox(sandbox: Sandbox, *, name: str | None, network: str | None,
                       ip: str | None, publish: list[str]) -> dict
            # called in this server right after the sandbox exists, before any cell runs;
            # returns JSON-ready facts, at least {"ips": [...]}, shown by %sandbox ls/inspect
        detach_sandbox(sandbox: Sandbox, *, name: str | None) -> None
            # called before the sandbox is killed

    It is imported only when one of those options is used, so pyroute2 never loads
    for sandboxes without a network.
    """
    try:
        from nskernel import network  # type: ignore[attr-defined]
    except ImportError:
        network = None
    if network is None or not hasattr(network, "attach_sandbox"):
        msg = (
            "--network, --ip and --publish are not supported yet in this version of "
            "nskernel (no virtual network backend); drop them, or use --net for a "
            "sandbox with only its own loopback"
        )
        raise NetworkNotSupported(msg, step="network")
    return network


def _network_options(req: dict[str, Any]) -> dict[str, Any]:
    opts = req.get("network") or {}
    return {k: opts.get(k) for k in NETWORK_OPTIONS if opts.get(k)}


# ---------------------------------------------------------------- user namespace


def enter_own_user_namespace() -> str:
    """Rootless: move this (single-threaded) process into a new user namespace.

    Returns how the server's user namespace was chosen: "host" (real root),
    "inherited" (already root of a user namespace), or "own".
    """
    if os.geteuid() == 0:
        return "host" if userns.in_initial_user_namespace() else "inherited"
    exefile.look_before_entering_a_user_namespace()
    plan = userns.plan_id_maps()  # decided outside, where the subuid range applies
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    me = os.getpid()
    helper = os.fork()
    if helper == 0:  # still in the old namespace: it may write our maps
        code = 1
        try:
            os.close(go_w)
            os.close(res_r)
            if os.read(go_r, 1) == b"g":
                try:
                    userns.write_id_maps_from_parent(me, plan)
                    code = 0
                except Exception as e:
                    detail = getattr(e, "stderr", None) or str(e)
                    os.write(res_w, f"{plan.describe()}: {detail}".encode()[:4000])
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(res_w)
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
    except OSError as e:
        os.close(go_w)
        os.waitpid(helper, 0)
        raise SandboxError(
            f"the sandbox server cannot create its user namespace: {e.strerror}",
            step="unshare(CLONE_NEWUSER)",
            namespace="user",
            errno=e.errno,
            hint="Run `nskernel doctor` for the cause and the fix.",
        ) from None
    os.write(go_w, b"g")
    os.close(go_w)
    _, status = os.waitpid(helper, 0)
    detail = os.read(res_r, 4096).decode(errors="replace")
    os.close(res_r)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SandboxError(
            f"the sandbox server cannot write its user namespace's id maps: {detail}",
            step="write uid_map/gid_map",
            namespace="user",
            hint="Run `nskernel doctor` for the cause and the fix.",
        )
    userns.become_root_from_child(setgroups_allowed=not plan.deny_setgroups)
    return "own"


# ---------------------------------------------------------------- sandboxes


def _spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


# The server's sys.path does not change after start: computed once, not per cell.
_PYTHON_BINDS = python_environment_binds()


@record(frozen=True)
class JupyterSecrets:
    """Where the kernel's Jupyter keeps tokens and keys (``--jupyter-runtime-dir``,
    ``--secret-file``): this server's environment is an allow-list that cannot say.
    Hidden in every sandbox (see ``spec.jupyter_runtime_dirs``)."""

    runtime_dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


def _build_spec(spec: dict[str, Any], secrets: JupyterSecrets) -> SandboxSpec:
    # The kernel resolved and checked the sources (magic._writable_bind_over_code): they
    # are taken as they are, never resolved again (see Bind.resolved).
    binds = tuple(
        Bind(src, dst, bool(ro), resolved=True, fixed_top_level=bool(fixed))
        for src, dst, ro, fixed in spec.get("binds") or ()
    )
    namespaces = spec.get("namespaces") or ALL_NAMESPACES
    limits = spec.get("limits") or {}
    env = spec.get("env")
    built = SandboxSpec.from_flags(
        namespaces,
        hostname=spec.get("hostname"),
        binds=binds,
        cwd=spec.get("cwd"),
        limits=make_limits(limits.get("memory"), limits.get("pids"), limits.get("cpus")),
        # The kernel filtered its environment (the allow-list) before sending it.
        env=dict(env) if isinstance(env, dict) else None,
        share_home=bool(spec.get("share_home")),
        hide=tuple(str(p) for p in spec.get("hide") or ()),
        no_userns=bool(spec.get("no_userns")),
        keep_groups=bool(spec.get("keep_groups")),
        allow_degraded=frozenset(str(m) for m in spec.get("allow_degraded") or ()),
        seccomp=str(spec.get("seccomp") or "default"),
        cap_add=tuple(spec.get("cap_add") or ()),
        cap_drop=tuple(spec.get("cap_drop") or ()),
        jupyter_runtime_dirs=secrets.runtime_dirs,
        secret_files=secrets.files,
    )
    if "mnt" in built.effective_namespaces():
        # Cells import modules on demand: keep this environment visible even if it
        # lives in a directory that is private inside (a venv or checkout under /tmp).
        taken = {b.dest for b in binds}
        extra = tuple(b for b in _PYTHON_BINDS if b.dest not in taken)
        built = replace(built, binds=binds + extra)
    return built


def _limit_lines(sb: Sandbox) -> dict[str, str]:
    """Limits as the widget shows them: value and the mechanism enforcing it."""
    return {name: f"{d['value']} ({d['mechanism']})" for name, d in sb.limits.describe().items()}


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


class _Budget:
    """What one cell may still show: ``--max-output`` of stream text, as much again of
    display data (see :func:`.messages.bundle_size`) and of errors (their text); what
    went over is counted. ``wire``: bytes of frames of each kind it may still have
    decoded (WIRE_FACTOR); a frame of a kind past either is dropped undecoded, and
    counted by its size in bytes."""

    def __init__(self, limit: int) -> None:
        self.chars = limit
        self.display = limit
        self.errors = limit
        self.wire = dict.fromkeys(("stream", "display", "error"), WIRE_FACTOR * limit)
        self.dropped_chars = 0
        self.dropped_displays = 0
        self.dropped_display_size = 0
        self.dropped_errors = 0
        self.dropped_error_size = 0
        self.frames = 0  # what a cell's frames cost to handle, in dropped frames (DROP_FREE)

    def admit(self, group: str, size: int) -> bool:
        """Whether a frame of ``size`` bytes of this group is worth decoding; counts it
        as dropped when it is not."""
        room = {"stream": self.chars, "display": self.display, "error": self.errors}[group]
        if room > 0 and self.wire[group] > 0:
            self.wire[group] -= size
            return True
        if group == "stream":
            self.dropped_chars += size
        elif group == "display":
            self.dropped_displays += 1
            self.dropped_display_size += size
        else:
            self.dropped_errors += 1
            self.dropped_error_size += size
        return False

    def report(self) -> dict[str, int]:
        return {
            "chars": self.dropped_chars,
            "displays": self.dropped_displays,
            "display_size": self.dropped_display_size,
            "errors": self.dropped_errors,
            "error_size": self.dropped_error_size,
        }


class _Creating:
    """A sandbox made ahead of time for cells of ``key``, still being set up (see
    :class:`nskernel.sandbox.Creation`), with the server's end of its runner's socket."""

    def __init__(self, creation: Creation, sock: socket.socket, spec: dict[str, Any]) -> None:
        self.creation = creation
        self.sock = sock
        self.spec = spec
        self.key = _spec_key(spec)
        self.fd = -1  # the descriptor registered with the poller for it, if any


class Box:
    """One sandbox and the socket to its cell runner.

    The socket is non-blocking on this side: a runner that stops reading must not stop
    the server, so frames for it wait in ``out`` and go out as it reads (POLLOUT).
    Its reader accepts frames up to MAX_FRAME while a cell runs, MAX_IDLE_FRAME otherwise,
    each decoding to at most protocol.MAX_VALUES values (fewer for most kinds).
    It is read only while one of its cells runs or the server waits for its answer
    (:meth:`Server._watch`): otherwise what it writes waits in its socket, and a sandbox
    that writes on blocks, on its own CPU time.
    """

    def __init__(
        self, sandbox: Sandbox, sock: socket.socket, spec: dict[str, Any], key: str
    ) -> None:
        self.sandbox = sandbox
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.reader = protocol.FrameReader(self.fd, protocol.MAX_IDLE_FRAME, protocol.MAX_VALUES)
        self.kind = ""  # the type the frame being decoded began with
        self.out = bytearray()  # frames for the cell runner not written yet
        self.spec = spec
        self.key = key
        self.name: str | None = None
        self._current: int | None = None
        self._runner_pid: int | None = None
        self.network: dict[str, Any] = {}
        self.net_backend: Any = None
        self.show = False  # --show: read its facts when the cell is done
        self.want_outputs: frozenset[str] = frozenset()  # the --out names of the cell
        self.budget = _Budget(DEFAULT_MAX_OUTPUT)
        self.facts_pending = False  # a facts query is out, unanswered
        self.facts: dict[str, Any] | None = None  # its last answer
        self.input_pending = False  # its cell waits for the answer to input()
        # The kernel's refusal of its cell's stdin (allow_stdin=False: nbclient,
        # papermill), given again here to the cell's later input requests.
        self.stdin_refused: dict[str, Any] | None = None
        self.keep_as: str | None = None  # unnamed: the name to keep it under if it has widgets
        self.comms_opened = False
        self.asked: str | None = None  # a completion/inspection question is out
        self.answer: dict[str, Any] | None = None
        self.retired = False
        # Not read until then: its cell had too many frames dropped (see DROP_FREE).
        self.paused_until: float | None = None

    @property
    def current(self) -> int | None:
        """Id of the request whose cell runs in it, or None."""
        return self._current

    @current.setter
    def current(self, rid: int | None) -> None:
        self._current = rid
        self.paused_until = None
        self.reader.max_frame = protocol.MAX_FRAME if rid is not None else protocol.MAX_IDLE_FRAME

    @property
    def runner_pid(self) -> int | None:
        """Host PID of the cell runner (init's child), looked up on first use: spawn
        returns before init has forked it."""
        if self._runner_pid is None:
            self._runner_pid = _first_child(self.sandbox.pid)
        return self._runner_pid


class _Wait:
    """A reply that waits until sandboxes are dead (reaped), or ``deadline`` passes."""

    def __init__(
        self, sandboxes: list[Sandbox], timeout: float, then: Callable[[bool], None]
    ) -> None:
        self.sandboxes = sandboxes
        self.deadline = time.monotonic() + timeout
        self.then = then


class Server:
    def __init__(
        self,
        fd: int,
        userns_mode: str,
        user_nofile_soft: int | None = None,
        *,
        secrets: JupyterSecrets,
    ) -> None:
        self.fd = fd
        self.secrets = secrets
        self.user_nofile_soft = user_nofile_soft  # what the cells get back
        self.reader = protocol.FrameReader(fd)
        self.userns_mode = userns_mode
        self.boxes: dict[int, Box] = {}  # by socket fd
        self.named: dict[str, Box] = {}
        # Named sandboxes stopped while no cell of theirs ran (a malformed message, or
        # their runner exited): the next cell naming one says so instead of silently
        # getting a fresh, empty sandbox under the same name.
        self.lost: dict[str, str] = {}
        self.running: dict[int, Box] = {}  # by request id
        self.warm: dict[str, Box] = {}  # spec key -> a sandbox created ahead of time
        # spec key -> the next one, being set up while the server serves (at most one a
        # key); by the descriptor its setup waits on, for the main loop.
        self.creating: dict[str, _Creating] = {}
        self.creating_fds: dict[int, _Creating] = {}
        self.want_warm: set[str] = set()
        self.last_done: float | None = None  # when the last cell's "done" was sent
        self.back_to_back = False  # the last cell came within BACK_TO_BACK of that
        self.dying: list[Sandbox] = []
        self.waits: list[_Wait] = []
        # poll(2), kept up to date as boxes come and go: select(2) cannot watch
        # descriptors numbered 1024 and up, which ~500 named sandboxes reach.
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        # Descriptors registered since the last poll: an event the last poll reported
        # under such a number belonged to the file that had it before (closed meanwhile,
        # e.g. a setup's pidfd), and must not be applied to the new one (red team 35 N2).
        self.registered_since_poll: set[int] = set()
        self.prewarm = os.environ.get("NSKERNEL_MAGIC_PREWARM", "1") != "0"
        self.closing = False  # shutting down: the kernel is gone, nobody reads replies

    # ------------------------------------------------------------ plumbing

    def reply(self, msg: dict[str, Any]) -> None:
        if not self.closing:
            protocol.send(self.fd, msg)

    def send_box(self, box: Box, msg: dict[str, Any]) -> None:
        """Queue a frame for a cell runner and write what it takes now (never blocks)."""
        box.out += protocol.encode(msg)
        self._flush(box)

    def _flush(self, box: Box) -> None:
        while box.out:
            try:
                n = os.write(box.fd, box.out)
            except InterruptedError:
                continue
            except BlockingIOError:
                break
            except OSError:  # EPIPE, ECONNRESET: the runner is gone, its EOF follows
                box.out.clear()
                break
            del box.out[:n]
        self._watch(box)

    def _watch(self, box: Box) -> None:
        """Poll a box for what the main loop must do: write what waits for it, and read
        it only while a cell of it runs. Between cells nothing of it is read (answers to
        queries are read where they are awaited): a sandbox writing then blocks, and
        costs the server nothing (red team 17 F4). POLLHUP is reported all the same."""
        if not box.retired:
            reading = box.current is not None and box.paused_until is None
            events = select.POLLIN if reading else 0
            self.poller.modify(box.fd, events | (select.POLLOUT if box.out else 0))

    def _drain(self, box: Box) -> None:
        """Read now, without waiting, what a box wrote while nothing read it (at most
        DRAIN_LIMIT): a late answer, or output between cells, dropped undecoded. A frame
        that breaks the protocol stops it here, as it would have when it was written."""
        start = box.reader.received
        while (
            not box.retired
            and box.reader.received - start < DRAIN_LIMIT
            and syscalls.readable([box.fd], 0)
        ):
            self.service(box)

    def _start(self, spec: dict[str, Any], *, warm: bool = False) -> _Creating:
        """Plan and fork a sandbox with a cell runner; its setup goes on meanwhile."""
        from . import cellrunner

        sandbox_spec = _build_spec(spec, self.secrets)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
        try:
            creation = Sandbox.start(
                sandbox_spec,
                target=lambda: cellrunner.serve(
                    child_fd, warm=warm, nofile_soft=self.user_nofile_soft
                ),
                pass_fds=(child_fd,),
                # The server is single-threaded and the runner reseeds random itself:
                # Python's at-fork handlers would only cost time and ~0.5 MiB per box.
                target_at_fork=False,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # forked already: the setup child holds its own copy
        return _Creating(creation, parent, spec)

    def _made(self, c: _Creating) -> Box:
        assert c.creation.sandbox is not None
        box = Box(c.creation.sandbox, c.sock, c.spec, c.key)
        self.boxes[box.fd] = box
        self._register(box.fd, 0)  # read while a cell runs (see _watch)
        return box

    def _register(self, fd: int, events: int) -> None:
        self.poller.register(fd, events)
        self.registered_since_poll.add(fd)

    def _spawn(self, spec: dict[str, Any]) -> Box:
        """A sandbox for a cell now: made while the server waits."""
        c = self._start(spec)
        try:
            c.creation.finish()
        except BaseException:
            c.sock.close()
            raise
        return self._made(c)

    def _make_ahead(self, key: str) -> None:
        """Start making the next sandbox for cells of ``key``, unless one is made or
        being made. It is set up while the server serves (see _go_on)."""
        if key in self.warm or key in self.creating:
            return
        try:
            c = self._start(json.loads(key), warm=True)
        except (SandboxError, SpecError, OSError):
            return  # the next cell creates its own and reports the error
        self.creating[key] = c
        self._go_on(c, wait=False)

    def _go_on(self, c: _Creating, *, wait: bool) -> Box | None:
        """Take a sandbox being made as far as its setup got (``wait``: to its end);
        once made it is the warm one of its key. A setup that fails leaves nothing."""
        if c.fd >= 0:  # unregistered first: the step may close that descriptor
            self.poller.unregister(c.fd)
            del self.creating_fds[c.fd]
            c.fd = -1
        try:
            sb = c.creation.finish() if wait else c.creation.step()
        except (SandboxError, SpecError, OSError):
            sb = None
        if sb is None and c.creation.fd >= 0:
            c.fd = c.creation.fd
            self.creating_fds[c.fd] = c
            self._register(c.fd, select.POLLIN)
            return None
        del self.creating[c.key]
        if sb is None:
            c.sock.close()  # it failed (the next cell creates its own and says why)
            return None
        box = self.warm[c.key] = self._made(c)
        return box

    def _detach(self, box: Box) -> None:
        """Forget a box and close our end of its socket; its sandbox is left as it is."""
        if box.retired:
            return
        box.retired = True
        if self.boxes.pop(box.fd, None) is not None:
            self.poller.unregister(box.fd)
        if box.name and self.named.get(box.name) is box:
            del self.named[box.name]
        if box.current is not None:
            self.running.pop(box.current, None)
        for k, v in list(self.warm.items()):
            if v is box:
                del self.warm[k]
        if box.net_backend is not None:
            try:
                box.net_backend.detach_sandbox(box.sandbox, name=box.name)
            except Exception as e:
                print(f"nskernel server: network detach failed: {e}", file=sys.stderr)
        box.out.clear()
        box.sock.close()

    def _retire(self, box: Box) -> None:
        """Forget a box and end its sandbox without its cooperation; reaped later."""
        self._detach(box)
        self._end(box.sandbox)

    def _end(self, sb: Sandbox) -> None:
        """End a sandbox without needing its cooperation: a sandbox can ptrace-stop (or
        starve) its own init, so closing its lifeline alone may leave it running.
        ``destroy()`` kills its cgroups, and its processes without a PID namespace, and
        SIGKILLs its init (with a PID namespace the kernel then kills the rest)."""
        sb.destroy()
        if sb not in self.dying:
            self.dying.append(sb)

    def _reap(self) -> None:
        still = []
        for sb in self.dying:
            try:
                if sb.poll() is None:
                    still.append(sb)
            except ChildProcessError:
                pass
        self.dying = still

    def when_dead(
        self, sandboxes: list[Sandbox], timeout: float, then: Callable[[bool], None]
    ) -> None:
        """Call ``then(True)`` once every one of ``sandboxes`` is reaped, or
        ``then(False)`` after ``timeout``; the server goes on serving meanwhile."""
        for sb in sandboxes:
            if sb.returncode is None and sb not in self.dying:
                self.dying.append(sb)
        self.waits.append(_Wait(sandboxes, timeout, then))
        self._check_waits()

    def _check_waits(self) -> None:
        now = time.monotonic()
        for w in list(self.waits):
            dead = all(sb.returncode is not None for sb in w.sandboxes)
            if dead or now >= w.deadline:
                self.waits.remove(w)
                w.then(dead)

    def malformed(self, box: Box, why: str) -> None:
        """A sandbox broke the protocol: stop it (only it), and say so where it shows."""
        rid, name = box.current, box.name
        self._retire(box)
        what = f"the sandbox sent a malformed message and was stopped ({why})"
        if rid is not None:
            text = what + (f"; named sandbox {name!r} is gone" if name else "")
            self.when_dead(
                [box.sandbox],
                KILL_WAIT,
                lambda dead: self.reply(
                    {
                        "type": "done",
                        "id": rid,
                        "status": "stopped",
                        "message": text,
                        "removed": name,
                        "dead": dead,
                    }
                ),
            )
        elif name:
            self.lost[name] = (
                f"named sandbox {name!r} was stopped while no cell of it ran: {what}. "
                "Its state is gone; run the cell again to create it afresh"
            )

    # ------------------------------------------------------------ requests

    def handle(self, req: dict[str, Any]) -> None:
        op = req.get("op")
        rid = req.get("id")
        try:
            if op == "run":
                self.op_run(req)
            elif op == "kill":
                self.op_kill(req)
            elif op == "interrupt":
                self.op_interrupt(req)
            elif op == "ls":
                self.reply({"type": "reply", "id": rid, "ok": True, "result": self.op_ls()})
            elif op == "inspect":
                box = self._named(req["name"])
                self.gather_facts([box])
                self.reply({"type": "reply", "id": rid, "ok": True, "result": self.info(box)})
            elif op == "rm":
                self.op_rm(req)
            elif op == "input_reply":
                self.op_input_reply(req)
            elif op in ("complete_code", "inspect_code"):
                self.reply({"type": "reply", "id": rid, "ok": True, "result": self.op_ask(req)})
            elif op in ("network_ls", "network_rm"):
                from nskernel import network  # cheap: pyroute2 loads only with a network

                result = network.network_ls() if op == "network_ls" else None
                if op == "network_rm":
                    network.network_rm(req["name"])
                self.reply({"type": "reply", "id": rid, "ok": True, "result": result})
            else:
                raise SpecError(f"unknown request {op!r}")
        except Exception as e:
            # Whatever one request did wrong, the server (and every named sandbox) lives on.
            if isinstance(e, KeyError):
                text = str(e.args[0])
            elif isinstance(e, (NskernelError, OSError)):
                text = str(e)
            else:
                text = f"{type(e).__name__}: {e}"
            if op == "run":
                self.reply({"type": "done", "id": rid, "status": "failed", "message": text})
            else:
                self.reply({"type": "reply", "id": rid, "ok": False, "error": text})

    def _named(self, name: str) -> Box:
        box = self.named.get(name)
        if box is None:
            have = ", ".join(sorted(self.named)) or "none"
            msg = f"no sandbox named {name!r} (named sandboxes: {have}); `%sandbox ls` lists them"
            raise KeyError(msg)
        return box

    def _conflict(self, box: Box, spec: dict[str, Any], given: list[str]) -> str | None:
        changed = [k for k in given if spec.get(k) != box.spec.get(k)]
        if not changed:
            return None
        have = ", ".join(
            f"{k}={box.spec.get(k)!r}" for k in ("namespaces", "hostname", "binds") if k in changed
        )
        return (
            f"sandbox {box.name!r} already exists with {have}; a named sandbox keeps the "
            f"namespaces it was created with. Drop those options to run in it, or remove it "
            f"first with `%sandbox rm {box.name}`"
        )

    def op_input_reply(self, req: dict[str, Any]) -> None:
        """The kernel's answer to the input request of a running cell."""
        box = self.running.get(req["id"])
        if box is None or not box.input_pending:
            return  # that cell ended (or was killed) meanwhile
        box.input_pending = False
        answer = {k: req[k] for k in ("value", "error", "message") if k in req}
        if answer.get("error") == "StdinNotImplementedError":
            # The frontend takes no input for this request: so it stays for the cell,
            # whose later requests get the same answer from here (red team 37 F2: input()
            # in a loop made the kernel answer thousands a second, outside --cpus).
            box.stdin_refused = answer
        self.send_box(box, {"op": "input_reply", **answer})

    def op_ask(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """Ask an idle named sandbox to complete or inspect code (its own names); None
        when it is busy or does not answer within ASK_TIMEOUT."""
        box = self._named(req["name"])
        if box.current is None and box.asked is not None:
            self._drain(box)  # its answer to the last question may have come since
        if box.current is not None or box.asked is not None or box.retired:
            return None
        op = req["op"].removesuffix("_code")  # what the runner calls it
        box.asked, box.answer = op, None
        fields = {k: req.get(k) for k in ("code", "cursor_pos", "detail_level")}
        self.send_box(box, {"op": op, **fields})
        deadline = time.monotonic() + ASK_TIMEOUT
        while box.asked is not None and not box.retired:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            poller = select.poll()
            poller.register(box.fd, select.POLLIN | (select.POLLOUT if box.out else 0))
            if syscalls.poll_ready(poller, left):
                self.service(box)
        # One that did not answer in time is not asked again until it does.
        return box.answer if box.asked is None else None

    def op_run(self, req: dict[str, Any]) -> None:
        rid = req["id"]
        name = req.get("name")
        if req.get("comm") is not None:
            self.op_comm(req)
            return
        now = time.monotonic()
        self.back_to_back = self.last_done is not None and now - self.last_done < BACK_TO_BACK
        spec = req["spec"]
        net = _network_options(req)
        idle = self.named.get(name) if name else None
        if idle is not None and idle.current is None:
            self._drain(idle)  # what it wrote since its last cell: checked, not shown
        if name in self.lost:
            msg = self.lost.pop(name) + ". Nothing ran."
            self.reply({"type": "done", "id": rid, "status": "failed", "message": msg})
            return
        box = self.named.get(name) if name else None
        reused = box is not None
        if box is not None:
            conflict = self._conflict(box, spec, req.get("given") or [])
            if conflict is None and net and net != box.network.get("options"):
                conflict = (
                    f"sandbox {name!r} already exists; its network options cannot change "
                    f"(remove it first with `%sandbox rm {name}`)"
                )
            if conflict:
                self.reply({"type": "done", "id": rid, "status": "failed", "message": conflict})
                return
            if box.current is not None:
                msg = f"sandbox {name!r} is still running another cell"
                self.reply({"type": "done", "id": rid, "status": "failed", "message": msg})
                return
        else:
            backend = _network_backend() if net else None
            key = _spec_key(spec)
            box = None
            if not (name or net):
                if key not in self.warm and key in self.creating:
                    self._go_on(self.creating[key], wait=True)  # made, or failed
                box = self.warm.pop(key, None)
            if box is None:
                box = self._spawn(spec)
            if not name and not net and self.prewarm:
                self.want_warm.add(key)
            if backend is not None:
                box.net_backend = backend
                try:
                    facts = backend.attach_sandbox(box.sandbox, name=name, **net) or {}
                except Exception:
                    self._retire(box)
                    raise
                box.network = {"options": net, **facts}
            if name:
                box.name = name
                self.named[name] = box
            for warning in box.sandbox.warnings:  # e.g. a --bind left read-only for it
                self.reply({"type": "stream", "id": rid, "name": "stderr", "text": warning + "\n"})
        if reused and box.sandbox.degraded:
            from nskernel.doctor import degraded_warning

            for what in box.sandbox.degraded:  # what isolation it lacks: every cell says so
                text = degraded_warning(what) + "\n"
                self.reply({"type": "stream", "id": rid, "name": "stderr", "text": text})
        box.current = rid
        if box.name is None:
            keep_as = req.get("keep_as")
            box.keep_as = keep_as if isinstance(keep_as, str) and keep_as else None
        box.show = bool(req.get("facts"))
        box.want_outputs = frozenset(req.get("outputs") or ())
        box.budget = _Budget(int(req.get("max_output") or DEFAULT_MAX_OUTPUT))
        box.stdin_refused = None  # each request says anew whether it takes input
        self.running[rid] = box
        self.send_box(
            box,
            {
                "op": "run",
                "cell": req["cell"],
                "inputs": req.get("inputs") or {},
                "outputs": req.get("outputs") or [],
                "execution_count": req.get("execution_count"),
                "facts": False,
                "parent": req.get("parent"),
            },
        )
        if self.back_to_back and box.key in self.want_warm and box.name is None:
            # Cells back to back (Run All): the next cell's sandbox is set up while this
            # one runs, on the other core; the server goes on serving meanwhile.
            self.want_warm.discard(box.key)
            self._make_ahead(box.key)

    def op_comm(self, req: dict[str, Any]) -> None:
        """A message from the frontend for a comm of a named sandbox: run like a cell
        (its output, errors, interrupt and kill work the same), never creating one."""
        rid, name = req["id"], req.get("name")
        box = self.named.get(name) if isinstance(name, str) else None
        if box is not None and box.current is None:
            self._drain(box)  # what it wrote since its last cell: checked, not shown
            box = self.named.get(name)
        if box is None:
            msg = self.lost.get(name, f"sandbox {name!r} is gone") if name else "no sandbox"
            self.reply({"type": "done", "id": rid, "status": "failed", "message": msg})
            return
        if box.current is not None:
            msg = f"sandbox {name!r} is still running another cell"
            self.reply({"type": "done", "id": rid, "status": "failed", "message": msg})
            return
        box.current = rid
        box.show = False
        box.want_outputs = frozenset()
        box.budget = _Budget(int(req.get("max_output") or DEFAULT_MAX_OUTPUT))
        box.stdin_refused = None  # each request says anew whether it takes input
        self.running[rid] = box
        self.send_box(box, {"op": "comm", "comm": req["comm"], "parent": req.get("parent")})

    def op_kill(self, req: dict[str, Any]) -> None:
        rid = req["id"]
        box = self.running.get(rid)
        if box is None:
            return  # already finished; its "done" is on the way
        was = box.name
        self._retire(box)
        # "killed" is said once it is true: its init reaped, so with a PID namespace
        # every process of it is gone too.
        self.when_dead(
            [box.sandbox],
            KILL_WAIT,
            lambda dead: self.reply(
                {
                    "type": "done",
                    "id": rid,
                    "status": "killed",
                    "reason": req.get("reason", ""),
                    "removed": was,
                    "dead": dead,
                }
            ),
        )

    def op_interrupt(self, req: dict[str, Any]) -> None:
        """SIGINT to the cell runner: interrupts a named sandbox's cell, keeps its state."""
        box = self.running.get(req["id"])
        if box is not None and box.runner_pid:
            try:
                os.kill(box.runner_pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def op_rm(self, req: dict[str, Any]) -> None:
        """Remove named sandboxes; the reply comes once they are dead (or say they are not)."""
        rid = req["id"]
        if req.get("all"):
            names = sorted({*self.named, *self.lost})
        else:
            names = list(req.get("names") or [])
        # All-or-nothing: check every name first.
        boxes = [self._named(n) for n in names if n not in self.lost]
        for n in names:
            self.lost.pop(n, None)
        for box in boxes:
            self._retire(box)

        def then(dead: bool) -> None:
            if dead:
                self.reply({"type": "reply", "id": rid, "ok": True, "result": names})
                return
            alive = [b.name for b in boxes if b.sandbox.returncode is None]
            msg = (
                f"SIGKILL was sent to sandbox(es) {', '.join(map(repr, alive))}, but they had "
                f"not exited after {KILL_WAIT:g} s (a process stuck in the kernel?); they are "
                "gone from `%sandbox ls` and will be reaped when they exit"
            )
            self.reply({"type": "reply", "id": rid, "ok": False, "error": msg})

        self.when_dead([b.sandbox for b in boxes], KILL_WAIT, then)

    def op_ls(self) -> list[dict[str, Any]]:
        boxes = [self.named[n] for n in sorted(self.named)]
        self.gather_facts(boxes)
        return [self.info(b) for b in boxes if not b.retired]

    def info(self, box: Box) -> dict[str, Any]:
        sb = box.sandbox
        if box.facts is not None:
            facts = box.facts
        elif box.current is not None:
            facts = {"facts_error": "a cell is running in it"}
        else:
            facts = {"facts_error": f"it did not answer within {FACTS_TIMEOUT:g} s"}
        hostname, ips = messages.facts_summary(facts)
        for ip in box.network.get("ips") or ():
            if ip not in ips:
                ips.append(ip)
        return {
            "name": box.name,
            "pid": sb.pid,
            "hostname": hostname or sb.hostname,
            "ips": ips,
            "namespaces": procfs.namespace_ids(sb.pid),
            "created": sorted(sb.namespaces),
            "uid_map": procfs.id_map(sb.pid, "uid_map"),
            "gid_map": procfs.id_map(sb.pid, "gid_map"),
            "started": sb.started,
            "age": time.time() - sb.started,
            "busy": box.current is not None,
            "network": {k: v for k, v in box.network.items() if k != "options"},
            "facts": facts,
            # Only when set: each limit, and the mechanism enforcing it (cgroup or rlimit).
            **({"limits": sb.limits.describe()} if sb.limits.describe() else {}),
            # The syscall filter, no_new_privs and the capabilities its cells run with.
            **({"confinement": sb.confinement.describe()} if sb.confinement else {}),
            **({"degraded": list(sb.degraded)} if sb.degraded else {}),
        }

    def facts_from_host(self, box: Box) -> dict[str, Any]:
        """The widgets' facts of a sandbox, read from outside (host PIDs included).

        For ``--show`` of an unnamed sandbox, read before it is removed. Rootless, the
        uid/gid maps here are relative to this server's user namespace; the kernel side
        translates them to host ids with the server's own map.
        """
        from nskernel import facts as F

        sb = box.sandbox
        return dict(
            F.sandbox_facts_from_host(
                sb.pid,
                name=box.name,
                hostname=sb.hostname,
                created=sb.namespaces,
                limits=_limit_lines(sb) or None,
            )
        )

    def gather_facts(self, boxes: list[Box]) -> None:
        """Ask idle ``boxes`` for their facts, all at once, and wait FACTS_TIMEOUT at most.

        A sandbox that has not answered an earlier query is not asked again (nor waited
        for): one that never answers delays one ``%sandbox ls``, not every one. Answers
        arrive through :meth:`on_box_frame`, checked like every other frame.
        """
        asked = []
        for box in boxes:
            if box.current is None and box.facts_pending and not box.retired:
                self._drain(box)  # its answer to an earlier query may have come since
            if box.current is None and not box.facts_pending and not box.retired:
                box.facts_pending = True
                self.send_box(box, {"op": "facts"})
                asked.append(box)
        deadline = time.monotonic() + FACTS_TIMEOUT
        while True:
            waiting = [b for b in asked if b.facts_pending and not b.retired]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            poller = select.poll()
            for b in waiting:
                poller.register(b.fd, select.POLLIN | (select.POLLOUT if b.out else 0))
            for fd in syscalls.poll_ready(poller, left):
                box = self.boxes.get(fd)
                if box is not None:
                    self.service(box)

    # ------------------------------------------------------------ sandbox events

    def service(self, box: Box) -> None:
        """A box's socket is ready: write what waits for it, read and handle its frames."""
        if box.out:
            self._flush(box)
        if box.paused_until is not None:
            return  # read again once the pause is over (see _resume)
        # What a pause left buffered goes first: reading more would let it grow.
        alive = True if box.reader.complete() else box.reader.feed()
        try:
            for raw in box.reader.frames(
                lambda body: self._admit(box, body), lambda: box.paused_until is not None
            ):
                if raw.get("type") != box.kind:  # e.g. "type" given twice
                    raise messages.Malformed("a message whose type is not the one it begins with")
                self.on_box_frame(box, messages.from_runner(raw, running=box.current is not None))
                if box.retired:
                    return
        except (protocol.ProtocolError, messages.Malformed) as e:
            self.malformed(box, str(e))
            return
        if not alive:
            self.on_box_eof(box)

    def _admit(self, box: Box, body: bytes) -> int | None:
        """Whether a frame of ``box`` is decoded (the most values it may decode to), or
        dropped undecoded (None): output that no cell would show, or past what the cell
        may still show or have decoded (its budget, counted as dropped), and answers
        nobody waits for. Never dropped: a cell's end and its input requests."""
        box.kind = kind = messages.frame_kind(body)
        most = _KIND_VALUES.get(kind, protocol.MAX_VALUES)
        group = None
        if kind == "facts":
            keep = box.facts_pending
        elif kind == "answer":
            keep = box.asked is not None
        elif (group := _GROUP.get(kind)) is None:
            if kind == "input_request" and box.current is not None:
                # Never dropped, but paced as decoded output: a cell calling input() in
                # a loop where stdin is refused (nbclient, papermill) made the kernel and
                # the server answer thousands a second, outside its --cpus (red team 37
                # F2).
                self._pace(box, DECODED_COST)
            return most  # cell_done, input_request, or a type the protocol lacks
        else:  # output between cells has no cell to show it in
            keep = box.current is not None and box.budget.admit(group, len(body))
        if box.current is not None and (group is not None or not keep):
            # A cell's output, decoded or not, and answers nobody awaits: paced past
            # DROP_FREE. Between cells a box is read only where something is awaited,
            # for a bounded time (_drain, gather_facts, op_ask).
            self._pace(box, DECODED_COST if keep else 1)
        return most if keep else None

    def _pace(self, box: Box, cost: int) -> None:
        """Count ``cost`` frames against the cell; past DROP_FREE, read its sandbox in
        bursts of DROP_BURST with a DROP_PAUSE between them."""
        before = box.budget.frames
        box.budget.frames += cost
        past = box.budget.frames - DROP_FREE
        if past > 0 and past // DROP_BURST > max(0, before - DROP_FREE) // DROP_BURST:
            box.paused_until = time.monotonic() + DROP_PAUSE
            self._watch(box)

    def on_box_frame(self, box: Box, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "facts":
            if box.facts_pending:
                box.facts_pending = False
                box.facts = msg["facts"]
            return  # an answer nobody waits for any more
        if kind == "answer":
            if box.asked == msg["what"]:
                box.asked, box.answer = None, msg["result"]
            return
        rid = box.current
        if rid is None:
            return  # output between cells (a background thread): no cell to show it in
        if kind == "cell_done":
            budget = box.budget
            done = {
                "type": "done",
                "id": rid,
                "status": msg["status"],
                # Only what the cell asked for: the kernel applies nothing else either.
                "outputs": {k: v for k, v in msg["outputs"].items() if k in box.want_outputs},
                "out_error": msg["out_error"],
                "dropped": budget.report(),
            }
            if box.show:
                done["facts"] = self.facts_from_host(box)
            box.current = None
            box.input_pending = False
            self._watch(box)  # not read again until asked something
            self.running.pop(rid, None)
            self.last_done = time.monotonic()
            keep = box.keep_as if box.name is None and box.comms_opened else None
            if keep and keep not in self.named and keep not in self.lost:
                # An unnamed cell that opened widgets: its sandbox stays, under the name
                # the kernel chose, so the widgets keep calling back into it (the kernel
                # bounds how many stay, and removes it once it has no widgets).
                box.name = keep
                self.named[keep] = box
                done["kept"] = keep
            self.reply(done)
            if box.name is None:
                self._retire(box)
            return
        if kind == "input_request":
            if box.input_pending:
                raise messages.Malformed("an input request before the last was answered")
            if box.stdin_refused is not None:
                self.send_box(box, {"op": "input_reply", **box.stdin_refused})
                return
            box.input_pending = True
        elif not self._within_budget(box.budget, msg):
            return
        if kind == "comm_open":
            box.comms_opened = True
        self.reply({**msg, "id": rid})

    def _within_budget(self, budget: _Budget, msg: dict[str, Any]) -> bool:
        """Cut ``msg`` to what the cell may still show (in place); False to drop it.

        The kernel enforces the same budget; doing it here too keeps a flood from ever
        crossing to the kernel (and the kernel from decoding it).
        """
        kind = msg["type"]
        if kind == "stream":
            text = msg["text"]
            if len(text) > budget.chars:
                budget.dropped_chars += len(text) - budget.chars
                msg["text"] = text = text[: budget.chars]
            budget.chars -= len(text)
            return bool(text)
        if kind in ("display_data", "execute_result", "clear_output", *messages.COMM_KINDS):
            is_comm = kind in messages.COMM_KINDS
            size = messages.comm_size(msg) if is_comm else messages.display_cost(msg)
            if size > budget.display:
                budget.dropped_displays += 1
                budget.dropped_display_size += size
                return False
            budget.display -= size
        if kind == "error":
            # Errors are output too (red team 17 F2: a cell sent thousands). Once the
            # cell has shown --max-output of them, the rest are dropped; the kernel cuts
            # the one that goes over, as it cuts any long traceback.
            size = messages.error_size(msg)
            if budget.errors <= 0:
                budget.dropped_errors += 1
                budget.dropped_error_size += size
                return False
            budget.errors -= size
        return True

    def on_box_eof(self, box: Box) -> None:
        rid = box.current
        name = box.name
        self._detach(box)
        if rid is None:
            self._end(box.sandbox)
            if name:
                self.lost[name] = (
                    f"named sandbox {name!r} ended while no cell of it ran; its state is "
                    "gone. Run the cell again to create it afresh"
                )
            return
        # The runner is gone; its init follows at once with the runner's status. Wait
        # for that status (without blocking the server) before ending it ourselves,
        # which would turn any status into SIGKILL's.
        sb = box.sandbox

        def report(dead: bool) -> None:
            code = sb.returncode if dead else None
            reason = sb.exit_reason()
            what = f"exit status {code}" if code is not None else "an unknown status"
            msg = reason or f"the sandbox's Python process ended during the cell ({what})"
            if name:
                msg += f"; sandbox {name!r} is gone"
            self.reply(
                {
                    "type": "done",
                    "id": rid,
                    "status": "died",
                    "message": msg,
                    "removed": name,
                    "dead": dead,
                }
            )

        def exited(dead: bool) -> None:
            if dead:
                report(True)
            else:  # its channel closed, but it lives on: end it
                self._end(sb)
                self.when_dead([sb], KILL_WAIT, report)

        self.when_dead([sb], EXIT_GRACE, exited)

    # ------------------------------------------------------------ main loop

    def fill_warm(self) -> None:
        """Start making the sandboxes the next cells will want, while the kernel is idle
        (they are set up while the server serves: see _go_on)."""
        for key in list(self.want_warm):
            self.want_warm.discard(key)
            self._make_ahead(key)

    def _timeout(self) -> float | None:
        timeout: float | None = None
        if self.dying:
            timeout = REAP_INTERVAL
        pauses = [b.paused_until for b in self.running.values() if b.paused_until is not None]
        pauses += [c.creation.deadline for c in self.creating.values()]
        if self.waits or pauses:
            first = min([w.deadline for w in self.waits] + pauses) - time.monotonic()
            timeout = max(0.0, first if timeout is None else min(timeout, first))
        return timeout

    def _resume(self) -> None:
        """Read again the running boxes whose pause is over (see DROP_FREE)."""
        now = time.monotonic()
        for box in list(self.running.values()):
            if box.paused_until is not None and now >= box.paused_until:
                box.paused_until = None
                self._watch(box)
                self.service(box)

    def _overdue(self) -> None:
        """End the setups that went past their deadline (nothing of them is left)."""
        now = time.monotonic()
        for c in [c for c in self.creating.values() if now >= c.creation.deadline]:
            self._go_on(c, wait=False)

    def run(self) -> None:
        while True:
            self._reap()
            self._check_waits()
            self._resume()
            self._overdue()
            timeout = self._timeout()
            # Make the next sandbox only while no cell runs and after a short quiet spell:
            # creating one takes the CPU for tens of ms, which must not delay a cell.
            idle = self.want_warm and not self.running
            if idle:
                quiet = 0.0 if self.back_to_back else WARM_AFTER_IDLE
                timeout = quiet if timeout is None else min(timeout, quiet)
            self.registered_since_poll.clear()
            ready = dict(self.poller.poll(syscalls.poll_ms(timeout)))
            if not ready and idle:
                self.fill_warm()
                continue
            if self.fd in ready:
                if not self.reader.feed():
                    return  # the kernel is gone: so are we, and our sandboxes with us
                for req in self.reader.frames():
                    self.handle(req)
            for fd, events in ready.items():
                if fd in self.registered_since_poll:
                    continue  # reported for a file since closed; polled afresh next time
                making = self.creating_fds.get(fd)
                if making is not None:
                    self._go_on(making, wait=False)
                    continue
                box = self.boxes.get(fd)
                if box is None:
                    continue
                if box.current is not None:
                    if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        # It can write no more: what is left is bounded, and a pause
                        # would only see this again and again.
                        box.paused_until = None
                    self.service(box)
                elif events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    # Its channel closed while no cell of it ran: what it wrote since has
                    # no cell to go to, and is not read. Its end is handled as any EOF.
                    self.on_box_eof(box)
                elif events & select.POLLOUT:
                    self._flush(box)

    def shutdown(self) -> None:
        self.closing = True
        for c in list(self.creating.values()):
            c.creation.cancel()  # what exists of it is killed and reaped
            c.sock.close()
        self.creating.clear()
        for box in list(self.boxes.values()):
            self._retire(box)
        for sb in list(self.dying):  # those whose channel closed mid-cell, too
            self._end(sb)
        deadline = time.monotonic() + 5
        while self.dying and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)


def raise_open_files_limit() -> int | None:
    """Raise this server's open-files soft limit to the hard one; returns the old soft
    limit (None if unchanged), which the cell runners restore for the user's code.

    The server holds two descriptors per sandbox, so the usual soft limit of 1024 would
    stop a kernel at ~500 named sandboxes. Raising it is what a daemon that polls (never
    select()s) should do; the code in a sandbox keeps the limit it would have had, as
    programs that size tables by it, or close every fd below it, expect.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return None  # e.g. a hard limit above fs.nr_open: keep what we have
    return soft


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m nskernel.magics.server",
        description="The single-threaded sandbox server behind %%sandbox (started by the kernel).",
    )
    p.add_argument("--fd", type=int, required=True, help="the socket to the kernel (inherited)")
    p.add_argument(
        "--jupyter-runtime-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="where the kernel's Jupyter keeps tokens and keys: hidden in every sandbox",
    )
    p.add_argument(
        "--secret-file",
        action="append",
        default=[],
        metavar="PATH",
        help="a file of the Jupyter server's secrets (its token file): hidden in every sandbox",
    )
    # Set by the server itself when it runs again from a read-only view of its
    # interpreter (see nskernel._linux.exefile): what it had already done.
    p.add_argument("--resumed-userns", choices=("own", "host", "inherited"), help=argparse.SUPPRESS)
    p.add_argument("--resumed-nofile-soft", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are the kernel's decision
    resumed = args.resumed_userns is not None
    user_nofile_soft = args.resumed_nofile_soft if resumed else raise_open_files_limit()
    try:
        if args.resumed_userns:
            mode = args.resumed_userns
            if not exefile.safe_to_fork():  # the view did not take: never fork cells then
                raise RuntimeError("the interpreter is still on a writable mount")
        else:
            # Decided here, in the host's user namespace, where the owner is known.
            forkable = exefile.safe_to_fork()
            mode = enter_own_user_namespace()
            if not forkable:
                # Every cell is a fork of this process: they must not hold its
                # interpreter on a writable host mount (a user-owned Python).
                os.set_inheritable(args.fd, True)
                resumed = ["--resumed-userns", mode]
                if user_nofile_soft is not None:
                    resumed += ["--resumed-nofile-soft", str(user_nofile_soft)]
                exefile.reexec_read_only([*sys.orig_argv, *resumed])
        from . import cellrunner

        cellrunner.prepare()
        gc.collect()
        gc.freeze()  # children never collect (and so never copy) the inherited heap
    except BaseException as e:
        protocol.send(args.fd, {"type": "fatal", "error": f"{type(e).__name__}: {e}"})
        return 1
    protocol.send(
        args.fd,
        {
            "type": "hello",
            "pid": os.getpid(),
            "userns": mode,
            "uid_map": procfs.id_map("self", "uid_map"),
            "gid_map": procfs.id_map("self", "gid_map"),
        },
    )
    secrets = JupyterSecrets(tuple(args.jupyter_runtime_dir), tuple(args.secret_file))
    server = Server(args.fd, mode, user_nofile_soft, secrets=secrets)
    try:
        server.run()
    except BrokenPipeError:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
