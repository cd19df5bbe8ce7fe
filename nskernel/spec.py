"""What a sandbox should be: a plain, validated description.

Everything that can be decided without privileges is decided here, before any fork:
which namespaces, the hostname, the binds and their paths. The privileged layer
(``nskernel._linux``) only carries out a spec that is already known to be valid.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable

from .errors import SpecError

ALL_NAMESPACES: tuple[str, ...] = ("pid", "net", "mnt", "uts", "ipc", "user")

# RFC 1123 label, as sethostname(2) users (and `hostname(1)`) expect.
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Bind:
    """A host path made visible inside the sandbox (``--bind`` / ``--ro-bind``)."""

    source: str
    dest: str
    readonly: bool = False

    @classmethod
    def parse(cls, text: str, *, readonly: bool = False) -> Bind:
        """Parse ``SRC[:DST]`` as the command line and the magic accept it."""
        src, sep, dst = text.partition(":")
        if not src or (sep and not dst):
            flag = "--ro-bind" if readonly else "--bind"
            msg = f"{flag} {text!r}: expected SRC or SRC:DST, e.g. {flag} ./data:/data"
            raise SpecError(msg)
        return cls(source=src, dest=dst or src, readonly=readonly)


def _hostname_error(name: str) -> str | None:
    if not _HOSTNAME_RE.match(name):
        return (
            f"invalid hostname {name!r}: use 1-63 letters, digits and '-', "
            "not starting or ending with '-'"
        )
    return None


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    """Which namespaces to create and how to set them up.

    ``namespaces`` is the set the caller asked for; :meth:`effective_namespaces`
    adds ``user`` where an unprivileged caller needs it to create the others.
    ``map_root_to`` is the host uid that sandbox root becomes when the caller is real
    root (never 0); for an unprivileged caller sandbox root is always the caller.
    """

    namespaces: frozenset[str] = frozenset(ALL_NAMESPACES)
    hostname: str | None = None
    binds: tuple[Bind, ...] = ()
    cwd: str | None = None
    env: dict[str, str] | None = None
    map_root_to: int | None = None
    use_subids: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespaces", frozenset(self.namespaces))
        object.__setattr__(self, "binds", tuple(self.binds))
        unknown = self.namespaces - set(ALL_NAMESPACES)
        if unknown:
            msg = (
                f"unknown namespace type(s): {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(ALL_NAMESPACES)}"
            )
            raise SpecError(msg)
        if self.hostname is not None:
            if "uts" not in self.namespaces:
                msg = "a hostname needs a UTS namespace: add --uts (or drop --hostname)"
                raise SpecError(msg)
            err = _hostname_error(self.hostname)
            if err:
                raise SpecError(err)
        if self.binds and "mnt" not in self.namespaces:
            msg = "--bind/--ro-bind need a mount namespace: add --mnt"
            raise SpecError(msg)
        if self.map_root_to == 0:
            msg = "map_root_to=0 would make sandbox root the host's root; pick an unprivileged uid"
            raise SpecError(msg)

    @classmethod
    def from_flags(cls, namespaces: Iterable[str] = (), **kwargs: object) -> SandboxSpec:
        """No namespace named means all six, as on the command line."""
        chosen = frozenset(namespaces) or frozenset(ALL_NAMESPACES)
        return cls(namespaces=chosen, **kwargs)  # type: ignore[arg-type]

    def effective_namespaces(self, *, privileged: bool | None = None) -> frozenset[str]:
        """The namespaces that will actually be created.

        Without CAP_SYS_ADMIN on the host, the kernel only lets a process create the
        other namespace types inside a user namespace it owns, so ``user`` is added.
        """
        if privileged is None:
            from ._linux.userns import in_initial_user_namespace

            # Root inside some other user namespace has no privilege over the host's
            # namespaces; nested sandboxes there still need their own user namespace.
            privileged = os.geteuid() == 0 and in_initial_user_namespace()
        if not privileged and self.namespaces:
            return self.namespaces | {"user"}
        return self.namespaces

    def validate_host_paths(self) -> None:
        """Check bind sources exist, before anything is created."""
        for b in self.binds:
            flag = "--ro-bind" if b.readonly else "--bind"
            if not os.path.exists(b.source):
                msg = f"{flag} {b.source}: no such file or directory on the host"
                raise SpecError(msg)
            if not os.path.isabs(b.dest):
                msg = f"{flag} {b.source}:{b.dest}: the destination must be an absolute path"
                raise SpecError(msg)
        if self.cwd is not None and not os.path.isabs(self.cwd):
            msg = f"working directory {self.cwd!r} must be an absolute path"
            raise SpecError(msg)

    def resolved_binds(self) -> tuple[Bind, ...]:
        """Binds with absolute, symlink-free sources (the sandbox sees the host root at /)."""
        return tuple(
            dataclasses.replace(b, source=os.path.realpath(b.source), dest=os.path.normpath(b.dest))
            for b in self.binds
        )
