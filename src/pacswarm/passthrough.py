"""Passing a file through from upstream unchanged and uncached.

For files no db describes (``lastupdate``, a package missing from the db, a signature we do
not hold): with nothing to verify against, pacswarm neither caches nor vouches for them; pacman
still checks packages itself. Mirrors are tried in order until one answers, so a dead first
mirror costs one connection attempt; once bytes flow, a failure cuts the connection.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from pacswarm.errors import UpstreamError
from pacswarm.requestpath import RequestPath
from pacswarm.upstream import MirrorFault, Upstream

log = logging.getLogger(__name__)

_FORWARDED = ("Content-Type", "Content-Range", "Last-Modified", "Accept-Ranges", "ETag")


async def pass_through(
    upstream: Upstream, request: web.Request, rp: RequestPath
) -> web.StreamResponse:
    attempts: list[tuple[str, str]] = []
    not_found = 0
    forward = {k: v for k in ("Range", "If-Modified-Since") if (v := request.headers.get(k))}
    for mirror in upstream.candidates():
        try:
            async with upstream.open(
                mirror, rp, method=request.method, extra_headers=forward
            ) as resp:
                if resp.status == 404:
                    not_found += 1
                    attempts.append((mirror, "404 not found"))
                    continue
                if resp.status >= 500:
                    raise MirrorFault(f"HTTP {resp.status}")
                if resp.status == 304:
                    return web.Response(status=304)
                if resp.status not in (200, 206):
                    attempts.append((mirror, f"HTTP {resp.status}"))
                    continue
                return await _relay(request, resp)
        except MirrorFault as e:
            upstream.failed(mirror, str(e))
            attempts.append((mirror, str(e)))
    status = 404 if attempts and not_found == len(attempts) else 502
    raise UpstreamError(str(rp), attempts, status)


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
