"""Pick a FIT configuration for a board's ``compatible`` list the way the bootloaders do.

Two rules, as docs/formats.md describes them in "barebox's rule" (barebox
``fit_find_compatible_unit``) and "U-Boot's rule" (U-Boot 2023.01 ``fit_conf_find_compat`` with
FIT_BEST_MATCH):

* barebox ranks by where the board's **first** compatible sits in the configuration's list
  (case-insensitive) and falls back to ``/configurations/default``.
* U-Boot ranks by which of the **board's** strings (in order) appears anywhere in the
  configuration's list (exact). The source would fall back to ``default``, but Debian's 2023.01
  was seen to stop instead, so no fallback is reported here.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from overrided.fit.model import Fit, FitConfig

Rule = Literal["barebox", "u-boot"]
RULES: tuple[Rule, ...] = ("barebox", "u-boot")

# barebox drivers/of/base.c of_device_is_compatible(): INT_MAX / 2 for index 0 of the node's
# list, minus 4 per later position; 0 means no match.
BAREBOX_MAX_SCORE = (2**31 - 1) // 2


@dataclass(frozen=True)
class Candidate:
    """How one configuration fared: `score` (barebox) or board-string `position` (U-Boot)."""

    config: str
    compatible: tuple[str, ...]
    source: str  # "compatible" or "fdt <unit>": where the list came from
    score: int = 0  # barebox: 0 = no match
    position: int | None = None  # U-Boot: index into the board's list; None = no match
    skipped: str | None = None  # why the rule ignored this configuration


@dataclass
class Match:
    """The outcome: the chosen configuration (None: no match) and why."""

    config: str | None
    reason: str
    rule: Rule
    candidates: list[Candidate] = field(default_factory=list)  # best first; may be near misses


def barebox_score(machine: str, compatible: Sequence[str]) -> int:
    """barebox's score for `machine` against a configuration's list (0: no match)."""
    for index, value in enumerate(compatible):
        if value.lower() == machine.lower():  # strcasecmp
            return BAREBOX_MAX_SCORE - 4 * index
    return 0


def uboot_position(board: Sequence[str], compatible: Sequence[str]) -> int | None:
    """U-Boot's position: index of the first board string found anywhere in the list."""
    for i, value in enumerate(board):
        if value in compatible:  # fdt_node_check_compatible: exact, case-sensitive
            return i
    return None


def _source(conf: FitConfig) -> str:
    if conf.compatible:
        return "compatible"
    return f"fdt {conf.fdt[0]}" if conf.fdt else "none"


def _skip_reason(fit: Fit, conf: FitConfig, rule: Rule) -> str | None:
    if rule == "barebox" and conf.kernel is None:
        return "no kernel"  # bootm_fit_config_valid
    if conf.compatible:
        return None
    if not conf.fdt:
        return "no compatible and no fdt"
    image = fit.images.get(conf.fdt[0])
    if image is None:
        return f"no compatible, fdt {conf.fdt[0]} is missing"
    if image.compression != "none":
        return f"no compatible, fdt {conf.fdt[0]} is {image.compression}-compressed"
    if not fit.fdt_root_compatible(conf.fdt[0]):
        return f"no compatible, fdt {conf.fdt[0]} has no root compatible"
    return None


def _near_misses(fit: Fit, board: Sequence[str], rule: Rule) -> list[Candidate]:
    """Configurations sharing any board string (case-insensitively), else similar strings."""
    wanted = {b.lower() for b in board}
    near = []
    for conf in fit.configurations.values():
        compat = conf.effective_compatible(fit)
        if wanted & {c.lower() for c in compat}:
            near.append(Candidate(conf.name, tuple(compat), _source(conf)))
    if near or not board:
        return near
    everything: dict[str, FitConfig] = {}  # string -> first configuration listing it
    for conf in fit.configurations.values():
        for value in conf.effective_compatible(fit):
            everything.setdefault(value, conf)
    for value in difflib.get_close_matches(board[0], list(everything), n=5, cutoff=0.6):
        conf = everything[value]
        if all(c.config != conf.name for c in near):
            near.append(Candidate(conf.name, tuple(conf.effective_compatible(fit)), _source(conf)))
    return near


@dataclass(frozen=True)
class _Row:
    order: int  # the configuration's place in /configurations
    config: str
    compatible: tuple[str, ...]  # () when the rule skips it
    source: str
    skipped: str | None


class _Table:
    """One FIT's configurations as a rule sees them, and which list each string is in: a board
    is then matched by looking its strings up, not by scoring every configuration (a lab
    renders hundreds of boards against a FIT of hundreds of configurations)."""

    def __init__(self, fit: Fit, rule: Rule) -> None:
        self.rows: list[_Row] = []
        self.lower: dict[str, list[tuple[_Row, int]]] = {}  # barebox: strcasecmp
        self.exact: dict[str, list[_Row]] = {}  # U-Boot: exact strings
        for order, conf in enumerate(fit.configurations.values()):
            skipped = _skip_reason(fit, conf, rule)
            compat = tuple(conf.effective_compatible(fit)) if skipped is None else ()
            row = _Row(order, conf.name, compat, _source(conf), skipped)
            self.rows.append(row)
            seen: set[str] = set()
            for index, value in enumerate(compat):
                if value.lower() not in seen:  # the first position counts
                    seen.add(value.lower())
                    self.lower.setdefault(value.lower(), []).append((row, index))
                if row not in self.exact.get(value, ()):
                    self.exact.setdefault(value, []).append(row)


_TABLES: weakref.WeakKeyDictionary[Fit, dict[Rule, _Table]] = weakref.WeakKeyDictionary()


def _table(fit: Fit, rule: Rule) -> _Table:
    tables = _TABLES.setdefault(fit, {})
    found = tables.get(rule)
    if found is None:
        found = tables[rule] = _Table(fit, rule)
    return found


def _describe(candidates: Sequence[Candidate]) -> str:
    return ", ".join(f"{c.config} ({', '.join(c.compatible)})" for c in candidates[:3])


def match(fit: Fit, compatible: Sequence[str], rule: Rule = "barebox") -> Match:
    """Choose the configuration of `fit` a board with root `compatible` boots under `rule`."""
    if rule == "barebox":
        return _match_barebox(fit, compatible)
    if rule == "u-boot":
        return _match_uboot(fit, compatible)
    raise ValueError(f"unknown rule {rule!r}")


def _no_match(fit: Fit, compatible: Sequence[str], rule: Rule, why: str) -> Match:
    near = _near_misses(fit, compatible, rule)
    hint = f"; closest: {_describe(near)}" if near else ""
    return Match(None, f"no match: {why}{hint}", rule, near)


def _match_barebox(fit: Fit, compatible: Sequence[str]) -> Match:
    candidates: list[Candidate] = []
    best: Candidate | None = None
    if compatible:
        machine = compatible[0]  # barebox reads only the first string of its own root
        # Only the configurations that list it can score: in /configurations order.
        for row, index in _table(fit, "barebox").lower.get(machine.lower(), ()):
            score = BAREBOX_MAX_SCORE - 4 * index
            cand = Candidate(row.config, row.compatible, row.source, score=score)
            candidates.append(cand)
            if score > (best.score if best else 0):  # strictly greater: earliest wins ties
                best = cand
            if score == BAREBOX_MAX_SCORE:
                break  # barebox stops at a perfect score
    ranked = sorted(candidates, key=lambda c: -c.score)
    if best is not None:
        index = (BAREBOX_MAX_SCORE - best.score) // 4
        return Match(
            best.config,
            f"{best.config}: {compatible[0]!r} is entry {index} of its {best.source} "
            f"({', '.join(best.compatible)}) (barebox: board's first compatible, best position)",
            "barebox",
            ranked,
        )
    head = f"{compatible[0]!r} is in no configuration" if compatible else "board has no compatible"
    if fit.default is not None:
        if fit.default in fit.configurations:
            near = _near_misses(fit, compatible, "barebox")
            hint = f" (closest: {_describe(near)})" if near else ""
            return Match(
                fit.default,
                f"{fit.default}: {head}; barebox falls back to /configurations/default{hint}",
                "barebox",
                near,
            )
        return _no_match(
            fit, compatible, "barebox", f"{head} and default {fit.default!r} does not exist"
        )
    return _no_match(fit, compatible, "barebox", f"{head} and there is no default")


def _match_uboot(fit: Fit, compatible: Sequence[str]) -> Match:
    table = _table(fit, "u-boot")
    # Each configuration's position: the first board string it lists (exact match).
    positions: dict[int, tuple[_Row, int]] = {}
    for i, value in enumerate(compatible):
        for row in table.exact.get(value, ()):
            positions.setdefault(row.order, (row, i))
    candidates = [
        Candidate(row.config, row.compatible, row.source, position=i)
        for _, (row, i) in sorted(positions.items())
    ]
    best: Candidate | None = None
    for cand in candidates:  # in node order
        if best is None or (cand.position or 0) < (best.position or 0):
            best = cand  # strictly lower: first in node order wins ties (2023.01)
    ranked = sorted(candidates, key=lambda c: c.position or 0)
    if best is not None and best.position is not None:
        return Match(
            best.config,
            f"{best.config}: board string {best.position} {compatible[best.position]!r} is in its "
            f"{best.source} ({', '.join(best.compatible)}) (u-boot: first board string found)",
            "u-boot",
            ranked,
        )
    head = "no board string is in any configuration" if compatible else "board has no compatible"
    return _no_match(fit, compatible, "u-boot", head)
