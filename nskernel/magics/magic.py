"""``%%sandbox`` and ``%sandbox``: the IPython side.

Arguments are parsed and checked here, before anything is sent to the server, so a
typo gives a usage error at once and the kernel keeps working. The cell's output is
republished as it arrives; the value of its last expression becomes this cell's own
result (``Out[N]``); an exception inside becomes an exception here whose traceback is
the sandbox's, so the cell fails and "Run All" stops, as it would without the magic.
"""

from __future__ import annotations

import html
import os
import secrets
import shlex
import sys
from collections.abc import Callable
from typing import Any

from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import clear_output, display, publish_display_data

from nskernel._linux.caps import plan as caps_plan
from nskernel.environ import sandbox_environment
from nskernel.errors import NskernelError, SpecError
from nskernel.spec import (
    ALL_NAMESPACES,
    DEGRADED_ENV,
    DEGRADED_MODES,
    Bind,
    code_places,
    format_size,
    make_limits,
    notebook_dir_binds,
    parse_degraded,
    parse_size,
    writable_bind_over_code,
)

from . import comms, messages, protocol
from .client import SandboxRequestError, get_client, read_host_map
from .untrusted import Sanitizer

# ------------------------------------------------------------------ exceptions


class SandboxCellError(NskernelError):
    """The cell raised inside its sandbox. The traceback shown is the sandbox's own."""

    traceback_lines: list[str] = []

    def _render_traceback_(self) -> list[str]:
        return list(self.traceback_lines)


_error_classes: dict[str, type[SandboxCellError]] = {}


def cell_error(ename: str, evalue: str, traceback: list[str]) -> SandboxCellError:
    """An exception named like the sandbox's (so the error message says ``ZeroDivisionError``)."""
    cls = _error_classes.get(ename)
    if cls is None:
        safe = ename if ename.isidentifier() else "SandboxCellError"
        cls = type(safe, (SandboxCellError,), {"__module__": "sandbox"})
        if len(_error_classes) < 1000:  # the names come from sandboxes: keep the cache bounded
            _error_classes[ename] = cls
    err = cls(evalue)
    err.traceback_lines = traceback or [f"{ename}: {evalue}"]
    return err


class _ShortError(NskernelError):
    """Shown as one line, not as a traceback of nskernel's own code."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class SandboxStartError(_ShortError):
    """The sandbox could not be created (the cell never ran)."""


class SandboxDied(_ShortError):
    """The sandbox ended in the middle of the cell (e.g. the cell called os._exit)."""


class SandboxStopped(_ShortError):
    """The sandbox broke the protocol (a malformed message) and was stopped."""


class SandboxTimeout(_ShortError, TimeoutError):
    """The cell ran longer than ``--timeout``; its sandbox was killed."""


# Named KeyboardInterrupt so the error reply says so (ename), shown without nskernel frames.
SandboxInterrupted = type(
    "KeyboardInterrupt",
    (KeyboardInterrupt,),
    {
        "__doc__": "The cell was interrupted; an unnamed sandbox is killed with it.",
        "__module__": "nskernel.magics",
        "_render_traceback_": lambda self: [f"\x1b[0;31mKeyboardInterrupt\x1b[0m: {self}"],
    },
)


class SandboxOutputError(_ShortError):
    """An ``--out`` variable was missing or could not cross back (not JSON or bytes)."""


# ------------------------------------------------------------------ rich results


class SandboxResult:
    """The value of the sandbox cell's last expression, as its mime bundle."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<sandbox result>"))


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class SandboxInfo(dict):  # type: ignore[type-arg]
    """``%sandbox inspect NAME``: a plain dict (like ``docker inspect``), shown readably."""

    _KEYS = ("name", "pid", "hostname", "ips", "namespaces", "uid_map", "gid_map", "created")

    def _rows(self) -> list[tuple[str, str]]:
        rows = []
        for k in self._KEYS:
            v = self.get(k)
            if k == "namespaces" and isinstance(v, dict):
                v = ", ".join(f"{t}:[{i}]" for t, i in v.items())
            elif k in ("uid_map", "gid_map") and isinstance(v, list):
                v = "; ".join(" ".join(str(x) for x in row) for row in v)
            elif isinstance(v, list):
                v = ", ".join(str(x) for x in v) or "-"
            rows.append((k, str(v)))
        rows.append(("age", _age(float(self.get("age") or 0))))
        return rows

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
            for k, v in self._rows()
        )
        return f"<table class='nsk-inspect'>{body}</table>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        width = max(len(k) for k, _ in self._rows())
        p.text("\n".join(f"{k:<{width}}  {v}" for k, v in self._rows()))


class SandboxList(list):  # type: ignore[type-arg]
    """``%sandbox ls``: a list of :class:`SandboxInfo`, shown as a table like ``docker ps``."""

    HEAD = ("NAME", "PID", "HOSTNAME", "IPS", "NAMESPACES", "AGE")

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            (
                str(i.get("name")),
                str(i.get("pid")),
                str(i.get("hostname")),
                ",".join(map(str, i.get("ips") or ())) or "-",
                ",".join(map(str, i.get("created") or ())),
                _age(float(i.get("age") or 0)),
            )
            for i in self
        ]

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        rows = [self.HEAD, *self._rows()]
        widths = [max(len(r[c]) for r in rows) for c in range(len(self.HEAD))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
        if not self:
            lines.append("(no named sandboxes)")
        p.text("\n".join(lines))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self.HEAD)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
            for r in self._rows()
        )
        if not self:
            body = f"<tr><td colspan='{len(self.HEAD)}'>(no named sandboxes)</td></tr>"
        return f"<table class='nsk-ls'><tr>{head}</tr>{body}</table>"


# ------------------------------------------------------------------ one cell's output


class _CellOutput:
    """Republishes what one cell's sandbox sends: checked, within budget, made inert.

    Streams go to ``sys.stdout``/``sys.stderr``, displays to ``publish_display_data``,
    in the order they come. Each message is checked again here (the server relays what a
    sandbox wrote); stream text, display data and errors are each capped at
    ``max_output`` per cell, as the server does too; with a ``sanitizer`` (unless
    --trust-output), displays and the result are made inert first (:mod:`.untrusted`).
    """

    def __init__(self, max_output: int, sanitizer: Sanitizer | None) -> None:
        self.max_output = max_output
        self.sanitizer = sanitizer
        self.chars = 0
        self.dropped_chars = 0
        self.display_size = 0
        self.dropped_displays = 0
        self.dropped_display_size = 0
        self.error_size = 0
        self.dropped_errors = 0
        self.dropped_error_size = 0
        self.last: Any = None  # the stream written to last
        self.result: SandboxResult | None = None
        self.error: dict[str, Any] | None = None
        # Comm messages (widgets) go to the sandbox's comms scope (:mod:`.comms`).
        self.on_comm: Callable[[dict[str, Any]], None] | None = None

    def on_message(self, raw: dict[str, Any]) -> None:
        if self.error is not None:
            self.show_error()  # output after it: it did not end the cell
        if raw.get("type") in messages.COMM_KINDS:
            self._comm(raw)
            return
        msg = messages.relayed(raw)
        if msg is None:
            return  # not an output message: nothing to show
        kind = msg["type"]
        if kind == "stream":
            self._stream(msg["name"], msg["text"])
        elif kind in ("display_data", "execute_result", "clear_output"):
            size = messages.display_cost(msg)
            if self.display_size + size > self.max_output:
                self.dropped_displays += 1
                self.dropped_display_size += size
                return
            self.display_size += size
            if kind == "clear_output":
                self._end_stream()
                clear_output(wait=msg["wait"])
                return
            data, metadata = msg["data"], msg["metadata"]
            if self.sanitizer is not None:
                data, metadata = self.sanitizer.bundle(data, metadata)
            if kind == "execute_result":
                self.result = SandboxResult(data, metadata) if data else None
                return
            self._end_stream()
            kw: dict[str, Any] = {}
            transient = msg["transient"]
            if transient:
                kw["transient"] = (
                    self.sanitizer.transient(transient) if self.sanitizer else transient
                )
            if msg["update"]:
                kw["update"] = True
            if data:
                publish_display_data(data, metadata, **kw)
        elif kind == "error":
            # Charged like display data (red team 17 F2: thousands of them flooded the
            # notebook): the first is cut to the cap, as always; past it, none is shown.
            room = self.max_output - self.error_size
            if room <= 0:
                self.dropped_errors += 1
                self.dropped_error_size += messages.error_size(msg)
                return
            self.error = err = _capped_error(msg, room)
            self.error_size += min(messages.error_size(err), room)

    def show_error(self) -> None:
        """Show the held error as a plain kernel shows a traceback that did not end the
        cell (ipywidgets shows a callback's exception so, in its Output widget).

        An error is held until the next message: the cell's own final error is raised
        as this cell's exception instead, and must not be shown twice.
        """
        err, self.error = self.error, None
        if err is None:
            return
        self._end_stream()
        shell = get_ipython()
        stb = err["traceback"] or [f"{err['ename']}: {err['evalue']}"]
        if shell is not None:
            shell._showtraceback(type(cell_error(err["ename"], "", [])), err["evalue"], stb)

    def _comm(self, raw: dict[str, Any]) -> None:
        msg = messages.relayed_comm(raw)
        if msg is None or self.on_comm is None:
            return
        size = messages.comm_size(msg)
        if self.display_size + size > self.max_output:
            self.dropped_displays += 1
            self.dropped_display_size += size
            return
        self.display_size += size
        self._end_stream()  # a widget displayed after a print stays after it
        self.on_comm(msg)

    def _stream(self, name: str, text: str) -> None:
        room = max(self.max_output - self.chars, 0)
        if len(text) > room:  # past the cap: count what is dropped, show the rest
            self.dropped_chars += len(text) - room
            text = text[:room]
            if not text:
                return
        self.chars += len(text)
        stream = sys.stderr if name == "stderr" else sys.stdout
        other = sys.stdout if stream is sys.stderr else sys.stderr
        if self.last is not stream:
            if self.last is other:
                other.flush()  # keep stdout/stderr interleaving in order
            self.last = stream
        stream.write(text)

    def _end_stream(self) -> None:
        if self.last is not None:
            self.last.flush()
            self.last = None

    def finish(self, server_dropped: dict[str, int]) -> None:
        """Flush, and say what was not shown (here or already by the server)."""
        # Only a stream written to needs flushing (each flush is a round trip to
        # ipykernel's IO thread, ~0.5 ms on a busy machine).
        self._end_stream()
        notes = []
        chars = self.dropped_chars + server_dropped.get("chars", 0)
        if chars:
            notes.append(
                f"[nskernel: output truncated after {format_size(self.max_output)}; "
                f"{_amount(chars)} more was dropped. Use --max-output to see more, or write "
                "large output to a file in a --bind directory.]"
            )
        cap = format_size(self.max_output)
        for what, count, size, had in (
            ("display", self.dropped_displays, self.dropped_display_size, f"displayed {cap}"),
            ("error", self.dropped_errors, self.dropped_error_size, f"shown {cap} of errors"),
        ):
            count += server_dropped.get(f"{what}s", 0)
            if count:
                size += server_dropped.get(f"{what}_size", 0)
                notes.append(
                    f"[nskernel: {count} {what}(s) ({_amount(size)}) were not shown: the cell "
                    f"had {had} already. Use --max-output to see more.]"
                )
        inert = self.sanitizer.note() if self.sanitizer is not None else None
        if inert:
            notes.append(inert)
        if notes:
            sys.stderr.write("\n" + "\n".join(notes) + "\n")
            sys.stderr.flush()


def _capped_error(err: dict[str, Any], limit: int) -> dict[str, Any]:
    """The sandbox's exception, with its traceback cut to ``limit`` characters."""
    lines, size = [], 0
    for line in err["traceback"]:
        size += len(line)
        if size > limit:
            lines.append(f"[nskernel: the rest of the traceback ({_amount(size)}+) was cut]")
            break
        lines.append(line)
    return {**err, "evalue": err["evalue"][:limit], "traceback": lines}


def _not_dead(done: dict[str, Any]) -> str:
    why = "it ran longer than --timeout" if done.get("reason") == "timeout" else "interrupted"
    return (
        f"the cell's sandbox was sent SIGKILL ({why}) but had not exited a few seconds "
        "later (a process stuck in the kernel?); it is gone from %sandbox ls and will be "
        "reaped when it exits"
    )


# ------------------------------------------------------------------ the magics


def _csv(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _with_host_maps(info: dict[str, Any]) -> SandboxInfo:
    """uid/gid maps as this kernel sees them: the host ids (the server may see its own)."""
    out = SandboxInfo(info)
    for which in ("uid_map", "gid_map"):
        m = read_host_map(int(info["pid"]), which)
        if m is not None:
            out[which] = m
    return out


@magics_class
class SandboxMagics(Magics):
    @magic_arguments("%sandbox")  # the usage line names %%sandbox, not the method
    @argument("--pid", action="store_true", help="own PID namespace: the cell runs as PID 2")
    @argument("--net", action="store_true", help="own network stack: only lo, brought up")
    @argument("--mnt", action="store_true", help="own mounts: host / read-only, private /tmp")
    @argument("--uts", action="store_true", help="own hostname")
    @argument("--ipc", action="store_true", help="own System V / POSIX IPC objects")
    @argument("--user", action="store_true", help="own users: root inside, unprivileged outside")
    @argument("--hostname", metavar="NAME", help="the hostname inside (needs --uts or no flag)")
    @argument(
        "--name",
        metavar="NAME",
        help="a named sandbox: created on first use, later cells with the same name run in "
        "it with the same interpreter state (until `%%sandbox rm NAME` or kernel exit)",
    )
    @argument(
        "--bind",
        metavar="SRC[:DST]",
        action="append",
        default=[],
        help="make a host path writable inside (needs --mnt or no flag)",
    )
    @argument(
        "--ro-bind",
        metavar="SRC[:DST]",
        action="append",
        default=[],
        help="make a host path visible read-only inside",
    )
    @argument(
        "--in",
        dest="inputs",
        metavar="VAR[,VAR]",
        action="append",
        default=[],
        help="copy these kernel variables into the sandbox (JSON values and bytes only)",
    )
    @argument(
        "--out",
        dest="outputs",
        metavar="VAR[,VAR]",
        action="append",
        default=[],
        help="copy these sandbox variables back into the kernel (JSON values and bytes only)",
    )
    @argument("--timeout", type=float, metavar="SECONDS", help="kill the sandbox after this long")
    @argument(
        "--max-output",
        metavar="SIZE",
        default="16M",
        help="show at most this much stdout/stderr text per cell, and as much display data; "
        "the rest is dropped with a note (default 16M), so a runaway cell cannot flood the "
        "notebook",
    )
    @argument(
        "--trust-output",
        action="store_true",
        help="show the cell's output exactly as the sandbox sent it. By default it is made "
        "inert for the browser first: JavaScript and other active content is removed, HTML "
        "sanitized (see nskernel.magics.untrusted); use this only for code you trust",
    )
    @argument(
        "--env",
        metavar="KEY[=VALUE]",
        action="append",
        default=[],
        help="set KEY in the sandbox (KEY alone: the kernel's value). A sandbox gets only an "
        "allow-list of the environment (PATH, HOME, LANG, ...): tokens and keys stay out",
    )
    @argument(
        "--keep-env",
        action="store_true",
        help="pass the kernel's whole environment on, secrets included",
    )
    @argument(
        "--share-home",
        action="store_true",
        help="show the host's homes read-only (default: hidden, and a private, empty $HOME)",
    )
    @argument(
        "--seccomp",
        metavar="default|unconfined|PATH",
        help="the syscall filter: nskernel's default, none, or a Docker/OCI JSON profile",
    )
    @argument(
        "--cap-add",
        metavar="CAP",
        action="append",
        default=[],
        help="keep this capability for sandbox root too (e.g. SYS_PTRACE, or ALL)",
    )
    @argument(
        "--cap-drop",
        metavar="CAP",
        action="append",
        default=[],
        help="drop this capability from sandbox root's default set (or ALL)",
    )
    @argument(
        "--allow-degraded",
        metavar="proc,sys,hostname",
        help="in a container that refuses a fresh /proc or /sys, or sethostname: keep the "
        "container's own, with a warning in every cell (default: $NSKERNEL_ALLOW_DEGRADED)",
    )
    @argument(
        "--no-userns",
        action="store_true",
        help="no user namespace: the cell keeps the kernel's host identity (as root: host "
        "root). Root only; never for code you do not trust",
    )
    @argument(
        "--keep-groups",
        action="store_true",
        help="run even where the kernel user's supplementary groups cannot be dropped",
    )
    @argument("--memory", metavar="SIZE", help="memory limit, e.g. 256M or 1G")
    @argument("--pids", metavar="N", help="at most N processes at once (fork bombs stop there)")
    @argument("--cpus", metavar="FRACTION", help="CPU share, e.g. 0.5 for half a CPU")
    @argument(
        "--show",
        action="store_true",
        help="after the cell, show the host and this sandbox side by side (widgets)",
    )
    @argument(
        "--network",
        metavar="NET[,NET]",
        help="join the named virtual network(s), created on first use (implies --net): an "
        "eth0 with its own address; sandboxes on the same network reach each other by IP "
        "and by name, nothing else is reachable",
    )
    @argument(
        "--ip",
        metavar="ADDR",
        help="this sandbox's address on --network (default: the next free one)",
    )
    @argument(
        "--publish",
        metavar="HOSTPORT:PORT",
        action="append",
        default=[],
        help="forward the kernel side's 127.0.0.1:HOSTPORT to PORT in this sandbox "
        "(needs --network)",
    )
    @cell_magic("sandbox")
    def sandbox_cell(self, line: str, cell: str) -> Any:
        """Run this cell in a fresh sandbox made of Linux namespaces.

        With no namespace flag, all six are created (pid, net, mnt, uts, ipc, user).
        The cell is IPython code (``!cmd`` and line magics work); its output streams live;
        an exception fails the cell with the sandbox's traceback. Interrupt kills the
        sandbox (a named one gets the interrupt first and keeps its state if it stops).

        Examples::

            %%sandbox --pid --net
            import os; print(os.getpid())
            !ip -brief addr

            %%sandbox --name web1 --hostname web1
            counter = 1

        See also ``%sandbox ls``, ``%sandbox inspect NAME``, ``%sandbox rm NAME``.
        """
        args = parse_argstring(self.sandbox_cell, line)
        req = self._build_request(args, cell)
        try:
            max_output = parse_size(args.max_output)
        except SpecError as e:
            raise UsageError(f"--max-output: {e}") from None
        req["max_output"] = max_output
        client = get_client()
        scope = f"name:{args.name}" if args.name else f"cell:{secrets.token_hex(6)}"
        widgets = comms.relay().scope(scope, args.name)
        sanitizer = None
        if not args.trust_output:
            sanitizer = Sanitizer(scope, own_models=widgets.ids)
        out = _CellOutput(max_output, sanitizer)
        req["parent"] = parent = comms.parent_id(self.shell)
        if not args.name and args.timeout is None:
            # Kept under this name if it opens widgets (see comms.after_cell); never past
            # a --timeout: what it left running (a thread, a server) would outlive the
            # bound the user gave it (red team 18 F3).
            req["keep_as"] = "cell-" + scope.removeprefix("cell:")
        out.on_comm = lambda m: widgets.from_sandbox(
            m, parent=parent, sanitizer=sanitizer, deliver=comms.deliver
        )
        dropped: dict[str, int] = {}
        done: dict[str, Any] | None = None
        try:
            raw = client.run(req, out.on_message, timeout=args.timeout, on_input=comms.ask_frontend)
            try:
                done = messages.done(raw)
            except messages.Malformed as e:
                done = {"status": "died", "message": f"the sandbox server's reply is invalid: {e}"}
            dropped = done.get("dropped") or {}
        finally:
            out.finish(dropped)
            comms.after_cell(
                widgets, done, comms.cell_id(self.shell), timed=args.timeout is not None
            )
        status = done["status"]
        name = req.get("name")
        dead = done.get("dead", True)
        if status == "killed":
            if not dead:
                cls = SandboxTimeout if done.get("reason") == "timeout" else SandboxInterrupted
                raise cls(_not_dead(done))
            if done.get("reason") == "timeout":
                gone = f"; sandbox {done['removed']!r} was removed" if done.get("removed") else ""
                msg = (
                    f"the cell ran longer than --timeout {args.timeout:g} s and its sandbox "
                    f"was killed{gone}"
                )
                raise SandboxTimeout(msg)
            what = f"sandbox {done['removed']!r}" if done.get("removed") else "its sandbox"
            if done.get("reason") == "interrupt" and done.get("removed"):
                raise SandboxInterrupted(f"the cell was interrupted and {what} was killed")
            raise SandboxInterrupted(
                "the cell was interrupted" + ("" if name else f" and {what} was killed")
            )
        if status == "failed":
            raise SandboxStartError(done.get("message", "the sandbox could not be created"))
        if status == "died":
            raise SandboxDied(done.get("message", "the sandbox died"))
        if status == "stopped":
            raise SandboxStopped(done.get("message", "the sandbox was stopped"))
        if status == "error":
            err = out.error or {"ename": "Error", "evalue": "the cell failed", "traceback": []}
            raise cell_error(err["ename"], err["evalue"], err["traceback"])
        out.show_error()  # the cell succeeded: an error it showed is output like any other
        if done.get("out_error"):
            raise SandboxOutputError(done["out_error"])
        self._apply_outputs(req["outputs"], done.get("outputs") or {})
        if args.show:
            _show(done.get("facts"), name)
        return out.result

    def _apply_outputs(self, names: list[str], sent: dict[str, Any]) -> None:
        """Set the ``--out`` variables in the kernel: only those asked for, all or none.

        The values came from the sandbox; anything else it sent is ignored, and a value
        that does not decode (JSON and tagged bytes) fails the cell instead.
        """
        values = {}
        for name in names:
            if name not in sent:
                raise SandboxOutputError(f"--out {name}: the sandbox did not send it back")
            try:
                values[name] = protocol.decode_value(sent[name])
            except ValueError as e:
                raise SandboxOutputError(
                    f"--out {name}: the sandbox sent back something that is not a value "
                    f"({e}); nothing was set"
                ) from None
        self.shell.user_ns.update(values)  # type: ignore[union-attr]

    def _build_request(self, args: Any, cell: str) -> dict[str, Any]:
        flags = [ns for ns in ALL_NAMESPACES if getattr(args, ns)]
        if flags and args.network and "net" not in flags:
            flags.append("net")  # --network implies --net: the interface lives there
        given = []
        if flags:
            given.append("namespaces")
        if args.hostname is not None:
            given.append("hostname")
        if args.bind or args.ro_bind:
            given.append("binds")
        try:
            binds = [Bind.parse(b) for b in args.bind]
            binds += [Bind.parse(b, readonly=True) for b in args.ro_bind]
        except SpecError as e:
            raise UsageError(str(e)) from None
        # Relative to the kernel's working directory (the notebook's), as in a shell:
        # --bind . or --bind ./data lands at the same absolute path inside.
        binds = [
            Bind(os.path.abspath(b.source), os.path.abspath(b.dest), b.readonly) for b in binds
        ]
        # What is checked is what gets mounted: the real paths go to the server, which
        # opens them without following a link (a sandbox writing a directory on the way
        # could swap it for one meanwhile: the sandbox then fails instead).
        binds = [Bind(_real_path(b.source), b.dest, b.readonly) for b in binds]
        refusal = _writable_bind_over_code(binds)
        if refusal:
            raise UsageError(refusal)
        if args.name is not None and not args.name.strip():
            raise UsageError("--name needs a non-empty name, e.g. --name web1")
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError(f"--timeout {args.timeout:g}: give a positive number of seconds")
        try:
            make_limits(args.memory, args.pids, args.cpus)  # validated here, applied by the server
        except SpecError as e:
            raise UsageError(str(e)) from None
        limits = {"memory": args.memory, "pids": args.pids, "cpus": args.cpus}
        names = [n for text in args.inputs for n in _csv(text)]
        ns = self.shell.user_ns  # type: ignore[union-attr]
        missing = [n for n in names if n not in ns]
        if missing:
            raise UsageError(f"--in {','.join(missing)}: no such variable in the kernel")
        try:
            inputs = protocol.encode_values({n: ns[n] for n in names})
        except protocol.UnsupportedValue as e:
            raise UsageError(f"--in {e}") from None
        try:
            # The kernel's environment now, filtered here: values set in the notebook
            # count (--env KEY), and nothing else of it reaches the server's sandboxes.
            env = sandbox_environment(os.environ, env_options=args.env, keep_all=args.keep_env)
            confinement = {"seccomp": args.seccomp or "default", "cap_add": args.cap_add}
            confinement["cap_drop"] = args.cap_drop
            caps_plan(confinement["cap_add"], confinement["cap_drop"])  # names checked here
        except SpecError as e:
            raise UsageError(str(e)) from None
        degraded = parse_degraded(
            args.allow_degraded if args.allow_degraded is not None else os.environ.get(DEGRADED_ENV)
        )
        if degraded - DEGRADED_MODES:
            bad = ",".join(sorted(degraded - DEGRADED_MODES))
            raise UsageError(f"--allow-degraded {bad}: choose from proc, sys, hostname")
        if args.no_userns and "user" in flags:
            raise UsageError("--no-userns and --user contradict each other: drop one")
        created = set(flags or ALL_NAMESPACES)
        if "pid" in created:
            created.add("mnt")  # a fresh /proc comes with a mount namespace
        cwd, notebook_dir, hide = _sandbox_cwd(created, binds)
        spec = {
            "namespaces": sorted(flags or ALL_NAMESPACES),
            "hostname": args.hostname,
            "binds": [
                [os.path.abspath(b.source), b.dest, b.readonly, b.fixed_top_level]
                for b in [*binds, *notebook_dir]
            ],
            "cwd": cwd,
            "limits": {k: v for k, v in limits.items() if v is not None},
            "env": env,
            "hide": list(hide),
            "share_home": args.share_home,
            "no_userns": args.no_userns,
            "keep_groups": args.keep_groups,
            "allow_degraded": sorted(degraded),
            **confinement,
        }
        network = {"network": args.network, "ip": args.ip, "publish": args.publish}
        req = {
            "spec": spec,
            "given": given,
            "name": args.name,
            "cell": cell,
            "inputs": inputs,
            "outputs": [n for text in args.outputs for n in _csv(text)],
            "execution_count": self.shell.execution_count,  # type: ignore[union-attr]
            "facts": bool(args.show),
            "network": {k: v for k, v in network.items() if v},
        }
        return req

    @line_magic("sandbox")
    def sandbox_line(self, line: str) -> Any:
        """Manage named sandboxes, like ``docker ps / inspect / rm``.

        Usage::

            %sandbox ls                 name, host PID of PID 1, hostname, IPs, namespaces, age
            %sandbox inspect NAME       a dict: name, pid, hostname, ips, namespaces, maps
            %sandbox rm NAME [NAME...]  kill and forget named sandboxes
            %sandbox rm --all           all of them
            %sandbox compare NAME...    the host and these sandboxes side by side (widgets)
            %sandbox network ls         virtual networks: subnet, bridge, members and IPs
            %sandbox network rm NAME    remove a network no sandbox is on

        ``%%sandbox`` (two %) runs a cell in a sandbox: see ``%%sandbox?``.
        """
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"%sandbox: {e}") from None
        if not words:
            raise UsageError(
                "%sandbox needs a command: ls, inspect NAME, rm NAME|--all, compare NAME...; "
                "to run a cell in a sandbox use %%sandbox (two %)"
            )
        cmd, rest = words[0], words[1:]
        client = get_client()
        try:
            if cmd in ("ls", "ps"):
                if rest:
                    raise UsageError(f"%sandbox ls takes no arguments (got {' '.join(rest)})")
                return SandboxList(_with_host_maps(i) for i in client.request("ls"))
            if cmd == "inspect":
                if len(rest) != 1:
                    raise UsageError("usage: %sandbox inspect NAME")
                return _with_host_maps(client.request("inspect", name=rest[0]))
            if cmd == "rm":
                if rest == ["--all"] or rest == ["-a"]:
                    comms.relay().end_named()
                    removed = client.request("rm", all=True)
                elif rest and not any(r.startswith("-") for r in rest):
                    comms.relay().end_named(rest)
                    removed = client.request("rm", names=rest)
                else:
                    raise UsageError("usage: %sandbox rm NAME [NAME...]  or  %sandbox rm --all")
                print(f"removed: {', '.join(removed)}" if removed else "no named sandboxes")
                return None
            if cmd == "network":
                return self._network_command(client, rest)
            if cmd == "compare":
                if not rest:
                    raise UsageError("usage: %sandbox compare NAME [NAME...]")
                infos = [_with_host_maps(client.request("inspect", name=n)) for n in rest]
                _compare(infos)
                return None
        except SandboxRequestError as e:
            raise UsageError(str(e)) from None
        raise UsageError(
            f"%sandbox {cmd}: unknown command; use ls, inspect NAME, rm NAME|--all, compare NAME..."
        )

    def _network_command(self, client: Any, rest: list[str]) -> Any:
        """``%sandbox network ls`` / ``%sandbox network rm NAME`` (issue 5)."""
        if rest == ["ls"]:
            return client.request("network_ls")
        if len(rest) == 2 and rest[0] == "rm":
            client.request("network_rm", name=rest[1])
            print(f"removed network: {rest[1]}")
            return None
        raise UsageError("usage: %sandbox network ls  or  %sandbox network rm NAME")


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


_warned_cwd: set[str] = set()


def _real_path(path: str) -> str:
    try:
        return os.path.realpath(path)
    except OSError as e:  # a link that became something else while being resolved
        raise UsageError(
            f"--bind {path}: its path changed while it was being checked ({e.strerror}): "
            "something is renaming or relinking it; try again"
        ) from None


def _code_places() -> list[tuple[str, str]]:
    """Where this kernel loads code from, with why, beyond its Python's (spec.code_places)."""
    cwd = _cwd() or "/"
    own = [(cwd, "its working directory: '' on sys.path")]
    # Where it started, and every directory it has been in (%cd): a restart runs
    # `python -m ipykernel_launcher` in the first, which puts it first on sys.path.
    shell = get_ipython()
    history = getattr(shell, "user_ns", {}).get("_dh") or [] if shell is not None else []
    own += [(str(d), "a directory this kernel ran in: where a restart runs it") for d in history]
    session = os.environ.get("JPY_SESSION_NAME")
    if session and os.path.isabs(session):
        own.append((os.path.dirname(session), "the notebook's directory"))
    return code_places(own)  # sys.path's '' is the working directory, above


def _writable_bind_over_code(binds: list[Bind]) -> str | None:
    """Why a writable bind must be refused: it holds a place this kernel loads code from
    (spec.writable_bind_over_code). What a sandbox writes there runs in this kernel,
    outside every sandbox: an ``ipywidgets/`` planted in the working directory is imported
    by the kernel (nskernel's comm relay, a later ``import``) in the same cell, an
    ``ipykernel_launcher.py`` at its next restart."""
    return writable_bind_over_code(binds, _code_places, "this kernel")


def _sandbox_cwd(
    namespaces: Any, binds: list[Bind]
) -> tuple[str | None, list[Bind], tuple[str, ...]]:
    """Where the cell runs, the bind that makes it reachable, and what to hide in it.

    With a mount namespace the cell runs in the kernel's working directory (the
    notebook's), bound read-only at the same path: files next to the notebook can be
    read, ``--bind DIR`` makes it writable. A home bound that way keeps its dot-files
    hidden; a directory holding homes is not bound (see ``notebook_dir_binds``): the cell
    then runs in its private home, and a note (once) says why.
    """
    cwd = _cwd()
    if cwd is None or "mnt" not in namespaces or cwd == "/":
        return cwd, [], ()
    if any(cwd == b.dest or cwd.startswith(b.dest.rstrip("/") + "/") for b in binds):
        return cwd, [], ()
    nb_binds, hide, note = notebook_dir_binds(cwd, readonly=True)
    if note:
        if cwd not in _warned_cwd:
            _warned_cwd.add(cwd)
            print(f"note: {note}", file=sys.stderr)
        return os.path.expanduser("~"), [], ()
    return cwd, nb_binds, hide


def _compose_map(inner: list[list[int]], outer: list[list[int]]) -> list[list[int]]:
    """Express ``inner`` (relative to the server's user namespace) in host ids."""
    out = []
    for first, lower, count in inner:
        for o_first, o_lower, o_count in outer:
            if o_first <= lower and lower + count <= o_first + o_count:
                out.append([first, o_lower + (lower - o_first), count])
                break
        else:
            return inner  # not expressible row by row: leave it as the server saw it
    return out


def _host_view(facts: dict[str, Any]) -> dict[str, Any]:
    """Facts read by the server, with uid/gid maps in the kernel's (host) ids."""
    hello = get_client().hello
    out = dict(facts)
    if hello.get("userns") == "own":
        server_map = hello.get("uid_map") or []
        server_gid_map = hello.get("gid_map") or server_map
        for which, outer in (("uid_map", server_map), ("gid_map", server_gid_map)):
            if out.get(which):
                out[which] = _compose_map(out[which], outer)
    return out


def _widgets_compare() -> Any:
    try:
        from nskernel import widgets  # issue 6: ipywidgets side-by-side panel
    except ImportError as e:
        print(
            f"the side-by-side widget panel is not available here ({e}); "
            "showing the facts instead:",
            file=sys.stderr,
        )
        return None
    return widgets.compare


def _compare(infos: list[dict[str, Any]]) -> None:
    """``%sandbox compare``: live columns, read by this kernel from the host side."""
    compare = _widgets_compare()
    if compare is None:
        for info in infos:
            display(SandboxInfo(info))
        return
    from nskernel import facts as F

    def place(info: dict[str, Any]) -> Any:
        return lambda: F.sandbox_facts_from_host(
            int(info["pid"]),
            name=info["name"],
            hostname=info.get("hostname"),
            created=info.get("created"),
        )

    display(compare(*[place(i) for i in infos]))


def _show(facts: dict[str, Any] | None, name: str | None) -> None:
    """``--show``: the host next to this cell's sandbox as it was when the cell ended."""
    if not facts:
        print("--show: the sandbox's facts could not be read", file=sys.stderr)
        return
    facts = _host_view(facts)
    compare = _widgets_compare()
    if compare is None:
        display(SandboxInfo({**facts, "pid": facts.get("host_pid"), "age": 0.0}))
        return
    display(compare(facts))


def _amount(chars: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if chars >= factor:
            return f"{chars / factor:.1f} {unit}"
    return f"{chars} characters"


def misplaced_cell_magic(line: str) -> None:
    """``%%sandbox`` that is not on the first line of its cell."""
    msg = (
        "%%sandbox must be the first line of its cell (a cell magic applies to the whole "
        "cell): move it to the top. The lines below it did not run."
    )
    raise UsageError(msg)
