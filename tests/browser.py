"""Debian's chromium, headless, for the browser tests (Playwright never downloads one).

The flags keep chromium off the network: without the background-networking ones it
keeps trying to reach Google's services, which this machine's closed network refuses.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Skip (or, with NSKERNEL_MUST_WORK=1, fail) when Debian's chromium is missing."""
    import os

    from tests.conftest import require

    ok = os.access(CHROMIUM, os.X_OK)
    require(None if ok else f"needs Debian's chromium at {CHROMIUM}: apt-get install chromium")
