"""The environment a sandbox starts with: an allow-list, never the caller's whole one.

The hazard: a kernel's or a shell's environment carries secrets that code in a sandbox
must not see: ``JUPYTERHUB_API_TOKEN``, cloud credentials (``AWS_SECRET_ACCESS_KEY``),
``SSH_AUTH_SOCK``, ``DISPLAY`` (X11 access is keyboard access), tokens of CI systems.
Filtering out known-bad names cannot keep up with them; so a sandbox gets only the
variables below, which tools need to behave as they do on the host, plus what nskernel
itself sets (the kernel's connection details) and what the caller names explicitly:
``--env KEY=VALUE`` / ``--env KEY`` per sandbox, or ``NSKERNEL_KEEP_ENV`` (names separated
by spaces or commas) for every sandbox a process makes. ``--keep-env`` passes everything.

Standard library only: the sandbox server and the launchers import it before forking.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping

from .errors import SpecError

# What a program needs to find its tools and speak the user's language. No credentials,
# no sockets, no display: each of those is a way out of the sandbox or a secret.
ALLOWED: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TERM",
        "COLORTERM",
        "NO_COLOR",
        "TZ",
        # Python: where modules come from and how the interpreter behaves.
        "PYTHONPATH",
        "PYTHONNOUSERSITE",
        "PYTHONSAFEPATH",
        "PYTHONUTF8",
        "PYTHONIOENCODING",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONWARNINGS",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV",
        "MPLBACKEND",
    }
)
ALLOWED_PREFIXES: tuple[str, ...] = ("LC_",)

# Names (separated by spaces or commas) that every sandbox made by this process also gets.
KEEP_ENV_VAR = "NSKERNEL_KEEP_ENV"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def allowed(name: str) -> bool:
    return name in ALLOWED or name.startswith(ALLOWED_PREFIXES)


def kept_names(source: Mapping[str, str]) -> set[str]:
    """The extra names ``NSKERNEL_KEEP_ENV`` asks for (invalid ones are ignored)."""
    text = source.get(KEEP_ENV_VAR, "")
    return {n for n in re.split(r"[\s,]+", text) if _NAME_RE.fullmatch(n)}


def parse_env_option(text: str) -> tuple[str, str | None]:
    """``--env KEY=VALUE`` -> (KEY, VALUE); ``--env KEY`` -> (KEY, None): take the caller's."""
    name, sep, value = text.partition("=")
    if not _NAME_RE.fullmatch(name):
        msg = (
            f"--env {text!r}: expected KEY=VALUE, or KEY to pass the current value on; "
            "KEY is letters, digits and '_', not starting with a digit"
        )
        raise SpecError(msg)
    return name, (value if sep else None)


def sandbox_environment(
    source: Mapping[str, str],
    *,
    env_options: Iterable[str] = (),
    keep_all: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a sandbox, from the caller's ``source``.

    ``env_options``: ``--env`` values (``KEY=VALUE`` sets, ``KEY`` copies from ``source``
    if set there). ``keep_all``: ``--keep-env``, everything passes. ``extra``: what the
    caller itself sets (e.g. the kernel's ``JPY_PARENT_PID``), applied last.
    """
    if keep_all:
        env = dict(source)
    else:
        names = kept_names(source)
        env = {k: v for k, v in source.items() if allowed(k) or k in names}
    for text in env_options:
        name, value = parse_env_option(text)
        if value is not None:
            env[name] = value
        elif name in source:
            env[name] = source[name]
    if extra:
        env.update(extra)
    return env


# What nskernel's own helper processes need beyond the allow-list: its settings, where
# its runtime state lives, what the interpreter itself may need to start.
HELPER_PREFIXES: tuple[str, ...] = ("NSKERNEL_",)
HELPER_NAMES: frozenset[str] = frozenset({"XDG_RUNTIME_DIR", "LD_LIBRARY_PATH", "PYTHONHOME"})


def helper_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The environment for a helper that forks sandboxes (the ``%%sandbox`` server).

    Every sandbox it forks starts as a copy of its memory, environment included, so it
    gets the allow-list too (plus nskernel's own settings), never the caller's secrets:
    each sandbox's environment is computed by the caller and sent with the request.
    """
    return {
        k: v
        for k, v in source.items()
        if allowed(k) or k in HELPER_NAMES or k.startswith(HELPER_PREFIXES)
    }


def python_module_command(module: str) -> list[str]:
    """The command that runs nskernel's helper ``module`` (``python -m module``) host-side.

    Never plain ``python -m``: it puts the working directory first on ``sys.path``, and a
    helper's working directory is the notebook's, which a sandbox may be able to write
    (``--writable-notebook-dir``, a ``%%sandbox --bind``); a ``json.py`` planted there
    would run outside every sandbox at the next start, as the server's user. ``-P``
    (Python 3.11+) leaves it out; before 3.11, the entry is removed before any import.
    """
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module]
    bootstrap = (
        "import sys; del sys.path[0]; import runpy; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", bootstrap]


def cwd_on_sys_path() -> None:
    """Inside a sandbox, in Python forked from a helper started by python_module_command:
    the working directory on ``sys.path`` again, where ``python -m ipykernel_launcher``
    has it, so modules beside a notebook import in the sandboxed kernel and in cells.

    Such a process inherits neither the entry nor ``-P``'s effect on IPython, which then
    leaves out its ``''`` (before site-packages); both are put back, inside the sandbox,
    where the directory can do no harm.
    """
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    if getattr(sys.flags, "safe_path", False) and "" not in sys.path:
        sites = ("site-packages", "dist-packages")
        at = next((i for i, p in enumerate(sys.path) if os.path.basename(p) in sites), 0)
        sys.path.insert(at, "")


# Lists of directories that a program searches relative to its working directory when an
# entry is relative or empty ("/x:" means "/x" and "."): PATH (execvp, shutil.which),
# PYTHONPATH (sys.path), LD_LIBRARY_PATH (the dynamic loader).
PATH_LISTS = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH")


def absolute_path_lists(env: Mapping[str, str], base: str) -> dict[str, str]:
    """``env`` with every entry of its PATH_LISTS absolute: relative and empty ones are
    resolved against ``base`` (where the user started the program that hands ``env`` on).

    A host-side helper starts in the notebook's directory, which a sandbox may write: a
    relative entry there would have it import a ``json.py``, or run a ``newuidmap``, that
    the sandbox left (red team: ``PYTHONPATH=src jupyter lab``, or ``/x:``).
    """
    out = dict(env)
    for name in PATH_LISTS:
        if name in out:
            parts = out[name].split(os.pathsep)
            out[name] = os.pathsep.join(os.path.normpath(os.path.join(base, p)) for p in parts)
    return out
