"""The sandbox server: one per kernel, single-threaded, forks every ``%%sandbox``.

The constraint: a Jupyter kernel runs threads (ZMQ, heartbeat, output flushing), and
``unshare(CLONE_NEWUSER)`` fails with EINVAL in a process with more than one thread. So the
kernel starts this server (``python -m nskernel.magics.server --fd N``) on first use and
talks to it over a socketpair of framed JSON (:mod:`.protocol`). The server stays
single-threaded for its whole life and creates every sandbox with ``Sandbox.spawn``.

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
  sandbox for the same options while the user reads the output, so the next cell only
  pays for sending the cell over (see ``benchmarks/cases_magic.py`` for the figures).
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
from typing import Any

from nskernel import Bind, NskernelError, Sandbox, SandboxError, SandboxSpec, SpecError
from nskernel._linux import procfs, syscalls, userns
from nskernel.spec import ALL_NAMESPACES, make_limits, python_environment_binds

from . import protocol

NETWORK_OPTIONS = ("network", "ip", "publish")
FACTS_TIMEOUT = 5.0
WARM_AFTER_IDLE = 0.02  # seconds without requests before a warm sandbox is made


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


def _build_spec(spec: dict[str, Any]) -> SandboxSpec:
    binds = tuple(Bind(src, dst, bool(ro)) for src, dst, ro in spec.get("binds") or ())
    namespaces = spec.get("namespaces") or ALL_NAMESPACES
    if "mnt" in namespaces:
        # Cells import modules on demand: keep this environment visible even if it
        # lives in a directory that is private inside (a venv or checkout under /tmp).
        taken = {b.dest for b in binds}
        binds += tuple(b for b in _PYTHON_BINDS if b.dest not in taken)
    limits = spec.get("limits") or {}
    return SandboxSpec.from_flags(
        namespaces,
        hostname=spec.get("hostname"),
        binds=binds,
        cwd=spec.get("cwd"),
        limits=make_limits(limits.get("memory"), limits.get("pids"), limits.get("cpus")),
    )


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


class Box:
    """One sandbox and the socket to its cell runner."""

    def __init__(
        self, sandbox: Sandbox, sock: socket.socket, spec: dict[str, Any], key: str
    ) -> None:
        self.sandbox = sandbox
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = protocol.FrameReader(self.fd)
        self.spec = spec
        self.key = key
        self.name: str | None = None
        self.current: int | None = None  # id of the request running in it
        self._runner_pid: int | None = None
        self.network: dict[str, Any] = {}
        self.net_backend: Any = None
        self.show = False  # --show: read its facts when the cell is done

    @property
    def runner_pid(self) -> int | None:
        """Host PID of the cell runner (init's child), looked up on first use: spawn
        returns before init has forked it."""
        if self._runner_pid is None:
            self._runner_pid = _first_child(self.sandbox.pid)
        return self._runner_pid


class Server:
    def __init__(self, fd: int, userns_mode: str, user_nofile_soft: int | None = None) -> None:
        self.fd = fd
        self.user_nofile_soft = user_nofile_soft  # what the cells get back
        self.reader = protocol.FrameReader(fd)
        self.userns_mode = userns_mode
        self.boxes: dict[int, Box] = {}  # by socket fd
        self.named: dict[str, Box] = {}
        self.running: dict[int, Box] = {}  # by request id
        self.warm: dict[str, Box] = {}  # spec key -> a sandbox created ahead of time
        self.want_warm: set[str] = set()
        self.dying: list[Sandbox] = []
        # poll(2), kept up to date as boxes come and go: select(2) cannot watch
        # descriptors numbered 1024 and up, which ~500 named sandboxes reach.
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.prewarm = os.environ.get("NSKERNEL_MAGIC_PREWARM", "1") != "0"

    # ------------------------------------------------------------ plumbing

    def reply(self, msg: dict[str, Any]) -> None:
        protocol.send(self.fd, msg)

    def _spawn(self, spec: dict[str, Any], *, warm: bool = False) -> Box:
        from . import cellrunner

        sandbox_spec = _build_spec(spec)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child.fileno()
        try:
            sb = Sandbox.spawn(
                sandbox_spec,
                target=lambda: cellrunner.serve(
                    child_fd, warm=warm, nofile_soft=self.user_nofile_soft
                ),
                pass_fds=(child_fd,),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        box = Box(sb, parent, spec, _spec_key(spec))
        self.boxes[box.fd] = box
        self.poller.register(box.fd, select.POLLIN)
        return box

    def _retire(self, box: Box) -> None:
        """Kill a box's sandbox without waiting; it is reaped later."""
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
        box.sandbox._close_lifeline()  # init kills the whole sandbox
        box.sock.close()
        self.dying.append(box.sandbox)

    def _reap(self) -> None:
        still = []
        for sb in self.dying:
            try:
                if sb.poll() is None:
                    still.append(sb)
            except ChildProcessError:
                pass
        self.dying = still

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
                self.reply({"type": "reply", "id": rid, "ok": True, "result": self.info(box)})
            elif op == "rm":
                self.reply({"type": "reply", "id": rid, "ok": True, "result": self.op_rm(req)})
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

    def op_run(self, req: dict[str, Any]) -> None:
        rid = req["id"]
        name = req.get("name")
        spec = req["spec"]
        net = _network_options(req)
        box = self.named.get(name) if name else None
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
            box = None if (name or net) else self.warm.pop(key, None)
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
        box.current = rid
        box.show = bool(req.get("facts"))
        self.running[rid] = box
        protocol.send(
            box.fd,
            {
                "op": "run",
                "cell": req["cell"],
                "inputs": req.get("inputs") or {},
                "outputs": req.get("outputs") or [],
                "execution_count": req.get("execution_count"),
                "facts": False,
            },
        )

    def op_kill(self, req: dict[str, Any]) -> None:
        rid = req["id"]
        box = self.running.get(rid)
        if box is None:
            return  # already finished; its "done" is on the way
        was = box.name
        self._retire(box)
        self.reply(
            {
                "type": "done",
                "id": rid,
                "status": "killed",
                "reason": req.get("reason", ""),
                "removed": was,
            }
        )

    def op_interrupt(self, req: dict[str, Any]) -> None:
        """SIGINT to the cell runner: interrupts a named sandbox's cell, keeps its state."""
        box = self.running.get(req["id"])
        if box is not None and box.runner_pid:
            try:
                os.kill(box.runner_pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def op_rm(self, req: dict[str, Any]) -> list[str]:
        names = sorted(self.named) if req.get("all") else list(req.get("names") or [])
        boxes = [self._named(n) for n in names]  # all-or-nothing: check every name first
        for box in boxes:
            self._retire(box)
        return names

    def op_ls(self) -> list[dict[str, Any]]:
        return [self.info(self.named[n]) for n in sorted(self.named)]

    def info(self, box: Box) -> dict[str, Any]:
        sb = box.sandbox
        facts = self.query_facts(box) or {}
        ips = list(facts.get("ips") or [])
        for ip in box.network.get("ips") or ():
            if ip not in ips:
                ips.append(ip)
        return {
            "name": box.name,
            "pid": sb.pid,
            "hostname": facts.get("hostname") or sb.hostname,
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

    def query_facts(self, box: Box) -> dict[str, Any] | None:
        if box.current is not None:
            return None
        protocol.send(box.fd, {"op": "facts"})
        deadline = time.monotonic() + FACTS_TIMEOUT
        while True:
            msg = box.reader.next(timeout=max(0.0, deadline - time.monotonic()))
            if msg is None:
                return None
            if msg.get("type") == "facts":
                return msg.get("facts")
            # anything else (stray output between cells) has no cell to go to

    # ------------------------------------------------------------ sandbox events

    def on_box_frame(self, box: Box, msg: dict[str, Any]) -> None:
        rid = box.current
        if rid is None:
            return  # output between cells (a background thread): no cell to show it in
        if msg.get("type") == "cell_done":
            msg["type"] = "done"
            msg["id"] = rid
            if box.show:
                msg["facts"] = self.facts_from_host(box)
            box.current = None
            self.running.pop(rid, None)
            self.reply(msg)
            if box.name is None:
                self._retire(box)
            return
        msg["id"] = rid
        self.reply(msg)

    def on_box_eof(self, box: Box) -> None:
        rid = box.current
        name = box.name
        # The runner is gone; its init follows at once with the runner's status. Take
        # that status before retiring the box, whose closed lifeline would kill init
        # first and turn any status into SIGKILL's.
        code = box.sandbox.wait(2.0) if rid is not None else None
        self._retire(box)
        if rid is not None:
            reason = box.sandbox.exit_reason()
            what = f"exit status {code}" if code is not None else "an unknown status"
            msg = reason or f"the sandbox's Python process ended during the cell ({what})"
            if name:
                msg += f"; sandbox {name!r} is gone"
            self.reply({"type": "done", "id": rid, "status": "died", "message": msg})

    # ------------------------------------------------------------ main loop

    def fill_warm(self) -> None:
        """Create the sandboxes the next cells will want, while the kernel is idle."""
        for key in list(self.want_warm):
            self.want_warm.discard(key)
            if key in self.warm:
                continue
            try:
                self.warm[key] = self._spawn(json.loads(key), warm=True)
            except (SandboxError, SpecError, OSError):
                pass  # the next cell creates its own and reports the error

    def run(self) -> None:
        while True:
            self._reap()
            timeout = 0.05 if self.dying else None
            # Make the next sandbox only while no cell runs and after a short quiet spell:
            # creating one takes the CPU for tens of ms, which must not delay a cell.
            idle = self.want_warm and not self.running
            if idle:
                timeout = WARM_AFTER_IDLE
            ready = syscalls.poll_ready(self.poller, timeout)
            if not ready and idle:
                self.fill_warm()
                continue
            if self.fd in ready:
                if not self.reader.feed():
                    return  # the kernel is gone: so are we, and our sandboxes with us
                for req in self.reader.frames():
                    self.handle(req)
            for fd in ready:
                box = self.boxes.get(fd)
                if box is None:
                    continue
                alive = box.reader.feed()
                for msg in box.reader.frames():
                    self.on_box_frame(box, msg)
                if not alive and box.fd in self.boxes:
                    self.on_box_eof(box)

    def shutdown(self) -> None:
        for box in list(self.boxes.values()):
            self._retire(box)
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
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are the kernel's decision
    user_nofile_soft = raise_open_files_limit()
    try:
        mode = enter_own_user_namespace()
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
    server = Server(args.fd, mode, user_nofile_soft)
    try:
        server.run()
    except BrokenPipeError:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
