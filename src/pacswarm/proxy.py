"""The pacman-facing HTTP server: ``/$repo/os/$arch/<file>``, GET and HEAD.

Each request is routed by what the file is (see :mod:`pacswarm.requestpath`):

* repo dbs: refreshed from upstream, then answered from our copy (304 when pacman's is current);
* packages in the db: from the verified cache (``sendfile``), else streamed from a shared
  download that holds the tail back until verification passes;
* package signatures: from the cache, the db's %PGPSIG%, or upstream;
* anything else: passed through from upstream, never cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from pacswarm.dbsync import RepoDbs
from pacswarm.download import Download, Downloader, DownloadFailed
from pacswarm.errors import UpstreamError
from pacswarm.httprange import RangeNotSatisfiable, parse_range
from pacswarm.passthrough import pass_through
from pacswarm.requestpath import BadPath, FileKind, RequestPath, parse_request_path
from pacswarm.store import Store
from pacswarm.upstream import Upstream

log = logging.getLogger(__name__)

OCTETS = "application/octet-stream"


class Proxy:
    def __init__(
        self, store: Store, dbs: RepoDbs, downloader: Downloader, upstream: Upstream
    ) -> None:
        self.store = store
        self.dbs = dbs
        self.downloader = downloader
        self.upstream = upstream

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/{repo}/{os}/{arch}/{filename}", self.handle),
        ]

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="pacswarm: point pacman here with\n"
            f"  Server = http://{request.host}/$repo/os/$arch\n"
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        try:
            rp = parse_request_path(info["repo"], info["os"], info["arch"], info["filename"])
        except BadPath as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None
        try:
            if rp.kind is FileKind.DB:
                return await self.serve_db(request, rp)
            if rp.kind is FileKind.PACKAGE:
                return await self.serve_package(request, rp)
            if rp.kind is FileKind.PACKAGE_SIG:
                return await self.serve_signature(request, rp)
            return await pass_through(self.upstream, request, rp)
        except UpstreamError as e:
            log.warning("%s", e)
            if e.status == 404:
                raise web.HTTPNotFound(text=f"{rp.filename} not found on any mirror\n") from None
            raise web.HTTPBadGateway(text=f"{e}\n") from None

    async def serve_db(self, request: web.Request, rp: RequestPath) -> web.StreamResponse:
        copy = await self.dbs.refresh(rp)
        headers = {"Content-Type": OCTETS}
        if copy.offline:
            headers["Warning"] = '110 pacswarm "offline: served the last good copy"'
        return web.FileResponse(copy.path, headers=headers)

    async def serve_package(self, request: web.Request, rp: RequestPath) -> web.StreamResponse:
        if request.headers.get("Range") and self.downloader.resume_is_tainted(rp):
            log.warning("refused to resume %s: the partial copy came from a bad transfer", rp)
            raise web.HTTPRequestRangeNotSatisfiable(
                text="pacswarm: this partial download came from a transfer that failed "
                "verification; delete the .part file and download again\n"
            )
        cached = self.store.cache_path(rp)
        if cached.is_file():
            return await self.serve_file(request, cached)
        record = self.dbs.lookup(rp.repo, rp.arch, rp.filename)
        if record is None and not self.dbs.has_index(rp.repo, rp.arch):
            await self.dbs.ensure_index(rp.repo, rp.arch)
            record = self.dbs.lookup(rp.repo, rp.arch, rp.filename)
        if record is None:
            # Not in any db we know: nothing to verify against, so pass it on, uncached.
            return await pass_through(self.upstream, request, rp)
        if request.method == "HEAD":
            # Answer from the db: no reason to download a package nobody asked for yet.
            head = web.StreamResponse(headers={"Content-Type": OCTETS, "Accept-Ranges": "bytes"})
            head.content_length = record.csize
            await head.prepare(request)
            return head
        return await self.stream(request, self.downloader.get_or_start(rp, record))

    async def serve_signature(self, request: web.Request, rp: RequestPath) -> web.StreamResponse:
        cached = self.store.cache_path(rp)
        if cached.is_file():
            return await self.serve_file(request, cached)
        pkg = RequestPath(rp.repo, rp.arch, rp.package_filename, FileKind.PACKAGE)
        dl = self.downloader.active(pkg)
        if dl is not None and dl.signature:
            return web.Response(body=dl.signature, content_type=OCTETS)
        record = self.dbs.lookup(rp.repo, rp.arch, rp.package_filename)
        if record is not None and record.pgpsig:
            return web.Response(body=record.pgpsig, content_type=OCTETS)
        return await pass_through(self.upstream, request, rp)

    async def serve_file(self, request: web.Request, path: Path) -> web.StreamResponse:
        """A cached file by sendfile, with our Range rules (the same as for downloads)."""
        try:
            size = path.stat().st_size
            wanted = parse_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable as e:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers={"Content-Range": f"bytes */{e.size}"}
            ) from None
        except FileNotFoundError:  # evicted or removed between the check and now
            raise web.HTTPNotFound() from None
        response = web.FileResponse(path, headers={"Content-Type": OCTETS})
        if wanted is None and "Range" in request.headers:
            # A Range we ignore (malformed, multi-range, other unit): send the whole file.
            plain = request.clone(
                headers={k: v for k, v in request.headers.items() if k != "Range"}
            )
            await response.prepare(plain)
        return response

    async def stream(self, request: web.Request, dl: Download) -> web.StreamResponse:
        """Send a download in progress to one client, honouring Range."""
        try:
            wanted = parse_range(request.headers.get("Range"), dl.size)
        except RangeNotSatisfiable:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers={"Content-Range": f"bytes */{dl.size}"}
            ) from None
        start, end = wanted or (0, dl.size)
        resp = web.StreamResponse(status=206 if wanted else 200)
        resp.content_type = OCTETS
        resp.content_length = end - start
        resp.headers["Accept-Ranges"] = "bytes"
        if wanted:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{dl.size}"
        await resp.prepare(request)
        if request.transport is not None:
            # Let a fast client take a whole read's worth before we wait for it to drain.
            request.transport.set_write_buffer_limits(high=1 << 20)
        try:
            async for chunk in dl.follow(start, end):
                await resp.write(chunk)
        except DownloadFailed as e:
            # Cut the connection: pacman sees a failed transfer and tries its next Server.
            log.warning("cut %s for %s: %s", dl.rp, request.remote, e)
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp
