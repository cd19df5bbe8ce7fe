"""Completion and inspection for ``%%sandbox`` cells and ``%sandbox`` commands.

In a ``%%sandbox --name a`` cell the names that matter live in sandbox ``a``, not in the
kernel: the kernel's ``do_complete``/``do_inspect`` are wrapped so that, below such a
cell's first line, the question goes to sandbox ``a`` (its own IPython completer and
inspector, :mod:`.inside`) and the answer comes back checked (:mod:`.messages`: spans
within the code, bounded lists, text only) and, for inspection, made inert like any
output of a sandbox (:mod:`.untrusted`). A sandbox that is busy or does not answer in
time gives no completions, never the kernel's (which would offer names the sandbox
does not have). Everywhere else the kernel answers as before.

``%sandbox`` subcommands, sandbox names and ``%%sandbox`` options complete through
IPython's ``complete_command`` hook, in any IPython (terminal too).
"""

from __future__ import annotations

import shlex
from typing import Any

from . import messages

SUBCOMMANDS = ("ls", "inspect", "rm", "compare", "network")
NAME_TAKING = ("inspect", "rm", "compare")


def _named_cell(code: str) -> tuple[str, int] | None:
    """(sandbox name, offset of the body) when ``code`` is a ``%%sandbox --name N`` cell."""
    first, nl, _ = code.partition("\n")
    if not nl or not first.startswith("%%sandbox"):
        return None
    try:
        words = shlex.split(first[len("%%sandbox") :])
    except ValueError:
        return None
    name = None
    for i, w in enumerate(words):
        if w == "--name" and i + 1 < len(words):
            name = words[i + 1]
        elif w.startswith("--name="):
            name = w[len("--name=") :]
    return (name, len(first) + 1) if name else None


def _ask(op: str, name: str, code: str, cursor_pos: int, **extra: Any) -> dict[str, Any] | None:
    from .client import SandboxRequestError, SandboxServerError, get_client

    client = get_client()
    if name not in client.named:
        return None  # not created yet (or gone): nothing to ask, and nothing to start
    try:
        return client.request(f"{op}_code", name=name, code=code, cursor_pos=cursor_pos, **extra)
    except (SandboxRequestError, SandboxServerError):
        return None


def complete(kernel_complete: Any, code: str, cursor_pos: int | None) -> Any:
    """``do_complete``: a named sandbox's cell body asks that sandbox."""
    pos = len(code) if cursor_pos is None else cursor_pos
    own = _magic_line(code, pos)
    if own is not None:
        return own
    cell = _named_cell(code)
    if cell is None or pos < cell[1]:
        return kernel_complete(code, cursor_pos)
    name, offset = cell
    body = code[offset:]
    answer = _ask("complete", name, body, pos - offset)
    found = messages.complete_answer(answer, len(body)) if isinstance(answer, dict) else None
    if found is None:
        found = {"matches": [], "cursor_start": pos - offset, "cursor_end": pos - offset}
        found["types"] = []
    types = [{**t, "start": t["start"] + offset, "end": t["end"] + offset} for t in found["types"]]
    return {
        "matches": found["matches"],
        "cursor_start": found["cursor_start"] + offset,
        "cursor_end": found["cursor_end"] + offset,
        "metadata": {"_jupyter_types_experimental": types} if types else {},
        "status": "ok",
    }


def _magic_line(code: str, pos: int) -> dict[str, Any] | None:
    """On a ``%sandbox``/``%%sandbox`` line: only its words (subcommands, names,
    options), not Python's keywords that the kernel's completer would add."""
    start = code.rfind("\n", 0, pos) + 1
    line = code[start:pos]
    if line.startswith("%%sandbox "):
        candidates = cell_completions(None, _Event(line))
    elif line.startswith("%sandbox "):
        candidates = line_completions(None, _Event(line))
    else:
        return None
    token = "" if line.endswith(" ") else line.split()[-1]
    matches = [c for c in candidates if c.startswith(token)]
    return {
        "matches": matches,
        "cursor_start": pos - len(token),
        "cursor_end": pos,
        "metadata": {},
        "status": "ok",
    }


class _Event:
    def __init__(self, line: str) -> None:
        self.line = line


def inspect(
    kernel_inspect: Any, code: str, cursor_pos: int, detail_level: int = 0, *args: Any, **kw: Any
) -> Any:
    """``do_inspect`` (Shift+Tab, the inspector panel): from the named sandbox."""
    cell = _named_cell(code)
    if cell is None or cursor_pos < cell[1]:
        return kernel_inspect(code, cursor_pos, detail_level, *args, **kw)
    name, offset = cell
    answer = _ask("inspect", name, code[offset:], cursor_pos - offset, detail_level=detail_level)
    found = messages.inspect_answer(answer) if isinstance(answer, dict) else None
    if not found or not found["found"]:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    from .untrusted import Sanitizer

    data, _ = Sanitizer(f"name:{name}").bundle(found["data"], {})
    return {"status": "ok", "found": bool(data), "data": data, "metadata": {}}


def install(ipython: Any) -> None:
    """Wrap the kernel's completion and inspection (in a kernel), and register the
    ``%sandbox``/``%%sandbox`` completers."""
    kernel = getattr(ipython, "kernel", None)
    if kernel is not None and not getattr(kernel, "_nskernel_completion", False):
        plain_complete, plain_inspect = kernel.do_complete, kernel.do_inspect
        kernel.do_complete = lambda code, pos: complete(plain_complete, code, pos)
        kernel.do_inspect = lambda code, pos, *a, **kw: inspect(plain_inspect, code, pos, *a, **kw)
        kernel._nskernel_completion = True
    ipython.set_hook("complete_command", line_completions, str_key="%sandbox")
    ipython.set_hook("complete_command", cell_completions, str_key="%%sandbox")


def _names() -> list[str]:
    from .client import get_client

    return sorted(get_client().named)


def line_completions(self: Any, event: Any) -> list[str]:
    """``%sandbox <TAB>``: subcommands; after inspect/rm/compare, sandbox names."""
    words = event.line.split()
    typing_new = event.line.endswith(" ")
    done = words[1:] if typing_new else words[1:-1]
    if not done:
        return list(SUBCOMMANDS)
    if done[0] in NAME_TAKING:
        return [n for n in _names() if n not in done[1:]]
    if done[0] == "network" and len(done) == 1:
        return ["ls", "rm"]
    return []


def cell_completions(self: Any, event: Any) -> list[str]:
    """``%%sandbox <TAB>``: its options; after ``--name``, the named sandboxes."""
    words = event.line.split()
    typing_new = event.line.endswith(" ")
    before = words[-1] if typing_new else (words[-2] if len(words) > 1 else "")
    if before == "--name":
        return _names()
    from .magic import SandboxMagics

    parser = SandboxMagics.sandbox_cell.parser  # type: ignore[attr-defined]
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))
