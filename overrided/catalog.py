"""The catalog: an immutable snapshot of served name → entry, replaced as a whole.

The publisher builds a new ``Catalog`` off to the side and swaps the service's reference to it
in one assignment; servers only ever look names up. Versioned names that left the catalog stay
in later snapshots for the grace period, so a board that fetched a script before a rebuild
still gets the FIT and initrd that script names.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from overrided.served import Entry, NotServed, clean_name


@dataclass(frozen=True)
class Catalog:
    """Served names at one moment; implements ``served.Namespace``."""

    entries: Mapping[str, Entry] = field(default_factory=dict)
    version: int = 0
    # name → time it stopped being current; such entries are still served until they expire
    retired: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))
        object.__setattr__(self, "retired", MappingProxyType(dict(self.retired)))

    def lookup(self, name: str) -> Entry:
        """The entry for ``name``; ``NotServed`` says why not."""
        name = clean_name(name)
        entry = self.entries.get(name)
        if entry is None:
            raise NotServed(f"{name!r} is not served")
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def digests(self) -> set[str]:
        """The digests of every blob this catalog serves (the store's live set)."""
        return {e.blob.digest for e in self.entries.values() if e.blob.digest}

    def successor(
        self,
        current: Iterable[Entry],
        *,
        keep: Iterable[str] = (),
        grace: float,
        now: float | None = None,
    ) -> Catalog:
        """The next snapshot: ``current`` entries, plus retired names still within ``grace``.

        Only names in ``keep`` (the versioned names) are retained when they drop out; stable
        names such as ``<user>-devboot-<hostname>`` always point at the newest render.
        """
        now = time.time() if now is None else now
        fresh = {e.name: e for e in current}
        keepable = set(keep)
        entries = dict(fresh)
        retired: dict[str, float] = {}
        for name, since in self.retired.items():
            if name not in fresh and now - since < grace and name in self.entries:
                entries[name] = self.entries[name]
                retired[name] = since
        for name, entry in self.entries.items():
            # Names that were current until now start their grace period; names already
            # retired (kept above, or expired) never start a new one.
            if name not in fresh and name not in self.retired and name in keepable:
                entries[name] = entry
                retired[name] = now
        return Catalog(entries, self.version + 1, retired)
