"""FIT model: parse a Flattened Image Tree once and index its images and configurations."""

from __future__ import annotations

from overrided.errors import OverridedError


class FitError(OverridedError):
    """A FIT (or a DTB going into one) is malformed or does not hold what was asked for."""
