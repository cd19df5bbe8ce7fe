"""An IPython extension the sandboxed kernel loads: errors that a sandbox causes say so.

A write into the notebook's directory fails with "Read-only file system" inside the
sandboxed kernel unless it was installed with ``--writable-notebook-dir``; on its own that
message reads like a broken disk. The launcher puts the explanation (which it alone knows:
read-only by default, or refused for a home or a directory of host root's) in
``NSKERNEL_NOTEBOOK_DIR_HINT``; this handler shows it after the usual traceback when an
``OSError`` with ``EROFS`` names a path in that directory.
"""

from __future__ import annotations

import errno
import os
import sys
from types import TracebackType
from typing import Any

HINT_ENV = "NSKERNEL_NOTEBOOK_DIR_HINT"
DIR_ENV = "NSKERNEL_NOTEBOOK_DIR"


def _in_notebook_dir(error: OSError, directory: str) -> bool:
    for name in (error.filename, error.filename2):
        if isinstance(name, (str, bytes)):
            path = os.path.abspath(os.fsdecode(name))
            if path == directory or path.startswith(directory.rstrip("/") + "/"):
                return True
    return False


def _handler(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
    tb_offset: int | None = None,
) -> Any:
    stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    shell._showtraceback(etype, value, stb)
    hint, directory = os.environ.get(HINT_ENV), os.environ.get(DIR_ENV)
    if (
        hint
        and directory
        and isinstance(value, OSError)
        and value.errno == errno.EROFS
        and _in_notebook_dir(value, directory)
    ):
        print(hint, file=sys.stderr)
    return stb


def load_ipython_extension(shell: Any) -> None:
    if os.environ.get(HINT_ENV):
        shell.set_custom_exc((OSError,), _handler)
