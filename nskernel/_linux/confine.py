"""Capabilities, no_new_privs and the syscall filter as one step: one call on each side.

``plan`` runs in the launcher with the user's choices (it raises SpecError/SeccompError
for bad ones, before anything is created); its result is plain data carried into the
child plan. ``apply_from_child`` is the command process's last setup step, just before
``execve`` or the target callable: capabilities first (dropping them needs CAP_SETPCAP,
and prctl/capset stay allowed by any sensible filter), then no_new_privs and the filter.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._record import record
from . import caps, seccomp

# typing is only for annotations (strings, with the __future__ import): importing it
# cost every `nskernel run` ~2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class Confinement:
    capabilities: frozenset[str]
    filter: seccomp.Filter
    last_cap: int  # the kernel's highest capability number, read before fork
    cap_mask: int  # ``capabilities`` as bits, computed before fork

    def describe(self) -> dict[str, Any]:
        """JSON-ready: what the command runs with (for --status-json, inspect, doctor)."""
        return {
            "capabilities": sorted(self.capabilities, key=caps.NUMBERS.__getitem__),
            "no_new_privs": True,
            "seccomp": self.filter.describe(),
        }


def plan(
    seccomp_choice: str = seccomp.DEFAULT,
    *,
    cap_add: Iterable[str] = (),
    cap_drop: Iterable[str] = (),
    allow_new_userns: bool = False,
) -> Confinement:
    """Decide in the launcher: ``--seccomp``, ``--cap-add``, ``--cap-drop``, and whether
    this sandbox may create user namespaces (the sandboxed kernel's own sandbox)."""
    keep = caps.plan(cap_add, cap_drop)
    filt = seccomp.load(seccomp_choice, capabilities=keep, allow_new_userns=allow_new_userns)
    return Confinement(keep, filt, caps.last_cap(), caps.mask(keep))


def apply_from_child(c: Confinement) -> None:
    """The command's last setup step. Raises OSError naming the call that failed: the
    command must not run then."""
    caps.apply_mask_from_child(c.cap_mask, c.last_cap)
    seccomp.install_from_child(c.filter)
