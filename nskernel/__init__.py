"""nskernel: sandboxes made of fresh Linux namespaces, for the shell and for Jupyter.

Layout (private modules behind this public surface):

- ``spec``      SandboxSpec and Bind: what a sandbox should be, validated up front
- ``sandbox``   Sandbox: spawn, facts, signal, wait (the launcher side)
- ``_linux``    the privileged, stdlib-only syscall layer, one module per namespace;
                ``_linux/contain.py`` is the setup checklist, in order
- ``errors``    exception classes and the documented exit codes
- ``paths``     the per-user runtime directory (sockets, server state)
- ``doctor``    what this machine allows, and the fix for what it doesn't
- ``cli``       the `nskernel` command (run, doctor, install, uninstall)
- ``kernel``    the "Python 3 (sandboxed)" Jupyter kernel: provisioner, launcher, installer
- ``magics``    ``%%sandbox`` and ``%sandbox`` (``%load_ext nskernel``): the kernel-side
                client and the single-threaded sandbox server
- ``network``   virtual networks between sandboxes (``--network``); netlink work in
                ``_linux/vnet.py``
- ``facts``     one JSON schema for "a place" (the host or a sandbox), read for real
- ``widgets``   host and sandboxes side by side (``compare()``)
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
