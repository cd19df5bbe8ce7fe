"""Re-run the tutorials and store their fresh outputs: ``python -m tests.tutorials.regenerate``.

Run it from the repository root after a change in behaviour, as root or as an ordinary
user (the stored outputs validate both ways: what differs goes through
``tests/tutorials/sanitize.cfg``), then review the diff and commit it. Give names to
regenerate only those: ``python -m tests.tutorials.regenerate 01-pid 07-two-containers``.

Each notebook runs on the kernel named in its metadata, as nbval runs it, with widget
state stored (so quizzes and panels render in static viewers). A notebook is written
only if every cell ran and every code cell that should show an output has one
(:func:`tests.tutorials.missing_outputs`): a run that lost outputs is refused, and the
stored notebook stays as it was.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.tutorials import SHIPPED, missing_outputs, shipped_paths, temporary_kernelspec


class LostOutputs(Exception):
    """A regenerated notebook has code cells without the outputs they should have."""


def choose(names: list[str]) -> list[Path]:
    if not names:
        return shipped_paths()
    wanted = [n.removesuffix(".ipynb") for n in names]
    unknown = [n for n in wanted if n not in SHIPPED]
    if unknown:
        msg = f"no such tutorial: {', '.join(unknown)} (the tutorials: {', '.join(SHIPPED)})"
        raise SystemExit(msg)
    return [p for p in shipped_paths() if p.stem in wanted]


def execute(path: Path, timeout: float = 120) -> object:
    """Run one notebook as nbval would; the executed notebook (not written)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)  # only this run's widgets are stored
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=nb.metadata["kernelspec"]["name"],
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,  # timestamps would make every regeneration a diff
        store_widget_state=True,  # quizzes and panels render in static viewers too
    ).execute()
    return nb


def write_checked(nb: object, path: Path) -> None:
    """Write ``nb`` over ``path``, unless it lost outputs (then :class:`LostOutputs`)."""
    import nbformat

    missing = missing_outputs(nb)
    if missing:
        msg = (
            f"{path.name}: not written, these code cells produced no output:\n  "
            + "\n  ".join(missing)
            + "\nIf a cell is meant to be silent, give it the cell tag 'no-output'; "
            "otherwise find out why it printed nothing (the stored notebook is unchanged)."
        )
        raise LostOutputs(msg)
    # Write beside it and rename: an interrupted run never leaves half a notebook.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".ipynb", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m notebooks.regenerate",
        description="Execute the tutorials and store their fresh outputs in place.",
    )
    p.add_argument("names", nargs="*", help="tutorials to run, e.g. 01-pid (default: all)")
    p.add_argument(
        "--timeout", type=float, default=120, help="seconds one cell may take (default: 120)"
    )
    args = p.parse_args(argv)
    failed = 0
    with temporary_kernelspec():
        for path in choose(args.names):
            start = time.monotonic()
            try:
                write_checked(execute(path, args.timeout), path)
            except LostOutputs as e:
                print(e, file=sys.stderr, flush=True)
                failed += 1
                continue
            print(f"{path.name}: {time.monotonic() - start:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
