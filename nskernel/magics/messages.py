"""What a cell runner may send, checked field by field before anything reads it.

The cell runner lives inside the sandbox: everything it sends was written by code we do
not trust. Any frame may be forged, of the wrong shape, huge, or arrive when no cell
runs. This module is the one place that says what a well-formed message is:

- the server checks every frame from a sandbox with :func:`from_runner` and relays only
  the clean copy it returns (the fields it knows, of the types it expects); anything
  else is :class:`Malformed`, and the server stops that sandbox, and only that one;
- the kernel checks again what the server relays (:func:`relayed`, :func:`done`): the
  server is our own code, but what it relays came from a sandbox. There, text also loses
  lone surrogates, which Jupyter's message encoder cannot send (a ``print('\\ud800')``
  would otherwise lose the output on the way to the notebook).

Messages from a cell runner (``type``) and their fields:

=================  ==============================================================
``stream``         name ("stdout" or "stderr"), text
``display_data``   data (a mime bundle), metadata, transient (dicts), update (bool)
``execute_result`` data, metadata: the cell's last value
``error``          ename, evalue (str), traceback (list of str)
``clear_output``   wait (bool)
``cell_done``      status ("ok" or "error"), outputs (name -> JSON value),
                   out_error (str or None); only while a cell runs
``facts``          facts (a dict): the answer to a facts query
``comm_open``      comm_id (32 hex digits), target_name, data, metadata (dicts),
                   buffers (list of base64 text); only while a cell runs
``comm_msg``       comm_id, data, metadata, buffers; only while a cell runs
``comm_close``     comm_id, data, metadata; only while a cell runs
``input_request``  prompt (str), password (bool): ``input()``/``getpass()``; only
                   while a cell runs, and one at a time (the server enforces that)
``answer``         what ("complete" or "inspect"), result (a dict): the answer to a
                   completion or inspection query (checked by :func:`complete_answer`
                   and :func:`inspect_answer` in the kernel)
=================  ==============================================================

Comm messages are checked here for shape only; which comms a sandbox may address and
which widget state may reach the browser is decided in the kernel (:mod:`.comms`).

A mime bundle maps mime types to text or to JSON values. Sizes are bounded by the frame
limits of :mod:`.protocol`; per-cell output budgets are the server's and the kernel's.
Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

OUTPUT_KINDS = ("stream", "display_data", "execute_result", "error", "clear_output")
COMM_KINDS = ("comm_open", "comm_msg", "comm_close")
#: Longest prompt of ``input()`` relayed (a plain kernel has no limit; this is generous).
MAX_PROMPT = 16384
#: Most binary buffers one comm message may carry (ipywidgets uses one per bytes value).
MAX_BUFFERS = 64
#: Most matches one completion answer may list.
MAX_MATCHES = 5000
#: Longest mime type, exception name or ``--out`` name accepted.
MAX_NAME = 256
#: Longest ``out_error``/``message`` text kept (it is shown as one error line).
MAX_MESSAGE = 4096
#: Most IP addresses a facts answer may list for ``%sandbox ls``.
MAX_IPS = 256
MAX_DEPTH = 100


class Malformed(ValueError):
    """A message that a cell runner may not send (wrong type, field or shape)."""


# ---------------------------------------------------------------- field checks


def _clean_text(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: replaced, as a decoder would
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _text(value: object, field: str, *, clean: bool = False, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{field} is not a string")
    if limit is not None and len(value) > limit:
        raise Malformed(f"{field} is longer than {limit} characters")
    return _clean_text(value) if clean else value


def _json(value: object, field: str, *, clean: bool = False, depth: int = 0) -> Any:
    """``value`` if it is plain JSON (with text cleaned when ``clean``), else Malformed."""
    if depth > MAX_DEPTH:
        raise Malformed(f"{field} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _clean_text(value) if clean else value
    if isinstance(value, list):
        return [_json(v, field, clean=clean, depth=depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):  # json.loads never makes these; a caller might
                raise Malformed(f"{field} has a key that is not a string")
            out[_clean_text(k) if clean else k] = _json(v, field, clean=clean, depth=depth + 1)
        return out
    raise Malformed(f"{field} holds a {type(value).__name__}, which is not JSON")


def _dict(value: object, field: str, *, clean: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{field} is not a JSON object")
    return _json(value, field, clean=clean)


def _bundle(value: object, field: str, *, clean: bool = False) -> dict[str, Any]:
    data = _dict(value, field, clean=clean)
    for mime in data:
        if len(mime) > MAX_NAME or "/" not in mime:
            raise Malformed(f"{field} has a key that is not a mime type")
    return data


def _bool(value: object, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Malformed(f"{field} is not true or false")
    return value


#: What any display, result or clear_output costs at least against a cell's display
#: budget: a flood of tiny ones would otherwise cost the browser more than their bytes.
MIN_DISPLAY_COST = 256


def bundle_size(data: dict[str, Any]) -> int:
    """The size of a mime bundle (or any dict of JSON): its text, and JSON as text."""
    return sum(
        len(v) if isinstance(v, str) else len(json.dumps(v, separators=(",", ":")))
        for v in data.values()
    )


def display_cost(msg: dict[str, Any]) -> int:
    """What a clean display_data, execute_result or clear_output message costs against
    the per-cell display budget (``--max-output``)."""
    size = sum(bundle_size(msg.get(k) or {}) for k in ("data", "metadata", "transient"))
    return max(size, MIN_DISPLAY_COST)


# ---------------------------------------------------------------- frames

# A cell runner's frame begins with its type (``protocol.encode`` keeps the order of the
# keys, and every message is made with "type" first): the server reads the kind of a
# frame from these bytes before deciding whether it is worth decoding at all, and
# checks, once decoded, that the type is the one read here.
_KIND = re.compile(rb'\s*\{\s*"type"\s*:\s*"([a-z_]{1,32})"')


def frame_kind(body: bytes) -> str:
    """The ``type`` a frame from a cell runner begins with; Malformed when it does not."""
    m = _KIND.match(body, 0, 256)
    if m is None:
        raise Malformed("a message that does not begin with its type")
    return m.group(1).decode("ascii")


# ---------------------------------------------------------------- messages


def _output(msg: dict[str, Any], *, clean: bool) -> dict[str, Any]:
    kind = msg.get("type")
    if kind == "stream":
        name = msg.get("name")
        if name not in ("stdout", "stderr"):
            raise Malformed("a stream message names no stream (stdout or stderr)")
        return {"type": kind, "name": name, "text": _text(msg.get("text"), "text", clean=clean)}
    if kind == "display_data":
        return {
            "type": kind,
            "data": _bundle(msg.get("data"), "data", clean=clean),
            "metadata": _dict(msg.get("metadata"), "metadata", clean=clean),
            "transient": _dict(msg.get("transient"), "transient", clean=clean),
            "update": _bool(msg.get("update"), "update"),
        }
    if kind == "execute_result":
        return {
            "type": kind,
            "data": _bundle(msg.get("data"), "data", clean=clean),
            "metadata": _dict(msg.get("metadata"), "metadata", clean=clean),
        }
    if kind == "error":
        tb = msg.get("traceback")
        if tb is None:
            tb = []
        if not isinstance(tb, list):
            raise Malformed("traceback is not a list")
        return {
            "type": kind,
            "ename": _text(msg.get("ename"), "ename", clean=clean, limit=MAX_NAME),
            "evalue": _text(msg.get("evalue"), "evalue", clean=clean),
            "traceback": [_text(line, "traceback", clean=clean) for line in tb],
        }
    if kind == "clear_output":
        return {"type": kind, "wait": _bool(msg.get("wait"), "wait")}
    raise Malformed("a message of a type the protocol does not have")


def _comm_id(value: object) -> str:
    # What the `comm` package makes (uuid4().hex): anything else is refused, so an id
    # cannot be crafted to look like, or be confused with, some other comm's.
    if not isinstance(value, str) or len(value) != 32 or value.strip("0123456789abcdef"):
        raise Malformed("comm_id is not 32 lowercase hex digits")
    return value


def _buffers(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_BUFFERS:
        raise Malformed(f"buffers is not a list of at most {MAX_BUFFERS} items")
    for b in value:
        if not isinstance(b, str) or not b.isascii():
            raise Malformed("a buffer is not base64 text")
    return value


def _comm(msg: dict[str, Any], *, clean: bool) -> dict[str, Any]:
    kind = msg.get("type")
    out = {
        "type": kind,
        "comm_id": _comm_id(msg.get("comm_id")),
        "data": _dict(msg.get("data"), "data", clean=clean),
        "metadata": _dict(msg.get("metadata"), "metadata", clean=clean),
        "buffers": _buffers(msg.get("buffers")) if kind != "comm_close" else [],
    }
    if kind == "comm_open":
        out["target_name"] = _text(msg.get("target_name"), "target_name", limit=MAX_NAME)
    return out


def error_size(msg: dict[str, Any]) -> int:
    """What a clean error message costs against the per-cell error budget: its text,
    at least MIN_DISPLAY_COST (a flood of empty errors costs the browser too)."""
    size = len(msg["ename"]) + len(msg["evalue"]) + sum(len(line) for line in msg["traceback"])
    return max(size, MIN_DISPLAY_COST)


def comm_size(msg: dict[str, Any]) -> int:
    """What a clean comm message costs against the per-cell display budget."""
    size = bundle_size(msg["data"]) + bundle_size(msg["metadata"])
    return max(size + sum(len(b) for b in msg["buffers"]), MIN_DISPLAY_COST)


def _input_request(msg: dict[str, Any], *, clean: bool) -> dict[str, Any]:
    prompt = _text(msg.get("prompt"), "prompt", clean=clean)[:MAX_PROMPT]
    return {
        "type": "input_request",
        "prompt": prompt,
        "password": _bool(msg.get("password"), "password"),
    }


def from_runner(msg: dict[str, Any], *, running: bool) -> dict[str, Any]:
    """The server's check of one frame from a cell runner: a clean copy, or Malformed.

    ``running``: whether a cell of this sandbox is running; a ``cell_done`` is only
    possible then (output from background threads may come at any time).
    """
    kind = msg.get("type")
    if kind in OUTPUT_KINDS:
        return _output(msg, clean=False)
    if kind == "cell_done":
        if not running:
            raise Malformed("a cell_done arrived while no cell was running")
        status = msg.get("status")
        if status not in ("ok", "error"):
            raise Malformed("a cell_done has no valid status")
        out_error = msg.get("out_error")
        return {
            "type": kind,
            "status": status,
            "outputs": _dict(msg.get("outputs"), "outputs"),
            "out_error": None if out_error is None else _text(out_error, "out_error")[:MAX_MESSAGE],
        }
    if kind == "facts":
        return {"type": kind, "facts": _dict(msg.get("facts"), "facts")}
    if kind in COMM_KINDS or kind == "input_request":
        if not running:
            raise Malformed(f"a {kind} arrived while no cell was running")
        return _comm(msg, clean=False) if kind in COMM_KINDS else _input_request(msg, clean=False)
    if kind == "answer":
        what = msg.get("what")
        if what not in ("complete", "inspect"):
            raise Malformed("an answer to a question that was not asked")
        return {"type": kind, "what": what, "result": _dict(msg.get("result"), "result")}
    raise Malformed("a message of a type the protocol does not have")


# Used with fullmatch: a "$" also matches before a final newline ("web\n" passed).
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62}[A-Za-z0-9])?")


def facts_summary(facts: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The hostname and IPv4/IPv6 addresses a facts answer claims, if they look like
    such (``%sandbox ls`` shows them); anything else there is left out."""
    hostname = facts.get("hostname")
    # A sandbox sets its own hostname to anything (escape sequences, newlines, a fake
    # row): shown as text in a terminal (`jupyter console`), only a plain DNS name passes.
    if not isinstance(hostname, str) or not _HOSTNAME.fullmatch(hostname):
        hostname = None
    ips: list[str] = []
    raw = facts.get("ips")
    for ip in raw[:MAX_IPS] if isinstance(raw, list) else ():
        if isinstance(ip, str) and len(ip) <= 64:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                continue
            # An IPv6 scope ("fe80::1%eth0") is any text but "%": newlines, escapes, a
            # fake row. A sandbox's own addresses never carry one.
            if getattr(addr, "scope_id", None) is None:
                ips.append(str(addr))
    return hostname, ips


# ---------------------------------------------------------------- the kernel's side


def relayed(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The kernel's check of one output message the server relayed: a clean copy (text
    without lone surrogates), or None for anything that is not a well-formed output."""
    try:
        return _output(msg, clean=True)
    except Malformed:
        return None


def relayed_comm(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The kernel's check of a comm message or input request the server relayed."""
    kind = msg.get("type")
    try:
        if kind in COMM_KINDS:
            return _comm(msg, clean=True)
        if kind == "input_request":
            return _input_request(msg, clean=True)
    except Malformed:
        return None
    return None


def complete_answer(result: dict[str, Any], code_length: int) -> dict[str, Any] | None:
    """A sandbox's completion answer, checked: matches (text), and the span they replace
    (within the code sent); None when it is not one."""
    matches = result.get("matches")
    start, end = result.get("cursor_start"), result.get("cursor_end")
    if not isinstance(matches, list) or type(start) is not int or type(end) is not int:
        return None
    if not 0 <= start <= end <= code_length:
        return None
    clean = [_clean_text(m) for m in matches[:MAX_MATCHES] if isinstance(m, str) and len(m) <= 1000]
    types = []
    for t in result.get("types") or ():
        if not isinstance(t, dict):
            continue
        text, tstart, tend = t.get("text"), t.get("start"), t.get("end")
        if not isinstance(text, str) or type(tstart) is not int or type(tend) is not int:
            continue
        if len(text) > 1000 or not 0 <= tstart <= tend <= code_length:
            continue
        kind, sig = t.get("type"), t.get("signature")
        types.append(
            {
                "text": _clean_text(text),
                "start": tstart,
                "end": tend,
                "type": _clean_text(kind)[:64] if isinstance(kind, str) else "",
                "signature": _clean_text(sig)[:1000] if isinstance(sig, str) else "",
            }
        )
        if len(types) >= MAX_MATCHES:
            break
    return {"matches": clean, "cursor_start": start, "cursor_end": end, "types": types}


def inspect_answer(result: dict[str, Any]) -> dict[str, Any] | None:
    """A sandbox's inspection answer, checked: found, and a mime bundle (to be sanitized)."""
    try:
        return {
            "found": _bool(result.get("found"), "found"),
            "data": _bundle(result.get("data"), "data", clean=True),
        }
    except Malformed:
        return None


DONE_STATUSES = ("ok", "error", "failed", "died", "killed", "stopped")


def done(msg: dict[str, Any]) -> dict[str, Any]:
    """The kernel's check of the final message of a cell; raises Malformed."""
    status = msg.get("status")
    if status not in DONE_STATUSES:
        raise Malformed("the final message of the cell has no valid status")
    out: dict[str, Any] = {"status": status}
    for field in ("message", "reason", "out_error"):
        value = msg.get(field)
        if value is not None:
            out[field] = _text(value, field, clean=True)[:MAX_MESSAGE]
    for field in ("removed", "kept"):
        value = msg.get(field)
        if value is not None:
            out[field] = _text(value, field, clean=True, limit=MAX_NAME)
    out["dead"] = _bool(msg.get("dead", True), "dead")
    out["outputs"] = _dict(msg.get("outputs"), "outputs")
    facts = msg.get("facts")
    out["facts"] = None if facts is None else _dict(facts, "facts", clean=True)
    dropped = _dict(msg.get("dropped"), "dropped")
    out["dropped"] = {
        k: v
        for k, v in dropped.items()
        if k in ("chars", "displays", "display_size", "errors", "error_size")
        and type(v) is int
        and v >= 0
    }
    return out
