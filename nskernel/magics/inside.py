"""Inside a sandbox: comms (ipywidgets), stdin (``input()``, ``getpass()``), completion.

A plain kernel talks to the frontend itself; a cell runner has only its channel to the
sandbox server. So what the code in a sandbox would send to the frontend travels as
frames, and the kernel relays it (checking everything: :mod:`.comms`):

- **comms**: ``comm.create_comm`` makes a :class:`SandboxComm`, whose messages are
  ``comm_open``/``comm_msg``/``comm_close`` frames. Messages from the frontend arrive as
  ``{"op": "comm"}`` requests, each run like a cell (its output goes to the frontend
  under the request that carried the message, as in a plain kernel: that is how an
  ``Output`` widget captures it).
- **stdin**: ``input()`` and ``getpass.getpass()`` send an ``input_request`` and wait
  for the kernel's ``input_reply`` (the value, or the error a plain kernel would raise).
- **parent**: ipywidgets' ``Output`` widget captures the output of the frontend request
  being handled; the shell's ``get_parent()`` says which (its ``msg_id`` comes with
  each request).

Runs in the sandbox (after fork): standard library, IPython and ``comm``.
"""

from __future__ import annotations

import base64
import builtins
import getpass
import itertools
import threading
from typing import Any

import comm
from comm.base_comm import BaseComm, CommManager
from IPython.core.completer import provisionalcompleter
from IPython.core.error import StdinNotImplementedError
from IPython.utils.tokenutil import token_at_cursor

from . import protocol
from .messages import MAX_MATCHES

_state: dict[str, Any] = {"channel": None, "reader": None, "parent": {}}
_manager = CommManager()


def _b64(buffers: Any) -> list[str]:
    return [base64.b64encode(bytes(b)).decode("ascii") for b in buffers or ()]


class SandboxComm(BaseComm):
    """A comm whose messages go to the kernel as frames (the kernel relays them)."""

    def publish_msg(
        self,
        msg_type: str,
        data: Any = None,
        metadata: Any = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        ch = _state["channel"]
        if ch is None or not ch.running:
            return  # between cells nobody reads them: the kernel waits for none
        msg: dict[str, Any] = {
            "type": msg_type,
            "comm_id": self.comm_id,
            "data": data or {},
            "metadata": metadata or {},
            "buffers": _b64(buffers),
        }
        if msg_type == "comm_open":
            msg["target_name"] = keys.get("target_name") or self.target_name
        ch.send(msg)


class _Kernel:
    """What ipywidgets asks of ``get_ipython().kernel``: the request being handled."""

    comm_manager = _manager

    def get_parent(self, channel: str = "shell") -> dict[str, Any]:
        return _state["parent"]


def install(shell: Any, channel: Any, reader: protocol.FrameReader) -> None:
    """Route comms and stdin of the code in this sandbox through ``channel``."""
    _state["channel"], _state["reader"] = channel, reader
    comm.create_comm = lambda *a, **kw: SandboxComm(*a, **kw)
    comm.get_comm_manager = lambda: _manager
    builtins.input = raw_input
    getpass.getpass = _getpass
    shell.kernel = _Kernel()
    shell.get_parent = lambda: _state["parent"]
    shell.set_parent = lambda parent: None


def set_parent(msg_id: object) -> None:
    """The frontend request now handled (its output goes there)."""
    _state["parent"] = {"header": {"msg_id": msg_id}} if isinstance(msg_id, str) else {}


# ------------------------------------------------------------------ stdin


def _input_request(prompt: str, password: bool) -> str:
    __tracebackhide__ = True  # the error points at the cell's input(), not at this
    ch, reader = _state["channel"], _state["reader"]
    if ch is None or not ch.running or threading.current_thread() is not threading.main_thread():
        what = "getpass" if password else "input"
        msg = f"{what}() in a sandbox works only in the cell's own thread, while it runs"
        raise StdinNotImplementedError(msg)
    ch.send({"type": "input_request", "prompt": str(prompt), "password": password})
    while True:
        req = reader.next()
        if req is None:
            raise EOFError("the sandbox server closed the channel")
        if req.get("op") != "input_reply":
            continue  # nothing else is sent to a runner that waits for input
        if req.get("error") == "StdinNotImplementedError":
            raise StdinNotImplementedError(str(req.get("message") or ""))
        if req.get("error") == "EOFError":
            raise EOFError
        return str(req.get("value") or "")


def raw_input(prompt: object = "") -> str:
    __tracebackhide__ = True
    return _input_request(str(prompt), False)


def _getpass(prompt: str = "Password: ", stream: object = None) -> str:
    __tracebackhide__ = True
    return _input_request(str(prompt), True)


# ------------------------------------------------------------------ requests


def handle_comm(msg: dict[str, Any]) -> None:
    """A message from the frontend for one of this sandbox's comms."""
    kind = msg.get("type")
    buffers = [base64.b64decode(b) for b in msg.get("buffers") or ()]
    content = {"comm_id": msg.get("comm_id"), "data": msg.get("data") or {}}
    wire = {"content": content, "metadata": msg.get("metadata") or {}, "buffers": buffers}
    wire["header"] = _state["parent"].get("header", {})
    if kind == "comm_msg":
        _manager.comm_msg(None, None, wire)  # type: ignore[arg-type]
    elif kind == "comm_close":
        _manager.comm_close(None, None, wire)  # type: ignore[arg-type]


def complete(shell: Any, code: str, cursor_pos: int) -> dict[str, Any]:
    """As ipykernel answers a complete_request (with the experimental types)."""
    with provisionalcompleter():
        # No more than the kernel keeps (the server bounds what an answer may hold).
        found = list(itertools.islice(shell.Completer.completions(code, cursor_pos), MAX_MATCHES))
    if not found:
        return {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos, "types": []}
    start = min(c.start for c in found)
    end = max(c.end for c in found)
    # Every match replaces the same span, as the frontend expects: pad each with the
    # text it leaves untouched.
    matches = [code[start : c.start] + c.text + code[c.end : end] for c in found]
    types = [
        {"text": m, "start": start, "end": end, "type": c.type or "", "signature": c.signature}
        for m, c in zip(matches, found, strict=True)
    ]
    return {"matches": matches, "cursor_start": start, "cursor_end": end, "types": types}


def inspect(shell: Any, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
    """As ipykernel answers an inspect_request."""
    name = token_at_cursor(code, cursor_pos)
    try:
        data = shell.object_inspect_mime(name, detail_level=detail_level)
    except Exception:
        return {"found": False, "data": {}}
    return {"found": bool(data), "data": data or {}}
