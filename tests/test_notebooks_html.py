"""The tutorials rendered to static HTML (``jupyter nbconvert --to html``) in headless chromium.

What a reader sees on a page made from the stored notebook, without a kernel: every code
cell that stores an output shows one, and the compare panel shows a host column and a
sandbox column.

nbconvert draws widget outputs with the html-manager script it loads from a CDN, which
this closed machine cannot reach (requests leaving the machine are aborted here, as
they would fail anyway). So each page is rendered twice: as nbconvert makes it, where
every output but the widgets' must show and each widget output must be a view of a
model in the stored state (what the html-manager draws from; the state itself is checked
in tests/test_notebooks.py); and as a viewer without widget support renders it, from
the outputs' ``text/html`` and ``text/plain`` forms, where the widget outputs must show
too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.tutorials import NOTEBOOKS, SHIPPED

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = [pytest.mark.browser]


def _render(nb: Any) -> str:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def _without_widget_support(nb: Any) -> Any:
    """The notebook as a viewer that cannot run widgets sees it: no widget views."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            out.get("data", {}).pop(WIDGET_VIEW, None)
    return nb


# Per code cell (in order): does its output area show something? A widget view counts
# when its placeholder names a model (the html-manager would draw it from the state).
_CELLS_JS = """() => [...document.querySelectorAll('.jp-CodeCell')].map(cell => {
    const outs = [...cell.querySelectorAll('.jp-OutputArea-output')];
    const text = outs.map(o => o.innerText.trim()).join('');
    const views = [...cell.querySelectorAll(
        'script[type="application/vnd.jupyter.widget-view+json"]')]
        .filter(s => JSON.parse(s.textContent).model_id);
    return {shown: text.length > 0, widget: views.length > 0};
})"""


@pytest.fixture(scope="module")
def page():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page()
            # Offline: a page made from a notebook must not need the network to show
            # its stored outputs (CDN scripts fail here; they are cut off at once).
            pg.route(
                "**/*",
                lambda route: (
                    route.continue_() if route.request.url.startswith("file:") else route.abort()
                ),
            )
            yield pg
        finally:
            browser.close()


def _show(page: Any, html: str, tmp_path: Path, name: str) -> list[dict[str, bool]]:
    path = tmp_path / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    page.goto(path.as_uri())
    return page.evaluate(_CELLS_JS)


@pytest.mark.parametrize("name", SHIPPED)
def test_stored_outputs_show_in_the_static_page(page: Any, tmp_path: Path, name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    stored = [bool(c.outputs) for c in code]

    as_made = _show(page, _render(nb), tmp_path, f"{name}-nbconvert")
    assert len(as_made) == len(code)
    for n, (has, seen) in enumerate(zip(stored, as_made, strict=True), 1):
        if has:
            assert seen["shown"] or seen["widget"], f"{name}: code cell {n} shows nothing"

    static = _show(page, _render(_without_widget_support(nb)), tmp_path, f"{name}-static")
    for n, (has, seen) in enumerate(zip(stored, static, strict=True), 1):
        assert seen["shown"] == has, f"{name}: code cell {n}: stored output {has}, shown {seen}"


@pytest.mark.parametrize("name", ["00-overview", "08-sandboxed-kernel"])
def test_the_compare_panel_shows_a_host_and_a_sandbox_column(
    page: Any, tmp_path: Path, name: str
) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    _show(page, _render(_without_widget_support(nb)), tmp_path, name)
    panels = page.locator(".nsk-compare")
    assert panels.count() == 1, f"{name}: expected one compare panel"
    # One column per place; each names its kind under the place's name.
    kinds = panels.first.evaluate(
        "p => [...p.children].map(col => col.querySelector('span')?.innerText.split(' ')[0])"
    )
    assert kinds == ["host", "sandbox"], kinds
    text = panels.first.inner_text()
    for heading in ("hostname", "interfaces", "PID"):
        assert heading in text, f"{name}: the panel lacks {heading!r}"
