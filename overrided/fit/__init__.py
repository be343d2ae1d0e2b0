"""FIT (Flattened Image Tree): parse, match configurations, trim, build, hash."""

from overrided.fit.hashes import HASH_ALGOS, add_missing_hashes, digest
from overrided.fit.model import FitError

__all__ = ["HASH_ALGOS", "FitError", "add_missing_hashes", "digest"]
