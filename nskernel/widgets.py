"""The host and each sandbox side by side: an ipywidgets panel over :mod:`nskernel.facts`.

``compare(*places, host=None)`` shows one column per place — the host first, then each
sandbox — with hostname, interfaces, PID table, id maps, namespace ids (own ones
highlighted, shared ones labelled "shared") and limits. Refresh re-reads every place.

Places (the protocol the magics and the sandboxed kernel use): each is either

- a facts dict (a snapshot: Refresh shows it again unchanged),
- a callable taking no arguments and returning a facts dict — called at once and on
  every Refresh. A sandbox that has exited should return
  :func:`nskernel.facts.exited_facts`; if the callable raises instead, the column shows
  the error and keeps the place's last known name, or
- an :class:`nskernel.Sandbox` (read from the host through its init's PID).

Choices:

- The panel's ``text/plain`` form is deterministic — place names, namespace types and
  own/shared per type, never PIDs, addresses or inode numbers — so notebooks that store
  it validate under nbval. Its ``text/html`` form is the same table for viewers without
  a live kernel (nbconvert, GitHub); every run-dependent value in it sits between
  ``<!--nsk:v-->`` and ``<!--/nsk:v-->`` so :data:`NBVAL_SANITIZE` (see
  :func:`nbval_sanitize_config`) blanks them out for nbval.
- Columns are ``HTML`` widgets with inline styles: the same markup serves the live
  panel, the static HTML and the widget state stored in a notebook.
- Nothing here raises for a missing namespace or a dead sandbox: what is unknown is
  shown with its reason from the facts' ``errors``.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as W

from . import facts as F
from .sandbox import Sandbox

Place = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | Sandbox

#: The regex nbval's ``--nbval-sanitize-with`` needs to ignore run-dependent values.
NBVAL_SANITIZE = r"(?s)<!--nsk:v-->.*?<!--/nsk:v-->"

_OWN_BG = "#ffe3b3"  # a namespace of the sandbox's own: differs from the host's
_SANDBOX_ROW_BG = "#ffe3b3"  # a host process that belongs to a sandbox
_MUTED = "#6a6a6a"
_CELL = "padding:1px 6px;text-align:left;vertical-align:top;white-space:nowrap;"
_COMMAND_CHARS = 60  # longer command lines are cut; the full line is in the tooltip
_TABLE = "border-collapse:collapse;font-size:12px;font-family:monospace;"


def nbval_sanitize_config() -> str:
    """A file for ``pytest --nbval --nbval-sanitize-with FILE`` covering this panel."""
    return f"[nskernel-widgets]\nregex: {NBVAL_SANITIZE}\nreplace: ~\n"


# ------------------------------------------------------------------ places


class _Source:
    """One column's facts provider, with its last known name for error columns."""

    def __init__(self, place: Place, default_name: str) -> None:
        self.default_name = default_name
        self.read: Callable[[], Mapping[str, Any]]
        if isinstance(place, Mapping):
            snapshot = dict(place)
            self.read = lambda: snapshot
        elif isinstance(place, Sandbox):
            sb = place
            self.read = lambda: F.sandbox_facts_from_host(
                sb.pid, hostname=sb.hostname, created=sb.namespaces
            )
        elif callable(place):
            self.read = place
        else:
            msg = (
                f"cannot show {place!r}: a place is a facts dict, a callable returning one, "
                "or an nskernel.Sandbox"
            )
            raise TypeError(msg)
        self.last_name = default_name

    def get(self) -> F.Facts:
        try:
            got = F.normalize(self.read())
        except Exception as e:  # a place's failure becomes its column, never a traceback
            got = F.exited_facts(self.last_name)
            got["alive"] = None
            got["errors"] = {"alive": f"cannot read the facts: {type(e).__name__}: {e}"}
            return got
        self.last_name = got["name"]
        return got


# ------------------------------------------------------------------ rendering


def _v(text: object) -> str:
    """A run-dependent value: escaped and marked for nbval's sanitizer."""
    return f"<!--nsk:v-->{html.escape(str(text))}<!--/nsk:v-->"


def _table(head: Sequence[str], rows: Sequence[str], extra_style: str = "") -> str:
    th = "".join(f"<th style='{_CELL}border-bottom:1px solid #999'>{h}</th>" for h in head)
    return f"<table style='{_TABLE}{extra_style}'><tr>{th}</tr>{''.join(rows)}</table>"


def _tr(cells: Sequence[str], style: str = "") -> str:
    tds = "".join(f"<td style='{_CELL}'>{c}</td>" for c in cells)
    return f"<tr style='{style}'>{tds}</tr>"


def _section(title: str, body: str) -> str:
    return (
        f"<div style='margin-top:8px'><div style='font-weight:bold;font-size:12px'>{title}</div>"
        f"{body}</div>"
    )


def _note(text: str) -> str:
    return f"<div style='color:{_MUTED};font-size:11px'>{html.escape(text)}</div>"


def _status_word(place: Mapping[str, Any]) -> str:
    if place.get("alive") is False:
        return "exited"
    if place.get("alive") is None:
        return "unreadable"
    return ""


def _namespace_rows(place: Mapping[str, Any], host: Mapping[str, Any] | None) -> list[str]:
    rows = []
    errors = place.get("errors") or {}
    relation = F.shared_namespaces(place, host) if host is not None else {}
    for t in F.NS_TYPES:
        ino = (place.get("namespaces") or {}).get(t)
        why = errors.get(f"namespace.{t}")
        if ino is None:
            text = f"unavailable: {html.escape(why)}" if why else "unknown"
            rows.append(_tr([t, f"<span style='color:{_MUTED}'>{text}</span>", ""]))
            continue
        rel = relation.get(t, "")
        if rel == "own":
            rows.append(_tr([t, _v(ino), "<b>own</b>"], f"background:{_OWN_BG}"))
        elif rel == "shared":
            rows.append(_tr([t, _v(ino), f"<span style='color:{_MUTED}'>shared</span>"]))
        else:
            note = f"<span style='color:{_MUTED}'>{html.escape(why)}</span>" if why else ""
            rows.append(_tr([t, _v(ino), note]))
    return rows


def _process_rows(place: Mapping[str, Any]) -> list[str]:
    procs = list(place.get("processes") or [])
    # A sandbox's processes first on the host: they are what the reader looks for.
    procs.sort(key=lambda r: (r.get("sandbox") is None, r.get("pid") or 0))
    rows = []
    for r in procs:
        host_pid = r.get("host_pid")
        owner = r.get("sandbox")
        full = str(r.get("command", ""))
        short = full if len(full) <= _COMMAND_CHARS else full[: _COMMAND_CHARS - 1] + "…"
        command = f"<span title='{html.escape(full, quote=True)}'>{html.escape(short)}</span>"
        if owner:
            command = f"<b>[{html.escape(owner)}]</b> {command}"
        rows.append(
            _tr(
                [
                    _v(r.get("pid")),
                    _v("?" if host_pid is None else host_pid),
                    _v(r.get("user", r.get("uid"))),
                    f"<!--nsk:v-->{command}<!--/nsk:v-->",
                ],
                f"background:{_SANDBOX_ROW_BG}" if owner else "",
            )
        )
    return rows


def column_html(place: Mapping[str, Any], host: Mapping[str, Any] | None) -> str:
    """One place's column. ``host`` is None for the host's own column."""
    place = F.normalize(place)
    errors = dict(place.get("errors") or {})
    name = html.escape(str(place["name"]))
    kind = "host" if place["kind"] == "host" else "sandbox"
    status = _status_word(place)
    head = (
        f"<div style='font-size:15px;font-weight:bold'>{name} "
        f"<span style='font-size:11px;font-weight:normal;color:{_MUTED}'>{kind}"
        f"{' · ' + status if status else ''}</span></div>"
    )
    parts = [head]
    if status:
        why = errors.pop("alive", "")
        parts.append(
            f"<div style='background:#eee;padding:4px;margin-top:6px'>"
            f"<b>{'This sandbox has exited.' if status == 'exited' else 'No facts.'}</b> "
            f"{_v(why)}</div>"
        )
        return _wrap_column(parts, kind)

    seen = "read from the host" if place.get("seen_from") == "host" else "read from inside"
    when = time.strftime("%H:%M:%S", time.localtime(place.get("gathered_at") or 0))
    parts.append(f"<div style='color:{_MUTED};font-size:11px'>{seen} at {_v(when)}</div>")

    hn = place.get("hostname")
    differs = host is not None and hn is not None and hn != host.get("hostname")
    hn_html = _v(hn) if hn is not None else f"<span style='color:{_MUTED}'>unknown</span>"
    if differs:
        hn_html = f"<span style='background:{_OWN_BG};padding:0 3px'>{hn_html}</span>"
    parts.append(_section("hostname", f"<div style='font-family:monospace'>{hn_html}</div>"))
    if "hostname" in errors:
        parts.append(_note(errors.pop("hostname")))

    if "interfaces" in errors:
        body = _note(errors.pop("interfaces"))
    else:
        rows = [
            _tr(
                [
                    html.escape(i["name"]),
                    html.escape(i.get("state") or "?"),
                    _v(" ".join(i.get("addresses") or []) or "—"),
                ]
            )
            for i in place["interfaces"]
        ]
        body = _table(["name", "state", "addresses"], rows)
    parts.append(_section("interfaces", body))
    if "interface_state" in errors:
        parts.append(_note(errors.pop("interface_state")))

    cut = errors.pop("processes", None)  # why none are listed, or how many were not
    if cut is not None and not place["processes"]:
        body = _note(cut)
    else:
        n = len(place["processes"])
        count = html.escape(cut) if cut is not None else f"{_v(n)} processes"
        body = (
            f"<div style='max-height:260px;overflow:auto'>"
            f"{_table(['PID', 'host PID', 'user', 'command'], _process_rows(place))}</div>"
            f"<div style='color:{_MUTED};font-size:11px'>{count}</div>"
        )
    parts.append(_section("processes", body))
    if "host_pids" in errors:
        parts.append(_note(errors.pop("host_pids")))

    maps = []
    for which in ("uid_map", "gid_map"):
        if which in errors:
            maps.append(_tr([which, _note(errors.pop(which))]))
            continue
        text = "<br>".join(f"{_v(i)} → {_v(o)} ({_v(c)})" for i, o, c in place.get(which) or [])
        maps.append(_tr([which.replace("_map", ""), text or "—"]))
    parts.append(_section("id maps (inside → host, count)", _table(["", "map"], maps)))

    parts.append(_section("namespaces", _table(["type", "id", ""], _namespace_rows(place, host))))
    for key in [k for k in errors if k.startswith("namespace.")]:
        errors.pop(key)

    if place.get("limits"):
        rows = [_tr([html.escape(k), _v(v)]) for k, v in sorted(place["limits"].items())]
        parts.append(_section("limits", _table(["limit", "value"], rows)))
    for key, why in sorted(errors.items()):
        parts.append(_note(f"{key}: {why}"))
    return _wrap_column(parts, kind)


def _wrap_column(parts: Sequence[str], kind: str) -> str:
    return (
        # line-height: JupyterLab gives HTML widgets a 28px line, too loose for tables.
        f"<div class='nsk-place' data-kind='{kind}' style='min-width:280px;max-width:560px;"
        "padding:6px 10px;line-height:1.35;overflow-x:auto;"
        f"border:1px solid #ccc;border-radius:4px'>{''.join(parts)}</div>"
    )


def render_html(places: Sequence[Mapping[str, Any]]) -> str:
    """The whole panel as static HTML: host first, one column per place."""
    host = places[0] if places else None
    cols = [column_html(p, None if i == 0 else host) for i, p in enumerate(places)]
    return (
        "<div class='nsk-compare' style='display:flex;gap:10px;align-items:flex-start;"
        f"flex-wrap:wrap'>{''.join(cols)}</div>"
    )


def _plain_name(place: Mapping[str, Any]) -> str:
    status = _status_word(place)
    return f"{place.get('name')} ({status})" if status else str(place.get("name"))


def render_text(places: Sequence[Mapping[str, Any]]) -> str:
    """The deterministic plain-text form: names, and own/shared per namespace type."""
    if not places:
        return "nskernel compare: nothing to show"
    host = F.normalize(places[0])
    rest = [F.normalize(p) for p in places[1:]]
    names = [_plain_name(host)] + [_plain_name(p) for p in rest]
    lines = ["nskernel compare: " + " | ".join(names)]
    cols = []
    for p in rest:
        if p["alive"] is not True:
            cols.append({t: "-" for t in F.NS_TYPES})
            continue
        rel = F.shared_namespaces(p, host)
        for t in F.NS_TYPES:
            if t not in p["namespaces"] and f"namespace.{t}" in p["errors"]:
                rel[t] = "unavailable"
        cols.append(rel)
    width = max(len(n) for n in ["namespace", *names])
    lines.append("  ".join(n.ljust(width) for n in ["namespace", *names]).rstrip())
    for t in F.NS_TYPES:
        host_cell = "unavailable" if t not in host["namespaces"] else "host"
        cells = [t, host_cell] + [c[t] for c in cols]
        lines.append("  ".join(c.ljust(width) for c in cells).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------ the widget


class ComparePanel(W.VBox):
    """The live panel. ``places`` holds the facts shown now (host first)."""

    def __init__(self, sources: Sequence[_Source], **kwargs: Any) -> None:
        self._sources = list(sources)
        self.places: list[F.Facts] = []
        self.refresh_button = W.Button(
            description="Refresh", icon="refresh", tooltip="Re-read the facts of every place"
        )
        self.status = W.HTML()
        self.columns = W.HBox(layout=W.Layout(align_items="flex-start", overflow="auto"))
        self.refresh_button.on_click(lambda _b: self.refresh())
        super().__init__([W.HBox([self.refresh_button, self.status]), self.columns], **kwargs)
        self.add_class("nsk-compare")
        self.refresh()

    def refresh(self) -> None:
        """Re-read every place and redraw (the Refresh button calls this)."""
        places = [s.get() for s in self._sources]
        if places and places[0]["kind"] == "host" and places[0]["processes"]:
            F.mark_sandbox_processes(places[0], *places[1:])
        self.places = places
        host = places[0] if places else None
        htmls = [column_html(p, None if i == 0 else host) for i, p in enumerate(places)]
        if len(self.columns.children) == len(htmls):
            for w, value in zip(self.columns.children, htmls, strict=True):
                w.value = value
        else:
            self.columns.children = [
                W.HTML(value=h, layout=W.Layout(flex="1 1 0", min_width="300px", margin="0 4px"))
                for h in htmls
            ]
        self.status.value = (
            f"<span style='color:{_MUTED};font-size:11px'>"
            f"read at {_v(time.strftime('%H:%M:%S'))}</span>"
        )

    def text(self) -> str:
        return render_text(self.places)

    def html(self) -> str:
        return render_html(self.places)

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text()
        data["text/html"] = self.html()
        return data


def compare(*places: Place, host: Place | None = None) -> ComparePanel:
    """Show the host and each place side by side; returns the panel (display it).

    With no places inside the sandboxed kernel: the host facts captured at launch |
    this sandbox. ``host`` defaults to the captured host facts there, and to the
    caller's own namespaces (re-read on Refresh) elsewhere.
    """
    captured = os.environ.get(F.HOST_FACTS_ENV)
    if host is None:
        host = F.load_host_facts_captured_at_launch if captured else F.host_facts
    sources = [_Source(host, "host")]
    if not places and captured:
        places = (lambda: F.gather_here(name="this sandbox", kind="sandbox"),)
    sources += [_Source(p, f"place {i + 1}") for i, p in enumerate(places)]
    return ComparePanel(sources)
