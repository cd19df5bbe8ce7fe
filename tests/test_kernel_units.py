"""Provisioner pieces that need no kernel: socket path length, stale directory sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nskernel.kernel import provisioner as P


def test_socket_path_too_long_fails_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_base = tmp_path / ("x" * 90)
    long_base.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_base))
    with pytest.raises(P.KernelSandboxUnavailable, match="XDG_RUNTIME_DIR") as err:
        P.make_socket_dir()
    assert "107 bytes" in str(err.value)
    # Nothing is left: no socket dir, and not the runtime dir it would have lived in.
    assert not (long_base / f"nsk-{os.geteuid()}").exists()


def test_sweep_removes_only_directories_whose_owner_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    mine = Path(P.make_socket_dir())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = mine.parent / f"{P.SOCKET_DIR_PREFIX}deadbeef"
    stale.mkdir()
    (stale / "owner").write_text(f"{dead.stdout.strip()} 12345\n")
    (stale / "k-1").write_text("")
    recycled = mine.parent / f"{P.SOCKET_DIR_PREFIX}0badf00d"
    recycled.mkdir()  # our PID but another start time: a recycled PID, also stale
    (recycled / "owner").write_text(f"{os.getpid()} 1\n")
    half_made = mine.parent / f"{P.SOCKET_DIR_PREFIX}00000000"
    half_made.mkdir()
    other = mine.parent / "magic-server"  # someone else's entry: never touched
    other.mkdir()

    removed = set(P.sweep_stale_socket_dirs())
    assert removed == {str(stale), str(recycled), str(half_made)}
    assert mine.is_dir() and other.is_dir()
