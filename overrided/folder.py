"""A ``Namespace`` over a plain directory: what ``overrided tftp serve DIR`` and HTTP serve.

Safe by default: names are cleaned (``served.clean_name``), symlinks are followed only when
they resolve inside the root, directories are never served, and neither dotfiles nor private
keys (``*.pem``, ``*.key``) are, even through a symlink.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from overrided.served import Entry, NotServed, View, clean_name

# Suffixes of files that hold keys; never served whatever the name they are reached by.
PRIVATE_SUFFIXES = (".pem", ".key")


def _private(part: str) -> bool:
    return part.startswith(".") or part.lower().endswith(PRIVATE_SUFFIXES)


class FolderNamespace:
    """Serves the regular files below ``root`` under their relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The entry for ``name`` (the same for every ``client``); ``NotServed`` says why not."""
        clean = clean_name(name)
        if any(_private(part) for part in clean.split("/")):
            raise NotServed(f"{clean!r} is a hidden or key file")
        try:
            real = (self.root / clean).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise NotServed(f"{clean!r} does not exist") from None
        if not real.is_relative_to(self.root):
            raise NotServed(f"{clean!r} resolves outside the served folder")
        rel = real.relative_to(self.root)
        if any(_private(part) for part in rel.parts):
            raise NotServed(f"{clean!r} leads to a hidden or key file")
        try:
            st = os.stat(real)
        except OSError as err:
            raise NotServed(f"{clean!r}: {err.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotServed(f"{clean!r} is not a regular file")
        return Entry(clean, View.of_file(real, st.st_size))
