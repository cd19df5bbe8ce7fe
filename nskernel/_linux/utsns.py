"""UTS namespace: the sandbox's own hostname (never touches the host's)."""

from __future__ import annotations

import _socket  # socket's C core (see netns.py: the module costs ~1.5 ms to import)


def set_hostname_from_child(name: str) -> None:
    _socket.sethostname(name)
