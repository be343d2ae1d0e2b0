"""What every handler finds in the application: the service and the server's settings."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from overrided.state import Service

SERVICE = web.AppKey("service", Service)
TOKEN = web.AppKey("token", str)
MAX_UPLOAD = web.AppKey("max_upload", int)
UPLOAD_LOCKS = web.AppKey("upload_locks", dict[str, asyncio.Lock])
STREAMS = web.AppKey("streams", set[asyncio.Task[Any]])
