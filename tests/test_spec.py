"""Unit tests: what a sandbox should be, decided before anything is created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nskernel import ALL_NAMESPACES, Bind, SandboxSpec, SpecError
from nskernel.cli import build_parser


def test_no_flag_means_all_six():
    assert SandboxSpec.from_flags([]).namespaces == frozenset(ALL_NAMESPACES)


def test_a_user_namespace_is_always_added_and_pid_brings_mnt():
    assert SandboxSpec.from_flags(["net", "uts"]).effective_namespaces() == {"net", "uts", "user"}
    assert SandboxSpec.from_flags(["pid"]).effective_namespaces() == {"pid", "mnt", "user"}
    opted_out = SandboxSpec.from_flags(["net"], no_userns=True)
    assert opted_out.effective_namespaces() == {"net"}
    with pytest.raises(SpecError, match="contradict"):
        SandboxSpec.from_flags(["net", "user"], no_userns=True)


@pytest.mark.parametrize("name", ["-box", "box-", "a" * 64, "has space", "dot.ted", ""])
def test_invalid_hostnames_are_refused(name):
    with pytest.raises(SpecError, match="invalid hostname"):
        SandboxSpec(hostname=name)


def test_hostname_needs_uts():
    with pytest.raises(SpecError, match="UTS"):
        SandboxSpec(namespaces=frozenset({"net"}), hostname="box")


def test_unknown_namespace_is_named():
    with pytest.raises(SpecError, match=r"unknown namespace type.*cgroupz"):
        SandboxSpec(namespaces=frozenset({"cgroupz"}))


def test_binds_need_a_mount_namespace():
    with pytest.raises(SpecError, match="--mnt"):
        SandboxSpec(namespaces=frozenset({"net"}), binds=(Bind("/etc", "/etc"),))


def test_root_can_never_map_to_host_root():
    with pytest.raises(SpecError, match="host's root"):
        SandboxSpec(map_root_to=0)


@pytest.mark.parametrize(
    ("text", "ro", "expected"),
    [
        ("/data", False, Bind("/data", "/data", False)),
        ("/data:/in", True, Bind("/data", "/in", True)),
    ],
)
def test_bind_parse(text, ro, expected):
    assert Bind.parse(text, readonly=ro) == expected


@pytest.mark.parametrize("text", [":/x", "/x:"])
def test_bind_parse_errors_show_the_expected_form(text):
    with pytest.raises(SpecError, match="SRC:DST"):
        Bind.parse(text)


def test_missing_bind_source_is_a_clear_error(tmp_path):
    spec = SandboxSpec(binds=(Bind(str(tmp_path / "nope"), "/x"),))
    with pytest.raises(SpecError, match="no such file"):
        spec.validate_host_paths()


def test_run_help_documents_namespaces_exit_codes_and_the_added_user_namespace():
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = run.format_help()
    for needle in ("--pid", "--net", "--mnt", "--uts", "--ipc", "--user", "--status-json"):
        assert needle in text
    assert "A user" in text and "never host root" in text and "--no-userns" in text
    assert "125" in text and "127" in text


def test_nskernel_run_builds_only_its_own_parser_and_it_is_the_same():
    def run_parser(parser):
        return parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]

    lean, whole = build_parser("run"), build_parser()
    assert list(lean._subparsers._group_actions[0].choices) == ["run"]  # type: ignore[union-attr]
    assert {"run", "doctor", "install"} <= set(whole._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert run_parser(lean).format_help() == run_parser(whole).format_help()
    argv = ["run", "--pid", "--bind", "/tmp:/x", "--", "true"]
    assert vars(lean.parse_args(argv)) == vars(whole.parse_args(argv))


def test_nskernel_run_parses_without_importing_shutil_and_help_fits_the_terminal():
    """argparse's help formatter imports shutil (and with it bz2 and lzma) for the
    terminal's width on every parser built: ~2 ms of every run. nskernel's finds it itself,
    as shutil would: COLUMNS, else the terminal, else 80."""
    code = (
        "import sys; from nskernel import cli; "
        "cli.build_parser('run').parse_args(['run', '--', 'true']); "
        "print('shutil' in sys.modules); "
        "p = cli.build_parser('run'); "
        "run = p._subparsers._group_actions[0].choices['run']; "
        "print(max(map(len, run.format_usage().splitlines())))"
    )
    env = {**os.environ, "COLUMNS": "60"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    imported, widest = r.stdout.split()
    assert imported == "False", r.stderr
    assert int(widest) <= 60


# --- Writable binds over places code runs from (15th red-team pass, F4) ---------------


def _refusal(src, places=(), path=""):
    """writable_bind_over_code for one writable bind of ``src``, with only ``places`` and
    the $PATH entries in ``path`` as the checking process's places."""
    from nskernel.spec import path_code_places, writable_bind_over_code

    bind = Bind(os.path.realpath(src), "/x", False)
    return writable_bind_over_code(
        [bind], lambda: [*places, *path_code_places(path)], "this kernel"
    )


def test_path_entries_are_code_places_and_so_are_their_ancestors(tmp_path, monkeypatch):
    """A directory on PATH (~/bin, ~/go/bin, a user's /opt/x/bin) bound writable would let
    a sandbox plant a `git` the kernel's `!git status` or the user's shell runs on the host;
    its parent holds it (the sandbox could rename it away and make its own)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    bindir, other = tmp_path / "opt" / "x" / "bin", tmp_path / "data"
    bindir.mkdir(parents=True)
    other.mkdir()
    path = f"/usr/bin:{bindir}:/bin"
    for src in (bindir, bindir.parent, tmp_path):
        why = _refusal(src, path=path)
        assert why and f"runs programs from {bindir}" in why and "--ro-bind" in why, why
        assert "not on PATH" in why
    assert _refusal(other, path=path) is None
    assert _refusal(bindir) is None  # not on this PATH: nothing to refuse


def test_a_link_on_path_counts_where_it_leads_and_where_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real, links = tmp_path / "real-bin", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    (links / "bin").symlink_to(real)
    for src in (real, links):
        assert "runs programs from" in (_refusal(src, path=str(links / "bin")) or ""), src


def test_relative_and_empty_path_entries_count_from_where_the_process_is(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "tools").mkdir()
    monkeypatch.chdir(tmp_path)
    assert "runs programs from" in (_refusal(tmp_path / "tools", path="/usr/bin:tools") or "")
    assert "runs programs from" in (_refusal(tmp_path, path="/usr/bin:") or "")


def test_the_login_shells_bin_directories_count_even_off_the_kernels_path(tmp_path, monkeypatch):
    """~/.profile puts ~/bin and ~/.local/bin first on the user's terminal's PATH, which a
    kernel started from a desktop launcher may not share."""
    home = tmp_path / "home"
    for d in ("bin", ".local/bin"):
        (home / d).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for d in ("bin", ".local/bin"):
        why = _refusal(home / d, path="/usr/bin")
        assert why and "login shell" in why, why


def test_root_cannot_bind_its_system_program_directories_writable(monkeypatch):
    """`--bind /usr/local/bin` (root, or a user who owns it): refused, saying to bind it
    read-only; --ro-bind is not checked at all."""
    from nskernel.spec import code_places, writable_bind_over_code

    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    why = writable_bind_over_code([Bind("/usr/local/bin", "/x", False)], code_places, "it")
    assert why and "--ro-bind /usr/local/bin" in why, why
    assert writable_bind_over_code([Bind("/usr/local/bin", "/x", True)], code_places, "it") is None


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, emptied afterwards: a .git left under /tmp would make a later writable
    bind of /tmp (another test's, or a user's) refused."""
    import shutil

    yield tmp_path
    for p in tmp_path.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _tree(top, dirs: int, files_per_dir: int) -> None:
    for i in range(dirs):
        d = top / f"d{i // 10}" / f"e{i}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(files_per_dir):
            (d / f"f{j}").touch()


@pytest.mark.parametrize(
    "git", ["a/.git", "a/b/c/d/e/.git", "a/b/sub/.git"], ids=["depth1", "depth5", "submodule"]
)
def test_a_git_repository_anywhere_below_a_writable_bind_is_refused(scratch, git):
    """`--bind ~/src` holding ~/src/foo/.git: the sandbox could rewrite foo/.git/config
    (core.fsmonitor, core.pager) or a hook, which the user's next `git status` there runs.
    A submodule's or worktree's .git is a file naming where git reads its config."""
    src = scratch / "src"
    target = src / git
    target.parent.mkdir(parents=True)
    if git.endswith("sub/.git"):
        target.write_text("gitdir: ../../.git/modules/sub\n")
    else:
        target.mkdir()
    why = _refusal(src)
    assert why and f"git repository ({target})" in why and "--ro-bind" in why, why
    (src / "b" / "c").mkdir(parents=True, exist_ok=True)
    assert _refusal(src / "b" / "c") is None  # a subdirectory beside the repository is fine


def test_the_git_walk_follows_no_link(scratch):
    """A link to a repository is not a repository inside the bind (the sandbox sees a link
    it cannot follow out of the bind), and the walk must not be led elsewhere by one, nor
    wait on a FIFO."""
    from nskernel.spec import git_below

    (scratch / "repo" / ".git").mkdir(parents=True)
    src = scratch / "src"
    src.mkdir()
    (src / "link").symlink_to(scratch / "repo")
    os.mkfifo(src / "fifo")  # never opened: the walk must not block on what a sandbox made
    assert git_below(str(src)) is None
    assert git_below(str(scratch)) == str(scratch / "repo" / ".git")


ANOTHER_FS = """
import os, subprocess, sys
from nskernel.spec import git_below
src = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "t", src + "/mnt"], check=True)
os.makedirs(src + "/mnt/deep/.git")
print(git_below(src))
os.makedirs(src + "/mnt/.git")
print(git_below(src))
"""


def test_the_git_walk_looks_only_at_the_top_of_another_filesystem(scratch):
    """A dataset or network share mounted below a bind is not walked (it must not make
    every cell slow); a .git at its top is still found. Run in a user and mount namespace
    of its own (unshare -Urm), root or not."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare"):
        pytest.skip("unshare(1) (util-linux) is not installed")
    src = scratch / "src"
    (src / "mnt").mkdir(parents=True)
    r = subprocess.run(
        ["unshare", "-Urm", sys.executable, "-c", ANOTHER_FS, str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["None", str(src / "mnt" / ".git")]


def test_the_git_walk_has_a_budget_and_a_tree_beyond_it_is_refused(scratch):
    """What cannot be looked through is not handed to a sandbox to write: the message
    says how many entries and what to bind instead."""
    from nskernel.spec import GIT_WALK_BUDGET, GitWalkTooBig, git_below

    src = scratch / "big"
    _tree(src, 100, 10)  # 1,100 entries
    assert git_below(str(src)) is None
    with pytest.raises(GitWalkTooBig, match="more than 500 entries"):
        git_below(str(src), budget=500)
    assert GIT_WALK_BUDGET >= 10_000
    deep = scratch / "deep" / "/".join("d" * 10)
    deep.mkdir(parents=True)
    assert git_below(str(scratch / "deep")) is None
    with pytest.raises(GitWalkTooBig, match="more than 5 levels"):
        git_below(str(scratch / "deep"), depth=5)


def test_a_writable_bind_too_big_to_look_through_is_refused_and_says_what_to_do(
    tmp_path, monkeypatch
):
    """Refuse, not warn: a .git beyond the budget would let the sandbox plant what git runs
    outside it, and code that asked for a sandbox never runs unsandboxed."""
    import nskernel.spec

    src = tmp_path / "data"
    _tree(src, 100, 10)
    assert _refusal(src) is None
    monkeypatch.setattr(nskernel.spec, "GIT_WALK_BUDGET", 500)
    why = _refusal(src)
    assert why and "more than 500 entries" in why and "not made writable" in why, why
    assert f"--ro-bind {src}" in why and "--bind ./output" in why


def test_a_git_directory_of_its_own_below_or_above_a_writable_bind_is_refused(scratch):
    """A bare repository (a local backup remote) has no `.git` entry: git takes a
    directory with HEAD, objects/ and refs/ for one, and runs its hooks at the next push;
    and `--bind ./.git` or `./.git/hooks` (what "it holds a git repository" invites)
    lies inside one (16th red-team pass, F3)."""
    proj = scratch / "proj"
    bare = proj / "backup.git"
    for sub in ("objects", "refs", "hooks"):
        (bare / sub).mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    why = _refusal(proj)
    assert why and f"git repository ({bare})" in why, why
    why = _refusal(bare / "hooks")
    assert why and f"a git directory ({bare})" in why, why
    work = scratch / "work"
    (work / ".git" / "hooks").mkdir(parents=True)
    for d in (work / ".git", work / ".git" / "hooks"):
        why = _refusal(d)
        assert why and f"a git directory ({work / '.git'})" in why, why
    (scratch / "out").mkdir()
    assert _refusal(scratch / "out") is None  # beside them, fine


def test_a_writable_bind_of_a_homes_dot_entry_is_refused(scratch, monkeypatch):
    """`--bind ~/.cargo`: a login shell sources ~/.cargo/env, and ~/.config, ~/.ssh and
    the caches hold what other programs run or unpickle on the host (16th red-team pass,
    F8). A home's dot-entry, and anything in one, is refused; the rest of the home is
    not (it is another check's to say)."""
    home = scratch / "home"
    for d in (".cargo", ".config/git", ".cache/models", "projects/out"):
        (home / d).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for d in (".cargo", ".config/git", ".cache/models"):
        why = _refusal(home / d)
        assert why and "a home's dot-entry" in why and "--ro-bind" in why, why
        assert str(home / d.split("/")[0]) in why, why
    assert _refusal(home / "projects" / "out") is None


def test_the_git_walk_leaves_no_descriptor_open(scratch):
    """A kernel checks every writable bind of every cell: a descriptor left open by each
    refusal (a .git right at the top) would pile up in it."""
    from nskernel.spec import GitWalkTooBig, git_below

    (scratch / "repo" / ".git").mkdir(parents=True)
    (scratch / "big").mkdir()
    for i in range(5):
        (scratch / "big" / f"f{i}").touch()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        assert git_below(str(scratch / "repo")) == str(scratch / "repo" / ".git")
        with pytest.raises(GitWalkTooBig):
            git_below(str(scratch / "big"), budget=2)
    assert len(os.listdir("/proc/self/fd")) == before
