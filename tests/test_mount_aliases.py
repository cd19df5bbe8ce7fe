"""Homes and nskernel's runtime directories stay hidden where a bind mount shows them
again (15th red-team pass, F7; 14th, F4b).

A home is masked by its path; /home bound from /data/home (fstab), or ``mount --bind
/home /var/tmp/x``, shows it at a second path that is no symlink. ``nskernel.mountinfo``
finds those paths by identity in the host's mountinfo, once per sandbox.

- pure tests of the parser and of the alias computation on mountinfo texts written
  here (escapes, stacked mounts, a mount whose root lies below the home, btrfs
  subvolumes, an NFS home mounted below /home);
- the same logic on what the kernel really writes, in a user and mount namespace of
  the test's own (``unshare -Urm``: works as root and rootless);
- as root: real bind mounts in the host's mount namespace, made under a fresh
  directory and always unmounted, and ``nskernel run`` that must not read through them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from nskernel import mountinfo, sandbox
from nskernel.errors import SandboxError
from nskernel.mountinfo import Alias, Found, alias_candidates, parse, unescape
from nskernel.paths import runtime_dirs_to_hide
from nskernel.spec import SandboxSpec
from tests.conftest import nskernel_cmd, require

# A host like the ones the red team describes: / on vda, a data disk at /data, /home
# bound from /data/home (fstab), /proc, /sys and /dev as usual.
BASE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 8:17 / /data rw,relatime - ext4 /dev/sdb1 rw
31 27 8:17 /home /home rw,relatime - ext4 /dev/sdb1 rw
"""


def _aliases(text: str, *paths: str) -> set[Alias]:
    return set(alias_candidates(parse(text), paths))


def test_mountinfo_paths_are_unescaped_as_the_kernel_escapes_them() -> None:
    assert unescape(r"/var/tmp/my\040home") == "/var/tmp/my home"
    assert unescape(r"/a\011b\012c\134d") == "/a\tb\nc\\d"
    assert unescape("/plain") == "/plain"
    (m,) = parse(r"40 27 8:17 /home/al\040ice /srv/my\040alias rw - ext4 /dev/sdb1 rw")
    assert (m.root, m.mount_point, m.dev) == ("/home/al ice", "/srv/my alias", "8:17")
    assert parse("\n\n") == []


def test_the_home_is_found_again_where_the_file_system_is_mounted_whole() -> None:
    # /home shows sdb1:/home; /data shows sdb1:/ — so /data/home is the same directory.
    assert _aliases(BASE, "/home") == {Alias("/data/home", "/home", whole=False)}
    # A home below /home: the rest of the path follows.
    assert _aliases(BASE, "/home/alice") == {Alias("/data/home/alice", "/home/alice", whole=False)}


def test_an_ordinary_host_has_no_aliases() -> None:
    plain = "27 1 254:0 / / rw - ext4 /dev/vda rw\n30 27 8:17 / /home rw - ext4 /dev/sdb1 rw\n"
    assert _aliases(plain, "/home", "/root", "/run/user") == set()


def test_a_bind_mount_with_spaces_in_its_path_is_found() -> None:
    text = BASE + r"40 27 8:17 /home /var/tmp/my\040alias rw - ext4 /dev/sdb1 rw" + "\n"
    assert Alias("/var/tmp/my alias/bob", "/home/bob", whole=False) in _aliases(text, "/home/bob")


def test_a_mount_showing_only_a_part_of_the_home_is_masked_whole() -> None:
    # Alice's web directory bound to /var/www: its root lies below /home.
    text = BASE + "41 27 8:17 /home/alice/www /var/www rw - ext4 /dev/sdb1 rw\n"
    got = _aliases(text, "/home")
    assert Alias("/var/www", "/home", whole=True) in got
    # ...and a mount of another directory of that disk is no alias.
    text = BASE + "41 27 8:17 /projects /var/projects rw - ext4 /dev/sdb1 rw\n"
    assert _aliases(text, "/home") == {Alias("/data/home", "/home", whole=False)}


def test_only_the_top_mount_of_a_stack_counts() -> None:
    # /var/tmp/x showed /home, then a tmpfs was mounted on top of it: not seen there.
    stacked = (
        BASE
        + "41 27 8:17 /home /var/tmp/x rw - ext4 /dev/sdb1 rw\n"
        + "42 41 0:50 / /var/tmp/x rw - tmpfs tmpfs rw\n"
    )
    assert _aliases(stacked, "/home") == {Alias("/data/home", "/home", whole=False)}
    # The other way round: the alias is on top of a tmpfs.
    on_top = (
        BASE
        + "41 27 0:50 / /var/tmp/x rw - tmpfs tmpfs rw\n"
        + "42 41 8:17 /home /var/tmp/x rw - ext4 /dev/sdb1 rw\n"
    )
    assert Alias("/var/tmp/x", "/home", whole=False) in _aliases(on_top, "/home")
    # The home's own mount stacked: /home re-mounted on top of itself (the top one is
    # what /home shows, and it is no alias of itself).
    restacked = BASE + "41 31 8:17 /home /home rw - ext4 /dev/sdb1 rw\n"
    assert _aliases(restacked, "/home") == {Alias("/data/home", "/home", whole=False)}


def test_an_alias_under_a_directory_mounted_over_later_is_not_seen() -> None:
    text = (
        BASE
        + "41 27 8:17 /home /mnt/a/b rw - ext4 /dev/sdb1 rw\n"
        + "42 27 0:51 / /mnt/a rw - tmpfs tmpfs rw\n"  # hides /mnt/a/b
    )
    assert _aliases(text, "/home") == {Alias("/data/home", "/home", whole=False)}


def test_an_alias_inside_a_masked_directory_needs_no_mask_of_its_own() -> None:
    text = BASE + "41 31 8:17 /home/alice /home/bob/alice rw - ext4 /dev/sdb1 rw\n"
    # Not /home/bob/alice (the mask on /home covers it); what it shows is found again
    # under /data/home, which the caller's outermost-first list covers.
    assert _aliases(text, "/home") == {
        Alias("/data/home", "/home", whole=False),
        Alias("/data/home/alice", "/home/bob/alice", whole=False),
    }


def test_btrfs_subvolumes_share_one_device_in_mountinfo() -> None:
    # / and /home are subvolumes @ and @home; the pool's top level is mounted too.
    text = (
        "1 0 0:35 /@ / rw - btrfs /dev/sda2 rw,subvol=/@\n"
        "2 1 0:35 /@home /home rw - btrfs /dev/sda2 rw,subvol=/@home\n"
        "3 1 0:35 / /mnt/pool rw - btrfs /dev/sda2 rw,subvolid=5\n"
    )
    assert _aliases(text, "/home") == {Alias("/mnt/pool/@home", "/home", whole=False)}


def test_a_home_mounted_below_home_is_found_through_its_own_device() -> None:
    # NFS: /home/alice is its own mount; /net/srv mounts the whole export.
    text = (
        BASE
        + "50 31 0:60 /export/home/alice /home/alice rw - nfs4 srv:/export/home/alice rw\n"
        + "51 27 0:60 /export /net/srv rw - nfs4 srv:/export rw\n"
    )
    assert Alias("/net/srv/home/alice", "/home/alice", whole=False) in _aliases(text, "/home")


def test_the_runtime_directory_under_tmp_is_found_where_tmp_comes_from() -> None:
    # A scratch disk bound onto /tmp (r14 F4b): /scratch/tmp/nsk-1000 is the same.
    text = (
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "30 27 8:33 / /scratch rw - xfs /dev/sdc1 rw\n"
        "31 27 8:33 /tmp /tmp rw - xfs /dev/sdc1 rw\n"
    )
    assert _aliases(text, "/tmp/nsk-1000") == {
        Alias("/scratch/tmp/nsk-1000", "/tmp/nsk-1000", whole=False)
    }


def test_an_overlay_with_a_home_as_a_layer_or_above_one() -> None:
    text = (
        BASE
        + r"60 27 0:70 / /var/lib/ov rw - overlay overlay rw,lowerdir=/home/alice\134:x:/l2,"
        + "upperdir=/var/up,workdir=/var/work\n"
        + "61 27 0:71 / /var/lib/root-ov rw - overlay overlay rw,lowerdir=/,upperdir=/u,"
        + "workdir=/w\n"
        + "62 27 0:72 / /var/lib/other rw - overlay overlay rw,lowerdir=/srv/img,"
        + "upperdir=/u2,workdir=/w2\n"
    )
    got = _aliases(text, "/home")
    assert Alias("/var/lib/ov", "/home/alice:x", whole=True) in got  # a layer in /home
    assert Alias("/var/lib/root-ov/home", "/home", whole=True) in got  # a layer above it
    assert not any(a.path.startswith("/var/lib/other") for a in got)


def test_hundreds_of_mounts() -> None:
    lines = [BASE.rstrip("\n")]
    lines += [
        f"{100 + i} 27 0:{100 + i} / /var/lib/c/{i} rw - overlay overlay rw" for i in range(500)
    ]
    lines.append("900 107 8:17 /home /var/lib/c/7/home rw - ext4 /dev/sdb1 rw")
    got = _aliases("\n".join(lines) + "\n", "/home", "/root", "/run/user")
    assert Alias("/var/lib/c/7/home", "/home", whole=False) in got
    assert len(got) == 2


def test_what_the_sandbox_masks_of_the_aliases_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """sandbox._masks on aliases given to it: a directory is masked, a file hidden, a
    system directory (or one holding this Python) left visible with a warning, and the
    aliases of a runtime directory handed on for the binds' check."""
    found = [
        Found("/var/tmp/alias", "/home", is_dir=True),
        Found("/var/tmp/key", "/home", is_dir=False),
        Found("/srv", "/home", is_dir=True),  # /home/alice/www bound onto /srv
        Found(sys.prefix, "/home", is_dir=True),
        Found("/scratch/tmp/nsk-7", "/tmp/nsk-7", is_dir=True),
    ]
    seen: list[list[str]] = []

    def fake(paths: list[str]) -> list[Found]:
        seen.append(list(paths))
        return found

    monkeypatch.setattr(mountinfo, "aliases", fake)
    warnings: list[str] = []
    masks, files, in_state = sandbox._masks(
        SandboxSpec(), None, (), None, ("/tmp/nsk-7",), warnings
    )
    assert "/tmp/nsk-7" in seen[0] and "/home" in seen[0]  # looked for, /tmp's too
    assert "/var/tmp/alias" in masks and "/scratch/tmp/nsk-7" in masks
    assert "/srv" not in masks and sys.prefix not in masks
    assert files == ("/var/tmp/key",)
    assert in_state == ("/scratch/tmp/nsk-7",)
    assert len(warnings) == 2 and all("bind mount" in w for w in warnings)
    assert "/srv shows /home again" in warnings[0]


def test_no_sandbox_when_mountinfo_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(paths: list[str]) -> list[Found]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mountinfo, "aliases", fails)
    with pytest.raises(SandboxError, match="cannot read /proc/self/mountinfo"):
        sandbox._masks(SandboxSpec(), None, (), None, (), [])


# The logic on the kernel's own mountinfo: bind mounts made in a mount namespace of
# the test's own (a user namespace too, so that an unprivileged caller may make them).
_IN_NS = r"""
import json, os, subprocess, sys
from nskernel import mountinfo
d = sys.argv[1]
home, alias, part, key, stacked = (os.path.join(d, n) for n in
    ("home", "my alias", "part", "key file", "stacked"))
def bind(src, dst):
    subprocess.run(["mount", "--bind", src, dst], check=True)
bind(home, alias)
bind(os.path.join(home, ".ssh"), part)
bind(os.path.join(home, ".ssh", "id_x"), key)
bind(home, stacked)
subprocess.run(["mount", "-t", "tmpfs", "none", stacked], check=True)
# An overlay whose lower layer is the home (mounted on a path with a ":" in it).
up, work, ov = (os.path.join(d, n) for n in ("up", "work", "ov:1"))
opts = "lowerdir=" + home + ",upperdir=" + up + ",workdir=" + work
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, ov], check=True)
os.symlink(home, os.path.join(d, "link"))
found = mountinfo.aliases([home])
print(json.dumps({"dirs": sorted(f.path for f in found if f.is_dir),
                  "files": [f.path for f in found if not f.is_dir]}))
"""


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="nsk-alias-", dir="/var/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        # rmtree does not stop at mount points: with a bind of /tmp or of a home still
        # mounted here it would remove the host's files through it. So never then.
        with open("/proc/self/mountinfo") as f:
            left = [m.mount_point for m in parse(f.read()) if m.mount_point.startswith(f"{d}/")]
        if left:
            pytest.fail(f"still mounted, {d} left in place: {left}", pytrace=False)
        shutil.rmtree(d)


def _home_with_a_key(d: Path) -> Path:
    home = d / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_x").write_text("PRIVATE KEY\n")
    for p in (home, home / ".ssh"):
        p.chmod(0o755)  # readable by anyone: what a mask must hide, not a mode
    (home / ".ssh" / "id_x").chmod(0o644)
    return home


@pytest.mark.userns
def test_aliases_on_the_kernels_own_mountinfo(scratch: Path) -> None:
    home = _home_with_a_key(scratch)
    for n in ("my alias", "part", "stacked", "up", "work", "ov:1"):
        (scratch / n).mkdir()
    (scratch / "key file").write_text("")
    if shutil.which("unshare") is None:
        require("unshare(1) (util-linux) is missing: apt-get install util-linux")
    r = subprocess.run(
        ["unshare", "-Urm", "--propagation", "private", sys.executable, "-c", _IN_NS, scratch],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    # overlayfs made work/work mode 000 (its owner may still chmod it): removable again
    with contextlib.suppress(FileNotFoundError):
        (scratch / "work" / "work").chmod(0o700)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    # The whole home (the name has a space: \040 in mountinfo), a part of it (.ssh,
    # mounted whole), an overlay of it, and one file; not the one under a tmpfs, not the
    # symlink.
    assert got == {
        "dirs": sorted(str(scratch / n) for n in ("my alias", "part", "ov:1")),
        "files": [str(scratch / "key file")],
    }
    assert home.is_dir()  # the namespace is gone, nothing to unmount here


# ---------------------------------------------------------------- as root, end to end


@contextlib.contextmanager
def _bound(src: Path | str, dst: Path) -> Iterator[None]:
    """``mount --bind src dst`` in the host's mount namespace, always unmounted."""
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    try:
        yield
    finally:
        if subprocess.run(["umount", str(dst)]).returncode != 0:
            # Busy (a sandbox still running there): detached now, freed when unused.
            subprocess.run(["umount", "--lazy", str(dst)], check=True)


def _run(home: Path, *argv: str, options: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``nskernel run OPTIONS -- ARGV`` with ``home`` as $HOME."""
    return subprocess.run(
        [*nskernel_cmd("run", *options, "--"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},
    )


@pytest.mark.root
@pytest.mark.userns
def test_a_home_bound_at_a_second_path_is_not_read_through_it(scratch: Path) -> None:
    home = _home_with_a_key(scratch)
    alias = scratch / "alias"
    alias.mkdir()
    with _bound(home, alias):
        assert (alias / ".ssh" / "id_x").read_text() == "PRIVATE KEY\n"  # on the host
        r = _run(home, "cat", str(alias / ".ssh" / "id_x"))
        assert "PRIVATE KEY" not in r.stdout
        assert r.returncode != 0
        assert "No such file or directory" in r.stderr, r.stderr
        # The alias itself is an empty directory inside, like the home.
        r = _run(home, "ls", "-A", str(alias), str(home))
        assert r.returncode == 0, r.stderr
        assert ".ssh" not in r.stdout


@pytest.mark.root
@pytest.mark.userns
def test_a_part_of_a_home_or_one_key_bound_elsewhere_is_hidden(scratch: Path) -> None:
    home = _home_with_a_key(scratch)
    part = scratch / "ssh-elsewhere"
    part.mkdir()
    key = scratch / "key-elsewhere"
    key.write_text("")
    with _bound(home / ".ssh", part), _bound(home / ".ssh" / "id_x", key):
        r = _run(home, "sh", "-c", f"ls -A {part}; cat {key}")
        assert r.returncode == 0, r.stderr
        assert "id_x" not in r.stdout
        assert "PRIVATE KEY" not in r.stdout


@pytest.mark.root
@pytest.mark.userns
def test_the_runtime_directory_is_hidden_where_a_bind_mount_shows_it(scratch: Path) -> None:
    state = [d for d in runtime_dirs_to_hide() if d.startswith("/tmp/")]
    if not state:
        pytest.skip("nskernel's runtime directory is not under /tmp here ($XDG_RUNTIME_DIR)")
    home = _home_with_a_key(scratch)  # the alias is not in it: the home's mask is no help
    alias = scratch / "tmp-alias"
    alias.mkdir()
    shown = alias / os.path.relpath(state[0], "/tmp")
    with _bound("/tmp", alias):
        host = os.stat(shown)
        assert (host.st_dev, host.st_ino) == (os.stat(state[0]).st_dev, os.stat(state[0]).st_ino)
        r = _run(home, "stat", "-c", "%d:%i", str(shown))
        # Covered inside: a mount of its own over it, or over the private
        # $XDG_RUNTIME_DIR holding it (the test run has one: tests/leakcheck.py), so
        # absent. Never the host's directory (nor EACCES from trying to enter it).
        assert r.stdout.strip() != f"{host.st_dev}:{host.st_ino}"
        assert r.returncode == 0 or "No such file or directory" in r.stderr, r.stderr


# ------------------------------------------- end to end in a mount namespace of our own

# For an unprivileged caller, who may not mount on the host: the bind mounts are made
# in a user and mount namespace of the test's own (``unshare -Urm``), and `nskernel run`
# makes its sandbox from there, as it would on a host with those mounts. There, as for a
# rootless user anywhere, sandbox root is the caller: a mode does not hide anything.
_RUN_IN_NS = r"""
import json, os, subprocess, sys
d, state = sys.argv[1], sys.argv[2]
home, alias, tmp_alias = (os.path.join(d, n) for n in ("home", "alias", "tmp-alias"))
subprocess.run(["mount", "--bind", home, alias], check=True)
subprocess.run(["mount", "--bind", "/tmp", tmp_alias], check=True)
shown = os.path.join(tmp_alias, os.path.relpath(state, "/tmp"))
st = os.stat(shown)
look = (
    "import os, sys\n"
    "try: key = open(sys.argv[1]).read()\n"
    "except OSError as e: key = e.strerror\n"
    "try: st = os.stat(sys.argv[2]); state = f'{st.st_dev}:{st.st_ino}'\n"
    "except OSError as e: state = e.strerror\n"
    "print(key.strip()); print(state)\n"
)
r = subprocess.run(
    [sys.executable, "-m", "nskernel", "run", "--", sys.executable, "-c", look,
     os.path.join(alias, ".ssh", "id_x"), shown],
    capture_output=True, text=True, env={**os.environ, "HOME": home},
)
print(json.dumps({"rc": r.returncode, "out": r.stdout.splitlines(), "err": r.stderr,
                  "host_state": f"{st.st_dev}:{st.st_ino}"}))
"""


@pytest.mark.userns
def test_aliases_of_a_home_and_of_the_runtime_directory_in_a_namespace_of_our_own(
    scratch: Path,
) -> None:
    home = _home_with_a_key(scratch)
    state = [d for d in runtime_dirs_to_hide() if d.startswith("/tmp/")]
    if not state:
        pytest.skip("nskernel's runtime directory is not under /tmp here ($XDG_RUNTIME_DIR)")
    for n in ("alias", "tmp-alias"):
        (scratch / n).mkdir()
    unshare = ["unshare", "-Urm", "--propagation", "private"]
    r = subprocess.run(
        [*unshare, sys.executable, "-c", _RUN_IN_NS, str(scratch), state[0]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["rc"] == 0, got["err"]
    key, seen_state = got["out"]
    assert home.joinpath(".ssh", "id_x").read_text() == "PRIVATE KEY\n"
    assert key == "No such file or directory"
    # Covered inside (a mount of its own over it, or over the private $XDG_RUNTIME_DIR
    # holding it, which the test run has: then absent); never the host's directory.
    assert seen_state != got["host_state"]


@pytest.mark.root
@pytest.mark.userns
def test_an_alias_made_after_the_sandbox_started_does_not_reach_it(scratch: Path) -> None:
    # Not masked (it did not exist when the masks were decided), and not needed: the
    # sandbox's mount tree is private, so a mount made on the host later does not
    # propagate into it. The sandbox says when it runs, and reads once the host has
    # mounted: no sleeps.
    home = _home_with_a_key(scratch)
    alias = scratch / "alias"
    alias.mkdir()
    key = alias / ".ssh" / "id_x"
    p = subprocess.Popen(
        [*nskernel_cmd("run", "--"), "sh", "-c", f"echo ready; read x; cat {key}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": str(home)},
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline() == "ready\n"
        with _bound(home, alias):
            assert key.read_text() == "PRIVATE KEY\n"  # on the host, now
            out, err = p.communicate("go\n", timeout=60)
        assert "PRIVATE KEY" not in out
        assert "No such file or directory" in err
        assert p.returncode != 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.root
@pytest.mark.userns
def test_a_bind_of_a_directory_holding_an_alias_of_the_runtime_directory(scratch: Path) -> None:
    # --ro-bind SCRATCH, where SCRATCH/tmp-alias shows /tmp: the bind (recursive) shows
    # the alias inside, over its mask; the alias, an alias of the host's /tmp, is hidden
    # again on top of the bind (16th red-team pass, F1, F2), and with it nskernel's
    # runtime directory (14th, F4b).
    state = [d for d in runtime_dirs_to_hide() if os.path.dirname(d) == "/tmp"]
    if not state:
        pytest.skip("no runtime directory directly under /tmp here")
    home = _home_with_a_key(scratch)
    alias = scratch / "tmp-alias"
    alias.mkdir()
    shown = alias / os.path.basename(state[0])
    with _bound("/tmp", alias):
        host = os.stat(shown)
        r = _run(home, "stat", "-c", "%d:%i", str(shown), options=["--ro-bind", str(scratch)])
        assert r.returncode == 1 and "No such file or directory" in r.stderr, r
        assert f"{host.st_dev}:{host.st_ino}" not in r.stdout
        listed = _run(home, "ls", "-A", str(alias), options=["--ro-bind", str(scratch)])
        assert listed.returncode == 0 and listed.stdout == "", listed


@pytest.mark.root
@pytest.mark.userns
def test_the_hosts_tmp_shown_at_a_second_path_is_hidden_there(scratch: Path) -> None:
    # /var/tmp bound from /tmp (the CIS recipe), /tmp bound from scratch on HPC nodes: the
    # alias showed every user's files and sockets in the host's /tmp to every sandbox
    # (16th red-team pass, F2: rootless, keys typed into the user's tmux on the host).
    home = _home_with_a_key(scratch)
    alias = scratch / "tmp-alias"
    alias.mkdir()
    fd, marker = tempfile.mkstemp(prefix="nsk-alias-marker-", dir="/tmp")
    os.close(fd)
    try:
        with _bound("/tmp", alias):
            assert (alias / os.path.basename(marker)).exists()  # on the host
            r = _run(home, "ls", "-A", str(alias))
            assert r.returncode == 0 and r.stdout == "", r
    finally:
        os.unlink(marker)


@pytest.mark.root
@pytest.mark.userns
def test_a_bind_of_a_directory_holding_an_alias_of_a_home_shows_it_empty(scratch: Path) -> None:
    # A mask lies beneath the binds: --ro-bind DATA, or a notebook kept in DATA, where
    # DATA/home shows the homes, showed them whole (16th red-team pass, F1).
    home = _home_with_a_key(scratch)
    data = scratch / "data"
    (data / "home").mkdir(parents=True)
    with _bound(home, data / "home"):
        r = _run(home, "ls", "-A", str(data / "home"), options=["--ro-bind", str(data)])
        assert r.returncode == 0 and r.stdout == "", r


def test_a_mount_point_named_with_a_character_splitlines_would_cut_at_is_kept() -> None:
    # The kernel escapes space, tab, newline and backslash only; "\x0b", "\x1c" and U+0085
    # cut a line for str.splitlines(), which dropped such an alias (16th red-team pass,
    # F6). A line that does not parse refuses the sandbox (the caller fails closed).
    text = BASE + "90 21 8:1 /home /srv/a\x0bb\x1cc\u0085d rw - ext4 /dev/sda1 rw\n"
    mounts = parse(text)
    assert mounts[-1].mount_point == "/srv/a\x0bb\x1cc\u0085d"
    with pytest.raises(OSError):
        parse(BASE + "not a mountinfo line\n")


@pytest.mark.root
@pytest.mark.userns
@pytest.mark.kernel
def test_a_notebook_kept_in_the_home_by_its_alias_path_is_a_home(scratch: Path) -> None:
    # A notebook kept in /data/home/u, which shows /home/u: not taken for a home by
    # path, it was bound whole, dot-files included (16th red-team pass, F1). A home is
    # known by identity too: its top level is fixed, its dot-entries private.
    from jupyter_client.manager import start_new_kernel

    from tests.magic_helpers import execute

    home = _home_with_a_key(scratch)
    (home / "notes.txt").write_text("beside the notebook\n")
    os.chmod(home / "notes.txt", 0o644)
    alias = scratch / "alias"
    alias.mkdir()
    look = (
        "import json, os\n"
        "print(json.dumps({'cwd': os.getcwd(), 'ssh': os.listdir('.ssh'),\n"
        "                  'notes': open('notes.txt').read()}))\n"
    )
    with _bound(home, alias):
        km, kc = start_new_kernel(
            kernel_name="python3", startup_timeout=60, env={**os.environ, "HOME": str(home)}
        )
        try:
            execute(kc, f"import os\nos.chdir({str(alias)!r})\n%load_ext nskernel")
            res = execute(kc, "%%sandbox\n" + look)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        assert res.status == "ok", res.error_text
        seen = res.json_line()
    assert seen == {"cwd": str(alias), "ssh": [], "notes": "beside the notebook\n"}, seen


@pytest.mark.root
@pytest.mark.userns
def test_a_writable_bind_of_a_homes_dot_entry_by_its_alias_path_is_refused(scratch: Path) -> None:
    # Code places were compared by path: `--bind /data/home/u/.cargo`, where /data/home
    # shows /home, was made (16th red-team pass, F10); a home is known by identity too.
    home = _home_with_a_key(scratch)
    (home / ".cargo").mkdir()
    alias = scratch / "alias"
    alias.mkdir()
    with _bound(home, alias):
        r = _run(home, "true", options=["--bind", str(alias / ".cargo")])
        assert r.returncode == 2 and "a home's dot-entry" in r.stderr, r


@pytest.mark.root
@pytest.mark.userns
def test_a_socket_bound_out_of_a_home_and_a_key_bound_into_one_are_hidden(scratch: Path) -> None:
    # Only directories and regular files were hidden at an alias: an agent's socket (or
    # the session bus) bound out of a hidden directory stayed connectable, and a key
    # bound into a home from elsewhere stayed readable at its source (16th red-team
    # pass, F9).
    import socket

    home = _home_with_a_key(scratch)
    sock_path = home / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    os.chmod(sock_path, 0o777)
    sock_alias = scratch / "sock-alias"
    sock_alias.touch()
    keys = scratch / "keys"
    keys.mkdir()
    (keys / "id_k").write_text("KEY FROM ELSEWHERE\n")
    os.chmod(keys / "id_k", 0o644)
    (home / ".ssh" / "id_k").touch()
    probe = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({str(sock_alias)!r}); print('connected')\n"
        "except OSError as e:\n    print(e.strerror)\n"
        f"print(repr(open({str(keys / 'id_k')!r}).read()))\n"
    )
    try:
        with _bound(sock_path, sock_alias), _bound(keys / "id_k", home / ".ssh" / "id_k"):
            r = _run(home, sys.executable, "-I", "-c", probe)
            assert r.returncode == 0, r
            assert "connected" not in r.stdout and "KEY FROM ELSEWHERE" not in r.stdout, r
            assert r.stdout.splitlines()[-1] == "''", r
    finally:
        listener.close()
