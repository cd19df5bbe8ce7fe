"""A real JupyterLab in headless Debian chromium draws the compare panel for a real sandbox.

The notebook cell starts a sandbox with `nskernel run --hostname web1` and displays
``compare(...)``; the test waits for the drawn panel and checks that the sandbox's
hostname and its PID 1 are on the page, then saves a screenshot (``widgets.png`` in the
test's directory; with NSKERNEL_SCREENSHOT_DIR set, also there — that is how
docs/widgets.png is refreshed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.facts_helpers import end_run_process, notebook_cell

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.userns, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on loopback, with its config and state under tmp_path."""
    require_chromium()
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(
        os.environ,
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    # No "news" or "check for updates" prompts covering the page, and no network.
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "wb")  # closed in teardown
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()}")
                time.sleep(0.2)
        yield url, token, notebooks
    finally:
        end_run_process(str(notebooks))
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_jupyterlab_shows_the_sandbox_next_to_the_host(lab, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    url, token, notebooks = lab
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": notebook_cell(str(notebooks), "web1"),
            }
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (notebooks / "demo.ipynb").write_text(json.dumps(nb))
    shot = tmp_path / "widgets.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/lab/tree/demo.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            # Wait until the kernel is connected and idle, then run the cell as a user does.
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
            page.click(".jp-Cell .jp-InputArea-editor")
            page.keyboard.press("Shift+Enter")
            sandbox = page.locator(".nsk-place[data-kind='sandbox']")
            try:
                sandbox.wait_for(timeout=90_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"))
                raise
            assert "web1" in sandbox.inner_text()
            status = json.loads((notebooks / "status.json").read_text())
            first_pid_row = sandbox.locator("tr", has_text="sleep 600")
            assert first_pid_row.count() == 1
            rows = sandbox.locator("table").nth(1).locator("tr")
            init_cells = rows.nth(1).locator("td")
            assert init_cells.nth(0).inner_text().strip() == "1"
            assert init_cells.nth(1).inner_text().strip() == str(status["pid"])
            host = page.locator(".nsk-place[data-kind='host']")
            assert "[web1]" in host.inner_text()
            # Collapse the code so the picture is the panel.
            page.locator(".jp-Cell .jp-InputArea-editor").first.click()
            page.keyboard.press("Escape")
            page.locator(".jp-Cell .jp-Cell-inputCollapser").first.click()
            page.keyboard.press("Control+b")  # hide the file browser
            page.set_viewport_size({"width": 1400, "height": 1300})
            page.wait_for_timeout(500)
            page.locator(".jp-Cell .jp-OutputArea").first.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    out_dir = os.environ.get("NSKERNEL_SCREENSHOT_DIR")
    if out_dir:
        shutil.copy(shot, os.path.join(out_dir, "widgets.png"))
