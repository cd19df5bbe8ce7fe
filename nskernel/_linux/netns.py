"""Network namespace: a fresh one has only ``lo``, and it is DOWN.

Bringing ``lo`` up uses one ``SIOCSIFFLAGS`` ioctl (about 0.3 ms) instead of pyroute2
(``import pyroute2`` alone costs ~0.2 s): sandboxes without a virtual network must not
pay for netlink. Veth/bridge work for named networks lives elsewhere and uses pyroute2.
"""

from __future__ import annotations

# _socket: the socket module's C core. `socket` itself builds its enums and imports
# selectors when imported, ~1.5 ms of every `nskernel run` for this one ioctl (and
# utsns's sethostname).
import _socket
import fcntl
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: name, then ifr_flags in the union (40 bytes)


def bring_up_loopback_from_child() -> None:
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack(_IFREQ, b"lo", 0)
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(s, _SIOCGIFFLAGS, req))
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))
    finally:
        s.close()
