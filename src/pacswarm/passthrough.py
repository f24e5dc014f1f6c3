"""Passing a file through from upstream unchanged and uncached.

For files no db describes and that are not packages (``lastupdate``, a package ``.sig`` we do
not hold): pacswarm neither caches nor vouches for them, and pacman checks signatures itself.
A package file never comes this way: it is verified or refused (see proxy.py). Mirrors are
tried in health order until one answers (:func:`~pacswarm.fetch.mirrors.each_mirror`); once
bytes flow, a failure cuts the connection.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from pacswarm.fetch.mirrors import each_mirror
from pacswarm.requestpath import RequestPath
from pacswarm.upstream import MirrorFault, Upstream

log = logging.getLogger(__name__)

_FORWARDED = ("Content-Type", "Content-Range", "Last-Modified", "Accept-Ranges", "ETag")


async def pass_through(
    upstream: Upstream, request: web.Request, rp: RequestPath
) -> web.StreamResponse:
    """Relay the first mirror's answer; :class:`UpstreamError` (404/502) if none has it."""
    forward = {k: v for k in ("Range", "If-Modified-Since") if (v := request.headers.get(k))}

    async def attempt(mirror: str) -> web.StreamResponse:
        async with upstream.open(mirror, rp, method=request.method, extra_headers=forward) as resp:
            if resp.status == 404:
                raise MirrorFault("404 not found", penalise=False, status=404)
            if resp.status == 304:
                return web.Response(status=304)
            if resp.status not in (200, 206):
                raise MirrorFault(f"HTTP {resp.status}", penalise=resp.status >= 500)
            return await _relay(request, resp)

    return await each_mirror(upstream, str(rp), attempt)


async def _relay(request: web.Request, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    out = web.StreamResponse(status=resp.status)
    for name in _FORWARDED:
        if name in resp.headers:
            out.headers[name] = resp.headers[name]
    if resp.content_length is not None:
        out.content_length = resp.content_length
    await out.prepare(request)
    if request.method == "HEAD":
        return out
    try:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            await out.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("pass-through of %s cut: %s", request.path, e)
        if request.transport is not None:
            request.transport.abort()
        return out
    await out.write_eof()
    return out
