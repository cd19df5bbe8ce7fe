"""The compare panel through a real kernel: its widget models carry a real sandbox's facts.

A plain ipykernel (started with jupyter_client, as JupyterLab would) runs a cell that
starts a real sandbox with `nskernel run` and displays ``compare(...)`` for it. The test
reads the widget models the kernel sends over comm messages — what the front end will
draw — and checks them against the sandbox's own status file.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from tests.facts_helpers import end_run_process, notebook_cell

pytestmark = [pytest.mark.kernel, pytest.mark.userns]


def _run(kc: Any, code: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Execute ``code``; return its iopub messages up to idle. Fails on an error."""
    msg_id = kc.execute(code)
    msgs = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if msg["msg_type"] == "error":
            pytest.fail("\n".join(msg["content"]["traceback"]))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs


def _html_models(msgs: list[dict[str, Any]]) -> dict[str, str]:
    """comm id → ``value`` of every HTML widget model opened or updated."""
    out = {}
    for m in msgs:
        data = m["content"].get("data", {})
        state = data.get("state", {})
        if m["msg_type"] == "comm_open" and state.get("_model_name") == "HTMLModel":
            out[m["content"]["comm_id"]] = state.get("value", "")
        elif m["msg_type"] == "comm_msg" and "value" in state:
            out[m["content"]["comm_id"]] = state["value"]
    return out


@pytest.fixture
def kernel(tmp_path):
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        yield kc
    finally:
        end_run_process(str(tmp_path))
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_panel_models_carry_the_sandbox_facts(kernel, tmp_path) -> None:
    msgs = _run(kernel, notebook_cell(str(tmp_path), "web1"))
    status = json.loads((tmp_path / "status.json").read_text())
    init_pid = status["pid"]

    display = [m for m in msgs if m["msg_type"] in ("display_data", "execute_result")]
    assert len(display) == 1
    data = display[0]["content"]["data"]
    assert data["text/plain"].splitlines()[0] == "nskernel compare: host | web1"
    assert re.search(r"^net\s+host\s+own$", data["text/plain"], re.M)
    assert re.search(r"^cgroup\s+host\s+shared$", data["text/plain"], re.M)
    assert "application/vnd.jupyter.widget-view+json" in data
    assert "web1" in data["text/html"]

    models = _html_models(msgs)
    sandbox_col = next(v for v in models.values() if "data-kind='sandbox'" in v)
    host_col = next(v for v in models.values() if "data-kind='host'" in v)
    # PID 1 inside is the init whose host PID `nskernel run` reported.
    assert re.search(
        rf"<!--nsk:v-->1<!--/nsk:v--></td><td[^>]*><!--nsk:v-->{init_pid}<", sandbox_col
    )
    assert "sleep 600" in sandbox_col
    for t, ino in status["namespaces"].items():
        assert f"<!--nsk:v-->{ino}<!--/nsk:v-->" in sandbox_col, t
    assert sandbox_col.count("<b>own</b>") == len(status["created"])
    # The host's table marks the sandbox's processes.
    assert re.search(rf"<!--nsk:v-->{init_pid}<!--/nsk:v-->.*?\[web1\]", host_col)

    # The sandbox ends; Refresh says so instead of failing.
    end_run_process(str(tmp_path))
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{init_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    msgs = _run(kernel, "panel.refresh_button.click(); print(panel.places[1]['alive'])")
    out = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
    assert out.strip() == "False"
    updated = _html_models(msgs)
    assert any("This sandbox has exited." in v for v in updated.values())
