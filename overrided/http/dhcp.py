"""``GET /api/dhcp``: how DHCP is served (``overrided serve --dhcp``) and its leases."""

from __future__ import annotations

from aiohttp import web

from overrided.dhcp import DhcpInfo, Dnsmasq
from overrided.http.context import SERVICE


async def get_dhcp(request: web.Request) -> web.Response:
    """GET ``/api/dhcp``: ``{"enabled": false}`` without ``--dhcp``."""
    dhcp = getattr(request.app[SERVICE], "dhcp", None)
    info = dhcp.info() if isinstance(dhcp, Dnsmasq) else DhcpInfo()
    return web.json_response(text=info.model_dump_json())
