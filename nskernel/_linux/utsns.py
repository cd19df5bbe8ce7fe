"""UTS namespace: the sandbox's own hostname (never touches the host's)."""

from __future__ import annotations

import socket


def set_hostname_from_child(name: str) -> None:
    socket.sethostname(name)
