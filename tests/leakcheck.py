"""What a test run must leave behind: nothing — judged on what this run created.

A pytest plugin (the repository's root ``conftest.py`` loads it for every run, tests and
tutorial notebooks alike): it takes a snapshot when the session starts and fails the
session if, at its end, something this run created is still there:

- **processes**: found by an environment tag (``NSKERNEL_TEST_SESSION=<random>``) that
  every child inherits. Sandboxes get an allow-listed environment, so the tag's name is
  added to ``NSKERNEL_KEEP_ENV``, which nskernel honours for every sandbox it makes.
  Other users' and other sessions' nskernel processes carry another tag, or none.
- **runtime entries** (socket directories, server sockets): the run gets a runtime
  directory of its own (``XDG_RUNTIME_DIR``, which nskernel's per-user directory lives
  under), so whatever is in it at the end is this run's, while other kernels on the
  machine keep using the usual one. It is removed at the end.
- **files in /tmp owned by a sandbox's identity** (``nobody``, or a subordinate uid):
  a tool in a sandbox that sees the host's ``/tmp`` but cannot write its ``$HOME``
  (IPython, matplotlib) falls back to ``tempfile.mkdtemp()`` there, and nobody removes
  it. Only entries new since the start count.
- **mount points, network links, nskernel cgroups** below our own cgroup.

The last two kinds are machine-wide state: another suite running at the same time
changes them too. ``NSKERNEL_LEAKCHECK_PROCESSES_ONLY=1`` (for developers running
several suites at once; CI never sets it) skips them. cgroups are narrowed to this run's
as far as their names allow (``nsk-<launcher pid>-<n>``: a live launcher that is not
ours is someone else's). Network namespaces are torn down asynchronously by the kernel,
so the comparison is retried for a few seconds before anything counts as a leak.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import uuid

import pytest

from nskernel.environ import KEEP_ENV_VAR
from nskernel.paths import runtime_dir_path

TAG_VAR = "NSKERNEL_TEST_SESSION"
PROCESSES_ONLY_VAR = "NSKERNEL_LEAKCHECK_PROCESSES_ONLY"
NOBODY = 65534
TMP = "/tmp"


def _environ_of(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None  # gone, or not ours to read (another user's process: not ours)


def _tagged_processes(tag: str) -> dict[int, str]:
    needle = f"{TAG_VAR}={tag}".encode()
    found = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        env = _environ_of(int(name))
        if env is None or needle not in env:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            continue
        if state != "Z":
            found[int(name)] = cmd
    return found


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _runtime_entries() -> set[str]:
    """What is in the per-user runtime dir (looked at, never created). The dir itself
    stays by design once made (``paths.runtime_dirs_to_hide``)."""
    d = runtime_dir_path()
    try:
        return {os.path.join(d, e) for e in os.listdir(d)}
    except FileNotFoundError:
        return set()


def _own_cgroup_dirs() -> set[str]:
    found: set[str] = set()
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        name = controllers.split(",")[0].removeprefix("name=") or "unified"
        base = f"/sys/fs/cgroup/{name}{path}"
        if not os.path.isdir(base):
            continue
        for root, dirs, _ in os.walk(base):
            for d in dirs:
                if d.startswith("nsk"):
                    found.add(os.path.join(root, d))
    return found


def _subordinate_uids(uid: int) -> range | None:
    """The caller's /etc/subuid range: ids only its sandboxes use."""
    import pwd

    try:
        names = {str(uid), pwd.getpwuid(uid).pw_name}
    except KeyError:
        names = {str(uid)}
    try:
        with open("/etc/subuid") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in names:
                    start, count = int(parts[1]), int(parts[2])
                    return range(start, start + count)
    except (OSError, ValueError):
        pass
    return None


def sandbox_only_uids() -> tuple[int | range, ...]:
    """Host uids that only this caller's sandboxes act as, never the caller itself.

    Run by root, sandbox root is ``nobody`` or root's subordinate range; run by a user,
    sandbox root is the user (not counted: the user's own files are the tests' business)
    and the other sandbox ids come from the user's subordinate range.
    """
    uid = os.geteuid()
    sub = _subordinate_uids(uid)
    ids: list[int | range] = [sub] if sub else []
    if uid == 0:
        ids.append(NOBODY)
    return tuple(ids)


def _owned_by(uid: int, ids: tuple[int | range, ...]) -> bool:
    return any(uid in i if isinstance(i, range) else uid == i for i in ids)


def _tmp_entries_of_sandboxes(ids: tuple[int | range, ...]) -> set[str]:
    found = set()
    with os.scandir(TMP) as it:
        for e in it:
            try:
                # lstat: an entry a sandbox made is hostile input; never follow it.
                owner = e.stat(follow_symlinks=False).st_uid
            except OSError:
                continue
            if _owned_by(owner, ids):
                found.add(e.path)
    return found


def _launcher_of(cgroup: str) -> int | None:
    parts = os.path.basename(cgroup).split("-")
    if len(parts) == 3 and parts[0] == "nsk" and parts[1].isdigit():
        return int(parts[1])
    return None


def _cgroup_is_ours(cgroup: str, tag: str) -> bool:
    """``nsk-<launcher pid>-<n>``: ours unless its launcher lives and is someone else's."""
    pid = _launcher_of(cgroup)
    if pid is None:
        return True
    env = _environ_of(pid)
    if env is None:
        return True  # the launcher is gone and left its cgroup: a leak, wherever from
    return f"{TAG_VAR}={tag}".encode() in env


@dataclasses.dataclass
class Snapshot:
    mounts: set[str]
    links: set[str]
    runtime: set[str]
    cgroups: set[str]
    tmp: set[str]

    @classmethod
    def take(cls, sandbox_ids: tuple[int | range, ...] = ()) -> Snapshot:
        return cls(
            _mount_points(),
            _links(),
            _runtime_entries(),
            _own_cgroup_dirs(),
            _tmp_entries_of_sandboxes(sandbox_ids),
        )


def leaks(
    before: Snapshot,
    tag: str,
    timeout: float = 10.0,
    *,
    processes_only: bool = False,
    sandbox_ids: tuple[int | range, ...] = (),
) -> list[str]:
    """What this run left behind; empty when nothing leaked.

    ``processes_only`` skips the machine-wide kinds (mounts, links, cgroups, /tmp), which
    a suite running at the same time changes as well; processes and runtime entries are
    always this run's own.
    """
    deadline = time.monotonic() + timeout
    while True:
        problems = [f"process {pid}: {cmd}" for pid, cmd in _tagged_processes(tag).items()]
        now = Snapshot.take(sandbox_ids)
        problems += [f"runtime entry {e}" for e in sorted(now.runtime - before.runtime)]
        if not processes_only:
            problems += [f"mount {m}" for m in sorted(now.mounts - before.mounts)]
            problems += [f"link {n}" for n in sorted(now.links - before.links)]
            problems += [
                f"cgroup {c}"
                for c in sorted(now.cgroups - before.cgroups)
                if _cgroup_is_ours(c, tag)
            ]
            problems += [
                f"file in {TMP} made by a sandbox (uid {os.lstat(t).st_uid}): {t}"
                for t in sorted(now.tmp - before.tmp)
                if os.path.lexists(t)
            ]
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.2)


# ------------------------------------------------------------------ the pytest plugin


@dataclasses.dataclass
class _Run:
    tag: str
    runtime_base: str
    saved_env: dict[str, str | None]
    sandbox_ids: tuple[int | range, ...]
    before: Snapshot


_run: _Run | None = None


def _set_env(name: str, value: str, saved: dict[str, str | None]) -> None:
    saved.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def start() -> _Run:
    """Tag this run's processes and give it a runtime directory of its own."""
    saved: dict[str, str | None] = {}
    tag = uuid.uuid4().hex
    _set_env(TAG_VAR, tag, saved)
    kept = os.environ.get(KEEP_ENV_VAR, "")
    _set_env(KEEP_ENV_VAR, f"{kept} {TAG_VAR}".strip(), saved)
    # Short (unix socket paths are limited to 107 bytes) and private (0700), like
    # /run/user/UID. Everything nskernel keeps at run time goes below it.
    runtime_base = tempfile.mkdtemp(prefix="nskrun-", dir=TMP)
    _set_env("XDG_RUNTIME_DIR", runtime_base, saved)
    ids = sandbox_only_uids()
    return _Run(tag, runtime_base, saved, ids, Snapshot.take(ids))


def finish(run: _Run) -> list[str]:
    processes_only = os.environ.get(PROCESSES_ONLY_VAR) == "1"
    problems = leaks(
        run.before, run.tag, processes_only=processes_only, sandbox_ids=run.sandbox_ids
    )
    shutil.rmtree(run.runtime_base, ignore_errors=True)
    for name, value in run.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return problems


def pytest_sessionstart(session: pytest.Session) -> None:
    global _run
    if os.environ.get(TAG_VAR):
        return  # an outer run (pytest started by a test) already checks
    _run = start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _run
    if _run is None:
        return
    run, _run = _run, None
    # A spare launcher this process started (nskernel/kernel/spare.py) ends at exit, after
    # this check: end it now. One of a server or kernel that outlived them still counts.
    spare = sys.modules.get("nskernel.kernel.spare")
    if spare is not None:
        spare.discard()
    problems = finish(run)
    if problems:
        text = "leaked after the test session:\n  " + "\n  ".join(problems)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
