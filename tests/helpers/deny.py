"""Run a command where namespace creation is denied, the way real machines deny it.

    python -m tests.helpers.deny seccomp -- CMD...      # like Docker's default profile
    python -m tests.helpers.deny limit net -- CMD...    # user.max_net_namespaces = 0

``seccomp`` installs a filter like Docker's default profile for unprivileged
containers: unshare(2) fails with EPERM, and clone3(2) with ENOSYS (so that libc falls
back to clone(2) and threads still work, while clone3's namespace flags can't be used),
then execs CMD. ``limit`` creates a user namespace (the limits are per user namespace and
writable by its root), sets the namespace limit to 0 there, and runs CMD inside.
Both only affect CMD and its descendants; nothing on the host changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import subprocess
import sys

from nskernel._linux import syscalls

_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
_ENOSYS = 38
_NR = {"x86_64": {"unshare": 272, "clone3": 435}, "aarch64": {"unshare": 97, "clone3": 435}}


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def install_seccomp_denying_unshare() -> None:
    nr = _NR[platform.machine()]
    ld_nr = 0x20  # BPF_LD | BPF_W | BPF_ABS, offset 0 = seccomp_data.nr
    jeq = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
    ret = 0x06  # BPF_RET | BPF_K
    prog = b"".join(
        [
            _bpf(ld_nr, 0, 0, 0),  # 0: A = syscall number
            _bpf(jeq, 3, 0, nr["unshare"]),  # 1: unshare → 5
            _bpf(jeq, 1, 0, nr["clone3"]),  # 2: clone3 → 4
            _bpf(ret, 0, 0, _SECCOMP_RET_ALLOW),  # 3
            _bpf(ret, 0, 0, _SECCOMP_RET_ERRNO | _ENOSYS),  # 4
            _bpf(ret, 0, 0, _SECCOMP_RET_ERRNO | _EPERM),  # 5
        ]
    )
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HxxxxxxP", len(prog) // 8, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    if mode == "seccomp":
        cmd = rest[rest.index("--") + 1 :]
        install_seccomp_denying_unshare()
        os.execvp(cmd[0], cmd)
    if mode == "limit":
        ns = rest[0]
        cmd = rest[rest.index("--") + 1 :]
        script = f'echo 0 > /proc/sys/user/max_{ns}_namespaces && exec "$@"'
        return subprocess.call(
            ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", *cmd]
        )
    raise SystemExit(f"usage: {__doc__}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
