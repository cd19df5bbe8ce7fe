"""Comms between the frontend and sandboxes: ipywidgets in ``%%sandbox`` cells.

A sandbox's widgets are comms it opens (:mod:`.inside`); the kernel opens a comm of the
same id towards the frontend and relays messages both ways. The sandbox is hostile, so
this module is the one place that decides what of its comm traffic reaches the browser:

- **Only its own comms.** A sandbox may open comms (32 hex digits, unused in this
  kernel) and then address only those: a message naming any other comm (the kernel's
  own widgets, another sandbox's) is refused. Widget state may reference models
  (``IPY_MODEL_<id>``: a box's children, ``jslink``) only among its own, or the browser
  would link a sandbox's slider to a kernel widget and run the kernel's callbacks.
- **Only inert widgets** (unless ``--trust-output``): ``jupyter.widget`` comms of
  ipywidgets' own models (controls, layouts, styles, ``Output``), whose view is the
  model's own; models of other modules are refused (their JavaScript does what it
  likes). What the browser would render as HTML is sanitized like display output
  (:mod:`.untrusted`): ``HTML``/``HTMLMath`` values, the ``Output`` widget's outputs;
  descriptions are text only (``description_allow_html`` is forced off); CSS in layouts
  and styles may not load anything (no ``url()``); media widgets may not fetch a URL
  (``format="url"``); JupyterLab's class names are dropped from ``_dom_classes``; an
  ``Output`` widget captures only the request the sandbox is handling.
- **Bounded**: messages count against the cell's display budget (the server and
  :class:`_CellOutput` charge them); at most MAX_COMMS comms per sandbox.
- **A dead sandbox's comms are closed** on the frontend: when a named sandbox is
  removed, dies or is stopped. An unnamed cell's sandbox that opened widgets is kept
  after its cell (as ``cell-<hex>``, listed by ``%sandbox ls``) so they keep working;
  running that notebook cell again replaces it, and at most MAX_KEPT such cells keep
  theirs (the oldest ends, its widgets closed, with a note). A cell run with
  ``--timeout`` keeps none: its sandbox ends with it, whatever it left running.

Messages from the frontend to a sandbox's comm run in it like a cell (see ``deliver``
in :mod:`.magic`): the kernel waits for it to finish, so its output goes where it would
in a plain kernel, and an interrupt stops it.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Callable
from typing import Any

from .untrusted import CSS_FUNCTIONS, RESERVED_CLASS_PREFIXES, Sanitizer, _functions

TARGET = "jupyter.widget"
MODULES = frozenset(
    {"@jupyter-widgets/controls", "@jupyter-widgets/base", "@jupyter-widgets/output"}
)
HTML_VIEWS = frozenset({"HTMLView", "HTMLMathView"})
MEDIA_MODELS = frozenset({"ImageModel", "VideoModel", "AudioModel"})
#: Most comms one sandbox may have open (a widget is one, plus its layout and style).
MAX_COMMS = 20000
#: Methods a sandbox may send on a widget comm (the rest are the frontend's). Not
#: ``custom``: ipywidgets' views act on some (``{"do": "focus"}`` takes the keyboard from
#: the user's notebook), and none of ipywidgets' own models need one from the kernel.
METHODS = frozenset({"update", "echo_update"})
REF = "IPY_MODEL_"
#: What a widget callback may show (the magic's --max-output default).
DEFAULT_MAX_OUTPUT = 16 << 20


class Refused(ValueError):
    """A comm message from a sandbox that may not reach the browser; says why."""


def _css_ok(value: str) -> bool:
    return not any(c in value for c in "{}<>\\@;") and _functions(value) <= CSS_FUNCTIONS


# ---------------------------------------------------------------- types of widget state
#
# The browser turns whatever it gets into a string where it wants one (a list given as
# an HTML widget's value becomes its HTML; a list as a style property, CSS), so checks
# that look only at strings are bypassed by anything else. Every key of a sandbox's
# widget state must therefore be a synced trait of that ipywidgets model, with a value
# of the JSON type that trait sends (ipywidgets' own classes, in this kernel, say which):
# nothing else reaches the browser.

_SCALAR = (str, int, float, bool, type(None))


def _model_classes() -> dict[tuple[str, str], Any]:
    from ipywidgets.widgets.widget import Widget

    found: dict[tuple[str, str], Any] = {}
    todo = list(Widget.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        traits = cls.class_traits()
        key = (traits["_model_module"].default_value, traits["_model_name"].default_value)
        if key[0] in MODULES:
            found.setdefault(key, cls)
    return found


_CLASSES: dict[tuple[str, str], Any] = {}


def _model_class(module: str, name: str) -> Any:
    if not _CLASSES:
        _CLASSES.update(_model_classes())
    cls = _CLASSES.get((module, name))
    if cls is None:
        raise Refused(f"a widget model {name!r} this kernel's ipywidgets does not have")
    return cls


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REF)


def _fits(trait: Any, value: Any) -> bool:
    """Whether ``value`` is what ``trait`` sends over the wire (JSON types, recursively)."""
    import traitlets

    kind = type(trait).__name__
    if value is None:
        return bool(getattr(trait, "allow_none", False)) or kind in ("CByteMemoryView",)
    if kind in ("InstanceDict", "Instance"):
        return _is_ref(value)
    if kind == "WidgetTraitTuple":  # jslink/jsdlink: [IPY_MODEL_..., "attribute"]
        return (
            isinstance(value, list)
            and len(value) == 2
            and _is_ref(value[0])
            and isinstance(value[1], str)
        )
    if kind in ("Date", "Datetime", "Time"):
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in value.items()
        )
    if isinstance(trait, traitlets.Bool):
        return isinstance(value, bool)
    if isinstance(trait, traitlets.Int | traitlets.CInt):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(trait, traitlets.Float | traitlets.CFloat):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(trait, traitlets.Unicode | traitlets.CUnicode | traitlets.Enum):
        return isinstance(value, str)
    if isinstance(trait, traitlets.Union):
        return any(_fits(t, value) for t in trait.trait_types)
    if isinstance(trait, traitlets.Container | traitlets.Tuple):
        if not isinstance(value, list):
            return False
        inner = getattr(trait, "_trait", None)
        if kind == "TypedTuple" and trait.metadata.get("to_json"):  # children: widgets
            return all(_is_ref(v) for v in value)
        if isinstance(inner, traitlets.TraitType):
            return all(_fits(inner, v) for v in value)
        traits = getattr(trait, "_traits", None)
        if traits:
            return len(value) == len(traits) and all(
                _fits(t, v) for t, v in zip(traits, value, strict=True)
            )
        return all(isinstance(v, _SCALAR) for v in value)
    return isinstance(value, _SCALAR)


def _check_types(model: _Model, state: dict[str, Any]) -> None:
    traits = _model_class(model.module, model.name).class_traits(sync=True)
    for key, value in state.items():
        trait = traits.get(key)
        if trait is None:
            raise Refused(f"widget state {str(key)[:40]!r} that a {model.name} does not have")
        if model.name == "OutputModel" and key == "outputs":
            continue  # rebuilt item by item (``_outputs``)
        if type(trait).__name__ == "CByteMemoryView":
            if value is not None:  # bytes come as a binary buffer, never in the JSON
                raise Refused(f"{key!r} of a {model.name} given in the JSON")
            continue
        if not _fits(trait, value):
            raise Refused(f"a {type(value).__name__} as {str(key)[:40]!r} of a {model.name}")


class _Model:
    """What the kernel knows of one of a sandbox's widget models."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.module = state.get("_model_module")
        self.name = state.get("_model_name")
        self.view_module = state.get("_view_module")
        self.view = state.get("_view_name")
        for v in (self.module, self.name, self.view_module, self.view):
            if not isinstance(v, str | None):
                raise Refused("a widget model whose names are not strings")
        if self.module not in MODULES or not isinstance(self.name, str):
            raise Refused(f"a widget model of {self.module!r}, not one of ipywidgets' own")
        if not self.name.endswith("Model"):
            raise Refused(f"a widget model named {self.name!r}")
        views = {None, self.name[: -len("Model")] + "View", "StyleView", "LayoutView"}
        if self.view not in views or self.view_module not in (None, *MODULES):
            raise Refused(f"a {self.name} with the view {self.view!r} of another model")
        self.style = self.module == "@jupyter-widgets/base" or self.name.endswith("StyleModel")

    def identity(self) -> dict[str, Any]:
        return {
            "_model_module": self.module,
            "_model_name": self.name,
            "_view_module": self.view_module,
            "_view_name": self.view,
        }


class Scope:
    """The comms of one sandbox: a named one's live across its cells."""

    def __init__(self, key: str, name: str | None) -> None:
        self.key = key
        self.name = name
        self.comms: dict[str, Any] = {}  # comm id -> the kernel's comm towards the frontend
        self.models: dict[str, _Model] = {}
        self.trusted: dict[str, bool] = {}
        self.refused: Counter[str] = Counter()

    def ids(self) -> frozenset[str]:
        return frozenset(self.comms)

    # ---------------------------------------------------------- checks

    def _refs(self, value: Any) -> None:
        if isinstance(value, str):
            if value.startswith(REF) and value[len(REF) :] not in self.comms:
                raise Refused("widget state that refers to a widget the sandbox did not create")
        elif isinstance(value, list):
            for v in value:
                self._refs(v)
        elif isinstance(value, dict):
            for v in value.values():
                self._refs(v)

    def check_state(
        self,
        model: _Model,
        state: dict[str, Any],
        *,
        parent: str | None,
        sanitizer: Sanitizer | None,
        opening: bool,
    ) -> dict[str, Any]:
        """``state`` (a widget's, or an update of it) as it may reach the browser."""
        if not opening:
            for k in ("_model_module", "_model_name", "_view_module", "_view_name"):
                if k in state and state[k] != model.identity()[k]:
                    raise Refused(f"an update that changes a widget's {k}")
        self._refs(state)
        if sanitizer is None:
            return state
        _check_types(model, state)  # before anything else: the checks below assume them
        out = dict(state)
        if "description_allow_html" in out:
            out["description_allow_html"] = False
        if model.view in HTML_VIEWS:
            for k in ("value", "placeholder"):
                if isinstance(out.get(k), str):
                    out[k] = sanitizer.html(out[k])
        if model.name in MEDIA_MODELS and out.get("format") == "url":
            raise Refused(f"a {model.name[:-5]} widget that loads a URL")
        if model.name == "OutputModel":
            if "msg_id" in out and out["msg_id"] not in ("", parent):
                raise Refused("an Output widget that captures another request's output")
            if "outputs" in out:
                out["outputs"] = _outputs(out["outputs"], sanitizer)
        if isinstance(out.get("_dom_classes"), list):
            out["_dom_classes"] = [
                c
                for c in out["_dom_classes"]
                if isinstance(c, str) and not c.lower().startswith(RESERVED_CLASS_PREFIXES)
            ]
        if model.style:
            for k, v in list(out.items()):
                if isinstance(v, str) and not k.startswith("_") and not _css_ok(v):
                    raise Refused(f"CSS that may load something ({k}: {v[:60]!r})")
        return out

    def _buffers(self, data: dict[str, Any], buffers: list[str], model: _Model) -> list[bytes]:
        paths = data.get("buffer_paths") or []
        if not isinstance(paths, list) or len(paths) != len(buffers):
            raise Refused("binary buffers that do not match their buffer_paths")
        for path in paths:
            if not isinstance(path, list) or not path or not isinstance(path[0], str):
                raise Refused("a malformed buffer path")
            # Bytes only where ipywidgets sends bytes: a media widget's value. Anywhere
            # else the browser reads a buffer as a truthy object (description_allow_html)
            # or a string.
            if path != ["value"] or model.name not in MEDIA_MODELS:
                raise Refused(f"binary data in place of {str(path[0])[:40]!r}")
        try:
            return [base64.b64decode(b, validate=True) for b in buffers]
        except (binascii.Error, ValueError):
            raise Refused("a binary buffer that is not base64") from None

    def from_sandbox(
        self,
        msg: dict[str, Any],
        *,
        parent: str | None,
        sanitizer: Sanitizer | None,
        deliver: Callable[[Scope, str, dict[str, Any]], None],
    ) -> None:
        """Relay a clean comm message (:func:`.messages.relayed_comm`) to the frontend;
        what may not go is counted (see :meth:`note`) instead."""
        try:
            self._relay(msg, parent=parent, sanitizer=sanitizer, deliver=deliver)
        except Refused as e:
            self.refused[str(e)] += 1
        except Exception as e:  # hostile input must never break the cell
            self.refused[f"a widget message the kernel could not read ({type(e).__name__})"] += 1

    def _relay(
        self,
        msg: dict[str, Any],
        *,
        parent: str | None,
        sanitizer: Sanitizer | None,
        deliver: Callable[[Scope, str, dict[str, Any]], None],
    ) -> None:
        import comm

        kind, cid, data = msg["type"], msg["comm_id"], msg["data"]
        if not isinstance(cid, str) or not isinstance(data, dict):
            raise Refused("a malformed comm message")
        if kind == "comm_open":
            if msg["target_name"] != TARGET:
                raise Refused(f"a comm to {msg['target_name'][:60]!r}, not to ipywidgets")
            if cid in self.comms or cid in comm.get_comm_manager().comms:
                raise Refused("a comm id that is taken")
            if len(self.comms) >= MAX_COMMS:
                raise Refused(f"more than {MAX_COMMS} widgets")
            state = data.get("state")
            if not isinstance(state, dict):
                raise Refused("a widget without state")
            model = _Model(state)
            buffers = self._buffers(data, msg["buffers"], model)
            state = self.check_state(model, state, parent=parent, sanitizer=sanitizer, opening=True)
            # Our own comm towards the frontend, with the sandbox's id (the id is the
            # widget's model id, which its views and state name).
            relayed = comm.create_comm(
                target_name=TARGET,
                data={**data, "state": state},
                metadata=msg["metadata"],
                buffers=buffers,
                comm_id=cid,
            )
            self.comms[cid] = relayed
            self.models[cid] = model
            self.trusted[cid] = sanitizer is None
            relayed.on_msg(lambda m: deliver(self, cid, _from_frontend("comm_msg", cid, m)))
            relayed.on_close(lambda m: self._closed_by_frontend(cid, m, deliver))
            return
        relayed = self.comms.get(cid)
        if relayed is None:
            raise Refused("a message to a comm the sandbox did not open")
        if kind == "comm_close":
            self._forget(cid)
            relayed.close(data=data, metadata=msg["metadata"])
            return
        model = self.models[cid]
        method = data.get("method")
        if not isinstance(method, str) or method not in METHODS:
            raise Refused(f"a widget message of method {str(method)[:40]!r}")
        buffers = self._buffers(data, msg["buffers"], model)
        state = data.get("state")
        if not isinstance(state, dict):
            raise Refused("a widget update without state")
        data = {
            **data,
            "state": self.check_state(
                model, state, parent=parent, sanitizer=sanitizer, opening=False
            ),
        }
        relayed.send(data=data, metadata=msg["metadata"], buffers=buffers)

    def _forget(self, cid: str) -> None:
        self.comms.pop(cid, None)
        self.models.pop(cid, None)
        self.trusted.pop(cid, None)

    def _closed_by_frontend(
        self, cid: str, msg: dict[str, Any], deliver: Callable[[Scope, str, dict[str, Any]], None]
    ) -> None:
        if cid in self.comms:
            self._forget(cid)
            deliver(self, cid, _from_frontend("comm_close", cid, msg))

    def close_all(self) -> int:
        """The sandbox is gone: close its comms on the frontend; how many were open."""
        n = len(self.comms)
        for cid, relayed in list(self.comms.items()):
            self._forget(cid)
            try:
                relayed.close()
            except Exception:  # a frontend that is gone: nothing left to tell
                pass
        return n

    def note(self) -> str | None:
        """One line about what of this sandbox's comm traffic was refused, or None."""
        if not self.refused:
            return None
        items = [f"{what} ({n} times)" if n > 1 else what for what, n in self.refused.items()]
        self.refused.clear()
        return (
            "[nskernel: widget messages from the sandbox were refused: "
            + "; ".join(items[:6])
            + (f" and {len(items) - 6} more" if len(items) > 6 else "")
            + ". A sandbox may show only ipywidgets' own widgets that it created itself.]"
        )


def _outputs(outputs: Any, sanitizer: Sanitizer) -> list[dict[str, Any]]:
    """An ``Output`` widget's outputs (nbformat dicts), sanitized like display output."""
    if not isinstance(outputs, list):
        raise Refused("Output widget outputs that are not a list")
    out = []
    for o in outputs:
        if not isinstance(o, dict):
            continue
        kind = o.get("output_type")
        if kind == "stream" and isinstance(o.get("text"), str):
            name = "stderr" if o.get("name") == "stderr" else "stdout"
            out.append({"output_type": "stream", "name": name, "text": o["text"]})
        elif kind in ("display_data", "execute_result") and isinstance(o.get("data"), dict):
            md = o.get("metadata") if isinstance(o.get("metadata"), dict) else {}
            data, md = sanitizer.bundle(o["data"], md)
            item = {"output_type": kind, "data": data, "metadata": md}
            if kind == "execute_result":
                item["execution_count"] = None
            out.append(item)
        elif kind == "error":
            tb = o.get("traceback")
            out.append(
                {
                    "output_type": "error",
                    "ename": str(o.get("ename"))[:256],
                    "evalue": str(o.get("evalue")),
                    "traceback": [str(t) for t in tb] if isinstance(tb, list) else [],
                }
            )
    return out


def _from_frontend(kind: str, cid: str, msg: dict[str, Any]) -> dict[str, Any]:
    """A frontend message for a sandbox's comm, as the sandbox receives it."""
    content = msg.get("content") or {}
    buffers = [base64.b64encode(bytes(b)).decode("ascii") for b in msg.get("buffers") or ()]
    return {
        "type": kind,
        "comm_id": cid,
        "data": content.get("data") or {},
        "metadata": msg.get("metadata") or {},
        "buffers": buffers,
        "parent": (msg.get("header") or {}).get("msg_id"),
    }


class Relay:
    """All the sandboxes' comms in this kernel, by scope (``name:N`` or ``cell:...``)."""

    def __init__(self) -> None:
        self.scopes: dict[str, Scope] = {}

    def scope(self, key: str, name: str | None) -> Scope:
        s = self.scopes.get(key)
        if s is None:
            s = self.scopes[key] = Scope(key, name)
        return s

    def end(self, key: str) -> int:
        """Close a sandbox's comms (it is gone); how many were open."""
        s = self.scopes.pop(key, None)
        return s.close_all() if s is not None else 0

    def end_named(self, names: Any = None) -> None:
        """Named sandboxes were removed (all of them when ``names`` is None)."""
        for key, s in list(self.scopes.items()):
            if s.name is not None and (names is None or s.name in names):
                self.end(key)


_relay = Relay()


def relay() -> Relay:
    return _relay


# ------------------------------------------------------------------ the kernel's glue


def parent_id(shell: Any) -> str | None:
    """The msg_id of the frontend request the kernel is handling (an execute_request,
    or the comm_msg of a moved slider): where a sandbox's output belongs."""
    kernel = getattr(shell, "kernel", None)
    try:
        msg_id = kernel.get_parent()["header"]["msg_id"]  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError):
        return None
    return msg_id if isinstance(msg_id, str) else None


def ask_frontend(msg: dict[str, Any]) -> dict[str, Any]:
    """A sandbox's ``input()``/``getpass()``, asked of the frontend by this kernel: with
    ipykernel's own ``input``/``getpass`` (so ``allow_stdin=False`` raises the same
    StdinNotImplementedError a plain kernel does, and a password is not echoed)."""
    import getpass

    from IPython.core.error import StdinNotImplementedError

    try:
        ask = getpass.getpass if msg["password"] else input
        value = ask(msg["prompt"])
    except StdinNotImplementedError as e:
        return {"error": "StdinNotImplementedError", "message": str(e)}
    except EOFError:
        return {"error": "EOFError"}
    return {"value": str(value)}


def deliver(scope: Scope, cid: str, msg: dict[str, Any]) -> None:
    """A frontend message for a sandbox's comm: run it in that sandbox, like a cell, and
    show its output where a plain kernel's callback output goes (under this request)."""
    import sys

    from . import messages
    from .client import SandboxServerError, get_client
    from .magic import _CellOutput

    if scope.name is None:
        return  # an unnamed cell's sandbox ended with its cell (its comms were closed)
    parent = msg.pop("parent", None)
    sanitizer = None if scope.trusted.get(cid) else Sanitizer(scope.key, own_models=scope.ids)
    out = _CellOutput(DEFAULT_MAX_OUTPUT, sanitizer)
    out.on_comm = lambda m: scope.from_sandbox(
        m, parent=parent, sanitizer=sanitizer, deliver=deliver
    )
    req = {"name": scope.name, "comm": msg, "parent": parent, "max_output": DEFAULT_MAX_OUTPUT}
    dropped: dict[str, int] = {}
    try:
        try:
            done = messages.done(get_client().run(req, out.on_message))
        except (messages.Malformed, SandboxServerError) as e:
            done = {"status": "died", "message": str(e)}
        dropped = done.get("dropped") or {}
    finally:
        out.finish(dropped)
    status = done["status"]
    out.show_error()  # shown where a plain kernel shows a callback's exception
    if status not in ("ok", "error"):
        n = _relay.end(scope.key)
        why = done.get("message") or f"the sandbox's widget callback ended: {status}"
        sys.stderr.write(f"[nskernel: {why}; its {n} widget(s) were closed.]\n")
    note = scope.note()
    if note:
        sys.stderr.write(note + "\n")
    sys.stderr.flush()


#: Most unnamed cells whose sandboxes stay for their widgets (the oldest ends first).
MAX_KEPT = 8
_kept: list[tuple[str, str | None]] = []  # (sandbox name, the notebook cell's id), oldest first


def cell_id(shell: Any) -> str | None:
    """The notebook cell being run (JupyterLab and Notebook 7 send its id)."""
    kernel = getattr(shell, "kernel", None)
    try:
        value = kernel.get_parent()["metadata"].get("cellId")  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def after_cell(
    scope: Scope, done: dict[str, Any] | None, cell: str | None = None, *, timed: bool = False
) -> None:
    """After a ``%%sandbox`` cell: keep an unnamed cell's sandbox while it has widgets
    (the server kept it under ``done["kept"]``; never one run with ``--timeout``:
    ``timed``), close the comms of a sandbox that is gone, and say what was refused."""
    import sys

    from .client import SandboxRequestError, SandboxServerError, get_client

    notes = [scope.note()]
    kept = done.get("kept") if done else None
    remove: list[str] = []
    if scope.name is None and kept:
        client = get_client()
        if scope.comms:
            scope.name = kept
            client.named.add(kept)
            # A cell run again replaces its sandbox; beyond MAX_KEPT the oldest ends.
            live = [(n, c) for n, c in _kept if n in client.named]
            again = [n for n, c in live if cell is not None and c == cell]
            live = [(n, c) for n, c in live if n not in again]
            old = [n for n, _ in live[: max(0, len(live) + 1 - MAX_KEPT)]]
            live = [(n, c) for n, c in live if n not in old]
            _kept[:] = [*live, (kept, cell)]
            remove = again + old
            if old:
                notes.append(
                    f"[nskernel: the sandbox(es) of {len(old)} earlier cell(s) ended, and their "
                    f"widgets with them: at most {MAX_KEPT} unnamed cells keep their sandbox for "
                    "their widgets. Use %%sandbox --name NAME for widgets that must stay.]"
                )
        else:
            remove = [kept]  # its widgets were all refused: nothing to keep it for
        _relay.end_named(remove)
        if remove:
            try:
                client.request("rm", names=[n for n in remove if n in client.named])
            except (SandboxRequestError, SandboxServerError) as e:
                notes.append(f"[nskernel: an earlier cell's sandbox could not be removed: {e}]")
    elif scope.name is None or done is None or bool(done.get("removed")):
        n = _relay.end(scope.key)
        if n and timed and scope.name is None:
            notes.append(
                f"[nskernel: the sandbox is gone; its {n} widget comm(s) were closed: a cell "
                "run with --timeout keeps no sandbox for its widgets. Use %%sandbox --name "
                "NAME for widgets that must stay.]"
            )
        elif n:
            notes.append(f"[nskernel: the sandbox is gone; its {n} widget comm(s) were closed.]")
    text = "\n".join(n for n in notes if n)
    if text:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
