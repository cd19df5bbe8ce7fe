"""Re-run the tutorial notebooks and store their fresh outputs: ``python -m notebooks.regenerate``.

Run it from the repository root after a change in behaviour, as root or as an ordinary
user (the stored outputs validate both ways: what differs goes through
``notebooks/sanitize.cfg``), then review the diff and commit it. Give notebook names to
regenerate only those: ``python -m notebooks.regenerate 01-pid 07-two-containers``.

Each notebook runs on the kernel named in its metadata, like nbval runs it. The
sandboxed kernel ("nskernel") is installed into a temporary prefix found through
JUPYTER_PATH for the duration — the user's own Jupyter config is never touched — and
:func:`temporary_kernelspec` is shared with ``notebooks/conftest.py`` so nbval sees the
same kernelspec.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The kernelspec name the sandboxed notebooks declare (what ``nskernel install`` writes).
SANDBOXED_KERNEL = "nskernel"


@contextlib.contextmanager
def temporary_kernelspec() -> Iterator[str]:
    """Install "Python 3 (sandboxed)" into a throwaway prefix; JUPYTER_PATH points at it."""
    from nskernel.kernel import install

    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="nsk-notebooks-") as tmp:
        # Readable by everyone: an unprivileged CI user may run under a root-made prefix.
        os.chmod(tmp, 0o755)
        install.install(name=SANDBOXED_KERNEL, prefix=tmp)
        share = os.path.join(tmp, "share", "jupyter")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, old) if p)
        try:
            yield share
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def notebooks(names: list[str]) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]-*.ipynb"))
    if not names:
        return found
    chosen = [p for p in found if p.stem in names or p.name in names]
    missing = sorted(set(names) - {p.stem for p in chosen} - {p.name for p in chosen})
    if missing:
        msg = f"no such notebook: {', '.join(missing)} (have: {', '.join(p.stem for p in found)})"
        raise SystemExit(msg)
    return chosen


def regenerate(path: Path, timeout: float = 120) -> float:
    """Execute one notebook in place; returns the seconds it took. Errors stop the run."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=nb.metadata["kernelspec"]["name"],
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,  # timestamps would make every regeneration a diff
        store_widget_state=True,  # quizzes and panels render in static viewers too
    ).execute()
    nbformat.write(nb, path)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m notebooks.regenerate",
        description="Execute the tutorial notebooks and store their fresh outputs in place.",
    )
    p.add_argument("names", nargs="*", help="notebooks to run, e.g. 01-pid (default: all)")
    p.add_argument(
        "--timeout", type=float, default=120, help="seconds one cell may take (default: 120)"
    )
    args = p.parse_args(argv)
    with temporary_kernelspec():
        for path in notebooks(args.names):
            took = regenerate(path, args.timeout)
            print(f"{path.name}: {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
