"""The caller's terminal never reaches a sandbox: `nskernel run` relays a pty of its own.

The hazard: whoever holds a terminal can push bytes into its input queue (TIOCSTI, where
the kernel allows it), and the shell that owns the terminal reads them as typed once
the sandbox has exited (CVE-2017-5226, the reason for `bwrap --new-session`). A new
session alone is not enough: a sandbox holding a terminal that is nobody's controlling
terminal can make it its own and push again, and any holder can change the terminal's
modes or read what the user types next. So no descriptor of the caller's terminal is
ever passed in. When any of fds 0-2 is a terminal, the sandbox gets a pty created here
(its slave replaces each of 0-2 that was a terminal and becomes the command's
controlling terminal), and this process copies bytes between the caller's terminal and
the pty master, as `ssh -t`, `docker run -it` and `systemd-run --pty` do. What a sandbox
pushes into its pty lands in its own input, never in the caller's.

The choices:

- One thread, one poll(2) loop, which also waits for the sandbox (a pidfd) and for
  signals (the wake-up fd): nothing here can block while the sandbox runs.
- Everything from the sandbox is only ever *written to the caller's output*, as it
  comes; nothing is written to the caller's input queue.
- Bounded buffering: each direction holds at most ``BUFFER_CAP`` bytes. A caller's
  terminal that stops reading stops the relay reading the pty, and the sandbox then
  blocks in write(2): back pressure, not memory growth, and nskernel stays responsive.
- The caller's descriptors are reopened (``/proc/self/fd/N``) before being made
  non-blocking: a fresh open file description, so O_NONBLOCK never leaks into the shell
  that shares the original one (systemd's pty-forward does the same). Where reopening
  fails, O_NONBLOCK is set on the original and put back afterwards.
- Signals mean what they mean without a terminal: INT, TERM, HUP, QUIT, USR1, USR2
  are forwarded to the sandbox (as `sudo` does for the command it runs on a pty), so a
  terminal changes nothing about how a command is stopped. The sandbox's terminal is
  hung up (the kernel sends SIGHUP to its session) when the caller's terminal really
  goes away: EOF, EIO or POLLHUP on it. Once the sandbox has ended, those signals drop
  what the terminal has not taken yet: a terminal that stopped reading cannot hold
  nskernel forever.
- Ending never needs the sandbox's cooperation: in raw mode Ctrl-C is a byte for it,
  and a command can ignore what is forwarded, or stop itself (or its init) so that
  nothing is ever delivered (red team 21). So once INT, TERM, HUP or QUIT was passed
  on, or the caller's terminal went away, the sandbox has ``stop_timeout`` seconds to
  end (``--stop-timeout``, 10 as for `docker stop`), and a second such signal ends it
  at once; past that it is destroyed, as ``--timeout`` does. The base class relays
  nothing and is what `nskernel run` waits with when no fd is a terminal: the same
  rules, in the same loop.
- The caller's terminal is in raw mode only while bytes are relayed into the sandbox,
  and its modes are restored on every exit path this process sees: normal exit, the
  command killed, a forwarded signal ending it, SIGTSTP (until SIGCONT), a hang-up, an
  exception. SIGKILL cannot be seen; like ssh, nskernel leaves that to the shell (bash
  and zsh restore the modes when a foreground job dies of a signal) or to `reset`.
- Job control: in the background (`nskernel run ... &`) the relay does not read the
  caller's terminal, which would get it stopped by SIGTTIN and take what the user types
  to the shell, nor set its modes; it takes the terminal when brought to the
  foreground (`fg`).
- ``--no-tty`` gives the sandbox pipes instead of a pty (as `docker run -i` without
  ``-t`` does), relayed the same way: the command sees no terminal at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import stat
import termios
import time
from collections.abc import Callable, Iterator

from ._linux.syscalls import poll_ms

# typing is only for annotations (strings, with the __future__ import): importing it
# cost every `nskernel run` ~2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    from .sandbox import Sandbox

    TtyMode = Literal["auto", "always", "never"]

CHUNK = 16 * 1024
# Per direction. Enough to keep a fast terminal busy between two polls; small enough
# that a sandbox flooding a stalled terminal costs nskernel nothing worth measuring.
BUFFER_CAP = 64 * 1024

# Signals nskernel forwards to the sandbox's init (see `nskernel run --help`).
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# Once the sandbox has ended: stop waiting for the terminal to take the rest.
GIVE_UP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# How long a sandbox has to end once asked (see the module note), as `docker stop`.
STOP_TIMEOUT = 10.0
# How often a background nskernel looks whether it is in the foreground again.
BACKGROUND_RECHECK_MS = 250

_Attrs = list  # what termios.tcgetattr returns


def is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def raw_attrs(attrs: _Attrs) -> _Attrs:
    """``attrs`` in raw mode, as ssh sets it: every byte, Ctrl-C and Ctrl-Z included,
    goes to the program behind the relay, and its output passes unchanged (the
    sandbox's pty already did the output processing)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag |= termios.IGNPAR
    iflag &= ~(
        termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXANY
        | termios.IXOFF
        | termios.IUCLC
    )
    lflag &= ~(
        termios.ISIG
        | termios.ICANON
        | termios.ECHO
        | termios.ECHOE
        | termios.ECHOK
        | termios.ECHONL
        | termios.IEXTEN
    )
    oflag &= ~termios.OPOST
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def _get_winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def _reopen_nonblocking(fd: int, write: bool) -> tuple[int, Callable[[], None]]:
    """A non-blocking descriptor for the caller's ``fd``; the second item undoes what
    getting it changed (and closes what it opened)."""
    st = os.fstat(fd)
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        # A regular file never blocks; a dup keeps its offset and O_APPEND, which a
        # reopen would lose.
        dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        return dup, lambda: os.close(dup)
    if stat.S_ISCHR(st.st_mode) and not is_terminal(fd):
        dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)  # /dev/null and the like
        return dup, lambda: os.close(dup)
    access = os.O_WRONLY if write else os.O_RDONLY
    try:
        new = os.open(f"/proc/self/fd/{fd}", access | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # a socket, a FIFO without a reader, a terminal set TIOCEXCL
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

        def undo() -> None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

        return fd, undo
    return new, lambda: os.close(new)


class _Channel:
    """Bytes from ``src`` to ``dst``, at most ``BUFFER_CAP`` of them held here."""

    def __init__(self, src: int, dst: int, *, watch_dst: bool = False) -> None:
        self.src = src
        self.dst = dst
        # Polled even with nothing to write, to see a hang-up (POLLHUP) at once: for
        # the caller's terminal, which the sandbox may stay silent on.
        self.watch_dst = watch_dst
        self.buf = bytearray()
        self.reading = True  # src may still give bytes
        self.writing = True  # dst still takes them
        self.last_byte = b"\n"  # of what was read: decides how an EOF is passed on

    def want_read(self) -> bool:
        return self.reading and self.writing and len(self.buf) < BUFFER_CAP

    def want_write(self) -> bool:
        return self.writing and bool(self.buf)

    def read(self) -> bool | None:
        """Read what is there. False at EOF or error, None if nothing was ready."""
        try:
            data = os.read(self.src, min(CHUNK, BUFFER_CAP - len(self.buf)))
        except BlockingIOError:
            return None
        except OSError:  # EIO: a terminal hung up, or a pty whose other side is closed
            data = b""
        if not data:
            self.reading = False
            return False
        self.buf += data
        self.last_byte = data[-1:]
        return True

    def write(self) -> bool:
        """Write what the destination takes now. False once it is broken."""
        try:
            n = os.write(self.dst, self.buf)
        except BlockingIOError:
            return True
        except OSError:  # EPIPE, EIO: nobody reads there any more
            self.stop_writing()
            return False
        del self.buf[:n]
        return True

    def stop_writing(self) -> None:
        self.writing = False
        self.reading = False
        self.buf.clear()


class Relay:
    """The sandbox's side of the caller's terminal: a pty, or pipes (``--no-tty``); the
    base class relays nothing (no fd is a terminal) and only waits, with the same
    handling of signals, ``--timeout`` and ``stop_timeout``.

    Use: ``prepare()``; pass ``sandbox_stdio`` and ``controlling_tty`` to
    ``Sandbox.spawn``; ``started()``; ``run(sandbox)`` relays until the sandbox ended
    and returns its exit status; ``close()`` (always) releases everything.
    ``stop_reason`` then says why nskernel killed it, if it did.
    """

    def __init__(self, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.sandbox_stdio: tuple[int, int, int] = (0, 1, 2)
        self.controlling_tty: int | None = None
        self._sandbox_ends: list[int] = []  # closed here once the sandbox holds them
        self._own: list[int] = []  # closed by close()
        self._undo: list[Callable[[], None]] = []
        self._channels: list[_Channel] = []
        self._inputs: list[_Channel] = []  # caller -> sandbox
        self._outputs: list[_Channel] = []  # sandbox -> caller
        # The caller's terminal we read from (fd 0), if it is one: read only while
        # nskernel is in its foreground process group. A background `nskernel run ... &`
        # that read it would be stopped by SIGTTIN as soon as the user types to the
        # shell, and take what they type.
        self._input_terminal: int | None = None
        self._ended = False  # the sandbox exited: only its last output is left
        self._give_up = False  # ... and the caller no longer waits for that either
        self.stop_timeout = stop_timeout
        self._stop_by: float | None = None  # monotonic; set once it was asked to end
        self._asked_by = ""  # what asked it: "SIGTERM", "its terminal went away"
        self.stop_reason: str | None = None

    # ------------------------------------------------------------ setup

    @staticmethod
    def prepare(mode: TtyMode = "auto", stop_timeout: float = STOP_TIMEOUT) -> Relay | None:
        """What the sandbox gets instead of the caller's terminal; None when none of fds
        0-2 is a terminal and no pty was asked for (the sandbox gets them as they are)."""
        terminals = [fd for fd in (0, 1, 2) if is_terminal(fd)]
        if mode == "never":
            return _PipeRelay(terminals, stop_timeout) if terminals else None
        if mode == "always":
            return _PtyRelay([0, 1, 2], 1, stop_timeout)
        if not terminals:
            return None
        output = next(fd for fd in (1, 2, 0) if fd in terminals)
        return _PtyRelay(terminals, output, stop_timeout)

    def _passed_as_is(self, fd: int) -> int:
        """The caller's ``fd`` for the sandbox; /dev/null where it is closed, because
        explicit stdio must be three open descriptors."""
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self._own.append(null)
            return null
        return fd

    def started(self) -> None:
        """The sandbox holds its ends now: ours go, so that EOF and hang-up reach us."""
        for fd in self._sandbox_ends:
            os.close(fd)
        self._sandbox_ends = []

    def close(self) -> None:
        self.started()
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        for fd in self._own:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._own = []

    # ------------------------------------------------------------ the loop

    def _in_foreground(self) -> bool:
        """Whether nskernel may read and set the caller's terminal without SIGTTIN or
        SIGTTOU: it is in the terminal's foreground process group, or the terminal is
        not its controlling one (then job control does not apply)."""
        if self._input_terminal is None:
            return True
        try:
            return os.tcgetpgrp(self._input_terminal) == os.getpgrp()
        except OSError:
            return True

    def _handled_signals(self) -> tuple[int, ...]:
        return (*FORWARDED, signal.SIGCONT)  # SIGCONT: `fg` may have made us foreground

    def _enter(self) -> None:
        """Called once the relay starts (the pty relay puts the terminal in raw mode)."""

    def _leave(self) -> None:
        """Undo ``_enter``; called on every way out, possibly more than once."""

    def _on_signal(self, sb: Sandbox, signum: int) -> None:
        # A sandbox that exited before its pidfd was handled has ended all the same:
        # the signal was meant for nskernel then, not lost on a zombie.
        if signum in GIVE_UP and not self._ended and sb.poll() is not None:
            self._mark_ended()
        if self._ended:
            self._give_up = self._give_up or signum in GIVE_UP
        elif signum in GIVE_UP and self._stop_by is not None:
            name = signal.Signals(signum).name
            self._end_now(sb, f"killed: {name} came while it was still ending")
        elif signum in FORWARDED:
            sb.send_signal(signum)
            if signum in GIVE_UP:
                self._ask_to_end(signal.Signals(signum).name)

    def _ask_to_end(self, by: str) -> None:
        """It was asked to end (``by``): it has ``stop_timeout`` seconds (module note)."""
        if self._stop_by is None and not self._ended:
            self._stop_by = time.monotonic() + self.stop_timeout
            self._asked_by = by

    def _end_now(self, sb: Sandbox, reason: str) -> None:
        """Destroy it without its cooperation; the loop then reaps it (its pidfd)."""
        if self.stop_reason is None and not self._ended:
            self.stop_reason = reason
            sb.destroy()

    def _mark_ended(self) -> None:
        self._ended = True
        for ch in self._inputs:
            ch.stop_writing()  # what the user types now is for their shell

    def _on_input_eof(self, ch: _Channel) -> None:
        raise NotImplementedError

    def _on_broken(self, ch: _Channel) -> None:
        raise NotImplementedError

    def run(self, sb: Sandbox, early: list[int] | None = None) -> int:
        """Relay until the sandbox ended and its output was written; its exit status.

        Honours ``sb.spec.timeout`` (the sandbox is destroyed, ``sb.timed_out`` set).
        ``early``: signals the caller caught before this took them over, handled first
        (the list is emptied; the caller's handler must only append to it).
        """
        with _signal_wakeups(self._handled_signals()) as wake_r:
            self._enter()
            try:
                if early:
                    caught, early[:] = list(early), []
                    for signum in caught:
                        self._on_signal(sb, signum)
                self._loop(sb, wake_r)
            finally:
                self._leave()
        assert sb.returncode is not None
        return sb.returncode

    def _tidy(self) -> None:
        """Called after each round of reads and writes."""

    def _loop(self, sb: Sandbox, wake_r: int) -> None:
        pidfd: int | None = os.pidfd_open(sb.pid)
        self._own.append(pidfd)
        deadline = sb.started + sb.spec.timeout if sb.spec.timeout else None
        was_foreground = self._in_foreground()  # run() entered (raw mode) if it was
        while True:
            if self._ended:
                # The sandbox is gone, and so is every holder of its ends (with a PID
                # namespace the kernel waited for all of them): read what is left
                # without waiting. EAGAIN means only an outsider still holds an end.
                for ch in self._outputs:
                    if ch.want_read() and ch.read() is None:
                        ch.reading = False
                if self._give_up:
                    for ch in self._outputs:
                        ch.write()  # what the terminal takes now, and no more
                        ch.stop_writing()
                if not any(ch.want_write() or ch.want_read() for ch in self._outputs):
                    return
            events: dict[int, int] = {wake_r: select.POLLIN}
            if pidfd is not None:
                events[pidfd] = select.POLLIN
            # In the background, leave the terminal's input to the foreground job.
            reading_input = self._in_foreground()
            if reading_input and not was_foreground:
                # `fg` came between the look after the last poll and this one: raw mode
                # now, or the keys would reach the sandbox cooked (seen in CI, loaded).
                self._enter()
            was_foreground = reading_input
            for ch in self._channels:
                may_read = reading_input or ch not in self._inputs
                if may_read and ch.want_read() and not self._ended:
                    events[ch.src] = events.get(ch.src, 0) | select.POLLIN
                if ch.want_write():
                    events[ch.dst] = events.get(ch.dst, 0) | select.POLLOUT
                elif ch.writing and ch.watch_dst:
                    events.setdefault(ch.dst, 0)  # POLLHUP and POLLERR are always reported
            poller = select.poll()
            for fd, ev in events.items():
                poller.register(fd, ev)
            timeout_ms = None
            if deadline is not None:
                timeout_ms = poll_ms(deadline - time.time() + 0.001)
            if self._stop_by is not None and self.stop_reason is None and not self._ended:
                left_ms = poll_ms(self._stop_by - time.monotonic() + 0.001)
                assert left_ms is not None
                timeout_ms = left_ms if timeout_ms is None else min(timeout_ms, left_ms)
            if not reading_input and self._inputs and not self._ended:
                # Nothing tells a running background job that `fg` gave it the terminal
                # (bash sends SIGCONT only to a stopped one): look again now and then.
                # The keys typed meanwhile wait in the terminal, none is lost.
                timeout_ms = (
                    BACKGROUND_RECHECK_MS
                    if timeout_ms is None
                    else min(timeout_ms, BACKGROUND_RECHECK_MS)
                )
            ready = dict(poller.poll(timeout_ms))
            if not reading_input and self._in_foreground():
                self._enter()  # raw mode now that the terminal is ours again
                was_foreground = True
            if deadline is not None and time.time() >= deadline and pidfd is not None:
                sb.timed_out = True
                sb.destroy()  # the pidfd says when it is gone
                deadline = None
            if self._stop_by is not None and time.monotonic() >= self._stop_by:
                after = f"{self.stop_timeout:g} s after {self._asked_by}"
                self._end_now(sb, f"killed: it had not ended {after}")
            # Signals first, and whether or not poll saw them: a signal sent before
            # some input was handled (its number written) before poll returned here,
            # and a window size change must reach the sandbox's pty before the keys
            # typed after it.
            with contextlib.suppress(BlockingIOError):
                for signum in os.read(wake_r, 256):
                    self._on_signal(sb, signum)
            for ch in list(self._channels):
                may_read = reading_input or ch not in self._inputs
                if may_read and not self._ended and ch.src in ready and ch.want_read():
                    at_eof = ch.read() is False
                    if at_eof and ch in self._inputs:
                        self._on_input_eof(ch)
                if ch.dst in ready and ch.writing:
                    if ch.buf:
                        broken = not ch.write()
                    elif ch.watch_dst:  # nothing to write: a hang-up or an error?
                        broken = bool(ready[ch.dst] & (select.POLLHUP | select.POLLERR))
                        if broken:
                            ch.stop_writing()
                    else:
                        broken = False
                    if broken:
                        self._on_broken(ch)
            self._tidy()
            if pidfd is not None and (self._ended or pidfd in ready):
                sb.wait()  # reaps it (unless a signal's sb.poll() did already)
                self._own.remove(pidfd)
                os.close(pidfd)
                pidfd = None
                deadline = None
                self._mark_ended()


class _PtyRelay(Relay):
    """The sandbox's fds in ``replace`` become the slave of a pty made here."""

    def __init__(self, replace: list[int], output: int, stop_timeout: float) -> None:
        super().__init__(stop_timeout)
        self._terminal: int | None = 0 if is_terminal(0) else None  # raw mode here
        self._input_terminal = self._terminal
        self._saved: _Attrs | None = None  # its modes, while raw
        self._size_from = next(
            (fd for fd in (output, 0) if is_terminal(fd)), None
        )  # window size source
        try:
            self._open(replace, output)
        except BaseException:
            self.close()
            raise

    def _open(self, replace: list[int], output: int) -> None:
        master, slave = os.openpty()  # non-inheritable; the slave opened O_NOCTTY
        self._own.append(master)
        self._sandbox_ends.append(slave)
        self.master = master
        # The caller's terminal settings (erase key, IUTF8...) carry over, as ssh does.
        template = self._terminal if self._terminal is not None else self._size_from
        if template is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(template))
        self._copy_winsize()
        self.sandbox_stdio = tuple(  # type: ignore[assignment]
            slave if fd in replace else self._passed_as_is(fd) for fd in (0, 1, 2)
        )
        self.controlling_tty = slave
        os.set_blocking(master, False)
        out = self._passed_as_is(output)
        out_fd, undo = _reopen_nonblocking(out, write=True)
        self._undo.append(undo)
        self._outputs.append(_Channel(master, out_fd, watch_dst=is_terminal(out)))
        if 0 in replace:
            in_fd, undo = _reopen_nonblocking(self._passed_as_is(0), write=False)
            self._undo.append(undo)
            self._inputs.append(_Channel(in_fd, master))
        self._channels = self._inputs + self._outputs

    def _copy_winsize(self) -> None:
        if self._size_from is None or self.master < 0:
            return
        size = _get_winsize(self._size_from)
        if size is not None:
            # On a master this sets the slave's size; the kernel sends SIGWINCH to the
            # slave's foreground process group when it changed.
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def _handled_signals(self) -> tuple[int, ...]:
        return (*FORWARDED, signal.SIGWINCH, signal.SIGTSTP, signal.SIGCONT)

    def _enter(self) -> None:
        """Raw mode on the caller's terminal (again, after a stop), if we may."""
        self._copy_winsize()  # it may have changed while the sandbox was being made
        if self._terminal is None or self.master < 0:
            return
        if not self._in_foreground():
            # A job-control shell put its own modes back when it saw us stop; what the
            # foreground job has now is not ours to change (and SIGTTOU would stop us).
            self._saved = None
            return
        try:
            if self._saved is None:
                self._saved = termios.tcgetattr(self._terminal)
            termios.tcsetattr(self._terminal, termios.TCSANOW, raw_attrs(self._saved))
        except termios.error:
            pass

    def _leave(self) -> None:
        """The caller's modes back, if they are ours to set."""
        if self._terminal is None or self._saved is None:
            return
        saved, self._saved = self._saved, None
        if not self._in_foreground():
            return  # see _enter
        # TCSANOW: output already written was processed when it was written, and
        # waiting for a terminal to drain could wait forever.
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self._terminal, termios.TCSANOW, saved)

    def _hang_up(self) -> None:
        """Close the master: the kernel hangs up the sandbox's terminal (SIGHUP to its
        session), as it does when a terminal or an ssh connection goes away; the
        caller's terminal, if it is still there, gets its modes back at once."""
        if self.master < 0:
            return
        for ch in self._channels:
            if ch.dst == self.master:
                ch.stop_writing()
            if ch.src == self.master:
                ch.reading = False
        self._own.remove(self.master)
        os.close(self.master)
        self.master = -1
        self._leave()  # nothing is relayed into the sandbox any more
        self._ask_to_end("its terminal went away")

    def _on_signal(self, sb: Sandbox, signum: int) -> None:
        if signum == signal.SIGWINCH:
            self._copy_winsize()
        elif signum == signal.SIGTSTP:  # from kill(1): in raw mode Ctrl-Z is a byte
            self._leave()
            os.kill(os.getpid(), signal.SIGSTOP)
        elif signum == signal.SIGCONT:  # back from a stop (SIGTSTP, or SIGSTOP + fg)
            self._enter()
        else:
            super()._on_signal(sb, signum)

    def _on_input_eof(self, ch: _Channel) -> None:
        if self._terminal is not None:
            self._hang_up()  # a raw terminal reads EOF only when it hung up
            return
        # Input from a pipe or file (-t): pass its end on as the terminal's EOF key,
        # twice after an unfinished line (the first only ends the line).
        try:
            attrs = termios.tcgetattr(self.master)  # on a master: the slave's modes
        except termios.error:
            return
        if attrs[3] & termios.ICANON:
            veof = attrs[6][termios.VEOF]
            ch.reading = False
            ch.buf += veof if ch.last_byte == b"\n" else veof * 2

    def _on_broken(self, ch: _Channel) -> None:
        if ch in self._outputs:
            # The caller's terminal hung up, or nobody reads the output any more (-t
            # into a pipe): the sandbox's terminal goes away too.
            self._hang_up()


class _PipeRelay(Relay):
    """``--no-tty``: each of the sandbox's fds in ``replace`` becomes a pipe."""

    def __init__(self, replace: list[int], stop_timeout: float) -> None:
        super().__init__(stop_timeout)
        try:
            self._open(replace)
        except BaseException:
            self.close()
            raise

    def _open(self, replace: list[int]) -> None:
        self._input_terminal = 0 if 0 in replace else None
        stdio = []
        for fd in (0, 1, 2):
            if fd not in replace:
                stdio.append(self._passed_as_is(fd))
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            ours, theirs = (w, r) if fd == 0 else (r, w)
            self._own.append(ours)
            self._sandbox_ends.append(theirs)
            stdio.append(theirs)
            os.set_blocking(ours, False)
            caller, undo = _reopen_nonblocking(fd, write=fd != 0)
            self._undo.append(undo)
            if fd == 0:
                self._inputs.append(_Channel(caller, ours))
            else:
                self._outputs.append(_Channel(ours, caller, watch_dst=True))
        self.sandbox_stdio = tuple(stdio)  # type: ignore[assignment]
        self._channels = self._inputs + self._outputs

    def _close_own(self, fd: int) -> None:
        if fd in self._own:
            self._own.remove(fd)
            os.close(fd)

    def _on_input_eof(self, ch: _Channel) -> None:
        pass  # the command reads EOF once the rest is in: see _tidy

    def _tidy(self) -> None:
        for ch in self._inputs:
            if not ch.reading and not ch.buf and ch.dst in self._own:
                ch.stop_writing()
                self._close_own(ch.dst)

    def _on_broken(self, ch: _Channel) -> None:
        # The command closed its stdin; or nobody reads its output any more, and then
        # closing our end gives its next write SIGPIPE, as if it wrote there directly.
        self._close_own(ch.src if ch in self._outputs else ch.dst)

    def _loop(self, sb: Sandbox, wake_r: int) -> None:
        try:
            super()._loop(sb, wake_r)
        finally:
            for ch in self._inputs:
                self._close_own(ch.dst)


@contextlib.contextmanager
def _signal_wakeups(signums: tuple[int, ...]) -> Iterator[int]:
    """While inside, ``signums`` only write their number to the returned fd's pipe
    (Python's wake-up fd), for the loop to act on between two polls."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_handlers = {s: signal.getsignal(s) for s in signums}
    old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        for s in signums:
            signal.signal(s, _note)
        yield r
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(old_wakeup)
        os.close(r)
        os.close(w)


def _note(_signum: int, _frame: object) -> None:
    """The C-level handler already wrote the number to the wake-up fd."""
