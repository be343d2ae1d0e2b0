"""The error type every user-facing failure derives from."""

from __future__ import annotations


class OverridedError(Exception):
    """A failure a user can act on: ``str(err)`` is one line naming what is wrong and where.

    The CLI prints it without a traceback and exits non-zero; servers log it and go on.
    """
