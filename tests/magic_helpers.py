"""Helpers for the ``%%sandbox`` tests: a real ipykernel and a way to run cells in it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass
class Output:
    kind: str  # stream, display_data, update_display_data, execute_result, error
    content: dict[str, Any]
    at: float  # time.monotonic() when it arrived

    @property
    def text(self) -> str:
        if self.kind == "stream":
            return self.content["text"]
        if self.kind == "error":
            return ANSI.sub("", "\n".join(self.content["traceback"]))
        return self.content.get("data", {}).get("text/plain", "")


@dataclasses.dataclass
class Result:
    status: str
    outputs: list[Output]
    reply: dict[str, Any]

    def stream(self, name: str) -> str:
        return "".join(
            o.text for o in self.outputs if o.kind == "stream" and o.content["name"] == name
        )

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def error(self) -> dict[str, Any] | None:
        errs = [o.content for o in self.outputs if o.kind == "error"]
        return errs[-1] if errs else None

    @property
    def error_text(self) -> str:
        """Tracebacks, and stderr (where IPython shows a UsageError), without colors."""
        parts = [o.text for o in self.outputs if o.kind == "error"]
        return ANSI.sub("", "\n".join([*parts, self.stderr]))

    @property
    def displays(self) -> list[dict[str, Any]]:
        """The mime bundles of the display_data messages, in order."""
        return [o.content["data"] for o in self.outputs if o.kind == "display_data"]

    @property
    def result(self) -> str | None:
        res = [o for o in self.outputs if o.kind == "execute_result"]
        return res[-1].text if res else None

    def json_line(self) -> Any:
        """The last stdout line that is JSON (cells print their findings as JSON)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith(("{", "[")):
                return json.loads(line)
        raise AssertionError(f"no JSON line in stdout: {self.stdout!r} / {self.error_text}")


def execute(
    kc: BlockingKernelClient,
    code: str,
    *,
    timeout: float = 60,
    on_output: Callable[[Output], None] | None = None,
    allow_stdin: bool = False,
) -> Result:
    """Run ``code``; collect its outputs in arrival order, until the kernel is idle.

    ``allow_stdin`` is off as in nbclient and papermill (jupyter_client's default is on,
    and an ``input()`` would then wait for an answer nobody gives).
    """
    msg_id = kc.execute(code, allow_stdin=allow_stdin)
    outputs: list[Output] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"cell did not finish within {timeout} s: {code[:80]!r}"
        msg = kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            break
        if kind in ("stream", "display_data", "update_display_data", "execute_result", "error"):
            out = Output(kind, msg["content"], time.monotonic())
            outputs.append(out)
            if on_output is not None:
                on_output(out)
    while True:
        reply = kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    return Result(reply["content"]["status"], outputs, reply)


@contextmanager
def kernel() -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A plain ipykernel (this interpreter's) with ``%load_ext nskernel`` done."""
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        res = execute(kc, "%load_ext nskernel")
        assert res.status == "ok", res.error_text
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def host_namespaces() -> dict[str, int]:
    return {
        t: os.stat(f"/proc/self/ns/{t}").st_ino for t in ("pid", "net", "mnt", "uts", "ipc", "user")
    }
