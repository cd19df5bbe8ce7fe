"""Exceptions. Each message says what happened and what to do about it."""

from __future__ import annotations

# Exit codes of `nskernel run`, the same convention as `docker run` and `podman run`,
# so scripts can tell nskernel's own failures from the command's exit status.
EXIT_TIMEOUT = 124  # --timeout was reached and the sandbox killed (as timeout(1))
EXIT_SANDBOX_FAILED = 125  # the sandbox could not be created; the command never ran
EXIT_CANNOT_EXECUTE = 126  # the command was found but could not be executed
EXIT_NOT_FOUND = 127  # the command was not found inside the sandbox


class NskernelError(Exception):
    """Base class of every error nskernel raises on purpose."""


class SpecError(NskernelError, ValueError):
    """The sandbox was asked for something invalid (checked before anything is created)."""


class SandboxError(NskernelError, OSError):
    """A sandbox could not be created. Nothing ran; nothing is left behind.

    ``step`` names the setup step that failed (e.g. ``unshare(CLONE_NEWNET)``),
    ``namespace`` the namespace type involved, if any, and ``hint`` the likely cause and fix.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str = "",
        namespace: str | None = None,
        errno: int | None = None,
        hint: str = "",
    ) -> None:
        self.step = step
        self.namespace = namespace
        self.hint = hint
        full = message if not hint else f"{message}\n{hint}"
        super().__init__(errno, full) if errno is not None else super().__init__(full)
        self.message = full

    def __str__(self) -> str:
        return self.message


class CommandNotFound(SandboxError):
    """The command to run does not exist (or is not executable) inside the sandbox."""
