"""What runs inside a sandbox: an IPython shell that speaks the framed protocol.

The sandbox server builds one :class:`SandboxShell` (and runs a warm-up cell) *before*
it forks any sandbox, so every sandbox starts with IPython already imported and its lazy
imports done: a fresh interpreter costs ~12 ms, a fork of a warm one a few. The shell
is created without history (no SQLite, no history thread) so the server stays
single-threaded, which it must be to create user namespaces.

Inside the sandbox, all output goes through one socket as JSON frames, in order:

- ``sys.stdout``/``sys.stderr`` write ``stream`` frames directly;
- file descriptors 1 and 2 are pipes, so output of ``!cmd``, ``os.system`` and C code is
  caught too; a pump thread forwards it live, and every Python-level write first drains
  those pipes, so a ``print`` after ``!echo`` stays after it;
- display calls become ``display_data``, the last expression ``execute_result``, and an
  exception ``error`` (with the traceback IPython renders, line numbers of the cell).
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from nskernel._linux import syscalls
from nskernel.environ import cwd_on_sys_path
from nskernel.kernel import shell_inside

from . import protocol

# The channel of this sandbox; None in the server (before fork).
_channel: _Channel | None = None


# Stream text is sent at once when a line ends and nothing was sent for this long;
# otherwise it is batched (a loop of prints must not cost one frame per write) and the
# pump thread sends the batch at the latest this much later. Output still looks live.
STREAM_BATCH_SECONDS = 0.02
STREAM_BATCH_BYTES = 1 << 16
# Stream text goes out in frames of at most this many characters (a few hundred KiB of
# JSON at worst), well below the server's frame limits even between cells.
STREAM_CHUNK = 1 << 16
# A facts answer is trimmed to fit in a frame the server accepts between cells.
FACTS_BUDGET = protocol.MAX_IDLE_FRAME - (64 << 10)


class _Channel:
    """The socket to the server, shared by the shell, the streams and the pump thread.

    Every frame goes out under ``lock``, after any batched stream text and anything
    waiting in the fd 1/2 pipes: so frames leave in the order the output was produced.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.pipes: dict[int, str] = {}  # read end -> stream name
        self.batch_name: str | None = None
        self.batch: list[str] = []
        self.batch_size = 0
        self.last_sent = 0.0
        self.batch_started = 0.0
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Whether a cell runs: output from background threads (and from processes a
        # cell left running) between cells has no cell to go to, so it is not sent at
        # all: the server does not read this channel then, and a write would block.
        self.running = False

    def send(self, msg: dict[str, Any], *, drain: bool = True) -> None:
        with self.lock:
            self._flush_batch_locked()
            if drain:
                self._drain_locked()
            self._send_locked(msg)

    def _send_locked(self, msg: dict[str, Any]) -> None:
        data = protocol.encode(msg)
        if len(data) - protocol.HEADER.size > protocol.MAX_FRAME:
            # The server would stop this sandbox for it: say what was left out instead.
            kind = str(msg.get("type")).replace("_", " ")
            limit = protocol.size_text(protocol.MAX_FRAME)
            note = (
                f"[nskernel: a {kind} of {protocol.size_text(len(data))} was not shown: "
                f"one message from a sandbox is limited to {limit}. "
                "Write large data to a file in a --bind directory instead.]\n"
            )
            data = protocol.encode({"type": "stream", "name": "stderr", "text": note})
        self._write_locked(data)

    def _write_locked(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            view = view[n:]
        self.last_sent = time.monotonic()

    def _stream_locked(self, name: str, text: str) -> None:
        if not self.running:
            return
        for i in range(0, len(text), STREAM_CHUNK):
            self._send_locked({"type": "stream", "name": name, "text": text[i : i + STREAM_CHUNK]})

    def write_stream(self, name: str, text: str) -> None:
        with self.lock:
            self._drain_locked()
            if self.batch_name != name:
                self._flush_batch_locked()
                self.batch_name = name
            was_empty = not self.batch
            now = time.monotonic()
            if was_empty:
                self.batch_started = now
            self.batch.append(text)
            self.batch_size += len(text)
            if self.batch_size >= STREAM_BATCH_BYTES or (
                "\n" in text and now - self.last_sent >= STREAM_BATCH_SECONDS
            ):
                self._flush_batch_locked()
            elif was_empty:
                os.write(self.wake_w, b"b")  # the pump sends it if nothing else does

    def send_encoded(self, data: bytes) -> None:
        """Like :meth:`send`, for a frame already encoded (and its size checked)."""
        with self.lock:
            self._flush_batch_locked()
            self._drain_locked()
            self._write_locked(data)

    def flush(self) -> None:
        with self.lock:
            self._flush_batch_locked()

    def _flush_batch_locked(self) -> None:
        if self.batch:
            text = "".join(self.batch)
            self.batch.clear()
            self.batch_size = 0
            self._stream_locked(self.batch_name or "stdout", text)

    def _drain_locked(self) -> None:
        for rfd, name in self.pipes.items():
            chunks = []
            while True:
                try:
                    data = os.read(rfd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    break
                chunks.append(data)
            if chunks:
                self._flush_batch_locked()
                text = b"".join(chunks).decode(errors="replace")
                self._stream_locked(name, text)

    def drain(self) -> None:
        with self.lock:
            self._flush_batch_locked()
            self._drain_locked()


class _FramedStream:
    """A text stream (``sys.stdout``/``sys.stderr``) that writes ``stream`` frames."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, name: str, fileno: int) -> None:
        self.name = name
        self._fileno = fileno

    def write(self, text: str) -> int:
        if text and _channel is not None:
            _channel.write_stream(self.name, str(text))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        self.write("".join(lines))

    def flush(self) -> None:
        if _channel is not None:
            _channel.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fileno

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False


class _FramedDisplayPublisher(DisplayPublisher):
    def publish(  # type: ignore[override]
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        source: object = None,
        *,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: object,
    ) -> None:
        if _channel is None or not _channel.running:
            return
        _channel.send(
            {
                "type": "display_data",
                "data": data,
                "metadata": metadata or {},
                "transient": transient or {},
                "update": update,
            }
        )

    def clear_output(self, wait: bool = False) -> None:
        if _channel is not None and _channel.running:
            _channel.send({"type": "clear_output", "wait": wait})


class _FramedDisplayHook(DisplayHook):
    """Sends the cell's last expression value as ``execute_result``."""

    def start_displayhook(self) -> None:
        self._data: dict[str, Any] = {}
        self._metadata: dict[str, Any] = {}

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(
        self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None
    ) -> None:
        self._data = format_dict
        self._metadata = md_dict or {}

    def finish_displayhook(self) -> None:
        if _channel is not None and self._data:
            _channel.send(
                {
                    "type": "execute_result",
                    "data": self._data,
                    "metadata": self._metadata,
                    "execution_count": self.shell.execution_count,  # type: ignore[union-attr]
                }
            )
        self._data = {}


class SandboxShell(InteractiveShell):
    """An IPython shell whose tracebacks travel as ``error`` frames."""

    def _showtraceback(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        if _channel is None:
            return
        hint = shell_inside.read_only_hint(evalue)  # e.g. a write into the read-only notebook dir
        if hint:
            stb = [*stb, hint]
        _channel.send(
            {
                "type": "error",
                "ename": getattr(etype, "__name__", str(etype)),
                "evalue": str(evalue),
                "traceback": list(stb),
            }
        )

    # `!cmd` runs with fds 1/2 inherited: the pipes the pump thread forwards. The
    # default (pexpect-based) system_piped would read the output itself and needs a tty.
    system = InteractiveShell.system_raw

    def enable_gui(self, gui: str | None = None) -> None:
        pass


_shell: SandboxShell | None = None


def prepare() -> SandboxShell:
    """Build and warm up the shell (in the server, before any fork). Single-threaded."""
    global _shell
    if _shell is None:
        cfg = Config()
        cfg.HistoryManager.enabled = False  # no SQLite thread: the server must stay 1-thread
        cfg.HistoryManager.hist_file = ":memory:"
        cfg.InteractiveShell.colors = "Neutral"
        cfg.InteractiveShell.xmode = "Context"
        # .instance(): IPython's tracebacks ("Cell In[3], line 2") and get_ipython()
        # look the shell up as the singleton.
        shell = SandboxShell.instance(
            config=cfg,
            display_pub_class=_FramedDisplayPublisher,
            displayhook_class=_FramedDisplayHook,
        )
        # Warm-up: compiles, the AST transformers and the formatters import lazily on
        # the first cell; paying that here keeps it out of every sandbox.
        shell.run_cell("_nsk_warm = 1\n_nsk_warm\ndel _nsk_warm", store_history=False)
        shell.execution_count = 1
        # What a plain kernel has (%store), and %pip that installs where a sandbox can.
        shell.extension_manager.load_extension("storemagic")
        shell_inside.install_magics(shell)
        # `%sandbox ls/inspect` ask each named sandbox for its facts: imported here, the
        # module is shared by all of them instead of ~2 MiB more in each that was asked.
        from nskernel import facts  # noqa: F401

        # Comms and stdin for the code in each sandbox (`comm` is imported here, once).
        from . import inside  # noqa: F401

        _shell = shell
    return _shell


# ------------------------------------------------------------------ facts from inside

_SIOCGIFADDR = 0x8915


def interface_addresses() -> dict[str, list[str]]:
    """IPv4 addresses by interface, via ioctl (no netlink, no pyroute2 import)."""
    found: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:
                found[name] = []
                continue
            found[name] = [socket.inet_ntoa(res[20:24])]
    return found


def gather_facts() -> dict[str, Any]:
    """Facts seen from inside the sandbox (JSON-ready): ``nskernel.facts`` plus ``ips``."""
    try:
        from nskernel import facts as F

        found = dict(F.gather_here(kind="sandbox"))
    except Exception as e:  # the basics below still answer %sandbox ls; say why
        found = _basic_facts()
        found["facts_error"] = f"{type(e).__name__}: {e}"
        return found
    ips = []
    for iface in found.get("interfaces") or ():
        for addr in iface.get("addresses") or ():
            ip = addr.split("/")[0]
            if iface.get("name") != "lo" and ":" not in ip:
                ips.append(ip)
    found["ips"] = ips
    return found


def _basic_facts() -> dict[str, Any]:
    from nskernel._linux import procfs

    addrs = interface_addresses()
    return {
        "hostname": socket.gethostname(),
        "interfaces": [{"name": n, "addresses": a} for n, a in addrs.items()],
        "ips": sorted({a for n, v in addrs.items() for a in v if n != "lo"}),
        "pid": os.getpid(),
        "namespaces": procfs.namespace_ids("self"),
        "uid_map": procfs.id_map("self", "uid_map"),
        "gid_map": procfs.id_map("self", "gid_map"),
    }


# ------------------------------------------------------------------ the runner


def _setup_stdio(ch: _Channel) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        r, w = os.pipe2(os.O_CLOEXEC)
        os.dup2(w, fd)  # dup2 clears O_CLOEXEC on fd 1/2: children inherit them
        os.close(w)
        os.set_blocking(r, False)
        ch.pipes[r] = name
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    sys.stdout = _FramedStream("stdout", 1)  # type: ignore[assignment]
    sys.stderr = _FramedStream("stderr", 2)  # type: ignore[assignment]
    sys.__stdout__ = sys.stdout  # type: ignore[misc]
    sys.__stderr__ = sys.stderr  # type: ignore[misc]
    threading.Thread(target=_pump, args=(ch,), name="nsk-pump", daemon=True).start()


def _pump(ch: _Channel) -> None:
    """Forward fd 1/2 output live (e.g. `!ping` printing once a second), and send
    batched stream text that nothing else sent within ``STREAM_BATCH_SECONDS``."""
    fds = [*ch.pipes, ch.wake_r]
    while len(fds) > 1:
        timeout = None
        if ch.batch:
            timeout = max(0.0, ch.batch_started + STREAM_BATCH_SECONDS - time.monotonic())
        ready = syscalls.readable(fds, timeout)
        with ch.lock:
            if ch.wake_r in ready:
                try:
                    os.read(ch.wake_r, 4096)
                except BlockingIOError:
                    pass
            if ch.batch and time.monotonic() - ch.batch_started >= STREAM_BATCH_SECONDS:
                ch._flush_batch_locked()
            for rfd in ready:
                if rfd == ch.wake_r:
                    continue
                try:
                    data = os.read(rfd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    fds.remove(rfd)
                    continue
                ch._flush_batch_locked()
                text = data.decode(errors="replace")
                ch._stream_locked(ch.pipes[rfd], text)


def _run_one(shell: SandboxShell, ch: _Channel, req: dict[str, Any]) -> None:
    from . import inside

    inside.set_parent(req.get("parent"))
    if req.get("op") == "comm":
        # A message from the frontend for one of this sandbox's comms (a slider moved):
        # handled like a cell, so its output, its errors and its end travel as a cell's.
        ch.running = True
        try:
            inside.handle_comm(req.get("comm") or {})
            ok = True
        except BaseException:
            shell.showtraceback()
            ok = False
        finally:
            ch.drain()  # its output, `!cmd`'s too, goes out while it still runs
        with ch.lock:
            ch.running = False
        done = {"type": "cell_done", "status": "ok" if ok else "error", "outputs": {}}
        ch.send(done)
        return
    shell.execution_count = int(req.get("execution_count") or 1)
    for name, value in (req.get("inputs") or {}).items():
        shell.user_ns[name] = protocol.decode_value(value)
    ch.running = True
    try:
        result = shell.run_cell(req["cell"], store_history=True)
    finally:
        ch.drain()  # its output, `!cmd`'s too, goes out while it still runs
    ok = bool(result.success)
    outputs: dict[str, object] = {}
    out_error = None
    if ok:
        for name in req.get("outputs") or ():
            if name not in shell.user_ns:
                out_error = f"--out {name}: the cell did not define {name!r} in the sandbox"
                break
            try:
                outputs.update(protocol.encode_values({name: shell.user_ns[name]}))
            except protocol.UnsupportedValue as e:
                out_error = f"--out {name}: {e}"
                break
    done: dict[str, Any] = {
        "type": "cell_done",
        "status": "ok" if ok else "error",
        "outputs": outputs,
        "out_error": out_error,
    }
    data = protocol.encode(done)
    if len(data) - protocol.HEADER.size > protocol.MAX_FRAME:
        done["outputs"] = {}
        done["out_error"] = (
            f"--out {', '.join(outputs)}: {protocol.size_text(len(data))} of values is more "
            f"than a sandbox may send back at once ({protocol.size_text(protocol.MAX_FRAME)}); "
            "write them to a file in a --bind directory instead"
        )
        data = protocol.encode(done)
    # Not running from here on: a display from a background thread, between the
    # cell_done and the next cell, has no cell to go to.
    with ch.lock:
        ch.running = False
    ch.send_encoded(data)


def _facts_answer() -> dict[str, Any]:
    """``gather_facts()``, trimmed to fit in a frame the server accepts between cells."""
    facts = gather_facts()
    if len(protocol.encode(facts)) > FACTS_BUDGET:
        procs = facts.get("processes") or []
        facts["processes"] = procs[:200]
        facts.setdefault("errors", {})["processes"] = (
            f"{len(procs)} processes; the first 200 are listed"
        )
    if len(protocol.encode(facts)) > FACTS_BUDGET:
        facts = _basic_facts()
        facts["facts_error"] = "the full facts were too large to send"
    return facts


def _answer(shell: SandboxShell, req: dict[str, Any]) -> dict[str, Any]:
    """Completion or inspection of the code of a cell of this sandbox; never raises."""
    from . import inside

    code = str(req.get("code") or "")
    pos = req.get("cursor_pos")
    pos = pos if isinstance(pos, int) and 0 <= pos <= len(code) else len(code)
    try:
        if req.get("op") == "complete":
            return inside.complete(shell, code, pos)
        return inside.inspect(shell, code, pos, int(req.get("detail_level") or 0))
    except Exception:
        return {}


def serve(fd: int, *, warm: bool = False, nofile_soft: int | None = None) -> int:
    """The sandbox's main program: run the cells sent on ``fd`` until EOF.

    ``warm``: this sandbox was made ahead of time and waits for its cell; run a no-op
    cell first, so the copy-on-write page faults of the shell's first run (~4 ms here)
    happen now rather than when the user is waiting.
    ``nofile_soft``: the open-files soft limit the user's code gets (the server raised
    its own; see ``server.raise_open_files_limit``).
    """
    global _channel
    # Forked without Python's at-fork handlers (``Sandbox.spawn(target_at_fork=False)``):
    # the one this process needs is random's, or every sandbox of the server would draw
    # the same numbers. (Threading's and logging's reset locks another thread held at
    # the fork: the server has no other thread.)
    if "random" in sys.modules:
        sys.modules["random"].seed()
    if nofile_soft is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))
    # The sandbox's init starts its command with default signal actions, under which
    # SIGINT kills; here it must raise KeyboardInterrupt in the cell (named sandboxes
    # are interrupted that way and keep their state).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ch = _Channel(fd)
    cwd_on_sys_path()  # the server ran without it (environ.python_module_command)
    shell = prepare()
    shell_inside.activate()  # %pip's prefix in this sandbox's home, this Python first on PATH
    _setup_stdio(ch)
    if warm:
        shell.run_cell("pass", store_history=False, silent=True)
    _channel = ch
    reader = protocol.FrameReader(fd)  # the server's frames: trusted, large (--in values)
    from . import inside

    inside.install(shell, ch, reader)  # comms, input() and getpass() through the channel
    while True:
        try:
            req = reader.next()
        except KeyboardInterrupt:
            continue  # an interrupt that arrived just after its cell ended
        if req is None:
            return 0
        op = req.get("op")
        if op in ("run", "comm"):
            _run_one(shell, ch, req)
            # An unnamed sandbox too waits here until the server closes the socket (and
            # its lifeline): the server may still read its facts for --show.
        elif op == "facts":
            ch.send({"type": "facts", "facts": _facts_answer()}, drain=False)
        elif op in ("complete", "inspect"):
            ch.send({"type": "answer", "what": op, "result": _answer(shell, req)}, drain=False)
        # The server sends nothing else; anything else is ignored.
