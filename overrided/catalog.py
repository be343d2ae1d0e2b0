"""The catalog: an immutable snapshot of served name → entry, replaced as a whole.

The publisher builds a new ``Catalog`` off to the side and swaps the service's reference to it
in one assignment; servers only ever look names up. Versioned names that left the catalog stay
in later snapshots for the grace period, so a board that fetched a script before a rebuild
still gets the initrd (and overlays) that script names. Stable names always point at the newest
render; each snapshot also knows which stable names belong to one board (its ``Group``), so the
service can answer one client all of a board's stable names from one snapshot (``pins.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from overrided.served import Entry, NotServed, clean_name


@dataclass(frozen=True)
class Group:
    """A board's stable barebox names, which a client's reads must see from one snapshot.

    ``names`` lists every such name, served or not (the devboot script and barebox's
    ``boot net`` names): a name the board does not serve in a snapshot is not served to a client
    pinned to it either.
    """

    board: str
    script: str  # the devboot script name: reading it pins the client to the newest snapshot
    names: tuple[str, ...]  # the script and the boot net names
    origin: str = ""  # the render these names come from, for logs: "build b1, rendered …"


@dataclass(frozen=True)
class Catalog:
    """Served names at one moment; implements ``served.Namespace``."""

    entries: Mapping[str, Entry] = field(default_factory=dict)
    version: int = 0
    # name → time it stopped being current; such entries are still served until they expire
    retired: Mapping[str, float] = field(default_factory=dict)
    # served stable name → the group it belongs to (only names current in this snapshot)
    groups: Mapping[str, Group] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))
        object.__setattr__(self, "retired", MappingProxyType(dict(self.retired)))
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))

    def lookup(self, name: str, *, client: str | None = None) -> Entry:
        """The entry for ``name``, the same for every ``client``; ``NotServed`` says why not."""
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
        """The digests of every store blob this catalog's views read (the store's live set)."""
        return {d for e in self.entries.values() for d in e.view.files()}

    def successor(
        self,
        current: Iterable[Entry],
        *,
        keep: Iterable[str] = (),
        groups: Iterable[Group] = (),
        grace: float,
        now: float | None = None,
    ) -> Catalog:
        """The next snapshot: ``current`` entries, plus retired names still within ``grace``.

        Only names in ``keep`` (the versioned names) are retained when they drop out; stable
        names such as the devboot script always point at the newest render, and
        ``groups`` tell which of them belong together.
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
        by_name = {n: g for g in groups for n in g.names if n in fresh}
        return Catalog(entries, self.version + 1, retired, by_name)
