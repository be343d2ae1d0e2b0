"""FIT (Flattened Image Tree): parse, match configurations, trim, build, hash."""

from overrided.fit.build import build_fit, find_dtbs, read_dtb
from overrided.fit.hashes import HASH_ALGOS, add_missing_hashes, digest
from overrided.fit.match import RULES, Candidate, Match, Rule, match
from overrided.fit.model import Fit, FitConfig, FitError, FitImage
from overrided.fit.trim import trim, trim_bytes

__all__ = [
    "HASH_ALGOS",
    "RULES",
    "Candidate",
    "Fit",
    "FitConfig",
    "FitError",
    "FitImage",
    "Match",
    "Rule",
    "add_missing_hashes",
    "build_fit",
    "digest",
    "find_dtbs",
    "match",
    "read_dtb",
    "trim",
    "trim_bytes",
]
