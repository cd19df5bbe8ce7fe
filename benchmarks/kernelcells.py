"""Running one notebook cell through jupyter_client and timing it, for the kernel cases."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness import CaseFailed


def timed_cell(kc: Any, code: str, timeout: float = 60.0) -> tuple[float, str]:
    """Run ``code``: (milliseconds until its execute_reply, its stdout).

    Waits (untimed) for the kernel to go idle, so the next cell does not start under this
    one's output. An error reply raises CaseFailed with the error and the end of stderr.
    """
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    elapsed = (time.perf_counter() - t0) * 1e3
    out: list[str] = []
    errors: list[str] = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            (out if msg["content"]["name"] == "stdout" else errors).append(msg["content"]["text"])
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    content = reply["content"]
    if content["status"] != "ok":
        detail = f"{content.get('ename')}: {content.get('evalue')} {''.join(errors)[-500:]}"
        raise CaseFailed(f"cell {code[:60]!r} failed: {detail}")
    return elapsed, "".join(out)
