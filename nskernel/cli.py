"""The `nskernel` command: run, doctor, install, uninstall."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from . import ptyrelay
from .environ import sandbox_environment
from .errors import EXIT_SANDBOX_FAILED, EXIT_TIMEOUT, NskernelError, SandboxError, SpecError
from .spec import (
    ALL_NAMESPACES,
    DEGRADED_ENV,
    Bind,
    SandboxSpec,
    code_places,
    make_limits,
    parse_degraded,
    writable_bind_over_code,
)

RUN_EPILOG = f"""\
namespaces:
  With no namespace flag, all six are created ({", ".join(ALL_NAMESPACES)}). A user
  namespace is always added, so sandbox root is never host root (as root, it is an
  unprivileged host uid); --no-userns opts out, for root only: the command then keeps
  your host identity, with every privilege it has. --pid adds a mount namespace with a
  fresh /proc (as unshare --mount-proc), so ps shows only the sandbox's processes.

filesystem (with --mnt, or --pid):
  The host's root is visible read-only, but not the homes: /home, /root, /run/user
  and a private $XDG_RUNTIME_DIR are empty, and $HOME is a private, empty, writable
  directory (--share-home shows the homes read-only instead). /tmp and /dev/shm are
  private and writable; /dev is a fresh minimal one (null, zero, full, random,
  urandom, tty, its own /dev/pts); /proc is fresh with --pid, /sys with --net. A host
  path is writable inside only through --bind; --ro-bind exposes one read-only. A
  bind's destination must exist inside (the same path as on the host always does) or
  lie under /tmp or a home. Nothing mounted inside reaches the host.
  As root, sandbox root is an unprivileged host uid, not root: a --bind it cannot write
  that belongs to another user is shown to it as its own (an idmapped mount), so it
  writes there as that user; one that belongs to root stays read-only for it.

environment:
  A sandbox starts with an allow-list of the environment: PATH, HOME, USER, LOGNAME,
  SHELL, LANG, LANGUAGE, LC_*, TERM, COLORTERM, NO_COLOR, TZ, and Python's own (PYTHON*
  settings, VIRTUAL_ENV, CONDA_PREFIX...). Tokens, keys, SSH_AUTH_SOCK and DISPLAY stay
  out. --env KEY=VALUE or --env KEY adds one; NSKERNEL_KEEP_ENV="KEY1 KEY2" adds names
  for every sandbox; --keep-env passes everything.

terminal:
  The sandbox never gets your terminal: a process holding it could type into your
  shell (TIOCSTI), change its modes or read what you type next. When any of fds 0-2 is
  a terminal, the sandbox gets a pseudo-terminal of its own instead (it replaces each
  of 0-2 that was a terminal and is the command's controlling terminal), and nskernel
  relays between it and yours, as `ssh -t` and `docker run -it` do: line editing, job
  control, Ctrl-C, Ctrl-Z, window size changes and full-screen programs work inside.
  Your terminal is in raw mode while the command runs and its modes are restored when
  nskernel exits (if nskernel is SIGKILLed it cannot: bash and zsh restore them
  themselves; elsewhere type `reset`). Fds that are not terminals (files, pipes) are
  passed as they are; with no terminal on 0-2 there is no pseudo-terminal.
  -t, --tty     a pseudo-terminal even when no fd is a terminal (as `docker run -t`,
                `ssh -tt`): fds 0-2 all become it; nskernel copies its stdin in (its
                end is passed on as the EOF key) and the output to its stdout (the
                command's stderr included)
  -T, --no-tty  no pseudo-terminal: each of fds 0-2 that is a terminal becomes a pipe
                nskernel relays (as `docker run -i` without -t, `ssh -T`); the command
                sees no terminal, your Ctrl-C reaches it as SIGINT

signals:
  TERM, HUP, QUIT, USR1 and USR2 sent to nskernel are forwarded to the command, INT
  to the command's process group, with or without a pseudo-terminal. When your
  terminal goes away, nskernel hangs up the command's pseudo-terminal too (SIGHUP to
  its session). A command that ignores them (or stopped itself) is not waited for
  forever: --stop-timeout seconds after the first INT, TERM, HUP or QUIT, or after
  your terminal went away, the whole sandbox is killed (exit status 137), and at once
  when a second of those signals comes. In a pseudo-terminal Ctrl-C is the command's
  key, not nskernel's: `kill -INT` twice (or `kill -KILL`) the nskernel process ends
  it from elsewhere. Once the command has ended, INT, TERM, HUP and QUIT make nskernel
  drop output your terminal has not taken yet. The sandbox runs in a session of its
  own. If nskernel itself is killed, the whole sandbox is killed with it.

exit status:
  the command's own status (128+N if it was killed by signal N), or
  {EXIT_SANDBOX_FAILED}  the sandbox could not be created (the command never ran)
  {EXIT_TIMEOUT}  --timeout was reached and the sandbox was killed
  137  nskernel killed the sandbox: it did not end when asked (see signals)
  126  the command could not be executed        127  the command was not found
  2    bad input (nothing ran), or --status-json could not be written (the sandbox
       was killed at once)

confinement:
  Sandbox root holds only Docker's default capabilities plus SYS_ADMIN and NET_ADMIN
  (over the sandbox's own namespaces: mounts, hostname, interfaces); --cap-add and
  --cap-drop change that. The command runs with no_new_privs and a seccomp filter
  modelled on Docker's default profile: keyrings, bpf, perf_event_open, userfaultfd,
  io_uring, module loading, new user namespaces and more fail with EPERM. --seccomp
  PATH takes a Docker/OCI JSON profile instead; --seccomp unconfined, none (keeps
  no_new_privs). A profile that cannot be read or compiled: exit 2, nothing runs.

groups:
  Your supplementary groups never reach the sandbox: they are dropped inside, which
  needs your gid map written by newgidmap from an /etc/subgid range (root: always). Where
  they cannot be dropped nskernel refuses (exit {EXIT_SANDBOX_FAILED}) and says how to
  add a range; --keep-groups runs anyway, with them (a warning names them).

limits:
  --memory, --pids and --cpus use a cgroup beneath nskernel's own (v2 where delegated,
  else v1 controllers), else an rlimit; --status-json and `nskernel doctor` say which.
  The rlimit fallbacks are weaker: --memory becomes RLIMIT_AS, the address space of
  each process (not their sum, and not memory use); with any mechanism each private
  tmpfs (/tmp, /dev/shm, the home) holds at most --memory; --pids becomes RLIMIT_NPROC, a
  count per uid, so such a sandbox maps a single uid; --cpus has none (not enforced).

examples:
  nskernel run --hostname box -- sh -c 'hostname; id -u; ps -e'
  nskernel run --net --uts -- hostname
  nskernel run --bind "$PWD" --ro-bind ./data:/tmp/data -- python3 job.py
  nskernel run -- bash                  # interactive, in a terminal of its own
"""


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size()`` finds it, without importing
    shutil: argparse's help formatter does, on every parser built, and shutil imports bz2
    and lzma, ~2 ms of every `nskernel run` that prints no help at all."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Help(argparse.HelpFormatter):
    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width=None
    ) -> None:
        width = _columns() - 2 if width is None else width  # as HelpFormatter computes it
        super().__init__(prog, indent_increment, max_help_position, width)


class _RawHelp(_Help, argparse.RawDescriptionHelpFormatter):
    pass


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a command in a fresh sandbox",
        description="Run CMD inside freshly created Linux namespaces.",
        epilog=RUN_EPILOG,
        formatter_class=_RawHelp,
    )
    for ns, what in (
        ("pid", "own PID numbers, with an init as PID 1"),
        ("net", "own network stack: only lo, brought UP"),
        ("mnt", "own mounts: read-only host root, private /tmp, fresh /proc"),
        ("uts", "own hostname"),
        ("ipc", "own System V and POSIX IPC objects"),
        ("user", "own users: root inside, unprivileged outside"),
    ):
        p.add_argument(f"--{ns}", dest="ns", action="append_const", const=ns, help=what)
    p.add_argument(
        "--no-userns",
        action="store_true",
        help="no user namespace: the command keeps your host identity (as root: host "
        "root, every privilege). Root only; never for code you do not trust",
    )
    p.add_argument("--hostname", metavar="NAME", help="hostname inside (implies a UTS namespace)")
    p.add_argument(
        "--bind",
        metavar="SRC[:DST]",
        action="append",
        default=[],
        help="make host path SRC writable at DST (default: same path)",
    )
    p.add_argument(
        "--ro-bind",
        metavar="SRC[:DST]",
        action="append",
        default=[],
        help="make host path SRC visible read-only at DST",
    )
    p.add_argument(
        "--status-json",
        metavar="PATH",
        help="write the sandbox's facts (PID, namespace ids, maps) as JSON to PATH",
    )
    p.add_argument("--chdir", metavar="DIR", help="working directory inside (default: current)")
    p.add_argument(
        "--env",
        metavar="KEY[=VALUE]",
        action="append",
        default=[],
        help="set KEY inside (KEY alone: pass its current value); see 'environment' below",
    )
    p.add_argument(
        "--seccomp",
        metavar="default|unconfined|PATH",
        default="default",
        help="the syscall filter: nskernel's default (Docker's, with a sandbox's own "
        "namespaces allowed), none, or a profile in Docker's/OCI's JSON format",
    )
    p.add_argument(
        "--cap-add",
        metavar="CAP",
        action="append",
        default=[],
        help="keep this capability for sandbox root too (e.g. SYS_PTRACE, or ALL)",
    )
    p.add_argument(
        "--cap-drop",
        metavar="CAP",
        action="append",
        default=[],
        help="drop this capability from sandbox root's default set (or ALL)",
    )
    p.add_argument(
        "--allow-degraded",
        metavar="proc,sys,hostname",
        default=os.environ.get(DEGRADED_ENV, ""),
        help="in a container that refuses a fresh /proc or /sys, or sethostname, keep the "
        "container's own (read-only) instead of failing, with a warning of what isolation "
        f"is lost (default: ${DEGRADED_ENV}); see docs/deploy.md",
    )
    p.add_argument(
        "--share-home",
        action="store_true",
        help="show the host's homes read-only, as they are (default: hidden, and a "
        "private, empty, writable $HOME)",
    )
    p.add_argument(
        "--keep-groups",
        action="store_true",
        help="run even where your supplementary groups cannot be dropped inside",
    )
    p.add_argument(
        "--keep-env",
        action="store_true",
        help="pass the whole environment on, secrets included (default: an allow-list)",
    )
    p.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 256M or 1G")
    p.add_argument(
        "--pids", metavar="N", help="at most N processes at once (fork bombs stop there)"
    )
    p.add_argument("--cpus", metavar="FRACTION", help="CPU share, e.g. 0.5 for half a CPU")
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        help=f"kill the sandbox after SECONDS (exit status {EXIT_TIMEOUT})",
    )
    p.add_argument(
        "--stop-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=ptyrelay.STOP_TIMEOUT,
        help="how long the command has to end once asked, before the sandbox is killed "
        f"(default {ptyrelay.STOP_TIMEOUT:g}; see signals below)",
    )
    tty = p.add_mutually_exclusive_group()
    tty.add_argument(
        "-t",
        "--tty",
        dest="tty",
        action="store_const",
        const="always",
        default="auto",
        help="give the command a pseudo-terminal even if no fd is a terminal (see below)",
    )
    tty.add_argument(
        "-T",
        "--no-tty",
        dest="tty",
        action="store_const",
        const="never",
        help="no pseudo-terminal: terminals on fds 0-2 become relayed pipes (see below)",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=_cmd_run)


def _spec_from_args(args: argparse.Namespace) -> SandboxSpec:
    namespaces = set(args.ns or ())
    if args.hostname and namespaces:
        namespaces.add("uts")
    binds = [Bind.parse(b) for b in args.bind] + [
        Bind.parse(b, readonly=True) for b in args.ro_bind
    ]
    binds = [
        b if os.path.isabs(b.dest) else Bind(b.source, os.path.abspath(b.dest), b.readonly)
        for b in binds
    ]
    # What is checked is what gets mounted: real paths, never resolved again (Bind.resolved).
    binds = [Bind(os.path.realpath(b.source), b.dest, b.readonly, resolved=True) for b in binds]
    refusal = writable_bind_over_code(binds, code_places, "nskernel's Python")
    if refusal:
        raise SpecError(refusal)
    if binds and namespaces and "mnt" not in namespaces:
        namespaces.add("mnt")
    env = sandbox_environment(os.environ, env_options=args.env, keep_all=args.keep_env)
    return SandboxSpec.from_flags(
        namespaces,
        env=env,
        hostname=args.hostname,
        binds=tuple(binds),
        cwd=os.path.abspath(args.chdir) if args.chdir else None,
        limits=make_limits(args.memory, args.pids, args.cpus),
        timeout=args.timeout,
        no_userns=args.no_userns,
        keep_groups=args.keep_groups,
        share_home=args.share_home,
        seccomp=args.seccomp,
        cap_add=tuple(args.cap_add),
        cap_drop=tuple(args.cap_drop),
        allow_degraded=parse_degraded(args.allow_degraded),
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    from .sandbox import Sandbox

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "nskernel run: no command given; put it after --, e.g. nskernel run -- sh",
            file=sys.stderr,
        )
        return 2
    spec = _spec_from_args(args)

    # Signals that come before the relay's loop takes them over (while the sandbox is
    # made, and just after) are kept here, and the loop handles them first, as if they
    # came then: a TERM that early still starts --stop-timeout. Nothing is signalled
    # from a handler, where a reaped PID could be another process's by now. (The sandbox
    # has a session of its own, so Ctrl-C reaches only us; init passes SIGINT on to the
    # command's process group.)
    box: list[Sandbox] = []
    early: list[int] = []

    def keep(signum: int, _frame: object) -> None:
        early.append(signum)

    for sig in ptyrelay.FORWARDED:
        signal.signal(sig, keep)
    status_dir = None
    if args.status_json:
        # Opened now, before the sandbox exists: it may be in a --bind the sandbox can
        # write, and it must not get to swap the directory for a symlink.
        try:
            status_dir = os.open(
                os.path.dirname(args.status_json) or ".",
                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
            )
        except OSError as e:
            print(
                f"nskernel run: --status-json {args.status_json}: its directory cannot be "
                f"opened ({e.strerror}); nothing was run",
                file=sys.stderr,
            )
            return 2
    # Our terminal never reaches the sandbox: a pty (or pipes) of its own, relayed.
    # Without one the base Relay waits, with the same handling of signals and timeouts.
    relay = ptyrelay.Relay.prepare(args.tty, args.stop_timeout)
    try:
        if relay is None:
            relay = ptyrelay.Relay(args.stop_timeout)
            sb = Sandbox.spawn(spec, cmd)
        else:
            sb = Sandbox.spawn(
                spec, cmd, stdio=relay.sandbox_stdio, controlling_tty=relay.controlling_tty
            )
            relay.started()
        box.append(sb)
        for warning in sb.warnings:
            print(warning, file=sys.stderr)
        if status_dir is not None:
            try:
                sb.write_status_json(os.path.basename(args.status_json), dir_fd=status_dir)
            except OSError as e:
                sb.kill()
                print(
                    f"nskernel run: --status-json {args.status_json}: cannot be written "
                    f"({e.strerror}); the sandbox was killed at once",
                    file=sys.stderr,
                )
                return 2
        code = relay.run(sb, early)
    except BaseException:
        if box:
            box[0].kill()  # nothing of it may outlive a failure here
        raise
    finally:
        if relay is not None:
            relay.close()
        if status_dir is not None:
            os.close(status_dir)
    reason = relay.stop_reason or sb.exit_reason()
    if reason:
        try:  # unbuffered: a failed write must not fail again at exit (status 120)
            sys.stderr.flush()
            os.write(2, f"nskernel run: {reason}\n".encode(errors="replace"))
        except OSError:
            pass  # a terminal that went away (EIO): the exit status says it all the same
    return EXIT_TIMEOUT if sb.timed_out else code


def _cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    return doctor.main(args)


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that reports its own unknown options itself.

    argparse hands a subcommand's unknown options up to the top-level parser, which then
    prints the top-level usage (``nskernel [-h] COMMAND ...``): nothing about the options
    that exist. Reported here, the error comes with ``nskernel run``'s usage instead.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``command="run"`` the one that ``nskernel run`` needs:
    building every subcommand's options cost each `nskernel run` ~4 ms (it is the only
    subcommand whose start-up time matters). Help and errors for anything else, and
    ``nskernel --help``, come from the whole parser."""
    parser = argparse.ArgumentParser(
        prog="nskernel",
        description="Sandboxes made of fresh Linux namespaces, for the shell and for Jupyter.",
        formatter_class=_Help,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    sub.required = True
    _add_run_parser(sub)
    if command == "run":
        return parser
    d = sub.add_parser(
        "doctor", help="check what this machine allows, and how to fix what it doesn't"
    )
    d.add_argument("--json", action="store_true", help="print the findings as JSON")
    d.add_argument(
        "--print-seccomp-profile",
        action="store_true",
        help="print the seccomp profile for containers that run nskernel (Docker's JSON "
        "format) and exit",
    )
    d.set_defaults(func=_cmd_doctor)
    try:
        from .kernel import install
    except ImportError:  # the kernel layer is optional for the core
        pass
    else:
        install.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        print(f"nskernel {args.command}: {e}", file=sys.stderr)
        return 2
    except SandboxError as e:
        print(f"nskernel {args.command}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_SANDBOX_FAILED)
    except NskernelError as e:
        print(f"nskernel {args.command}: {e}", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
