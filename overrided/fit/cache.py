"""Parsed FITs, kept while they are served: a FIT is mapped and walked once per file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from overrided.store import fingerprint

if TYPE_CHECKING:
    from overrided.fit import Fit

log = logging.getLogger(__name__)


def open_fit(path: Path, shown: Path | None = None) -> Fit:
    """Parse the FIT at ``path``: mapped when it is a store blob (immutable), else read.

    A build folder's FIT may be rewritten in place by the next ``make`` while we parse it;
    touching a mapping of a file truncated under it kills the process (SIGBUS), so those are
    read into memory (0.04 s more for a 60 MB FIT) and a rewrite only makes the parse fail.
    """
    from overrided.fit import Fit, FitError

    if path.parent.name == "blobs" and path.stat().st_mode & 0o222 == 0:
        return Fit.open(path, shown=shown)  # a read-only store blob: never rewritten
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FitError(f"{path}: cannot read: {err.strerror}") from None
    if not data:
        raise FitError(f"{path}: not a FIT: the file is empty")
    return Fit.from_bytes(data, path)


class FitCache:
    """Parsed FITs, so that indexing and rendering parse each FIT once.

    Meant for store blobs, which never change: a parsed FIT maps its file. (A build tree's
    file may be rewritten in place by the next ``make``; ``open`` parses it again then.)
    """

    def __init__(self) -> None:
        self._fits: dict[tuple[Path, str], Fit] = {}

    def open(self, path: Path, shown: Path | None = None) -> Fit:
        """The parsed FIT at ``path`` (parsed again if the file changed)."""

        key = (path, fingerprint(path))
        fit = self._fits.get(key)
        if fit is None:
            fit = self._fits[key] = open_fit(path, shown)
        return fit

    def drop(self, path: Path) -> None:
        """Release the mappings of ``path``."""
        for key in [k for k in self._fits if k[0] == path]:
            self._fits.pop(key).close()

    def retain(self, names: set[str]) -> None:
        """Release the mappings of files whose name is not in ``names`` (store blobs are named
        by their digest)."""
        for key in [k for k in self._fits if k[0].name not in names]:
            self._fits.pop(key).close()

    def close(self) -> None:
        """Release every mapping."""
        for fit in self._fits.values():
            fit.close()
        self._fits.clear()
