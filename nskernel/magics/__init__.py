"""``%%sandbox`` and ``%sandbox``: run notebook cells in fresh Linux namespaces.

Layout:

- ``magic``      the IPython magics (argument parsing, republishing output)
- ``client``     kernel side: starts the sandbox server, relays frames
- ``server``     the single-threaded process that forks every sandbox
- ``cellrunner`` the IPython shell that runs inside each sandbox
- ``protocol``   JSON frames over unix sockets (nothing is ever pickled), their size limits
- ``messages``   what a cell runner may send: every frame from a sandbox is checked here
- ``untrusted``  what of a sandbox's display output may reach the browser (sanitizing)
- ``inside``     in the sandbox: comms, input()/getpass(), completion for its code
- ``comms``      in the kernel: which comm messages of a sandbox reach the frontend
- ``completion`` completion and inspection of a ``%%sandbox --name`` cell, from it

A sandbox is hostile: whatever it sends is checked before use (a malformed message
stops that sandbox only), and its output is made inert unless ``--trust-output``.

Loading the extension is cheap: the server starts on the first ``%%sandbox``.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    from .magic import SandboxMagics, misplaced_cell_magic

    ipython.register_magics(SandboxMagics)
    # IPython reads `%%sandbox` below a cell's first line as a line magic named
    # "%sandbox"; registered under that name, it can say what is wrong.
    ipython.register_magic_function(misplaced_cell_magic, "line", "%sandbox")
    from .completion import install

    install(ipython)  # a named sandbox's cell completes from that sandbox


def unload_ipython_extension(ipython: Any) -> None:
    from .client import shutdown_client

    shutdown_client()
