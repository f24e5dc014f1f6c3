"""The gateway's deserialized answers: files by path (Range, HEAD, ETag), directory listings.

Why the gateway deserializes at all (it began as a strict trustless gateway): issue 8 makes a
node's repo folder a pacman mirror, ``Server = http://<node>:4080/ipns/<name>/$repo/os/$arch``,
and pacman, curl and browsers ask for plain bytes. pacman verifies what it gets (package
signatures, db signatures when required), and a trustless client still gets raw blocks and
CARs (``gateway.py``), so serving plain bytes costs no trust.

Also here: the block getter of one request (the blockstore, and for this machine's own
clients only, a network fetcher) and the small helpers both answer kinds share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aiohttp import web

from pacswarm.httprange import RangeNotSatisfiable, parse_range
from pacswarm.ipfs.blockstore import BlockstoreError, PackageBlockstore
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.unixfsread import (
    DirEntry,
    Getter,
    NotADirectory,
    PathNotFound,
    UnixFSReadError,
    file_size,
    is_directory,
    iter_file,
    list_directory,
    resolve_path,
)
from pacswarm.swarm.access import Lease, is_loopback

log = logging.getLogger(__name__)

Fetch = Callable[[CID], Awaitable["bytes | None"]]
#: Seconds one network fetch of a block may take before the block counts as missing.
FETCH_TIMEOUT = 30.0
#: File bytes one trip to the worker thread reads (and one pacing step sends).
BATCH_BYTES = 1024 * 1024
#: Longest single sleep while pacing (see ``pace``).
PACE_STEP = 0.25
_TYPES = {
    "html": "text/html; charset=utf-8",
    "htm": "text/html; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "md": "text/plain; charset=utf-8",
    "json": "application/json",
    "sig": "application/pgp-signature",
    "asc": "application/pgp-signature",
    "zst": "application/zstd",
    "xz": "application/x-xz",
    "gz": "application/gzip",
    "tar": "application/x-tar",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "css": "text/css; charset=utf-8",
}
_LISTING_CSP = "default-src 'none'; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Target:
    """What a request names: a root CID, the path under it, and how to label the answer."""

    root: CID
    segments: tuple[str, ...]
    slash: bool  # the URL path ends with "/"
    display: str  # "/ipfs/<cid>/a/b" or "/ipns/<name>/a/b", for X-Ipfs-Path and listings
    cache: str  # Cache-Control: immutable for /ipfs/, the record's TTL for /ipns/


def split_path(raw_path: str, prefix_parts: int = 3) -> tuple[tuple[str, ...], bool]:
    """(decoded segments after ``/ipfs/<cid>``, trailing slash) of a raw URL path.

    From the raw path, so a ``%2F`` inside a name stays in the name (and then matches
    nothing: no UnixFS name holds a slash); empty segments (``a//b``) are skipped.
    """
    parts = raw_path.split("/")[prefix_parts:]
    segments = tuple(unquote(p) for p in parts if p)
    return segments, len(parts) > 0 and raw_path.endswith("/")


def content_type(name: str) -> str:
    """By extension; ``application/octet-stream`` when unknown (a package, a db)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _TYPES.get(ext, "application/octet-stream")


def block_getter(blocks: PackageBlockstore, fetch: Fetch | None, remote: str | None) -> Getter:
    """``get(cid)`` for worker threads: the blockstore, then ``fetch`` for loopback clients.

    Never the network for another machine: this node must not become an open relay, fetching
    whatever strangers (or swarm peers) name. A fetched block is checked against its CID; a
    corrupt stored block counts as missing (the blockstore has already reported it).
    """
    loop = asyncio.get_running_loop()
    use_fetch = fetch if fetch is not None and is_loopback(remote or "") else None

    def get(cid: CID) -> bytes | None:
        try:
            block = blocks.get(cid)
        except BlockstoreError as e:
            log.warning("gateway: %s", e)
            block = None
        if block is not None or use_fetch is None:
            return block
        future = asyncio.run_coroutine_threadsafe(use_fetch(cid), loop)
        try:
            data = future.result(FETCH_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.info("gateway: fetching %s took over %.0f s", cid, FETCH_TIMEOUT)
            return None
        except Exception as e:
            log.info("gateway: fetching %s failed: %s", cid, e)
            return None
        if data is None or not cid.verify(data):
            return None
        return data

    return get


async def pace(request: web.Request, lease: Lease | None, nbytes: int) -> bool:
    """Sleep as long as the client's rate asks before sending ``nbytes`` (no-op unlimited).

    In short steps: a client that hangs up mid-wait frees its slot within ``PACE_STEP``
    rather than after the whole wait (seconds, at a low ``peer_rate``). False: it hung up.
    """
    if lease is None:
        return True
    wait = lease.pace(nbytes)
    while wait > 0:
        step = min(wait, PACE_STEP)
        await asyncio.sleep(step)
        wait -= step
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
    return True


def cut(request: web.Request) -> None:
    """Drop the connection so the client sees a failed transfer, not a complete body."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def not_modified(request: web.Request, etag: str) -> bool:
    """If-None-Match: the spec requires 304 when the client already has these bytes."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def read_error(e: UnixFSReadError, target: Target) -> web.HTTPException:
    """404 for what is not there (a name, a block we lack), 502 for a DAG we cannot read."""
    if isinstance(e, (LookupError, NotADirectory)):
        return web.HTTPNotFound(text=f"{target.display}: {e}\n")
    return web.HTTPBadGateway(text=f"{target.display}: cannot be read: {e}\n")


async def serve_deserialized(
    request: web.Request, lease: Lease | None, get: Getter, cid: CID, target: Target
) -> web.StreamResponse:
    """A file's bytes, or a directory (redirect to ``.../``, ``index.html``, or a listing)."""
    try:
        directory = await asyncio.to_thread(is_directory, get, cid)
    except UnixFSReadError as e:
        raise read_error(e, target) from None
    if not directory:
        name = target.segments[-1] if target.segments else ""
        return await _serve_file(request, lease, get, cid, target, name)
    if not target.slash:
        location = request.rel_url.raw_path + "/"
        if request.rel_url.raw_query_string:
            location += "?" + request.rel_url.raw_query_string
        raise web.HTTPMovedPermanently(location)
    try:
        index = await asyncio.to_thread(resolve_path, get, cid, ["index.html"])
        return await _serve_file(request, lease, get, index, target, "index.html")
    except PathNotFound:
        pass
    except UnixFSReadError as e:
        raise read_error(e, target) from None
    return await _serve_listing(request, get, cid, target)


def _base_headers(cid: CID, target: Target) -> dict[str, str]:
    return {
        "Cache-Control": target.cache,
        "X-Ipfs-Path": target.display,
        "X-Ipfs-Roots": str(target.root),
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept",
    }


async def _serve_file(
    request: web.Request, lease: Lease | None, get: Getter, cid: CID, target: Target, name: str
) -> web.StreamResponse:
    """The bytes with Range (206/416), HEAD and ETag/304; only the asked range is read."""
    try:
        size = await asyncio.to_thread(file_size, get, cid)
    except UnixFSReadError as e:
        raise read_error(e, target) from None
    headers = _base_headers(cid, target)
    headers.update(
        {"Content-Type": content_type(name), "ETag": f'"{cid}"', "Accept-Ranges": "bytes"}
    )
    if not_modified(request, headers["ETag"]):
        return web.Response(status=304, headers=headers)
    try:
        asked = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        raise web.HTTPRequestRangeNotSatisfiable(headers=headers) from None
    start, end = asked or (0, size)
    if asked is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    status = 206 if asked is not None else 200
    if request.method == "HEAD":
        headers["Content-Length"] = str(end - start)
        return web.Response(status=status, headers=headers)
    pieces = iter_file(get, cid, start, end)
    try:
        first = await asyncio.to_thread(_batch, pieces)
    except UnixFSReadError as e:  # nothing sent yet: a clean error
        raise read_error(e, target) from None
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = end - start
    await resp.prepare(request)
    await _stream(request, lease, resp, first, pieces, target)
    return resp


async def _stream(
    request: web.Request,
    lease: Lease | None,
    resp: web.StreamResponse,
    batch: list[bytes],
    pieces: Iterator[bytes],
    target: Target,
) -> None:
    """Send batches until the range is done; any failure cuts the connection (a short
    body with a Content-Length is a failed transfer to pacman, never a wrong file)."""
    try:
        while batch:
            if not await pace(request, lease, sum(map(len, batch))):
                cut(request)
                return
            for piece in batch:
                await resp.write(piece)
            try:
                batch = await asyncio.to_thread(_batch, pieces)
            except Exception as e:
                log.warning("gateway: %s cut short: %s", target.display, e)
                cut(request)
                return
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("gateway: client went away during %s", target.display)


def _batch(pieces: Iterator[bytes]) -> list[bytes]:
    out: list[bytes] = []
    total = 0
    for piece in pieces:
        out.append(piece)
        total += len(piece)
        if total >= BATCH_BYTES:
            break
    return out


async def _serve_listing(
    request: web.Request, get: Getter, cid: CID, target: Target
) -> web.StreamResponse:
    try:
        entries = await asyncio.to_thread(list_directory, get, cid)
    except UnixFSReadError as e:
        raise read_error(e, target) from None
    headers = _base_headers(cid, target)
    headers.update(
        {
            "Content-Type": "text/html; charset=utf-8",
            "ETag": f'"DirIndex-{cid}"',
            "Content-Security-Policy": _LISTING_CSP,
        }
    )
    if not_modified(request, headers["ETag"]):
        return web.Response(status=304, headers=headers)
    # 15,000 rows take tens of ms to format: not on the event loop
    body = (await asyncio.to_thread(listing_html, target.display, cid, entries)).encode()
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return web.Response(headers=headers)
    return web.Response(body=body, headers=headers)


def listing_html(display: str, cid: CID, entries: list[DirEntry]) -> str:
    """A self-contained HTML index: name links (relative), sizes, CIDs; every name escaped."""
    title = html.escape(display.rstrip("/") + "/")
    rows = ['<tr><td><a href="..">..</a></td><td></td><td></td></tr>']
    for e in entries:
        href = html.escape(quote(e.name, safe=""), quote=True)
        rows.append(
            f'<tr><td><a href="{href}">{html.escape(e.name)}</a></td>'
            f'<td class="n">{_human(e.size)}</td>'
            f'<td><a href="/ipfs/{e.cid}"><code>{e.cid}</code></a></td></tr>'
        )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Index of {title}</title><style>body{{font-family:sans-serif}}"
        "td{padding:0 1em}td.n{text-align:right}</style></head><body>"
        f"<h1>Index of {title}</h1><p>{len(entries)} entries, directory <code>{cid}</code></p>"
        f"<table>{''.join(rows)}</table></body></html>\n"
    )


def _human(size: int) -> str:
    """1234567 -> "1.2 MiB" (the exact byte count is the link's Tsize, in the CID's DAG)."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
