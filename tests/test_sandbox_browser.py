"""A real JupyterLab in headless Debian chromium: widgets and input() from ``%%sandbox``.

As a user would: run a notebook whose cell creates an ``interact`` slider in a named
sandbox, see the sandbox's answer, move the slider with the keyboard and see the new
answer computed inside the sandbox (its hostname says where); then answer ``input()``
and ``getpass()`` of a ``%%sandbox`` cell in JupyterLab's input box, the password in a
field that does not echo. Waits are bounded and generous for a loaded machine.
"""

from __future__ import annotations

import json

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_widgets_browser import lab  # noqa: F401  (the JupyterLab fixture)

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.userns, pytest.mark.slow]

WAIT_MS = 90_000

SLIDER = """\
%%sandbox --name lab1 --hostname inside-lab1
import socket
from ipywidgets import interact, IntSlider

@interact(x=IntSlider(value=3, min=0, max=10, description="x"))
def square(x):
    print(f"{socket.gethostname()}: {x} squared is {x * x}")
"""

STDIN = """\
%%sandbox
import getpass
name = input("your name? ")
secret = getpass.getpass("password: ")
print(f"hello {name} from {__import__('socket').gethostname()}, {len(secret)} characters")
"""


def _notebook(*cells: str) -> str:
    return json.dumps(
        {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "metadata": {},
                    "outputs": [],
                    "source": src,
                }
                for src in cells
            ],
            "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


def test_a_slider_and_input_in_sandboxes_work_in_jupyterlab(lab, tmp_path) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    url, token, notebooks = lab
    (notebooks / "widgets.ipynb").write_text(
        _notebook("%load_ext nskernel", SLIDER, STDIN, "%sandbox rm --all")
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/widgets.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=WAIT_MS)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=WAIT_MS)
            page.click(".jp-Cell .jp-InputArea-editor")
            page.keyboard.press("Shift+Enter")  # %load_ext
            page.keyboard.press("Shift+Enter")  # the slider
            # The widget is drawn (its model came from the sandbox) and its first answer.
            handle = page.locator(".jp-OutputArea .widget-slider .noUi-handle").first
            handle.wait_for(timeout=WAIT_MS)
            page.get_by_text("inside-lab1: 3 squared is 9").wait_for(timeout=WAIT_MS)
            # Move the slider: two steps right. Each step is a comm_msg to the kernel,
            # relayed to the sandbox, whose print lands in interact's Output widget.
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            page.get_by_text("inside-lab1: 5 squared is 25").wait_for(timeout=WAIT_MS)
            assert page.get_by_text("inside-lab1: 3 squared is 9").count() == 0  # cleared

            # input() and getpass() from a %%sandbox cell, answered in JupyterLab.
            page.locator(".jp-Cell").nth(2).locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            box = page.locator(".jp-Stdin-input")
            box.wait_for(timeout=WAIT_MS)
            assert box.get_attribute("type") != "password"
            box.fill("ada")
            box.press("Enter")
            secret = page.locator("input.jp-Stdin-input[type='password']")
            secret.wait_for(timeout=WAIT_MS)
            secret.fill("s3cret!")
            secret.press("Enter")
            page.get_by_text("hello ada from nsk-").wait_for(timeout=WAIT_MS)
            assert page.get_by_text("7 characters").count() == 1
            assert page.get_by_text("s3cret!").count() == 0  # not echoed anywhere
            page.screenshot(path=str(tmp_path / "sandbox-widgets.png"))
            page.locator(".jp-Cell").nth(3).locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")  # %sandbox rm --all
            page.get_by_text("removed: lab1").wait_for(timeout=WAIT_MS)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            browser.close()
