"""The first cell of every tutorial: can this machine build sandboxes at all?

``check()`` asks ``nskernel doctor``. Where namespaces are allowed it prints one line and
the tutorial runs for real. Where they are refused (Binder and most hosted notebook
services, Docker's default seccomp profile, a zero namespace limit), it prints the
doctor's report — what failed, why, and the fix — and stops "Run All" with one short
line instead of a traceback, so that the failure is said once, at the top, and the
outputs stored in the notebook below stay there to be read.
"""

from __future__ import annotations

import subprocess
import sys


class NamespacesDenied(Exception):
    """Shown as one line: the doctor's report above it says why and what to do."""

    def _render_traceback_(self) -> list[str]:
        return [f"NamespacesDenied: {self}"]


def check() -> None:
    """Print whether sandboxes work here; raise :class:`NamespacesDenied` if not."""
    doctor = subprocess.run(
        [sys.executable, "-m", "nskernel", "doctor"], capture_output=True, text=True, check=False
    )
    if doctor.returncode == 0:
        print("nskernel doctor: sandboxes work here; every cell below runs for real.")
        return
    print(doctor.stdout, doctor.stderr, sep="")
    msg = (
        "this machine does not let nskernel create namespaces (the report above says why "
        "and how to fix it). The stored outputs below show what each cell does; run the "
        "notebook on a Linux machine or VM that allows namespaces to see it live."
    )
    raise NamespacesDenied(msg)
