"""Framing for the ``%%sandbox`` channels: kernel <-> server <-> cell runner.

Every message is one JSON object, sent as a 4-byte big-endian length and the UTF-8
body, over a SOCK_STREAM unix socket. One channel carries stdout, stderr, display data,
results and errors, so they arrive in the order they were produced. Nothing is ever
pickled: a sandbox runs untrusted code, and unpickling its bytes in the kernel would
let that code run in the kernel too. Data that crosses (``--in``/``--out``) is JSON, with
``bytes`` carried as tagged base64.

Standard library and nskernel's syscalls only: the cell runner imports this inside the
sandbox.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

from nskernel._linux import syscalls

HEADER = struct.Struct("!I")
# A frame larger than this is a protocol error (a runaway display payload, or garbage).
MAX_FRAME = 256 * 1024 * 1024
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
    """Write one frame completely (blocking)."""
    data = memoryview(encode(msg))
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        data = data[n:]


class FrameReader:
    """Buffers bytes from ``fd`` and yields whole frames."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

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
        self.buf += data
        return True

    def frames(self) -> Iterator[dict[str, Any]]:
        """Complete frames already buffered."""
        while len(self.buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buf)
            if size > MAX_FRAME:
                msg = f"frame of {size} bytes exceeds the {MAX_FRAME}-byte limit"
                raise ProtocolError(msg)
            if len(self.buf) < HEADER.size + size:
                return
            body = bytes(self.buf[HEADER.size : HEADER.size + size])
            del self.buf[: HEADER.size + size]
            try:
                yield json.loads(body)
            except ValueError as e:
                raise ProtocolError(f"a frame is not valid JSON: {e}") from None

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


def decode_value(value: object) -> object:
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and BYTES_TAG in value:
            return base64.b64decode(value[BYTES_TAG])
        return {k: decode_value(v) for k, v in value.items()}
    return value
