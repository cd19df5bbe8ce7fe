"""Bind destinations are looked up inside the sandbox's new root, never from the host's "/"
(twelfth red-team pass).

A bind may land inside another, writable bind (``--bind ./out --ro-bind data:./out/x/f``),
where a sandbox, an earlier one or one running on the same directory, can leave symbolic
links and FIFOs. The setup used to create a missing destination with ``os.makedirs`` /
``open(path, "a")`` and mount onto it by path while "/" was still the host's: a link led
the creation (as sandbox root's host identity) and the mount anywhere on the host, and a
FIFO swapped in between the look and the open blocked the setup, and with it the
single-threaded ``%%sandbox`` server, for good. Now every destination is resolved with
``openat2(RESOLVE_IN_ROOT)`` beneath the new root, created one component at a time with
``O_EXCL|O_NOFOLLOW|O_NONBLOCK``, and mounts are attached to descriptors; and the whole
setup has a deadline past which it is ended without its cooperation.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import nskernel_cmd

pytestmark = pytest.mark.userns


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory under the host's /tmp (where a missing destination may be created
    inside the sandbox), reachable by sandbox root; removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="nsk-binds-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _victim(var_tmp: Path) -> Path:
    # A host directory anyone may write: the old setup, following a link, wrote here.
    victim = var_tmp / "victim"
    victim.mkdir()
    victim.chmod(0o777)
    return victim


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_link_left_in_a_writable_bind_never_leads_a_destination_out_of_the_sandbox(
    shared: Path, var_tmp: Path, kind: str
) -> None:
    out = shared / "out"
    out.mkdir()
    victim = _victim(var_tmp)
    (out / "in").symlink_to(victim)  # what an earlier sandbox left in its writable bind
    source = var_tmp / "data"
    if kind == "directory":
        source.mkdir()
    else:
        source.write_text("data\n")
    source.chmod(0o755)
    res = subprocess.run(
        nskernel_cmd(
            "run", "--bind", str(out), "--ro-bind", f"{source}:{out}/in/new/x", "--", "true"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert os.listdir(victim) == [], "the setup created something on the host, outside"
    # Inside, the link leads to the read-only host root: nothing can be made there.
    assert res.returncode != 0, res
    assert f"bind onto {out}/in/new/x" in res.stderr and "Read-only" in res.stderr, res.stderr
    # Said as it is (thirteenth red-team pass: "nothing explains it, please report").
    assert "a symbolic link is in its path" in res.stderr, res.stderr
    assert "nothing this process can see explains" not in res.stderr, res.stderr


def test_a_link_inside_the_bind_resolves_as_the_sandbox_sees_it(
    shared: Path, var_tmp: Path
) -> None:
    """A relative link within the bind still works (as before): the destination is where
    the sandbox itself finds it, and read-only as asked."""
    out = shared / "out"
    (out / "real" / "new").mkdir(parents=True)
    (out / "in").symlink_to("real")
    source = var_tmp / "data"
    source.mkdir()
    (source / "hello").write_text("hi\n")
    source.chmod(0o755)
    script = f"cat {out}/real/new/hello; touch {out}/real/new/t 2>/dev/null || echo read-only"
    res = subprocess.run(
        nskernel_cmd(
            "run",
            "--bind",
            str(out),
            "--ro-bind",
            f"{source}:{out}/in/new",
            "--",
            "sh",
            "-c",
            script,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hi", "read-only"], res


def test_a_fifo_swapped_in_for_a_missing_destination_never_blocks_the_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race, made certain: the destination is missing when looked up and a FIFO by
    the time it is created. The old ``open(path, "a")`` then waited for a writer forever;
    ``O_CREAT|O_EXCL`` fails on it instead, and the FIFO is only ever opened ``O_PATH``."""
    from nskernel._linux import mntns

    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    real = mntns._open_in_root
    raced = []

    def racing(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
        try:
            return real(root_fd, path, flags)
        except FileNotFoundError:
            if path.endswith("out/f") and not raced:
                os.mkfifo(root / "out" / "f")  # the other sandbox wins the window
                raced.append(path)
            raise

    monkeypatch.setattr(mntns, "_open_in_root", racing)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    result: list[object] = []

    def make() -> None:
        try:
            result.append(mntns._destination(root_fd, "/out/f", directory=False, may_create=True))
        except BaseException as e:
            result.append(e)

    try:
        worker = threading.Thread(target=make, daemon=True)
        worker.start()
        worker.join(30)  # a liveness bound, not a speed one: it either returns or hangs
        assert not worker.is_alive(), "creating the destination blocked on a FIFO"
        assert raced, "the race was not exercised"
        fd = result[0]
        assert isinstance(fd, int), result
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)  # the FIFO, opened O_PATH: not read
        os.close(fd)
    finally:
        os.close(root_fd)
        if worker.is_alive():  # unblock the old open(path, "a") so the thread can end
            os.close(os.open(root / "out" / "f", os.O_RDONLY | os.O_NONBLOCK))


SETUP_THAT_BLOCKS = textwrap.dedent(
    """
    import os, sys, time
    from nskernel import Sandbox, SandboxError, SandboxSpec
    from nskernel import sandbox
    from nskernel._linux import contain

    sandbox.SETUP_DEADLINE = 2.0

    def blocked(*args):  # init, stuck in a step (e.g. a mount on a hung filesystem)
        r, w = os.pipe()
        os.read(r, 1)

    contain._init_main = blocked
    t0 = time.monotonic()
    try:
        Sandbox.spawn(SandboxSpec(), ["true"])
    except SandboxError as e:
        print("refused:", e)
    print("children:", os.listdir(f"/proc/{os.getpid()}/task/{os.getpid()}") and
          open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split())
    """
)


def test_a_setup_that_blocks_is_ended_at_its_deadline() -> None:
    res = subprocess.run(
        [sys.executable, "-c", SETUP_THAT_BLOCKS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    assert "refused: " in res.stdout and "did not finish within 2 s" in res.stdout, res.stdout
    # The setup child and the blocked init were killed and reaped: nothing is left.
    assert res.stdout.rstrip().endswith("children: []"), res.stdout
