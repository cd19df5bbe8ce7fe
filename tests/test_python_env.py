"""A Python environment that lives under /tmp (private inside sandboxes) stays importable."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
from jupyter_client.manager import start_new_kernel

from nskernel.spec import Bind, python_environment_binds
from tests.magic_helpers import execute


def test_only_hidden_paths_are_bound_and_only_the_topmost(monkeypatch, tmp_path):
    outer = tmp_path / "venv"
    inner = outer / "lib" / "site-packages"
    inner.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(inner), str(outer), "/usr/lib/python3", ""])
    binds = python_environment_binds()
    hidden = [b for b in binds if b.source.startswith(str(tmp_path))]
    assert hidden == [Bind(str(outer), str(outer), readonly=True)]
    assert all(b.source.startswith(("/tmp/", "/dev/shm/")) for b in binds)


def test_what_would_bare_a_home_or_tmp_is_never_bound(monkeypatch, tmp_path):
    """`PYTHONPATH=$HOME`, `PYTHONPATH=/tmp`: bound whole, they showed every dot-file of
    the home, or every user's files and sockets in the host's /tmp (X11's), in every
    cell (15th red-team pass). A Python environment below them still comes in."""
    home = tmp_path / "home"
    (home / ".local").mkdir(parents=True)
    venv = home / "venvs" / "v"
    venv.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    entries = [str(home), str(home / ".local"), "/tmp", "/dev/shm", str(venv), "/"]
    monkeypatch.setattr(sys, "path", ["/usr/lib/python3", *entries])
    binds = python_environment_binds()
    assert [b.source for b in binds if not b.source.startswith(sys.prefix)] == [str(venv)]


@pytest.mark.kernel
@pytest.mark.userns
def test_a_sandbox_cell_imports_from_a_path_under_tmp():
    with tempfile.TemporaryDirectory(prefix="nsk-pyenv-", dir="/tmp") as d:
        os.chmod(d, 0o755)  # readable by sandbox root, another uid when we are root
        with open(os.path.join(d, "nsk_probe_mod.py"), "w") as f:
            f.write("ANSWER = 42\n")
        os.chmod(os.path.join(d, "nsk_probe_mod.py"), 0o644)
        env = {**os.environ, "PYTHONPATH": d}
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60, env=env)
        try:
            assert execute(kc, "%load_ext nskernel").status == "ok"
            out = execute(kc, "%%sandbox\nimport nsk_probe_mod\nprint(nsk_probe_mod.ANSWER)")
            assert out.stdout == "42\n", out.error_text
            # ... and /tmp is still private: only the environment's path is there.
            out = execute(kc, "%%sandbox\nimport os\nprint(sorted(os.listdir('/tmp')))")
            assert out.stdout == f"{[os.path.basename(d)]}\n", out.error_text
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
