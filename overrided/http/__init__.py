"""HTTP side of overrided (aiohttp): artifacts, JSON API, uploads, events, metrics."""

from __future__ import annotations

from overrided.http.app import DEFAULT_MAX_UPLOAD, make_app
from overrided.http.token import load_or_create_token

__all__ = ["DEFAULT_MAX_UPLOAD", "load_or_create_token", "make_app"]
