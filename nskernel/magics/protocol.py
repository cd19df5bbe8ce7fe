"""Framing for the ``%%sandbox`` channels: kernel <-> server <-> cell runner.

Every message is one JSON object, sent as a 4-byte big-endian length and the UTF-8
body, over a SOCK_STREAM unix socket. One channel carries stdout, stderr, display data,
results and errors, so they arrive in the order they were produced. Nothing is ever
pickled: a sandbox runs untrusted code, and unpickling its bytes in the kernel would
let that code run in the kernel too. Data that crosses (``--in``/``--out``) is JSON, with
``bytes`` carried as tagged base64.

The cell runner is inside the sandbox, so frames from it are hostile: their size is
limited before they are buffered (MAX_FRAME, MAX_IDLE_FRAME), they must decode to a JSON
object, and :mod:`.messages` checks their shape before anything reads them.

Standard library and nskernel's syscalls only: the cell runner imports this inside the
sandbox.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from nskernel._linux import syscalls

HEADER = struct.Struct("!I")

# Frame size limits. A frame is buffered whole before it can be decoded and checked, and
# decoding holds a few more copies of it, so the limit on what one peer may send in one
# frame is what that peer can make the reader hold at once.
#
#: What a sandbox may send in one frame while one of its cells runs: a stream chunk, a
#: display (an image, a DataFrame's HTML), an exception, or the cell's ``--out`` values.
#: 64 MiB is far above what a notebook can show (the default ``--max-output`` is 16M) and
#: still a bounded cost for the server and the kernel; bigger data belongs in a file in a
#: ``--bind`` directory. (It was 256 MiB, which let one cell make both hold gigabytes.)
MAX_FRAME = 64 << 20
#: What a sandbox may send in one frame while none of its cells runs: the answer to a facts
#: query and stream text from background threads. Small, because hundreds of named
#: sandboxes sit idle at once and each may hold a partial frame in the server.
MAX_IDLE_FRAME = 1 << 20
#: Frames between nskernel's own processes (kernel <-> server, server -> cell runner):
#: ``--in`` values and replies listing hundreds of sandboxes. What the server relays from
#: a sandbox was checked and capped there; this only guards against a corrupted stream.
MAX_TRUSTED_FRAME = 1 << 30
#: Deepest nesting of lists and dicts accepted in a value that crossed the boundary.
MAX_DEPTH = 100

# What a frame may decode to. Bytes alone do not bound it: JSON's small values grow when
# decoded (``{},`` is 3 bytes and an empty dict plus its list slot is 72; ``"ab",`` 5
# bytes and a 51-byte str): one 64 MiB frame of ``[{},{},...]`` made the server hold
# 1.7 GiB (red team 17 F3). So a frame's values are counted before it is decoded, the
# items of its lists and objects and the containers themselves, each costing 100 bytes
# or so at worst once decoded. Measured (tools' own JSON, compact): a 3 MB PNG as
# base64, 3 values; HTML tables (a DataFrame's) almost none; a 64 KiB stream chunk of
# CSV text 25K (commas in strings count in the quick count); a plotly figure of 100k
# points 200K values in 1.3 MiB; GeoJSON of 20k polygons 400K values in 2.2 MiB (~6 bytes
# a value). 2M is what a display as dense as GeoJSON holds in ~12 MiB, most of the 16M
# a cell shows by default, and costs ~200 MiB at worst, not gigabytes.
#: Most JSON values a frame from a sandbox may decode to (see :func:`json_values`).
MAX_VALUES = 1 << 21
BYTES_TAG = "__nskernel_bytes__"


class ProtocolError(Exception):
    """The other side sent something that is not a valid frame (or vanished mid-frame)."""


def _json_default(obj: object) -> object:
    # Rich outputs (e.g. image/png from some formatters) may be bytes: Jupyter carries
    # binary mime data as base64 text.
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    return repr(obj)


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":"), default=_json_default).encode()
    return HEADER.pack(len(body)) + body


def send(fd: int, msg: dict[str, Any]) -> None:
    """Write one frame completely (blocking). Never towards a sandbox: see the server."""
    data = memoryview(encode(msg))
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        data = data[n:]


def size_text(size: int) -> str:
    """``size`` bytes for a message: 64 MiB, 1.5 KiB, 12 bytes."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


# A JSON string once its escapes are gone (see json_values): a quote, no quote, a quote.
_BARE_STRING = re.compile(rb'"[^"]*"')


def json_values(body: bytes, limit: int) -> int:
    """How many values ``body`` decodes to at most: items of lists and objects, and
    the lists and objects themselves (an object's keys are not counted apart: json
    shares repeated keys). Cheap when under ``limit``: ``,``, ``{`` and ``[`` inside
    strings count too; only a body over it is counted again without its strings.

    Linear in ``body`` whatever it holds: a regular expression for a string with its
    escapes failed at every quote of an unterminated run of ``\\"`` and rescanned the
    rest, so a 1 MiB frame cost the server an hour (red team 19 F1). Instead escapes
    go first: in JSON a backslash occurs only in strings, and pairs up with the
    character after it, so dropping every ``\\\\`` and then every ``\\"`` (left to
    right, as str.replace goes) leaves the strings' own quotes only. An odd number of
    them is an unterminated string: not JSON, refused at once (ProtocolError). And in
    JSON each ``{`` or ``,`` comes before two strings at most (a key and its value),
    each ``[`` before one: a body of more than ``2 * limit + 2`` strings holds more than
    ``limit`` values, so no more strings are taken out than that (the rest count as if
    their commas were values: the count stays an upper bound).
    """
    n = body.count(b",") + body.count(b"{") + body.count(b"[") + 1
    if n > limit:
        bare = body.replace(b"\\\\", b"").replace(b'\\"', b"")
        if bare.count(b'"') % 2:
            raise ProtocolError("a frame is not valid JSON (a string does not end)")
        bare = _BARE_STRING.sub(b"", bare, count=2 * limit + 2)
        n = bare.count(b",") + bare.count(b"{") + bare.count(b"[") + 1
    return n


class FrameReader:
    """Buffers bytes from ``fd`` and yields whole frames, each a JSON object.

    ``max_frame`` may change between frames (the server lowers it while a sandbox has no
    cell running); a frame announced larger than it raises :class:`ProtocolError` before
    any of its body is buffered, and so does a body that is not a JSON object.
    ``max_values`` (None: any) bounds what a body may decode to (:data:`MAX_VALUES`).
    """

    def __init__(
        self, fd: int, max_frame: int = MAX_TRUSTED_FRAME, max_values: int | None = None
    ) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.max_frame = max_frame
        self.max_values = max_values
        self.received = 0  # bytes read so far

    def feed(self) -> bool:
        """One read(2); False at EOF."""
        try:
            data = os.read(self.fd, 1 << 18)
        except (BlockingIOError, InterruptedError):
            return True
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.received += len(data)
        self.buf += data
        return True

    def complete(self) -> bool:
        """Whether a whole frame is buffered (and so can be had without reading)."""
        if len(self.buf) < HEADER.size:
            return False
        (size,) = HEADER.unpack_from(self.buf)
        return len(self.buf) >= HEADER.size + size

    def frames(
        self,
        admit: Callable[[bytes], int | None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Complete frames already buffered.

        ``admit(body)``, called before a body is decoded, may raise, say how many values
        it may decode to (at most ``max_values``), or return None: the frame is then
        dropped undecoded (the server does so with output it would drop anyway).
        ``stop()``, asked before each frame, may end the walk early: the rest stays
        buffered for a later call.
        """
        while len(self.buf) >= HEADER.size and (stop is None or not stop()):
            (size,) = HEADER.unpack_from(self.buf)
            if size > self.max_frame:
                msg = f"a frame of {size_text(size)} is over the {size_text(self.max_frame)} limit"
                raise ProtocolError(msg)
            if len(self.buf) < HEADER.size + size:
                return
            body = bytes(self.buf[HEADER.size : HEADER.size + size])
            del self.buf[: HEADER.size + size]
            limit = self.max_values
            if admit is not None:
                allowed = admit(body)
                if allowed is None:
                    continue
                limit = allowed if limit is None else min(limit, allowed)
            if limit is not None and json_values(body, limit) > limit:
                msg = f"a frame of {size_text(size)} holds more than {limit} JSON values"
                raise ProtocolError(msg)
            try:
                msg = json.loads(body)
            except (ValueError, RecursionError) as e:
                # ValueError covers invalid UTF-8 too; RecursionError, absurd nesting.
                raise ProtocolError(f"a frame is not valid JSON ({type(e).__name__})") from None
            if not isinstance(msg, dict):
                raise ProtocolError(f"a frame is a JSON {type(msg).__name__}, not an object")
            yield msg

    def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame, blocking; None at EOF or when ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for frame in self.frames():
                return frame
            if self.eof:
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not syscalls.readable([self.fd], left):
                    return None
            self.feed()


# ------------------------------------------------------------- --in / --out values


class UnsupportedValue(TypeError):
    """A value cannot cross the sandbox boundary (not JSON and not bytes)."""


def _check(value: object, path: str) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_check(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                msg = f"{path} has a {type(k).__name__} key {k!r}: only str keys can cross"
                raise UnsupportedValue(msg)
            out[k] = _check(v, f"{path}[{k!r}]")
        return out
    msg = (
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}: only JSON values "
        "(None, bool, int, float, str, list, tuple, dict with str keys) and bytes can cross "
        "the sandbox boundary; convert it first (e.g. to a list or a dict)"
    )
    raise UnsupportedValue(msg)


def encode_values(values: dict[str, object]) -> dict[str, object]:
    """Tag ``values`` for JSON; raises UnsupportedValue naming the first value that can't cross."""
    return {name: _check(v, name) for name, v in values.items()}


def decode_value(value: object, _depth: int = 0) -> object:
    """The value ``encode_values`` tagged, back; raises ValueError for anything else.

    The kernel decodes what a sandbox sent (``--out``): a bytes tag whose payload is not
    base64 text, a value that is not JSON, or nesting deeper than MAX_DEPTH is refused
    rather than half-decoded.
    """
    if _depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [decode_value(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and BYTES_TAG in value:
            data = value[BYTES_TAG]
            if not isinstance(data, str):
                raise ValueError("a malformed bytes value")
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:  # binascii.Error
                raise ValueError("a bytes value that is not base64") from None
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("a dict with a key that is not a string")
            out[k] = decode_value(v, _depth + 1)
        return out
    raise ValueError(f"a {type(value).__name__}, which is not a JSON value")
