"""The pacman-facing HTTP server: ``/$repo/os/$arch/<file>``, GET and HEAD.

Each request is routed by what the file is (see :mod:`pacswarm.requestpath`):

* repo dbs: refreshed from upstream, then answered from our copy (304 when pacman's is current);
* packages in the db: from the verified cache (``sendfile``), else streamed from a shared
  download (nothing unverified inside the verify window, then the tail held back until
  verification passes); a package the db does not list is refused (404), never passed on;
* package signatures: from the cache, the db's %PGPSIG%, or upstream;
* anything else: passed through from upstream, never cached.

Control routes, loopback clients with the command header only: ``POST /api/publish``
(``pacswarm publish``) and ``POST /api/gc`` (``pacswarm gc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from pacswarm.dbsync import DbCopy, RepoDbs, canonical_name
from pacswarm.errors import NoSpaceError, PacswarmError, UpstreamError
from pacswarm.fetch.download import Download, Downloader, DownloadFailed
from pacswarm.fetch.source import Want
from pacswarm.httprange import RangeNotSatisfiable, parse_range
from pacswarm.metrics import Metrics
from pacswarm.passthrough import pass_through
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import BadPath, FileKind, RequestPath, parse_request_path
from pacswarm.sendspan import SpanSender
from pacswarm.store import Store
from pacswarm.upstream import Upstream

log = logging.getLogger(__name__)

OCTETS = "application/octet-stream"
#: Seconds pacman waits for a db before it gets the copy held (pacman gives up after 10 s).
DB_ANSWER_WITHIN = 6.0
#: Seconds between two refreshes of a repo's db triggered by packages it does not list.
INDEX_RETRY = 60.0
#: Repos whose db such requests may fetch (real systems have a handful).
MAX_INDEX_ASKED = 64
#: ``POST /api/publish`` must carry this header: a web page cannot send it cross-site
#: without a CORS preflight we never grant, so a browser tab cannot drive the node.
COMMAND_HEADER = "X-Pacswarm-Command"

PublishNow = Callable[[], Awaitable[dict[str, Any]]]
GcNow = Callable[[bool], Awaitable[dict[str, Any]]]


class Proxy:
    def __init__(
        self,
        store: Store,
        dbs: RepoDbs,
        downloader: Downloader,
        upstream: Upstream,
        verify_window: float,
        *,
        publish_now: PublishNow | None = None,
        gc_now: GcNow | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        #: ``pacswarm gc [--dry-run]``: run the eviction policy now; returns its result.
        self.gc_now = gc_now
        #: Hits, misses and bytes sent from the cache (the node's ``/metrics``).
        self.metrics = metrics or Metrics()
        #: ``pacswarm publish``: build the folder and publish it now; returns
        #: ``{"name": ..., "root": ..., "sequence": ...}``. None: the node does not publish.
        self.publish_now = publish_now
        self.dbs = dbs
        self.downloader = downloader
        self.upstream = upstream
        self.verify_window = verify_window
        self._index_asked: dict[tuple[str, str], float] = {}
        self._background: set[asyncio.Future[DbCopy]] = set()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/{repo}/{os}/{arch}/{filename}", self.handle),
            web.post("/api/publish", self.publish),
            web.post("/api/gc", self.gc),
        ]

    async def gc(self, request: web.Request) -> web.Response:
        """``pacswarm gc``: from this machine only, with the command header."""
        _command_only(request, "gc")
        if self.gc_now is None:
            raise web.HTTPServiceUnavailable(text="this node does not evict\n")
        dry_run = request.query.get("dry_run", "") == "1"
        return web.json_response(await self.gc_now(dry_run))

    async def publish(self, request: web.Request) -> web.Response:
        """``pacswarm publish``: from this machine only, with the command header."""
        _command_only(request, "publish")
        if self.publish_now is None:
            raise web.HTTPServiceUnavailable(text="this node publishes no IPNS name\n")
        try:
            result = await self.publish_now()
        except PacswarmError as e:
            raise web.HTTPConflict(text=f"{e}\n") from None
        return web.json_response(result)

    async def index(self, request: web.Request) -> web.Response:
        """How to use this node, and the way to its status page (a browser's first stop)."""
        server = html.escape(f"Server = http://{request.host}/$repo/os/$arch")
        return web.Response(
            text="<!doctype html><meta charset=utf-8><title>pacswarm</title>"
            f"<p>pacswarm: point pacman here with</p><pre>{server}</pre>"
            '<p><a href="/status">Status</a> (<a href="/status.json">JSON</a>, '
            '<a href="/metrics">metrics</a>)</p>\n',
            content_type="text/html",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        try:
            rp = parse_request_path(info["repo"], info["os"], info["arch"], info["filename"])
        except BadPath as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None
        self.metrics.request(rp.kind.value)
        try:
            if rp.kind is FileKind.DB:
                return await self.serve_db(request, rp)
            if rp.kind is FileKind.PACKAGE:
                return await self.serve_package(request, rp)
            if rp.kind is FileKind.PACKAGE_SIG:
                return await self.serve_signature(request, rp)
            return await pass_through(self.upstream, request, rp)
        except UpstreamError as e:
            # Arch publishes no .db.sig: pacman asks on every -Sy, and a 404 is the norm.
            quiet = e.status == 404 and rp.kind is FileKind.DB and rp.filename.endswith(".sig")
            log.log(logging.INFO if quiet else logging.WARNING, "%s", e)
            if e.status == 404:
                raise web.HTTPNotFound(text=f"{rp.filename} not found on any mirror\n") from None
            raise web.HTTPBadGateway(text=f"{e}\n") from None

    async def serve_db(self, request: web.Request, rp: RequestPath) -> web.StreamResponse:
        """Refresh the db, then answer from our copy.

        A db is checked whole before pacman gets a byte, and pacman gives up on a transfer
        that sends nothing for 10 s: on a slow mirror (Arch's extra.files is tens of MB) the
        refresh may take longer. After :data:`DB_ANSWER_WITHIN` the copy held is served and
        the refresh goes on; the next ``pacman -Sy`` gets the new db.
        """
        refresh = asyncio.ensure_future(self.dbs.refresh(rp))
        try:
            copy = await asyncio.wait_for(asyncio.shield(refresh), DB_ANSWER_WITHIN)
            warning = '110 pacswarm "offline: served the last good copy"' if copy.offline else ""
        except TimeoutError:
            held = self._held_db(rp)
            if held is None:
                copy = await refresh  # nothing else to give: wait, pacman may give up
                warning = ""
            else:
                self._keep(refresh)
                log.warning("%s: refresh still running; served the copy held", rp)
                copy, warning = DbCopy(held), '110 pacswarm "refresh running: served the copy held"'
        headers = {"Content-Type": OCTETS}
        if warning:
            headers["Warning"] = warning
        since = request.if_modified_since
        if since is not None and since.timestamp() > time.time():
            # pacman's copy carries a date in the future (from a mirror that lied, before
            # pacswarm refused such dates): a 304 now would freeze its syncs for ever, and
            # curl drops a 200 whose Last-Modified is older than what it asked. So: the whole
            # db, without Last-Modified (pacman then dates its copy by its own clock). Rare,
            # once per such copy: read whole, not sendfile.
            log.warning("%s: pacman's copy is dated in the future; sending ours undated", rp)
            body = await asyncio.to_thread(copy.path.read_bytes)
            return web.Response(body=body, headers=headers)
        return web.FileResponse(copy.path, headers=headers)

    def _held_db(self, rp: RequestPath) -> Path | None:
        name = canonical_name(rp)
        if name is None:
            return None
        held = self.store.db_path(RequestPath(rp.repo, rp.arch, name, rp.kind))
        return held if held.is_file() else None

    def _keep(self, task: asyncio.Future[DbCopy]) -> None:
        """Hold a background refresh until it ends; its failure is logged, not raised."""
        self._background.add(task)

        def done(t: asyncio.Future[DbCopy]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("background refresh failed: %s", t.exception())

        task.add_done_callback(done)

    async def serve_package(self, request: web.Request, rp: RequestPath) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        cached = self.store.cache_path(rp)
        key = (rp.repo, rp.arch, rp.filename)
        if request.headers.get("Range") and self.downloader.cuts.known(key):
            return await self.serve_resume(request, rp, arrived)
        if cached.is_file():
            if request.method == "GET":
                try:
                    self.store.mark_served(rp)  # the cap keeps what pacman still asks for
                except sqlite3.Error as e:  # a full disk must not cost pacman a cached file
                    log.warning("could not note that %s was served (%s)", rp, e)
            return await self.serve_file(request, cached, count="package")
        record = await self.record_for(rp)
        if request.method == "HEAD":
            # Answer from the db: no reason to download a package nobody asked for yet.
            head = web.StreamResponse(headers={"Content-Type": OCTETS, "Accept-Ranges": "bytes"})
            head.content_length = record.csize
            await head.prepare(request)
            return head
        # The cache disk full: pacman still gets the file, streamed, not cached (download.py).
        dl = self.downloader.get_or_start(Want(rp, record), stream_if_full=True)
        self.metrics.miss("package")
        return await self.stream(request, dl, arrived + self.verify_window)

    async def record_for(self, rp: RequestPath) -> PackageRecord:
        """The db's record of a package, refreshing the index once if it lacks it.

        A package file never leaves pacswarm unverified: with no record to check it against
        (pacman's db may be newer than ours, or the name is not a package of the repo), the
        answer is 404 and pacman moves on to its next Server.
        """
        record = self.dbs.lookup(rp.repo, rp.arch, rp.filename)
        if record is None:
            await self.refresh_index(rp.repo, rp.arch)
            record = self.dbs.lookup(rp.repo, rp.arch, rp.filename)
        if record is None:
            log.warning("refused %s: not in the %s db pacswarm holds", rp, rp.repo)
            raise web.HTTPNotFound(
                text=f"pacswarm: {rp.filename} is not in the {rp.repo} db it holds, so it "
                "cannot be verified; run pacman -Sy through pacswarm first\n"
            )
        return record

    async def refresh_index(self, repo: str, arch: str) -> None:
        """Fetch ``repo.db`` anew (conditionally), at most once per :data:`INDEX_RETRY`."""
        now = asyncio.get_running_loop().time()
        last = self._index_asked.get((repo, arch))
        if last is not None and now - last < INDEX_RETRY:
            return
        if last is None and len(self._index_asked) >= MAX_INDEX_ASKED:
            return  # a flood of made-up repo names: no more fetches for new ones
        self._index_asked[(repo, arch)] = now
        with contextlib.suppress(UpstreamError):
            await self.dbs.refresh(RequestPath(repo, arch, f"{repo}.db", FileKind.DB))

    async def serve_resume(
        self, request: web.Request, rp: RequestPath, arrived: float
    ) -> web.StreamResponse:
        """pacman resumes a transfer pacswarm cut before verification: judge its ``.part``."""
        key = (rp.repo, rp.arch, rp.filename)
        cached = self.store.cache_path(rp)
        if not cached.is_file():
            # The file is (being) fetched again from the next source; wait for it a while.
            record = await self.record_for(rp)
            with contextlib.suppress(DownloadFailed, TimeoutError, NoSpaceError):
                await asyncio.wait_for(
                    self.downloader.fetch(Want(rp, record)),
                    max(0.0, arrived + self.verify_window - asyncio.get_running_loop().time()),
                )
        offset = -1  # a Range we cannot read: pacman must start over
        with contextlib.suppress(RangeNotSatisfiable, FileNotFoundError):
            wanted = parse_range(request.headers["Range"], cached.stat().st_size)
            offset = wanted[0] if wanted else -1
        good: bool | None = False
        if offset >= 0:
            good = await asyncio.to_thread(self.downloader.cuts.judge, key, offset, cached)
            self.downloader.cuts.settled(key, offset)
        if good is None:  # another request settled the record meanwhile: an ordinary resume
            return await self.serve_file(request, cached)
        if good:
            log.info("resume of %s at %d: the partial file is a prefix of the good one", rp, offset)
            return await self.serve_file(request, cached)
        log.warning("refused to resume %s: the partial copy came from a bad transfer", rp)
        raise web.HTTPRequestRangeNotSatisfiable(
            text="pacswarm: this partial download came from a transfer that failed "
            "verification; pacman drops it, and the next attempt gets the verified file\n"
        )

    async def serve_signature(self, request: web.Request, rp: RequestPath) -> web.StreamResponse:
        cached = self.store.cache_path(rp)
        if cached.is_file():
            return await self.serve_file(request, cached, count="package-sig")
        pkg = RequestPath(rp.repo, rp.arch, rp.package_filename, FileKind.PACKAGE)
        signature = self.downloader.signature_of(pkg)
        if signature is not None:
            return web.Response(body=signature, content_type=OCTETS)
        record = self.dbs.lookup(rp.repo, rp.arch, rp.package_filename)
        if record is not None and record.pgpsig:
            return web.Response(body=record.pgpsig, content_type=OCTETS)
        return await pass_through(self.upstream, request, rp)

    async def serve_file(
        self, request: web.Request, path: Path, count: str | None = None
    ) -> web.StreamResponse:
        """A cached file by sendfile, with our Range rules (the same as for downloads).

        ``count``: the kind of file, to count as a cache hit (resumes are not counted).
        """
        try:
            size = path.stat().st_size
            wanted = parse_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable as e:
            raise web.HTTPRequestRangeNotSatisfiable(
                headers={"Content-Range": f"bytes */{e.size}"}
            ) from None
        except FileNotFoundError:  # evicted or removed between the check and now
            raise web.HTTPNotFound() from None
        if count is not None and request.method == "GET":
            self.metrics.hit(count, wanted[1] - wanted[0] if wanted else size)
        if wanted is None and "Range" in request.headers:
            # A Range we ignore (malformed, multi-range, other unit): send the whole file.
            return _WholeFile(path, headers={"Content-Type": OCTETS})
        return web.FileResponse(path, headers={"Content-Type": OCTETS})

    async def stream(
        self, request: web.Request, dl: Download, window_ends: float
    ) -> web.StreamResponse:
        """Send a download in progress to one client, honouring Range and the window."""
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
        sender = SpanSender(request, resp)
        try:
            # aclosing: a client that left is no reader any more at once (fd closed too).
            # Spans of the temp file go out with sendfile: no byte is copied through Python.
            async with contextlib.aclosing(dl.spans(start, end, window_ends)) as spans:
                async for span in spans:
                    await sender.send(span)
            await resp.write_eof()
        except DownloadFailed as e:
            # Cut the connection: pacman sees a failed transfer and tries its next Server.
            log.warning("cut %s for %s: %s", dl.rp, request.remote, e)
            if request.transport is not None:
                request.transport.abort()
            return resp
        except ConnectionError:  # pacman interrupted: the download goes on without it
            log.info("client went away during %s (%s)", dl.rp, request.remote)
            if request.transport is not None:
                request.transport.abort()  # mid-body: the connection is of no further use
        return resp


def _command_only(request: web.Request, command: str) -> None:
    """Refuse a control request not from this machine or without the command header."""
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback or request.headers.get(COMMAND_HEADER) != command:
        raise web.HTTPForbidden(text=f"this is only for `pacswarm {command}` on this machine\n")


class _WholeFile(web.FileResponse):
    """A file response that ignores the request's Range: the whole file, status 200.

    aiohttp prepares whatever a handler returns, so the request seen by ``prepare`` is
    changed here rather than by preparing the response early (which it would then prepare a
    second time, and fail).
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        plain = {k: v for k, v in request.headers.items() if k != "Range"}
        return await super().prepare(request.clone(headers=plain))
