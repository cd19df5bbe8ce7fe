"""Provisioner and launcher pieces that need no kernel: socket path length, the stale
directory sweep, removal of what a sandbox left, and the output relay (its text filter,
its budget, where it writes)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import pty
import select
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from nskernel import paths
from nskernel.kernel import provisioner as P
from nskernel.kernel.launch import (
    DIRECT,
    SHARED,
    OutputBudget,
    Relay,
    TerminalText,
    _destination,
)
from tests.conftest import IS_ROOT, nskernel_cmd

# Syscall numbers as /proc/PID/task/TID/syscall shows them: write(2), and poll(2)/ppoll(2).
WRITE, POLL = {"x86_64": ("1", {"7", "271"}), "aarch64": ("64", {"73"})}[platform.machine()]


def test_socket_path_too_long_fails_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_base = tmp_path / ("x" * 90)
    long_base.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_base))
    with pytest.raises(P.KernelSandboxUnavailable, match="XDG_RUNTIME_DIR") as err:
        P.make_kernel_dir()
    assert "107 bytes" in str(err.value)
    # Nothing is left: no kernel dir, and not the runtime dir it would have lived in.
    assert not (long_base / f"nsk-{os.geteuid()}").exists()


def _dead_pid() -> str:
    res = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


def test_sweep_removes_only_directories_whose_owner_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    mine = Path(P.make_kernel_dir())
    assert (mine / "owner").read_text().split()[0] == str(os.getpid())
    stale = mine.parent / f"{paths.KERNEL_DIR_PREFIX}deadbeef"
    stale.mkdir()
    (stale / "owner").write_text(f"{_dead_pid()} 12345\n")
    (stale / "sock").mkdir()
    (stale / "sock" / "k-1").write_text("")
    recycled = mine.parent / f"{paths.KERNEL_DIR_PREFIX}0badf00d"
    recycled.mkdir()  # our PID but another start time: a recycled PID, also stale
    (recycled / "owner").write_text(f"{os.getpid()} 1\n")
    ownerless = mine.parent / f"{paths.KERNEL_DIR_PREFIX}00000000"
    ownerless.mkdir()  # kern-* get their owner before their name: nobody uses this
    # Being made (owner in the name until the rename): by a dead process, and by us.
    dead_new = mine.parent / f"{paths.KERNEL_DIR_NEW_PREFIX}{_dead_pid()}-12345-abcd"
    dead_new.mkdir()
    live_new = (
        mine.parent / f"{paths.KERNEL_DIR_NEW_PREFIX}{P._owner_token().replace(' ', '-')}-ef01"
    )
    live_new.mkdir()
    other = mine.parent / "magic-server"  # someone else's entry: never touched
    other.mkdir()

    removed = set(P.sweep_stale_kernel_dirs())
    assert removed == {str(stale), str(recycled), str(ownerless), str(dead_new)}
    assert mine.is_dir() and other.is_dir() and live_new.is_dir()
    live_new.rmdir()
    other.rmdir()
    P.remove_kernel_dir(str(mine))
    # The runtime dir stays, empty: sandboxes cover it with a mount on that directory.
    assert mine.parent.is_dir() and not any(mine.parent.iterdir())


SWEEP = """
import sys
from nskernel.kernel import provisioner as P
print(sorted(P.sweep_stale_kernel_dirs(sys.argv[1])))
"""


def test_sweep_never_blocks_or_reads_without_bound(tmp_path: Path) -> None:
    # Whatever sits at `owner` (a FIFO, a link to /dev/zero, a link to a file holding a
    # live owner), the sweep neither blocks, nor reads without bound, nor follows it:
    # such a directory is not one a live kernel made, so it goes. Run in a subprocess
    # with a timeout and a memory limit: a sweep that falls for it hangs or eats memory.
    base = tmp_path / f"nsk-{os.geteuid()}"
    base.mkdir(mode=0o700)
    victim = tmp_path / "victim-owner"
    victim.write_text(P._owner_token() + "\n")
    kinds = {"fifo": None, "zero": "/dev/zero", "link": str(victim)}
    for kind, target in kinds.items():
        d = base / f"{paths.KERNEL_DIR_PREFIX}{kind}0000"
        d.mkdir()
        if target is None:
            os.mkfifo(d / "owner")
        else:
            (d / "owner").symlink_to(target)
    res = subprocess.run(
        ["prlimit", f"--as={2 << 30}", sys.executable, "-c", SWEEP, str(base)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(paths.KERNEL_DIR_PREFIX) == len(kinds), res.stdout
    assert base.is_dir() and not any(base.iterdir())  # all three went; the dir stays
    assert victim.read_text() == P._owner_token() + "\n"


# ---------------------------------------------------------------- removal


def test_removal_follows_nothing_and_survives_any_depth(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "nsk" / "kern-x"
    tree.mkdir(parents=True)
    (tree / "link-to-dir").symlink_to(outside)
    (tree / "link-to-file").symlink_to(outside / "keep")
    (tree / "zero").symlink_to("/dev/zero")
    os.mkfifo(tree / "fifo")
    # Deeper than Python's recursion limit (shutil.rmtree recurses in 3.11).
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(sys.getrecursionlimit() + 100):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    fds_before = len(os.listdir("/proc/self/fd"))
    errors = paths.remove_runtime_entry(str(tree))
    assert not errors
    # The emptied runtime dir stays: sandboxes cover it with a mount on that directory.
    assert (tmp_path / "nsk").is_dir() and not any((tmp_path / "nsk").iterdir())
    assert (outside / "keep").read_text() == "keep"
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_files_are_created_fresh_and_read_bounded(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("victim")
    d = tmp_path / "d"
    d.mkdir()
    (d / "planted-link").symlink_to(victim)
    os.mkfifo(d / "planted-fifo")
    (d / "zero").symlink_to("/dev/zero")
    fd = paths.open_dir(str(d))
    try:
        for name in ("planted-link", "planted-fifo"):
            with pytest.raises(FileExistsError):
                paths.create_file(fd, name, b"connection file")
        paths.replace_file(fd, "planted-link", b"replaced")  # the link itself is replaced
        assert (d / "planted-link").read_bytes() == b"replaced"
        assert victim.read_text() == "victim"
        assert paths.read_small_file(fd, "planted-fifo", 64) is None  # never blocks
        assert paths.read_small_file(fd, "zero", 64) is None  # a link: not followed
        (d / "big").write_bytes(b"x" * 1000)
        assert paths.read_small_file(fd, "big", 64) == b"x" * 64
        with pytest.raises(OSError):
            paths.open_dir("zero", fd)
    finally:
        os.close(fd)


@pytest.mark.rootless
@pytest.mark.userns
def test_what_a_sandbox_gave_its_other_ids_is_removed_too(tmp_path: Path) -> None:
    # Rootless with a subordinate id range, a sandbox can leave entries owned by ids the
    # user cannot remove files of. The removal helper does it from a user namespace.
    from nskernel._linux import userns

    plan = userns.plan_id_maps()
    if len(plan.uid_map) < 2:
        pytest.skip("needs an /etc/subuid range for this user (and newuidmap)")
    kdir = tmp_path / "nsk" / "kern-y"
    (kdir / "sock").mkdir(parents=True)
    script = textwrap.dedent(
        f"""
        set -e
        cd {kdir}/sock
        mkdir -p a/b && touch a/b/f && ln -s /etc/passwd a/link
        chown -R 1234:1234 a && chmod 0 a/b && chmod 500 a
        """
    )
    res = subprocess.run(
        nskernel_cmd("run", "--bind", str(kdir / "sock"), "--", "sh", "-c", script),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert (kdir / "sock" / "a").stat().st_uid != os.getuid()
    assert paths.remove_tree(str(kdir)), "the user alone can remove it: no test"
    assert not P.remove_kernel_dir(str(kdir))
    assert not kdir.exists() and not any((tmp_path / "nsk").iterdir())


def test_retired_starts_go_and_the_next_start_gets_fresh_dirs(tmp_path: Path) -> None:
    kdir = tmp_path / "kern-z"
    (kdir / "sock").mkdir(parents=True)
    (kdir / "ro").mkdir()
    (kdir / "owner").write_text("me\n")
    (kdir / "sock" / "k-1").symlink_to("/etc/passwd")
    assert not paths.retire_start_dirs(str(kdir))
    assert sorted(os.listdir(kdir)) == ["owner"]


# ---------------------------------------------------------------- the terminal relay


@pytest.mark.parametrize(
    ("chunks", "utf8", "shown"),
    [
        ([b"\x1b]0;title\x07 ok\n"], True, b"^[]0;title^G ok\n"),
        ([b"a\x1b", b"[2J b"], True, b"a^[[2J b"),  # a sequence split across reads
        ([b"line\r\n", b"over\rwrite\r", b"\n"], True, b"line\nover^Mwrite\n"),
        ([b"\xc2\x9b31m \x9b \x7f \t"], True, b"\\x9b31m \xef\xbf\xbd ^? \t"),
        (["caf\u00e9 \u20ac".encode(), b"\xe2"], True, "caf\u00e9 \u20ac\ufffd".encode()),
        (["caf\u00e9".encode()], False, b"caf\\xe9"),  # not a UTF-8 terminal: ASCII only
    ],
    ids=["osc", "split", "cr", "c1", "utf8", "ascii"],
)
def test_terminal_text_is_made_harmless(chunks: list[bytes], utf8: bool, shown: bytes) -> None:
    text = TerminalText(utf8)
    out = b"".join(text.feed(c) for c in chunks) + text.feed(b"", final=True)
    assert out == shown


def test_a_slow_terminal_never_blocks_the_relay() -> None:
    # The "terminal" is a pipe nobody reads, full already; the sandbox keeps writing.
    # Nothing the relay does may block (a hang here is the failure), what waits for the
    # terminal stays bounded, and past the bound the sandbox's pipe fills instead.
    src_r, src_w = os.pipe2(os.O_NONBLOCK)
    dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
    relay = Relay(src_r, dst_w, TerminalText(True))
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(dst_w, b"x" * 65536)
        refused = 0
        for _ in range(1000):
            try:
                os.write(src_w, b"\x1b[31m" * 1000)
                refused = 0
            except BlockingIOError:
                refused += 1
                if refused == 10:
                    break  # the relay stopped reading: backpressure reached the sandbox
            p = select.poll()
            relay.register(p)
            relay.service(dict(p.poll(0)))
        assert refused == 10
        assert Relay.LIMIT <= len(relay.buf) < Relay.LIMIT + 2 * 65536
        relay.finish(timeout=0)  # the terminal never drains: dropped, not waited for
        assert relay.eof and relay.dst == -1 and not relay.buf
    finally:
        os.close(src_w)
        os.close(dst_r)


def _relay_all(relay: Relay, data: bytes, src_w: int) -> None:
    os.write(src_w, data)
    os.close(src_w)
    while not relay.eof:
        p = select.poll()
        relay.register(p)
        relay.service(dict(p.poll(1000)))
    relay.flush(timeout=10)


def test_a_log_file_gets_the_kernels_lines_after_the_servers(tmp_path: Path) -> None:
    # The server's log as `> log` makes it: no O_APPEND, one offset. The relay writes
    # through that offset: a fresh open file description would start at 0 and write over
    # the server's lines.
    log = tmp_path / "log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"server 1\n")
        dst, kind = _destination(fd)
        assert kind == DIRECT and dst != fd
        src_r, src_w = os.pipe2(os.O_NONBLOCK)
        _relay_all(Relay(src_r, dst, TerminalText(True), OutputBudget(1 << 20)), b"kernel\n", src_w)
        os.write(fd, b"server 2\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"server 1\nkernel\nserver 2\n"


def test_the_budget_cuts_once_and_counts_what_it_dropped() -> None:
    budget = OutputBudget(1000)
    shown: list[bytes] = []
    for data in (b"a" * 600, b"b" * 600):
        src_r, src_w = os.pipe2(os.O_NONBLOCK)
        dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
        _relay_all(Relay(src_r, dst_w, TerminalText(True), budget), data, src_w)
        with os.fdopen(dst_r, "rb") as f:
            shown.append(f.read())
    assert shown[0] == b"a" * 600
    assert shown[1].startswith(b"b" * 400 + b"\n[nskernel: the sandboxed kernel wrote more than")
    assert shown[1].count(b"[nskernel:") == 1
    assert budget.dropped == 200 and b"200 bytes" in budget.summary()


# Runs as a user other than the pipe's (or, rootless, with the pipe made read-only for
# its owner): the launcher's side of a pipe it may not reopen.
ANOTHER_USERS_PIPE = r"""
import os, select, sys
from nskernel.kernel.launch import Relay, TerminalText, _destination
fd = int(sys.argv[1])
dst, kind = _destination(fd)
src_r, src_w = os.pipe2(os.O_NONBLOCK)
relay = Relay(src_r, dst, TerminalText(True), kind=kind)
os.write(src_w, b"kernel says \x1b[2J hello\n" * 1000)
os.close(src_w)
while not relay.eof:
    p = select.poll()
    relay.register(p)
    relay.service(dict(p.poll()))
relay.add(b"the launcher's own line\n")
relay.flush(timeout=60)
print(kind)
"""


def test_a_pipe_of_another_user_gets_the_kernels_output(tmp_path: Path) -> None:
    # Red team 13 F4: a pipe or terminal is reopened through /proc/self/fd for a
    # non-blocking description of the launcher's own, and reopening checks permissions:
    # another user's pipe (root's, under runuser or sudo -u) refused it and the kernel's
    # output went nowhere. Now what was inherited is written, from a thread of its own.
    read_end, write_end = os.pipe()
    if IS_ROOT:  # a pipe of root's, written by nobody
        ids: dict[str, Any] = {"user": 65534, "group": 65534, "extra_groups": []}
    else:  # a pipe of the caller's that refuses its owner a reopen for writing, as
        ids = {}  # another user's would
        os.fchmod(write_end, 0o400)
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", ANOTHER_USERS_PIPE, str(write_end)],
        stdout=write_end,
        pass_fds=(write_end,),
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        **ids,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()  # EOF: the child is gone and its thread closed its copy
    assert proc.wait(60) == 0
    assert out.count(b"kernel says ^[[2J hello\n") == 1000, out[-300:]
    assert out.endswith(b"the launcher's own line\nshared\n"), out[-300:]


def _syscall_of(thread: threading.Thread) -> str:
    with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
        return f.read().split()[0]


def test_a_destination_that_stops_taking_output_stops_only_the_writer_thread() -> None:
    # A terminal that says POLLOUT yet has less room than a write needs (a newline takes
    # two with ONLCR), as a pipe may when the server takes the room between poll and
    # write: the writer thread then waits in write(2), and nothing else does: the relay
    # goes on reading, its buffer stays bounded, and it finishes without waiting.
    master, slave = pty.openpty()
    filler = os.open(os.ttyname(slave), os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    src_r, src_w = os.pipe2(os.O_NONBLOCK)
    relay = Relay(src_r, os.dup(slave), TerminalText(True), kind=SHARED)
    writer = relay.writer
    assert writer is not None
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(filler, b"x" * 1024)
        while not select.select([], [slave], [], 0)[1]:
            os.read(master, 512)
        refused = 0
        while refused < 10:
            try:
                os.write(src_w, b"\n" * 4096)
                refused = 0
            except BlockingIOError:
                refused += 1
            p = select.poll()
            relay.register(p)
            relay.service(dict(p.poll(0)))
        thread = writer._thread
        assert thread is not None
        while _syscall_of(thread) != WRITE:  # a hang here: it never wrote
            select.select([], [], [], 0.01)
        assert Relay.LIMIT <= len(relay.buf) < Relay.LIMIT + 2 * 65536
        relay.finish(timeout=0)  # with the thread still in its write
        assert relay.eof and relay.dst == -1 and relay.writer is None
        assert thread.is_alive()
    finally:
        os.close(src_w)
        os.close(filler)
        os.close(slave)
        os.close(master)  # the write fails (EIO): the thread ends and closes its copy
    thread.join(60)
    assert not thread.is_alive()


def test_a_pipe_nobody_reads_leaves_the_writer_waiting_in_poll_and_closing_ends_it() -> None:
    read_end, write_end = os.pipe()
    with contextlib.suppress(BlockingIOError):
        os.set_blocking(write_end, False)  # ours alone: the relay gets a blocking dup
        while True:
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)
    src_r, src_w = os.pipe2(os.O_NONBLOCK)
    relay = Relay(src_r, os.dup(write_end), TerminalText(True), kind=SHARED)
    writer = relay.writer
    assert writer is not None
    try:
        os.write(src_w, b"never shown\n")
        os.close(src_w)
        while not relay.eof or relay.buf:
            p = select.poll()
            relay.register(p)
            relay.service(dict(p.poll(1000)))
        thread = writer._thread
        assert thread is not None
        while _syscall_of(thread) not in POLL:
            select.select([], [], [], 0.01)
        relay.flush(timeout=0)
        thread.join(60)  # woken by the close, not by the pipe
        assert not thread.is_alive()
        assert os.get_blocking(write_end)  # the shared description stays blocking
    finally:
        os.close(write_end)
        os.close(read_end)


@pytest.mark.parametrize(
    ("utf8", "unit"),
    [(True, "\ufffd".encode()), (False, b"\\ufffd")],
    ids=["utf8-locale", "c-locale"],
)
def test_the_budget_charges_what_is_shown_not_what_was_read(utf8: bool, unit: bytes) -> None:
    # Red team 13 F2: each invalid byte shows as U+FFFD (3 bytes) or, under a locale that
    # is not UTF-8, as its 6-byte escape; charged by bytes read, 4 KiB of 0xff put 12 or
    # 24 KiB through a 4 KiB budget. Now what passes is at most the budget, cut between
    # characters, never inside one.
    limit = 4096
    budget = OutputBudget(limit)
    src_r, src_w = os.pipe2(os.O_NONBLOCK)
    dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
    _relay_all(Relay(src_r, dst_w, TerminalText(utf8), budget), b"\xff" * 4 * limit, src_w)
    with os.fdopen(dst_r, "rb") as f:
        out = f.read()
    shown, _, notice = out.partition(b"\n[nskernel: the sandboxed kernel wrote more than")
    assert notice, out[-300:]
    assert limit - len(unit) < len(shown) <= limit
    if utf8:  # whole characters only
        assert shown == unit * (len(shown) // len(unit))
    assert budget.passed == len(shown) and budget.cut
    assert budget.dropped == 4 * limit - len(shown) // len(unit)


def test_a_character_is_never_cut_in_half_and_its_last_bytes_are_charged() -> None:
    # The cut falls inside a 3-byte character: it goes whole or not at all. And what the
    # decoder holds at the end (a character cut short shows as U+FFFD) is charged too.
    budget = OutputBudget(8)
    text = TerminalText(True)
    src_r, src_w = os.pipe2(os.O_NONBLOCK)
    dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
    _relay_all(Relay(src_r, dst_w, text, budget), "ab\u20ac\u20acc".encode() + b"\xe2", src_w)
    with os.fdopen(dst_r, "rb") as f:
        out = f.read()
    assert out.startswith("ab\u20ac\u20ac\n[nskernel:".encode()), out
    assert budget.passed == 8
    budget = OutputBudget(3)
    src_r, src_w = os.pipe2(os.O_NONBLOCK)
    dst_r, dst_w = os.pipe2(os.O_NONBLOCK)
    _relay_all(Relay(src_r, dst_w, TerminalText(True), budget), b"ab\xe2", src_w)
    with os.fdopen(dst_r, "rb") as f:
        out = f.read()
    assert out.startswith(b"ab\n[nskernel:"), out  # U+FFFD would make 5 bytes of 3
    assert budget.passed == 2 and budget.cut


def test_only_a_socket_of_sandbox_roots_is_published_to_the_server(tmp_path: Path) -> None:
    """``paths.link_socket``: what the server connects to is a hard link to a socket the
    sandbox bound, never what a planted symlink, FIFO or file stands for."""
    sock, ep = tmp_path / "sock", tmp_path / "ep"
    sock.mkdir()
    ep.mkdir()
    kernel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    kernel.bind(str(sock / "k-1"))
    kernel.listen(1)
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    daemon.bind(str(tmp_path / "daemon.sock"))
    daemon.listen(1)
    (sock / "k-2").symlink_to(tmp_path / "daemon.sock")
    os.mkfifo(sock / "k-3")
    (sock / "k-4").write_text("")
    sfd, efd = os.open(sock, os.O_RDONLY | os.O_DIRECTORY), os.open(ep, os.O_RDONLY)
    try:
        assert paths.link_socket(sfd, "k-1", efd, os.geteuid())
        assert os.path.samestat(os.stat(ep / "k-1"), os.stat(sock / "k-1"))
        assert not paths.link_socket(sfd, "k-5", efd, os.geteuid())  # not bound yet
        for name in ("k-2", "k-3", "k-4"):
            with pytest.raises(OSError, match="no socket"):
                paths.link_socket(sfd, name, efd, os.geteuid())
        with pytest.raises(OSError, match="a socket of uid"):
            paths.link_socket(sfd, "k-1", efd, os.geteuid() + 1)
        # A restart's socket at the same name replaces the link in one rename.
        kernel.close()
        os.unlink(sock / "k-1")
        again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        again.bind(str(sock / "k-1"))
        assert paths.link_socket(sfd, "k-1", efd, os.geteuid())
        assert os.path.samestat(os.stat(ep / "k-1"), os.stat(sock / "k-1"))
        again.close()
    finally:
        os.close(sfd)
        os.close(efd)
        kernel.close()
        daemon.close()
    assert sorted(os.listdir(ep)) == ["k-1"]  # nothing else, no temporary names


def test_the_launcher_takes_the_filter_the_provisioner_compiled(tmp_path: Path) -> None:
    """The provisioner hands its compiled filter to each launcher (a fresh process that
    spent ~9 ms compiling it again); what it takes is exactly that filter, and anything
    unreadable is compiled again instead (never a weaker filter)."""
    code = textwrap.dedent(
        """
        import argparse, json, os, sys
        from nskernel._linux import confine, seccomp
        from nskernel.kernel import launch
        given = confine.plan("default", allow_new_userns=True).filter
        fd = os.memfd_create("f")
        os.write(fd, sys.argv[1].encode() if sys.argv[1] != "-" else seccomp.serialize(given))
        args = argparse.Namespace(seccomp_filter_fd=fd, seccomp="default", cap_add=[], cap_drop=[])
        launch._preload_filter(args)
        got = confine.plan("default", allow_new_userns=True).filter
        print(json.dumps([got.program == given.program, got is given,
                          bool(seccomp._PRELOADED)]))
        """
    )
    for data, expect in (("-", [True, False, True]), ("not json", [True, True, False])):
        res = subprocess.run(
            [sys.executable, "-c", code, data], capture_output=True, text=True, check=True
        )
        assert json.loads(res.stdout) == expect, (data, res.stdout, res.stderr)
