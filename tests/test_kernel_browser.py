"""A real JupyterLab in headless Debian chromium: the user's path to the sandboxed kernel.

Pick "Python 3 (sandboxed)" in the launcher, run a cell printing the hostname and see the
sandbox's, render an ipywidget; a screenshot goes to ``test-artifacts/``. Playwright
drives the system's ``/usr/bin/chromium`` (it never downloads a browser). Waits are
generous for a loaded CI machine, but every one of them is bounded.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.kernel_helpers import DISPLAY_NAME, install_kernelspecs, start_jupyter, stop, wait_http

pytestmark = [pytest.mark.kernel, pytest.mark.userns, pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
WAIT_MS = 90_000


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str]]:
    prefix = tmp_path / "prefix"
    install_kernelspecs(prefix)
    root = tmp_path / "notebooks"
    root.mkdir()
    token = secrets.token_hex(16)
    proc, base = start_jupyter("jupyterlab", tmp_path, prefix, root, token)
    try:
        wait_http(base, token, proc, timeout=120)
        yield base, token
    finally:
        stop(proc)


def artifact_dir() -> Path:
    """``test-artifacts/`` in the checkout, or where $NSKERNEL_TEST_ARTIFACTS says.

    CI's rootless run cannot write the checkout (root owns it), so it falls back to a
    per-user directory under /tmp, and says where.
    """
    wanted = os.environ.get("NSKERNEL_TEST_ARTIFACTS")
    candidates = [Path(wanted)] if wanted else []
    candidates += [REPO / "test-artifacts", Path(f"/tmp/nskernel-test-artifacts-{os.getuid()}")]
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            if d != candidates[0]:
                print(f"test artifacts go to {d} ({candidates[0]} is not writable)")
            return d
    raise AssertionError(f"no writable directory for test artifacts among {candidates}")


def _api(base: str, token: str, method: str, path: str) -> object:
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        return json.loads(body) if body else None


def test_pick_sandboxed_kernel_run_hostname_and_render_widget(lab: tuple[str, str]) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    base, token = lab
    artifacts = artifact_dir()
    shot = artifacts / f"kernel-browser-{'root' if os.geteuid() == 0 else 'rootless'}.png"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(f"{base}/lab?token={token}", wait_until="domcontentloaded")
            card = page.locator(
                '.jp-LauncherCard[data-category="Notebook"]', has_text=DISPLAY_NAME
            ).first
            card.click()
            # Cells run before the kernel's session is up are silently dropped by Lab.
            page.get_by_text(f"{DISPLAY_NAME} | Idle").first.wait_for()

            editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
            editor.click()
            page.keyboard.type("import socket; print(socket.gethostname())")
            page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
            output.wait_for()
            kernels = _api(base, token, "GET", "/api/kernels")
            assert isinstance(kernels, list) and len(kernels) == 1
            expected = f"nsk-{kernels[0]['id'][:8]}"
            assert output.inner_text().strip() == expected

            page.locator(".jp-NotebookPanel .jp-Cell .cm-content").last.click()
            page.keyboard.type("import ipywidgets as w; w.IntSlider(value=42, description='nsk')")
            page.keyboard.press("Shift+Enter")
            slider = page.locator(".jp-NotebookPanel .widget-slider").first
            slider.wait_for()
            assert "42" in page.locator(".jp-NotebookPanel .widget-readout").first.inner_text()
            page.screenshot(path=str(shot))
        except BaseException:
            if "page" in locals():
                page.screenshot(path=str(shot.with_suffix(".failed.png")))
            raise
        finally:
            browser.close()
    for k in _api(base, token, "GET", "/api/kernels") or []:  # type: ignore[union-attr]
        _api(base, token, "DELETE", f"/api/kernels/{k['id']}")
    assert shot.stat().st_size > 1000
