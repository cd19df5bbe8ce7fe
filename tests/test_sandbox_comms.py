"""Comms (ipywidgets), stdin and completion through ``%%sandbox``, via a real ipykernel.

The test plays the frontend with jupyter_client: it reads the comm_open/comm_msg the
kernel relays from a sandbox on IOPub, sends comm_msg back on the shell channel as
JupyterLab does when a slider moves, answers input requests on the stdin channel, and
asks for completions. The hostile tests make the sandbox forge what a frontend must
never receive: messages to the kernel's own comms, references to its widgets, active
HTML in widget state.
"""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from tests.magic_helpers import ANSI, execute, kernel

pytestmark = [pytest.mark.kernel, pytest.mark.userns]


@pytest.fixture(scope="module")
def kc():
    with kernel() as (_km, kc):
        yield kc


def collect(kc: BlockingKernelClient, msg_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Every IOPub message of the request ``msg_id``, until the kernel is idle."""
    msgs = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"request {msg_id} did not finish within {timeout} s"
        msg = kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs
        msgs.append(msg)


def run(kc: BlockingKernelClient, code: str, **kw: Any) -> list[dict[str, Any]]:
    """Run a cell; its IOPub messages (comms included), after checking it succeeded."""
    msg_id = kc.execute(textwrap.dedent(code), allow_stdin=False, **kw)
    msgs = collect(kc, msg_id)
    reply = _reply(kc, msg_id)
    assert reply["content"]["status"] == "ok", _text(msgs)
    return msgs


def _reply(kc: BlockingKernelClient, msg_id: str) -> dict[str, Any]:
    while True:
        reply = kc.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def _text(msgs: list[dict[str, Any]]) -> str:
    parts = []
    for m in msgs:
        c = m["content"]
        if m["msg_type"] == "stream":
            parts.append(c["text"])
        elif m["msg_type"] == "error":
            parts.append(ANSI.sub("", "\n".join(c["traceback"])))
    return "".join(parts)


def of_type(msgs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["content"] for m in msgs if m["msg_type"] == kind]


def opened(msgs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """comm_open messages by comm id: the widget models the frontend would create."""
    return {c["comm_id"]: c for c in of_type(msgs, "comm_open")}


def model_named(msgs: list[dict[str, Any]], name: str) -> str:
    ids = [cid for cid, c in opened(msgs).items() if c["data"]["state"]["_model_name"] == name]
    assert len(ids) == 1, f"{name}: {ids}"
    return ids[0]


def send_comm(kc: BlockingKernelClient, comm_id: str, data: dict[str, Any]) -> str:
    """What JupyterLab sends when the user changes a widget: a comm_msg on the shell channel."""
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


# ------------------------------------------------------------------ stdin


def test_input_and_getpass_are_asked_of_the_frontend(kc):
    """input() and getpass() in a sandbox reach the frontend's input box; the password
    prompt says not to echo (password: true), and the answers arrive inside."""
    code = textwrap.dedent(
        """
        %%sandbox
        import getpass, json
        name = input("name? ")
        secret = getpass.getpass("password: ")
        print(json.dumps([name, len(secret)]))
        """
    )
    msg_id = kc.execute(code, allow_stdin=True)
    requests = []
    for answer in ("ada", "s3cret!"):
        req = kc.get_stdin_msg(timeout=120)
        assert req["parent_header"]["msg_id"] == msg_id
        requests.append(req["content"])
        kc.input(answer)
    msgs = collect(kc, msg_id)
    assert _reply(kc, msg_id)["content"]["status"] == "ok", _text(msgs)
    assert requests == [
        {"prompt": "name? ", "password": False},
        {"prompt": "password: ", "password": True},
    ]
    assert '["ada", 7]' in _text(msgs)
    assert "s3cret" not in _text(msgs)


def test_without_stdin_input_fails_as_in_a_plain_kernel(kc):
    """allow_stdin=False (nbclient, papermill): the same StdinNotImplementedError a plain
    kernel raises, inside the sandbox, and the cell fails."""
    plain = execute(kc, "input('x? ')")
    boxed = execute(kc, "%%sandbox\ninput('x? ')")
    assert plain.status == boxed.status == "error"
    assert plain.error["ename"] == boxed.error["ename"] == "StdinNotImplementedError"
    assert plain.error["evalue"] == boxed.error["evalue"]
    gp = execute(kc, "%%sandbox --name stdin1\nimport getpass\ngetpass.getpass()")
    assert gp.error["ename"] == "StdinNotImplementedError", gp.error_text
    # The named sandbox lives on after the error.
    assert execute(kc, "%%sandbox --name stdin1\nprint(6 * 7)").stdout == "42\n"
    execute(kc, "%sandbox rm stdin1")


# ------------------------------------------------------------------ comms


def test_a_slider_in_a_named_sandbox_calls_back_into_it(kc):
    """interact() in a named sandbox: the frontend gets the widget models; moving the
    slider (a comm_msg) runs the function inside the sandbox, and its output arrives
    under that comm_msg, where the Output widget of interact captures it."""
    msgs = run(
        kc,
        """
        %%sandbox --name cw1 --hostname inside-cw1
        import socket
        from ipywidgets import interact, IntSlider

        @interact(x=IntSlider(value=2, min=0, max=10))
        def square(x):
            print(f"{socket.gethostname()} says {x} squared is {x * x}")
        """,
    )
    models = opened(msgs)
    slider = model_named(msgs, "IntSliderModel")
    output = model_named(msgs, "OutputModel")
    assert model_named(msgs, "VBoxModel")
    views = [d["data"] for d in of_type(msgs, "display_data")]
    assert any(
        v.get("application/vnd.jupyter.widget-view+json", {}).get("model_id") in models
        for v in views
    ), views
    # The first call ran in the cell; its output went to the Output widget's msg_id.
    assert "inside-cw1 says 2 squared is 4" in _text(msgs)

    sent = send_comm(kc, slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []})
    answer = collect(kc, sent)
    text = _text(answer)
    assert "inside-cw1 says 7 squared is 49" in text, answer
    # interact's Output widget was told to capture this request's output.
    updates = [c for c in of_type(answer, "comm_msg") if c["comm_id"] == output]
    assert any(u["data"].get("state", {}).get("msg_id") == sent for u in updates), updates
    # The sandbox's state changed: the slider's value is 7 there.
    res = execute(kc, "%%sandbox --name cw1\nimport ipywidgets\nprint(square.widget.kwargs)")
    assert "'x': 7" in res.stdout, res.error_text
    execute(kc, "%sandbox rm cw1")


def test_widgets_of_a_removed_sandbox_are_closed_on_the_frontend(kc):
    """%sandbox rm closes a named sandbox's comms on the frontend."""
    msgs = run(kc, "%%sandbox --name cw2\nimport ipywidgets\nb = ipywidgets.Button()\nb")
    ids = set(opened(msgs))
    assert ids
    rm_id = kc.execute("%sandbox rm cw2", allow_stdin=False)
    closed = {c["comm_id"] for c in of_type(collect(kc, rm_id), "comm_close")}
    assert ids <= closed


def run_in_cell(kc: BlockingKernelClient, code: str, cell: str) -> list[dict[str, Any]]:
    """Run ``code`` as JupyterLab runs notebook cell ``cell`` (its id in the metadata)."""
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}}
    msg = kc.session.msg("execute_request", {**content, "allow_stdin": False})
    msg["metadata"]["cellId"] = cell
    kc.shell_channel.send(msg)
    msgs = collect(kc, msg["header"]["msg_id"])
    assert _reply(kc, msg["header"]["msg_id"])["content"]["status"] == "ok", _text(msgs)
    return msgs


def sandboxes(kc: BlockingKernelClient) -> str:
    """The names `%sandbox ls` lists, as printed text."""
    res = execute(kc, "_ls = %sandbox ls\nprint([s['name'] for s in _ls])")
    assert res.status == "ok", res.error_text
    return res.stdout


SLIDER_CELL = """%%sandbox
import os, ipywidgets
s = ipywidgets.IntSlider()
s.observe(lambda change: print("pid", os.getpid(), "got", change["new"]), "value")
display(s)
"""


def test_an_unnamed_cells_widgets_keep_their_sandbox(kc):
    """An unnamed cell whose sandbox opened widgets keeps that sandbox (listed as
    cell-...), so its widgets call back into it; running the same cell again replaces
    it, and beyond MAX_KEPT cells the oldest ends; an ended one's comms are closed."""
    from nskernel.magics.comms import MAX_KEPT

    first = run_in_cell(kc, SLIDER_CELL, "cell-a")
    slider = model_named(first, "IntSliderModel")
    answer = collect(kc, send_comm(kc, slider, {"method": "update", "state": {"value": 4}}))
    assert "got 4" in _text(answer), answer
    listed = sandboxes(kc)
    assert listed.count("cell-") == 1, listed
    # The same notebook cell again: the old sandbox ends, its widgets are closed.
    again = run_in_cell(kc, SLIDER_CELL, "cell-a")
    assert set(opened(first)) <= {c["comm_id"] for c in of_type(again, "comm_close")}
    assert sandboxes(kc).count("cell-") == 1
    # Other cells: at most MAX_KEPT stay; the oldest ends, with a note.
    runs = [run_in_cell(kc, SLIDER_CELL, f"cell-{i}") for i in range(MAX_KEPT)]
    closed = {c["comm_id"] for c in of_type(runs[-1], "comm_close")}
    assert set(opened(again)) <= closed
    assert "at most 8 unnamed cells keep their sandbox" in _text(runs[-1])
    names = sandboxes(kc)
    assert names.count("cell-") == MAX_KEPT, names
    # A cell without widgets keeps no sandbox.
    run(kc, "%%sandbox\nprint('no widgets')")
    assert sandboxes(kc).count("cell-") == MAX_KEPT
    execute(kc, "%sandbox rm --all")


def test_a_cell_run_with_timeout_keeps_no_sandbox_for_its_widgets(kc):
    """Red team 18 F3: opening one widget kept an unnamed cell's sandbox, and a thread it
    started, running past the cell's --timeout. Such a cell keeps none; a note says so."""
    cell = SLIDER_CELL.replace("%%sandbox", "%%sandbox --timeout 60", 1) + (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    )
    msgs = run_in_cell(kc, cell, "timed")
    assert "a cell run with --timeout keeps no sandbox for its widgets" in _text(msgs)
    assert set(opened(msgs)) <= {c["comm_id"] for c in of_type(msgs, "comm_close")}
    assert "cell-" not in sandboxes(kc)


HOSTILE = """
%%sandbox --name cw3 --in host_ids
import base64, uuid
from ipywidgets import IntSlider, Box, HTML, Output
from IPython.display import display
import comm as C

mine = IntSlider()
send = mine.comm.publish_msg
# 1. messages to the kernel's own comms (its widget), as update and close
for hid in host_ids:
    send("comm_msg", data={"method": "update", "state": {"value": 99}, "buffer_paths": []})
    mine.comm.comm_id, real = hid, mine.comm.comm_id
    send("comm_msg", data={"method": "update", "state": {"value": 99}, "buffer_paths": []})
    send("comm_close", data={})
    mine.comm.comm_id = real
# 2. a box whose child is the kernel's widget; a jslink to it
Box(children=[mine])
box = C.create_comm(target_name="jupyter.widget", data={"state": {
    "_model_module": "@jupyter-widgets/controls", "_model_name": "BoxModel",
    "_view_module": "@jupyter-widgets/controls", "_view_name": "BoxView",
    "children": ["IPY_MODEL_" + host_ids[0]]}, "buffer_paths": []})
# 3. a comm to some other target, and a model of some other JavaScript module
C.create_comm(target_name="jupyter.widget.control", data={})
C.create_comm(target_name="jupyter.widget", data={"state": {
    "_model_module": "evil-widgets", "_model_name": "EvilModel",
    "_view_module": "evil-widgets", "_view_name": "EvilView"}, "buffer_paths": []})
# 4. a harmless model wearing an HTML view; active HTML in an HTML widget
C.create_comm(target_name="jupyter.widget", data={"state": {
    "_model_module": "@jupyter-widgets/controls", "_model_name": "IntSliderModel",
    "_view_module": "@jupyter-widgets/controls", "_view_name": "HTMLView",
    "value": "<img src=x onerror=alert(1)>"}, "buffer_paths": []})
h = HTML(value="<b>bold</b><img src=x onerror=alert(document.cookie)><script>alert(2)</script>")
# 5. an Output widget whose outputs carry JavaScript
o = Output()
o.outputs = ({"output_type": "display_data", "metadata": {},
              "data": {"application/javascript": "alert(3)", "text/plain": "js"}},)
display(h, o)
# 6. CSS that loads a URL
from ipywidgets import Layout
Layout(width="url(http://10.0.0.1/x)")
print("sent", mine.model_id)
"""


def test_a_sandbox_reaches_only_its_own_inert_widgets(kc):
    """A sandbox may address only comms it opened, reference only its own models, open
    only ipywidgets' own models with their own views, and its HTML is made inert."""
    msgs = run(
        kc,
        "import ipywidgets\nhost = ipywidgets.IntSlider(1)\n"
        "host.observe(lambda ch: print('HOST CALLBACK', ch['new']), 'value')\n"
        "host_ids = [host.model_id]",
    )
    host_id = json.loads(execute(kc, "import json; print(json.dumps(host_ids))").stdout)[0]
    msgs = run(kc, HOSTILE)
    text = _text(msgs)
    assert "sent" in text, text
    # Nothing reached the kernel's own comm, and the kernel's widget is unchanged.
    for kind in ("comm_msg", "comm_close", "comm_open"):
        assert all(c["comm_id"] != host_id for c in of_type(msgs, kind)), kind
    assert execute(kc, "print(host.value)").stdout == "1\n"
    models = opened(msgs)
    names = sorted(c["data"]["state"]["_model_name"] for c in models.values())
    assert "BoxModel" in names  # Box(children=[mine]): its own slider
    for c in models.values():
        state = c["data"]["state"]
        assert c["target_name"] == "jupyter.widget"
        assert state["_model_module"].startswith("@jupyter-widgets/"), state
        assert f"IPY_MODEL_{host_id}" not in json.dumps(state)
        assert state.get("_view_name") != "HTMLView" or state["_model_name"] == "HTMLModel"
        assert "url(" not in json.dumps(state)
    html = next(c for c in models.values() if c["data"]["state"]["_model_name"] == "HTMLModel")
    value = html["data"]["state"]["value"]
    assert "<b>bold</b>" in value and "onerror" not in value and "<script" not in value
    out = next(c for c in models.values() if c["data"]["state"]["_model_name"] == "OutputModel")
    shown = json.dumps(out["data"]["state"]) + json.dumps(of_type(msgs, "comm_msg"))
    assert "application/javascript" not in shown and "alert(3)" not in shown
    assert "widget messages from the sandbox were refused" in text
    assert "refers to a widget the sandbox did not create" in text
    assert "a message to a comm the sandbox did not open" in text
    assert "not one of ipywidgets' own" in text
    assert "view 'HTMLView' of another model" in text
    assert "CSS that may load something" in text
    # The host kernel's widget still works as before.
    assert "HOST CALLBACK 5" in execute(kc, "host.value = 5").stdout
    execute(kc, "%sandbox rm cw3")


# ------------------------------------------------------------------ completion


def complete(kc: BlockingKernelClient, code: str) -> dict[str, Any]:
    msg_id = kc.complete(code, len(code))
    reply = _reply(kc, msg_id)
    return reply["content"]


def inspect(kc: BlockingKernelClient, code: str) -> dict[str, Any]:
    msg_id = kc.inspect(code, len(code))
    return _reply(kc, msg_id)["content"]


def test_a_named_sandboxs_cell_completes_and_inspects_from_it(kc):
    """Below ``%%sandbox --name cc1``, completion and inspection are the sandbox's (its
    names, its docstrings); elsewhere the kernel's; %sandbox words complete too."""
    res = execute(
        kc,
        "%%sandbox --name cc1\nzebra_inside = 41\n"
        "def zfunc(q):\n    'the docstring of zfunc, inside'\n    return q",
    )
    assert res.status == "ok", res.error_text
    head = "%%sandbox --name cc1\nx = 1\nprint(zebra_in"
    got = complete(kc, head)
    assert got["matches"] == ["zebra_inside"], got
    assert (got["cursor_start"], got["cursor_end"]) == (len(head) - len("zebra_in"), len(head))
    assert complete(kc, "print(zebra_in")["matches"] == []  # the kernel has no such name
    info = inspect(kc, "%%sandbox --name cc1\nzfunc")
    assert info["found"] and "the docstring of zfunc, inside" in info["data"]["text/plain"]
    assert not inspect(kc, "zfunc")["found"]
    assert complete(kc, "%sandbox ")["matches"] == ["ls", "inspect", "rm", "compare", "network"]
    assert "cc1" in complete(kc, "%sandbox rm ")["matches"]
    assert "cc1" in complete(kc, "%%sandbox --name c")["matches"]
    assert "--trust-output" in complete(kc, "%%sandbox --tru")["matches"]


def test_completion_and_inspection_answers_are_checked(kc):
    """A sandbox that forges its answers: spans outside the code are dropped, and active
    content in an inspection (shown in the browser's inspector) is made inert."""
    res = execute(
        kc,
        textwrap.dedent(
            """
            %%sandbox --name cc2
            import nskernel.magics.inside as I
            I.complete = lambda *a: {"matches": ["pwn"], "cursor_start": -9, "cursor_end": 10**6}
            I.inspect = lambda *a: {"found": True, "data": {
                "text/plain": "plain",
                "text/html": "<b>ok</b><img src=x onerror=alert(1)><script>alert(2)</script>",
                "application/javascript": "alert(3)"}}
            """
        ),
    )
    assert res.status == "ok", res.error_text
    assert complete(kc, "%%sandbox --name cc2\nanyth")["matches"] == []
    info = inspect(kc, "%%sandbox --name cc2\nanything")
    data = info["data"]
    assert data["text/plain"] == "plain"
    assert "<b>ok</b>" in data["text/html"]
    assert "onerror" not in data["text/html"] and "<script" not in data["text/html"]
    assert "application/javascript" not in data
    execute(kc, "%sandbox rm cc1 cc2")


def test_a_second_input_request_before_the_answer_stops_that_sandbox(kc):
    """One question at a time: a forged second input_request while the first waits for
    the user is a protocol violation; that sandbox is stopped, the kernel lives on."""
    code = textwrap.dedent(
        """
        %%sandbox --name in2
        from nskernel.magics import cellrunner, protocol
        ch = cellrunner._channel
        frame = protocol.encode({"type": "input_request", "prompt": "q? ", "password": False})
        with ch.lock:  # both in one write: the server reads the second before any answer
            ch._write_locked(frame * 2)
        import time; time.sleep(60)
        """
    )
    msg_id = kc.execute(code, allow_stdin=True)
    req = kc.get_stdin_msg(timeout=120)
    assert req["content"]["prompt"] == "q? "
    kc.input("late answer")
    msgs = collect(kc, msg_id)
    assert _reply(kc, msg_id)["content"]["status"] == "error"
    assert "malformed message" in _text(msgs) and "input request" in _text(msgs), _text(msgs)
    assert execute(kc, "print('kernel fine')").stdout == "kernel fine\n"


def test_widget_traffic_counts_against_the_cells_display_budget(kc):
    """Widget state is display data: a cell's --max-output bounds it, in the server and
    the kernel, and the cell says what was not shown."""
    msgs = run(
        kc,
        "%%sandbox --max-output 1M\nimport ipywidgets\n"
        "big = ipywidgets.Textarea(value='x' * 3_000_000)\nsmall = ipywidgets.IntSlider()",
    )
    states = [c["data"]["state"] for c in opened(msgs).values()]
    assert any(s["_model_name"] == "IntSliderModel" for s in states)
    assert not any(len(json.dumps(s)) > 1_100_000 for s in states)
    assert "display(s)" in _text(msgs) and "were not shown" in _text(msgs), _text(msgs)
    execute(kc, "%sandbox rm --all")


def test_an_interrupt_while_input_waits_interrupts_the_cell_and_keeps_the_sandbox():
    """Interrupting a cell that waits in input() stops the question, as in a plain
    kernel; a named sandbox keeps its state."""
    with kernel() as (km, kc2):
        assert execute(kc2, "%%sandbox --name q1\nkeep = 5").status == "ok"
        msg_id = kc2.execute("%%sandbox --name q1\nx = input('wait? ')", allow_stdin=True)
        assert kc2.get_stdin_msg(timeout=120)["content"]["prompt"] == "wait? "
        km.interrupt_kernel()
        msgs = collect(kc2, msg_id)
        assert [e["ename"] for e in of_type(msgs, "error")] == ["KeyboardInterrupt"]
        assert execute(kc2, "%%sandbox --name q1\nprint(keep)").stdout == "5\n"


def test_an_exception_in_a_widget_callback_is_shown_as_in_a_plain_kernel(kc):
    """interact shows its function's exception in its Output widget: the traceback is
    published while that widget captures (before its msg_id is reset), and a cell that
    only showed a traceback still succeeds."""
    msgs = run(
        kc,
        """
        %%sandbox --name cw4
        from ipywidgets import interact

        @interact(x=(0, 10))
        def f(x=5):
            print("x is", x)
            1 / (x - 7)
        """,
    )
    slider, output = model_named(msgs, "IntSliderModel"), model_named(msgs, "OutputModel")
    answer = collect(
        kc, send_comm(kc, slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []})
    )
    kinds = [m["msg_type"] for m in answer]
    errors = of_type(answer, "error")
    assert [e["ename"] for e in errors] == ["ZeroDivisionError"], _text(answer)
    assert "1 / (x - 7)" in _text(answer)
    released = [
        i
        for i, m in enumerate(answer)
        if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == output
        and m["content"]["data"].get("state", {}).get("msg_id") == ""
    ]
    assert released and kinds.index("error") < released[0], kinds
    shown = execute(
        kc,
        "%%sandbox --name cw4\ntry:\n    f(7)\nexcept ZeroDivisionError:\n    pass\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    get_ipython().showtraceback()\n"
        "print('after')",
    )
    assert shown.status == "ok" and shown.error["ename"] == "ZeroDivisionError"
    assert shown.stdout.endswith("after\n")
    execute(kc, "%sandbox rm cw4")


# The second wave (a red-team pass on the relay): values of the wrong JSON type, which
# the browser turns into strings where checks looked only at strings; focus-stealing
# custom messages; buffers where ipywidgets sends none; names that are not strings.
WRONG_TYPES = """
%%sandbox --name cw4
import comm as C
from ipywidgets import HTML, Text
from ipywidgets.widgets.widget_string import HTMLStyle
def model(name, view, **state):
    return C.create_comm(target_name="jupyter.widget", data={"state": {
        "_model_module": "@jupyter-widgets/controls", "_model_name": name,
        "_view_module": "@jupyter-widgets/controls", "_view_name": view, **state},
        "buffer_paths": []})
# 1. an HTML widget whose value is a list (innerHTML joins it)
model("HTMLModel", "HTMLView", value=["<img src=x onerror=alert(1)>"])
h = HTML("fine")
h.comm.send({"method": "update", "state": {"value": ["<img src=x onerror=alert(2)>"]},
             "buffer_paths": []})
# 2. CSS in a list (setProperty joins it)
st = HTMLStyle()
st.comm.send({"method": "update", "state": {"background": ["url(http://10.0.0.1/leak)"]},
              "buffer_paths": []})
# 3. a key the model does not have
model("HTMLModel", "HTMLView", value="x", onload="alert(3)")
# 4. focus stolen with a custom message (keystrokes typed in the notebook go to it)
t = Text()
t.comm.send({"method": "custom", "content": {"do": "focus"}}, buffers=[])
# 5. description_allow_html switched on by a binary buffer
t.comm.send({"method": "update", "state": {}, "buffer_paths": [["description_allow_html"]]},
            buffers=[b"x"])
# 6. names that are lists (unhashable), a method that is a list
C.create_comm(target_name="jupyter.widget", data={"state": {
    "_model_module": ["@jupyter-widgets/controls"], "_model_name": "HTMLModel"},
    "buffer_paths": []})
t.comm.send({"method": ["update"], "state": {}, "buffer_paths": []})
print("sent")
"""


def test_widget_state_of_the_wrong_type_never_reaches_the_browser(kc):
    msgs = run(kc, WRONG_TYPES)
    text = _text(msgs)
    assert "sent" in text, text
    for m in [*of_type(msgs, "comm_open"), *of_type(msgs, "comm_msg")]:
        blob = json.dumps(m["data"])
        assert "onerror" not in blob and "url(" not in blob and "onload" not in blob, blob
        assert m["data"].get("method") != "custom", m
        assert "description_allow_html" not in json.dumps(m["data"].get("buffer_paths")), m
    assert "a list as 'value' of a HTMLModel" in text, text
    assert "a list as 'background' of a HTMLStyleModel" in text, text
    assert "'onload' that a HTMLModel does not have" in text, text
    assert "of method 'custom'" in text, text
    assert "binary data in place of 'description_allow_html'" in text, text
    assert "names are not strings" in text, text
    # The sandbox is fine and reachable: nothing of it broke the kernel's relay.
    assert "still here" in _text(run(kc, "%%sandbox --name cw4\nprint('still here')"))
    execute(kc, "%sandbox rm cw4")
