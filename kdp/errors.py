"""User-facing errors: one clear line naming the bad value, where it came from, and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input (config, files, command line), not a bug.

    Entry points print ``str(error)`` as one line and exit non-zero; the traceback goes to the log only.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class CorruptOutput(UserError):
    """A stored result does not match its manifest (content hash or key); it is deleted so a rerun rebuilds it."""


def bad_value(where: str, value: object, allowed: str | Iterable[object]) -> UserError:
    """``where`` names the config key or file; ``allowed`` is a description or the list of valid values."""
    if not isinstance(allowed, str):
        allowed = ", ".join(repr(a) if not isinstance(a, str) else a for a in allowed)
    return UserError(f"{where}: {value!r} is not allowed; allowed: {allowed}")
