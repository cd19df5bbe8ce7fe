"""What a notebook user does works inside a sandbox: the IPython side of it.

Loaded into the sandboxed kernel (an IPython extension, ``--InteractiveShellApp.
extra_extensions``) and into every ``%%sandbox`` cell runner (``activate`` in the sandbox,
``install_magics`` once in the server). Runs inside the sandbox only, where the host's
files are read-only and the home is private, empty and writable:

- ``%pip install`` goes to the sandbox's home: ``--prefix ~/.local`` (the same directory
  a user-site install uses, so a Python without a venv imports it natively). A venv
  turns the user site off and its own site-packages are read-only here, so that prefix
  is put on ``sys.path`` ahead of the environment's site-packages, on ``PYTHONPATH`` for
  subprocesses, and its ``bin`` on ``PATH``. It lasts as long as the home: the kernel's
  session, a named sandbox, one ``%%sandbox`` cell. A failed install fails the cell
  (IPython's own ``%pip`` reports nothing and suggests a restart).
- ``PATH`` leads to the kernel's own Python first: ``!python3``, ``!pip``,
  ``subprocess.run(["python3", ...])`` get the interpreter this kernel runs on (with its
  packages), never another one that happens to come next on the host's PATH (e.g. when
  a pyenv shim in the hidden home came first outside).
- A write into a read-only place says which option makes it writable.

Keep this cheap: ``activate`` runs in every ``%%sandbox`` cell's sandbox.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import shlex
import site
import sys
import sysconfig
from typing import Any

# Where %pip installs go, inside: the sandbox's private home.
PREFIX = "~/.local"


def _scheme_paths() -> tuple[str, ...]:
    """purelib, platlib and scripts of this Python's default scheme, relative to a prefix.

    Computed once (sysconfig's work, in the %%sandbox server before it forks), so a
    sandbox only joins strings. pip uses the same scheme for ``--prefix``.
    """
    base = "/nskernel-prefix"
    names = ("purelib", "platlib", "scripts")
    paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
    return tuple(os.path.relpath(paths[n], base) for n in names)


_PURELIB, _PLATLIB, _SCRIPTS = _scheme_paths()


def install_dirs(home: str | None = None) -> tuple[str, list[str], str]:
    """(prefix, its site directories, its scripts directory) under ``home``."""
    prefix = os.path.join(home or os.path.expanduser("~"), PREFIX[2:])
    sites = [os.path.join(prefix, _PURELIB)]
    if _PLATLIB != _PURELIB:
        sites.append(os.path.join(prefix, _PLATLIB))
    return prefix, sites, os.path.join(prefix, _SCRIPTS)


def _prepend(value: str | None, entry: str) -> str:
    parts = [p for p in (value or "").split(os.pathsep) if p and p != entry]
    return os.pathsep.join([entry, *parts])


def activate(environ: Any = os.environ) -> None:
    """Make the sandbox's install prefix and this Python the first choice. Inside only."""
    _, sites, scripts = install_dirs()
    # Ahead of the environment's site-packages (so an upgrade installed with
    # --ignore-installed wins) but after the standard library and the cell's directory.
    env_sites = set(site.getsitepackages())
    at = next((i for i, p in enumerate(sys.path) if p in env_sites), len(sys.path))
    for d in reversed(sites):
        if d not in sys.path:
            sys.path.insert(at, d)
        environ["PYTHONPATH"] = _prepend(environ.get("PYTHONPATH"), d)
    path = environ.get("PATH") or os.defpath
    path = _prepend(path, scripts)
    python_dir = os.path.dirname(sys.executable)
    if python_dir:
        path = _prepend(path, python_dir)
    environ["PATH"] = path


# Options that say where pip installs: the user chose, we do not add --prefix.
_PLACE_OPTIONS = ("--prefix", "--target", "-t", "--user", "--root", "--home")
_INSTALL = re.compile(r"^(\s*(?:-\S+\s+)*)install(\s|$)")


def pip_line(line: str, prefix: str) -> str:
    """``%pip``'s arguments with ``--prefix PREFIX`` added to an ``install`` that has no place."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return line  # pip reports the quoting error itself
    placed = any(w == o or w.startswith(o + "=") for w in words for o in _PLACE_OPTIONS)
    if placed or not _INSTALL.match(line):
        return line
    return _INSTALL.sub(lambda m: f"{m[1]}install --prefix {shlex.quote(prefix)}{m[2]}", line, 1)


def install_magics(shell: Any) -> None:
    """Replace ``%pip`` by one that installs where the sandbox can, and fails the cell."""
    from IPython.core.error import UsageError

    def pip(line: str) -> None:
        """Run pip for this kernel's Python, inside the sandbox.

        ``%pip install PKG`` installs into the sandbox's home (``--prefix ~/.local``),
        which this kernel imports from right away; the kernel's environment itself is
        read-only here. A failed pip command fails the cell.
        """
        prefix, _, _ = install_dirs()
        python = shlex.quote(sys.executable)
        shell.user_ns["_exit_code"] = None
        shell.system(f"{python} -m pip {pip_line(line, prefix)}")
        status = shell.user_ns.get("_exit_code")
        if status != 0:
            msg = (
                f"pip failed (exit status {status}); its messages are above. In a sandbox "
                f"the kernel's environment is read-only and %pip install goes to {prefix}: "
                "to upgrade a package the environment already has, add --ignore-installed "
                "(the new version goes there and comes first)"
            )
            raise UsageError(msg)
        # What was just installed is importable now; what was imported already keeps
        # its old version until the kernel restarts.
        importlib.invalidate_caches()
        if _INSTALL.match(line):
            print("Note: you may need to restart the kernel to use updated packages.")

    shell.register_magic_function(pip, "line", "pip")


# A %%sandbox cell's working directory (the notebook's) cannot be bound writable: the
# kernel imports code from it (magics/magic.py, _writable_bind_over_code). A subdirectory can.
CWD_WRITABLE = (
    "--bind ./SUBDIR makes a subdirectory of it writable (the directory itself stays "
    "read-only: the kernel imports code from it)"
)


def read_only_hint(exc: BaseException) -> str | None:
    """For an error that is a write into a read-only place: how to write there instead.

    sqlite says only "unable to open database file" (it cannot create its journal
    there), so the working directory is checked for that.
    """
    cwd = _cwd()
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        where = exc.filename if isinstance(exc.filename, str) else None
        if where is None or _under(os.path.abspath(where), cwd):
            return (
                f"nskernel: the cell's directory {cwd} is read-only in this sandbox; "
                + CWD_WRITABLE
            )
        return (
            f"nskernel: {where} is read-only in this sandbox (the host's files are); "
            "--bind SRC makes a host directory writable, or write under $HOME or /tmp"
        )
    if type(exc).__name__ == "OperationalError" and type(exc).__module__ == "sqlite3":
        text = str(exc)
        if ("unable to open" in text or "readonly" in text) and cwd and _read_only(cwd):
            return (
                f"nskernel: the cell's directory {cwd} is read-only in this sandbox, so "
                "sqlite cannot write there; " + CWD_WRITABLE
            )
    return None


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return ""


def _under(path: str, top: str) -> bool:
    return bool(top) and (path == top or path.startswith(top.rstrip("/") + "/"))


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def load_ipython_extension(shell: Any) -> None:
    """The sandboxed kernel's extension (loaded by the launcher, inside the sandbox)."""
    activate()
    install_magics(shell)
