"""``nskernel install`` / ``nskernel uninstall``: the kernelspec, like ``ipykernel install``.

The template and logos live in ``kernelspec/`` at the top of the repository; wheels carry
them as ``nskernel/kernelspec``. The written kernel.json runs ipykernel with this very
interpreter (absolute ``sys.executable``: a PATH ``python3`` may be another Python or a
slow shim) and names the provisioner with its configuration, so several kernelspecs with
different namespace sets can live side by side under different names.

The kernel's environment is an allow-list of the server's (see
:mod:`nskernel.environ`): ``--env KEY=VALUE`` / ``--env KEY`` add to it for every
session of the kernelspec, ``--keep-env`` passes everything, secrets included. They are
stored in the provisioner's configuration, where the provisioner applies them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..environ import parse_env_option
from ..errors import NskernelError, SpecError
from ..spec import (
    ALL_NAMESPACES,
    DEGRADED_ENV,
    DEGRADED_MODES,
    _hostname_error,
    make_limits,
    parse_degraded,
)
from . import DEFAULT_DISPLAY_NAME, DEFAULT_NAME, PROVISIONER_NAME

if TYPE_CHECKING:
    from pathlib import Path

# pathlib, shutil and tempfile are imported where they are used: the `nskernel` command
# builds this module's parsers on every call, and `nskernel run` paid ~4 ms for them.


class InstallError(NskernelError):
    """The kernelspec could not be installed or removed; the message says why."""


def template_dir() -> Path:
    """The kernelspec template: inside the package (wheel), else the repository's top."""
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "kernelspec", here.parent / "kernelspec"):
        if (candidate / "kernel.json").is_file():
            return candidate
    msg = "the kernelspec template (kernelspec/kernel.json) is missing; reinstall nskernel"
    raise InstallError(msg)


def parse_namespaces(text: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(ALL_NAMESPACES))
    if unknown:
        choices = ", ".join(ALL_NAMESPACES)
        msg = f"unknown namespace type(s) {', '.join(unknown)}; choose from {choices}"
        raise InstallError(msg)
    if not chosen:
        msg = f"--namespaces is empty; choose from {', '.join(ALL_NAMESPACES)}"
        raise InstallError(msg)
    # The kernel always gets a user namespace (sandbox root must not be host root).
    return [n for n in ALL_NAMESPACES if n in chosen or n == "user"]


def kernel_json(
    *,
    display_name: str = DEFAULT_DISPLAY_NAME,
    namespaces: list[str] | None = None,
    hostname: str | None = None,
    python: str | None = None,
    limits: dict[str, str] | None = None,
    env: list[str] | None = None,
    keep_env: bool = False,
    seccomp: str | None = None,
    cap_add: list[str] | None = None,
    cap_drop: list[str] | None = None,
    allow_degraded: str | None = None,
    writable_notebook_dir: bool = False,
) -> dict[str, Any]:
    with open(template_dir() / "kernel.json") as f:
        spec = json.load(f)
    exe = python or sys.executable
    spec["argv"] = [exe if a == "{python}" else a for a in spec["argv"]]
    spec["display_name"] = display_name
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == PROVISIONER_NAME
    config["namespaces"] = namespaces or list(ALL_NAMESPACES)
    if hostname:
        if "uts" not in config["namespaces"]:
            raise InstallError("--hostname needs the uts namespace: add uts to --namespaces")
        err = _hostname_error(hostname)
        if err:
            raise InstallError(err)
        config["hostname"] = hostname
    limits = {k: v for k, v in (limits or {}).items() if v is not None}
    if limits:
        try:  # checked now, so a bad value fails at install time, not at every start
            make_limits(limits.get("memory"), limits.get("pids"), limits.get("cpus"))
        except SpecError as e:
            raise InstallError(str(e)) from None
        config["limits"] = {k: str(v) for k, v in limits.items()}
    if env:
        for text in env:
            try:  # checked now, like the limits
                parse_env_option(text)
            except SpecError as e:
                raise InstallError(str(e)) from None
        config["env"] = list(env)
    if keep_env:
        config["keep_env"] = True
    if seccomp or cap_add or cap_drop:
        from .._linux import confine

        if seccomp and seccomp not in ("default", "unconfined"):
            seccomp = os.path.abspath(seccomp)  # the kernel starts elsewhere
        try:  # checked (and the profile compiled) now, like the limits
            confine.plan(seccomp or "default", cap_add=cap_add or (), cap_drop=cap_drop or ())
        except SpecError as e:
            raise InstallError(str(e)) from None
        if seccomp:
            config["seccomp"] = seccomp
        if cap_add:
            config["cap_add"] = list(cap_add)
        if cap_drop:
            config["cap_drop"] = list(cap_drop)
    modes = parse_degraded(allow_degraded)
    if modes - DEGRADED_MODES:
        bad = ",".join(sorted(modes - DEGRADED_MODES))
        raise InstallError(f"--allow-degraded {bad}: choose from proc, sys, hostname")
    if modes:
        config["allow_degraded"] = sorted(modes)
    if writable_notebook_dir:
        config["writable_notebook_dir"] = True
    return spec


def install(
    *,
    name: str = DEFAULT_NAME,
    display_name: str = DEFAULT_DISPLAY_NAME,
    namespaces: list[str] | None = None,
    hostname: str | None = None,
    user: bool = False,
    prefix: str | None = None,
    limits: dict[str, str] | None = None,
    env: list[str] | None = None,
    keep_env: bool = False,
    seccomp: str | None = None,
    cap_add: list[str] | None = None,
    cap_drop: list[str] | None = None,
    allow_degraded: str | None = None,
    writable_notebook_dir: bool = False,
) -> str:
    """Install the kernelspec; returns the directory it was written to."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = kernel_json(
        display_name=display_name,
        namespaces=namespaces,
        hostname=hostname,
        limits=limits,
        env=env,
        keep_env=keep_env,
        seccomp=seccomp,
        cap_add=cap_add,
        cap_drop=cap_drop,
        allow_degraded=allow_degraded,
        writable_notebook_dir=writable_notebook_dir,
    )
    import shutil
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / name
        src.mkdir()
        for logo in template_dir().glob("logo-*.png"):
            shutil.copy(logo, src / logo.name)
        (src / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        return KernelSpecManager().install_kernel_spec(
            str(src), kernel_name=name, user=user, prefix=prefix
        )


def uninstall(name: str = DEFAULT_NAME) -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().remove_kernel_spec(name)
    except (NoSuchKernel, KeyError):  # jupyter_client 8 raises KeyError here
        msg = f"no kernelspec named {name!r} is installed (see `jupyter kernelspec list`)"
        raise InstallError(msg) from None


def _cmd_install(args: argparse.Namespace) -> int:
    prefix = args.prefix
    if args.sys_prefix:
        prefix = sys.prefix
    namespaces = parse_namespaces(args.namespaces) if args.namespaces else None
    try:
        dest = install(
            name=args.name,
            display_name=args.display_name,
            namespaces=namespaces,
            hostname=args.hostname,
            user=args.user,
            prefix=prefix,
            limits={"memory": args.memory, "pids": args.pids, "cpus": args.cpus},
            env=args.env,
            keep_env=args.keep_env,
            seccomp=args.seccomp,
            cap_add=args.cap_add,
            cap_drop=args.cap_drop,
            allow_degraded=args.allow_degraded,
            writable_notebook_dir=args.writable_notebook_dir,
        )
    except PermissionError as e:
        msg = f"cannot write the kernelspec ({e}); use --user, or --prefix with a writable path"
        raise InstallError(msg) from e
    print(f"Installed kernelspec {args.name} ({args.display_name!r}) in {dest}")
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    dest = uninstall(args.name)
    print(f"Removed kernelspec {args.name} from {dest}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``install`` and ``uninstall`` to the ``nskernel`` command."""
    p = sub.add_parser(
        "install",
        help='install the "Python 3 (sandboxed)" Jupyter kernelspec',
        description="Install a kernelspec that runs ipykernel in fresh Linux namespaces.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--user", action="store_true", help="install for the current user (~/.local/share)"
    )
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help=f"install into this Python's prefix ({sys.prefix}), e.g. a virtualenv",
    )
    where.add_argument("--prefix", metavar="P", help="install into PREFIX/share/jupyter/kernels")
    p.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help=f"kernelspec name, the directory it lives in (default: {DEFAULT_NAME})",
    )
    p.add_argument(
        "--display-name",
        default=DEFAULT_DISPLAY_NAME,
        metavar="TEXT",
        help=f"name shown in the kernel picker (default: {DEFAULT_DISPLAY_NAME!r})",
    )
    p.add_argument(
        "--namespaces",
        metavar="LIST",
        help=f"comma-separated namespaces to create (default: all: {','.join(ALL_NAMESPACES)});"
        " user is always included",
    )
    p.add_argument(
        "--hostname",
        metavar="NAME",
        help="fixed hostname inside (default: nsk-<first 8 characters of the kernel id>)",
    )
    p.add_argument("--memory", metavar="SIZE", help="memory limit for each session, e.g. 1G")
    p.add_argument("--pids", metavar="N", help="at most N processes at once in a session")
    p.add_argument("--cpus", metavar="FRACTION", help="CPU share of a session, e.g. 0.5")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="add to the kernel's environment (an allow-list of the server's): KEY=VALUE "
        "sets it, KEY passes the server's value on; repeatable",
    )
    p.add_argument(
        "--keep-env",
        action="store_true",
        help="pass the server's whole environment to the kernel, secrets such as "
        "JUPYTERHUB_API_TOKEN included",
    )
    p.add_argument(
        "--seccomp",
        metavar="default|unconfined|PATH",
        help="the kernel's syscall filter: nskernel's default (which lets %%%%sandbox make "
        "its nested sandboxes), none, or a Docker/OCI JSON profile",
    )
    p.add_argument(
        "--cap-add",
        action="append",
        default=[],
        metavar="CAP",
        help="keep this capability for the kernel's sandbox root too (e.g. SYS_PTRACE)",
    )
    p.add_argument(
        "--cap-drop",
        action="append",
        default=[],
        metavar="CAP",
        help="drop this capability from the kernel's default set",
    )
    p.add_argument(
        "--allow-degraded",
        metavar="proc,sys,hostname",
        default=os.environ.get(DEGRADED_ENV),
        help="in a container that refuses a fresh /proc or /sys, or sethostname: keep the "
        "container's own, with a warning (docs/deploy.md)",
    )
    p.add_argument(
        "--writable-notebook-dir",
        action="store_true",
        help="let the kernel write in the notebook's directory (default: read-only inside). "
        "What it writes there, Jupyter, your shell and Python meet later: a symlink in place "
        "of a notebook makes Jupyter's next save write where it points; a json.py left there "
        "runs in any Python started in that directory outside the sandbox (a plain kernel, "
        "python -m, pytest). Never a home, never a directory of host root's (SECURITY.md)",
    )
    p.set_defaults(func=_cmd_install)

    u = sub.add_parser("uninstall", help="remove an installed nskernel kernelspec")
    u.add_argument(
        "--name", default=DEFAULT_NAME, help=f"kernelspec to remove (default: {DEFAULT_NAME})"
    )
    u.set_defaults(func=_cmd_uninstall)


if __name__ == "__main__":  # pragma: no cover
    print(os.linesep.join(json.dumps(kernel_json(), indent=1).splitlines()))
