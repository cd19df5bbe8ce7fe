"""nskernel: sandboxes made of fresh Linux namespaces, for the shell and for Jupyter.

Layout (private modules behind this public surface):

- ``spec``      SandboxSpec and Bind: what a sandbox should be, validated up front
- ``sandbox``   Sandbox: spawn, facts, signal, wait (the launcher side)
- ``_linux``    the privileged, stdlib-only syscall layer, one module per namespace
- ``doctor``    what this machine allows, and the fix for what it doesn't
- ``cli``       the `nskernel` command
- ``kernel``    the "Python 3 (sandboxed)" Jupyter kernel: provisioner and installer
- ``magics``    ``%%sandbox`` and ``%sandbox`` (``%load_ext nskernel``)
- ``widgets``   host and sandboxes side by side
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import CommandNotFound, NskernelError, SandboxError, SpecError
from .sandbox import Sandbox, run
from .spec import ALL_NAMESPACES, Bind, SandboxSpec

__all__ = [
    "ALL_NAMESPACES",
    "Bind",
    "CommandNotFound",
    "NskernelError",
    "Sandbox",
    "SandboxError",
    "SandboxSpec",
    "SpecError",
    "__version__",
    "load_ipython_extension",
    "run",
]


def load_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    """``%load_ext nskernel``: registers ``%%sandbox`` and ``%sandbox``."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):  # type: ignore[no-untyped-def]
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
