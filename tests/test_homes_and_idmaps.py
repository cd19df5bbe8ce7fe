"""Homes stay hidden however they are reached, and root's idmapped binds give a sandbox
no one's identity but the owner's (second red-team pass).

- A home reached through a symlink is hidden where it really is (a mask on the link
  would follow it out of the sandbox's root), and another person's home counts as a home
  when it is the notebook's directory (its dot-files hidden, never writable).
- Host root's idmapped bind is checked on what is really mounted: a path swapped for a
  link to a directory of root's between the look and the clone is refused, not mapped
  to sandbox root; and only the owner's own primary group is mapped, never the
  directory's other group (no setgid binary of a group the owner is not in).
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from nskernel import Bind, spec
from nskernel.kernel.launch import notebook_dir_write_refusal
from tests.conftest import nskernel_cmd

pytestmark = pytest.mark.userns


def _home_with_a_key(where: Path) -> Path:
    real = where / "realhome"
    (real / ".ssh").mkdir(parents=True)
    (real / ".ssh" / "id_rsa").write_text("PRIVATE KEY\n")
    (real / "notes.txt").write_text("mine\n")
    return real


LOOK = (
    "import os, json; h = os.environ['HOME']; r = {real!r}\n"
    "print(json.dumps({{'home': sorted(os.listdir(h)), 'real': os.path.isdir(r) and "
    "sorted(os.listdir(r)), 'key': os.path.exists(os.path.join(r, '.ssh/id_rsa'))}}))"
)


@pytest.mark.parametrize("how", ["home-is-a-link", "link-in-the-path"])
def test_a_home_reached_through_a_symlink_is_hidden_where_it_really_is(var_tmp, how) -> None:
    real = _home_with_a_key(var_tmp)
    if how == "home-is-a-link":
        (var_tmp / "link").symlink_to(real)
        home = var_tmp / "link"
    else:  # a directory on the way is the link: /var/tmp/x/via/realhome -> x/realhome
        (var_tmp / "via").symlink_to(var_tmp)
        home = var_tmp / "via" / "realhome"
    env = {**os.environ, "HOME": str(home)}
    res = subprocess.run(
        [*nskernel_cmd("run", "--"), sys.executable, "-c", LOOK.format(real=str(real))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    assert seen["home"] == [], seen  # a private, empty home
    assert not seen["key"] and seen["real"] in (False, []), seen  # the real one: hidden


def test_another_persons_home_as_notebook_directory_hides_its_dot_files(
    var_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jupyter run by root in /home/alice (or /srv/alice): alice's keys are not the
    # notebook's files. Her home is a home although it is not the caller's $HOME.
    alice = _home_with_a_key(var_tmp)
    monkeypatch.setattr(spec, "_local_account_homes", lambda: (str(alice),))
    binds, hide, note = spec.notebook_dir_binds(str(alice), readonly=True, home="/root")
    assert binds == [Bind(str(alice), str(alice), True, fixed_top_level=True)] and note is None
    assert hide == (str(alice / ".ssh"),)
    assert "is a home" in (notebook_dir_write_refusal(str(alice), "/root", None) or "")
    # Reached through a link, it is the same home.
    (var_tmp / "link").symlink_to(alice)
    assert spec.is_a_home(str(var_tmp / "link"), "/root")
    assert "is a home" in (notebook_dir_write_refusal(str(var_tmp / "link"), None, None) or "")
    # A directory holding it is not bound at all.
    assert spec.notebook_dir_binds(str(var_tmp), readonly=True, home="/root")[2]


def test_homes_never_hide_the_system_or_this_python(monkeypatch: pytest.MonkeyPatch) -> None:
    # An account whose home is /usr, /var or this Python's prefix hides none of them.
    monkeypatch.setattr(
        spec, "_local_account_homes", lambda: ("/usr", "/var", os.path.dirname(sys.prefix))
    )
    homes = spec.user_homes("/root")
    assert "/usr" not in homes and "/var" not in homes
    assert not any(sys.prefix.startswith(h.rstrip("/") + "/") for h in homes), homes


# ---------------------------------------------------------------- root's idmapped binds


def _daemon() -> pwd.struct_passwd:
    return pwd.getpwnam("daemon")  # a local account on every Debian system (uid 1)


@pytest.mark.root
def test_a_bind_swapped_for_a_link_to_roots_directory_is_checked_on_what_is_mounted(
    var_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user who controls a directory on the way swaps the bind's path for a link to a
    # directory of root's between nskernel's look at it and the clone (the race the red
    # team won 2 in 29 runs): the clone must be refused, not mapped to sandbox root.
    from nskernel import sandbox
    from nskernel._linux import userns

    theirs, roots = var_tmp / "theirs", var_tmp / "roots"
    theirs.mkdir()
    roots.mkdir()
    os.chown(theirs, 4321, 4321)
    (var_tmp / "proj").symlink_to(theirs)
    looked = sandbox._may_write

    def look_then_swap(st: os.stat_result, uid: int, gid: int) -> bool:
        answer = looked(st, uid, gid)
        (var_tmp / "proj.new").symlink_to(roots)
        os.replace(var_tmp / "proj.new", var_tmp / "proj")
        return answer

    monkeypatch.setattr(sandbox, "_may_write", look_then_swap)
    warnings: list[str] = []
    clones = sandbox._owned_clones(
        (Bind(str(var_tmp / "proj"), "/data", False),), userns.plan_id_maps(), warnings
    )
    for fd in clones.values():
        os.close(fd)
    assert clones == {}, "a directory of root's was idmapped to sandbox root"
    # Refused on the way (the path is a link now: sources are opened without following
    # one) or on the clone (root's): either way, nothing of root's is mapped.
    assert any("symbolic link" in w or "belongs to root" in w for w in warnings), warnings


def test_bind_sources_are_opened_without_following_a_link(var_tmp: Path) -> None:
    """Bind sources are resolved when checked and opened without following a link later
    (a link that appears meanwhile was put there by someone racing the check; the
    %%sandbox race: tests/test_magics_hostile.py::test_a_bind_source_swapped_for_a_link_
    after_the_check_is_never_mounted)."""
    from nskernel._linux import syscalls

    real = var_tmp / "real"
    (real / "sub").mkdir(parents=True)
    (var_tmp / "link").symlink_to(real)
    os.close(syscalls.open_no_symlinks(str(real / "sub")))
    for path in (var_tmp / "link", var_tmp / "link" / "sub"):
        with pytest.raises(OSError) as e:
            syscalls.open_no_symlinks(str(path))
        assert e.value.errno == errno.ELOOP and "symbolic link" in str(e.value)
    # A source the %%sandbox kernel resolved and checked is never resolved again.
    given = spec.SandboxSpec(binds=(Bind(str(var_tmp / "link"), "/d", resolved=True),))
    assert given.resolved_binds()[0].source == str(var_tmp / "link")
    assert spec.SandboxSpec(binds=(Bind(str(var_tmp / "link"), "/d"),)).resolved_binds()[
        0
    ].source == str(real)


@pytest.mark.root
def test_only_the_owners_own_group_is_mapped(var_tmp: Path) -> None:
    # A directory of daemon's, of a group daemon is not in (staff): mapping that group
    # would let the sandbox make setgid-staff programs. It stays read-only, and says so;
    # one of daemon's own group is writable, and what is made there is daemon's.
    owner = _daemon()
    other, own = var_tmp / "other-group", var_tmp / "own-group"
    for d, gid in ((other, 50), (own, owner.pw_gid)):
        d.mkdir()
        os.chown(d, owner.pw_uid, gid)
    script = (
        f"touch {other}/t 2>/dev/null && echo other-written || echo other-refused; "
        f"cp /bin/true {own}/t && chmod 2755 {own}/t && echo own-written"
    )
    res = subprocess.run(
        nskernel_cmd("run", "--bind", str(other), "--bind", str(own), "--", "sh", "-c", script),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["other-refused", "own-written"], res
    assert "is not its owner's own" in res.stderr and "stays read-only" in res.stderr
    st = os.stat(own / "t")
    assert (st.st_uid, st.st_gid) == (owner.pw_uid, owner.pw_gid)
    assert os.listdir(other) == []


def test_id_map_tools_are_never_found_through_a_relative_path_entry(
    var_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative or empty PATH entry means the working directory, which may be a
    notebook's directory a sandbox wrote: a ``newuidmap`` planted there must not be the
    one run (as the user, on the host)."""
    from nskernel._linux import userns

    (var_tmp / "bin").mkdir()
    for tool in ("newuidmap", "newgidmap"):
        fake = var_tmp / "bin" / tool
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
        (var_tmp / tool).symlink_to(fake)
    monkeypatch.chdir(var_tmp)
    monkeypatch.setenv("PATH", f"bin::{os.environ['PATH']}")
    for tool in ("newuidmap", "newgidmap"):
        found = userns.id_map_tool(tool)
        assert found is None or (os.path.isabs(found) and not found.startswith(str(var_tmp)))
