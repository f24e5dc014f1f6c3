"""The IPFS gateway: ``/ipfs/{cid}[/{path}]`` and ``/ipns/{name}[/{path}]``.

Why a trustless gateway and not Bitswap for bulk transfer between pacswarm peers: a CAR stream
cut from cached files costs far less CPU per byte than Noise + Yamux in Python, and every
block is still checked against its CID by the receiver (see ``gatewayclient``).

What is answered (Trustless Gateway spec, ipfs/specs ``http-gateways/trustless-gateway.md``):

- ``?format=raw`` / ``Accept: application/vnd.ipld.raw``: the one block at the end of the path;
- ``?format=car`` / ``Accept: application/vnd.ipld.car``: a CARv1, the path's blocks (its
  directories and HAMT shards, so the client can verify the path) then the terminal DAG in
  DFS order (``dag-scope`` all, entity or block), streamed (a 1 GB package is never in
  memory). ``dups=n`` unless the client asks for ``dups=y``;
- no format asked (pacman, curl, a browser): the deserialized content (``gatewaypaths``): a
  file with Range/HEAD/ETag, a directory as a listing (issue 8: a node's repo folder is a
  pacman mirror and browsable);
- ``/ipns/{name}?format=ipns-record``: the name's signed record, from ``resolver``;
- the probe CID ``bafkqaaa`` (identity, empty) in both formats.

Status codes: 400 for a malformed CID or IPNS name, 406 for formats or CAR variants we do not
produce, 404 for a path or content we do not hold (we are non-recursive: we never fetch for
others; only this machine's own clients may make us fetch, through ``fetch``), 504 when an
IPNS lookup timed out. Once a body has started, a missing or corrupt block cuts the
connection: the client sees a broken transfer, never a short but well-formed answer.

Who is answered (:mod:`pacswarm.swarm.access`, when an :class:`Access` is given): a client
that is neither this machine nor a swarm peer gets 403 before anything else is looked at (a
stranger learns nothing, not even whether a CID is malformed); a client with
``peer_concurrency`` requests in flight gets 429 with ``Retry-After``; ``peer_rate`` paces
the response: the stream sleeps between batches (never per byte) so the client gets about
that many bytes per second, shared across its requests.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from pacswarm.ipfs.blockstore import BlockstoreError, PackageBlockstore
from pacswarm.ipfs.car import encode_header, frame_head
from pacswarm.ipfs.cid import CID, CIDError, encode_varint
from pacswarm.ipfs.gatewaypaths import (
    Fetch,
    Target,
    block_getter,
    cut,
    not_modified,
    pace,
    read_error,
    serve_deserialized,
    split_path,
)
from pacswarm.ipfs.unixfsread import Getter, UnixFSReadError, dag_walk, fetch_block, walk_path
from pacswarm.ipns.names import NameResolver
from pacswarm.ipns.record import IpnsRecordError, parse_ipns_name
from pacswarm.swarm.access import Access, Lease

log = logging.getLogger(__name__)

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
IPNS_RECORD_TYPE = "application/vnd.ipfs.ipns-record"
#: Accept types of verifiable responses: asked alone and not served, they are a 406.
_VERIFIABLE = ("application/vnd.ipld.", "application/vnd.ipfs.")
IMMUTABLE = "public, max-age=29030400, immutable"
PROBE_CID = "bafkqaaa"
_PROBE_CID_BYTES = b"\x01\x55\x00\x00"  # CIDv1, raw, identity multihash of nothing
#: How many block bytes one trip to the worker thread gathers for a CAR stream.
_BATCH_BYTES = 1024 * 1024
_CAR_PARAMS = ("version", "order", "dups")
_BLOCKS: web.AppKey[PackageBlockstore] = web.AppKey("blocks", PackageBlockstore)
_ACCESS: web.AppKey[Access | None] = web.AppKey("access")
_RESOLVER: web.AppKey[NameResolver | None] = web.AppKey("resolver")
_FETCH: web.AppKey[Fetch | None] = web.AppKey("fetch")
#: Seconds a client over its concurrency limit is told to wait (a small file takes ~that).
RETRY_AFTER = 1
REFUSED = (
    "403: this pacswarm node serves its gateway only to this machine and to peers of its "
    "swarm, and {ip} is neither.\n"
    "To fetch from it, join its swarm: run pacswarm on your machine and connect to this node "
    "over libp2p (found by mDNS on the same LAN, or listed in bootstrap; in a private swarm "
    "your peer ID must be in its [swarm] allowlist).\n"
    "Or, on this node, set [swarm] serve_public = true to serve anyone.\n"
)


@dataclass(frozen=True)
class Wanted:
    """The negotiated response: ``raw``, or ``car`` with or without duplicate blocks."""

    fmt: str
    dups: bool = False
    from_accept: bool = False
    scope: str = "all"


class NotAcceptable(Exception):
    """The request names a format or CAR variant this gateway does not produce."""


def gateway_app(
    blocks: PackageBlockstore,
    access: Access | None = None,
    *,
    resolver: NameResolver | None = None,
    fetch: Fetch | None = None,
) -> web.Application:
    """``GET``/``HEAD`` of ``/ipfs/{cid}[/{path}]`` and ``/ipns/{name}[/{path}]``.

    ``access``: who may fetch and how much (None: anyone, unlimited, as before swarms).
    ``resolver``: how ``/ipns/`` names become CIDs (None: no ``/ipns/`` answers).
    ``fetch``: a network fetcher of blocks we lack, used for this machine's clients only.
    """
    app = web.Application()
    app[_BLOCKS] = blocks
    app[_ACCESS] = access
    app[_RESOLVER] = resolver
    app[_FETCH] = fetch
    ipfs, ipns = functools.partial(_admit, _ipfs), functools.partial(_admit, _ipns)
    for route in ("/ipfs/{cid}", "/ipfs/{cid}/{path:.*}"):
        app.router.add_get(route, ipfs)  # also answers HEAD
    for route in ("/ipns/{name}", "/ipns/{name}/{path:.*}"):
        app.router.add_get(route, ipns)
    return app


Handler = Callable[[web.Request, "Lease | None"], Awaitable[web.StreamResponse]]


async def _admit(handler: Handler, request: web.Request) -> web.StreamResponse:
    """Refused (403) and busy (429) clients first; then the request, holding a slot."""
    access = request.app[_ACCESS]
    if access is None:
        return await handler(request, None)
    ip = request.remote or ""
    if not access.may_fetch_http(ip):
        raise web.HTTPForbidden(text=REFUSED.format(ip=ip or "this client"))
    lease = access.enter_http(ip)
    if lease is None:
        raise web.HTTPTooManyRequests(
            headers={"Retry-After": str(RETRY_AFTER)},
            text=f"429: {ip} already has {access.swarm.peer_concurrency} requests in flight "
            f"here ([swarm] peer_concurrency); retry after {RETRY_AFTER} s\n",
        )
    with lease:
        return await handler(request, lease)


def _wanted(request: web.Request) -> Wanted | None:
    """The negotiated format (406/400 raised here, before any lookup); None: deserialize."""
    try:
        wanted = negotiate(request.query, request.headers.get("Accept"))
    except NotAcceptable as e:
        raise web.HTTPNotAcceptable(text=f"{e}\n") from None
    return None if wanted is None else _with_scope(wanted, request.query)


async def _ipfs(request: web.Request, lease: Lease | None) -> web.StreamResponse:
    """Format first (400/406 cost nothing), then the CID (400), then the store (404)."""
    text = request.match_info["cid"]
    wanted = _wanted(request)
    segments, slash = split_path(request.rel_url.raw_path)
    if text == PROBE_CID and not segments:
        return _probe(wanted or Wanted("raw"))
    try:
        cid = CID.parse(text)
    except CIDError as e:
        raise web.HTTPBadRequest(text=f"malformed CID: {e}\n") from None
    display = "/".join((f"/ipfs/{cid}", *segments))
    target = Target(cid, segments, slash, display, IMMUTABLE)
    return await _serve(request, lease, target, wanted)


async def _ipns(request: web.Request, lease: Lease | None) -> web.StreamResponse:
    """``/ipns/{name}``: the record itself, or the path under the CID it names."""
    resolver = request.app[_RESOLVER]
    if resolver is None:
        raise web.HTTPNotFound(text="this gateway resolves no IPNS names\n")
    name = request.match_info["name"]
    try:
        parse_ipns_name(name)
    except IpnsRecordError as e:
        raise web.HTTPBadRequest(text=f"{e}\n") from None
    segments, slash = split_path(request.rel_url.raw_path)
    want_record = request.query.get("format") == "ipns-record" or (
        "format" not in request.query
        and IPNS_RECORD_TYPE in request.headers.get("Accept", "").lower()
    )
    wanted = None if want_record else _wanted(request)
    try:
        resolved = await resolver.resolve(name)
    except TimeoutError:
        raise web.HTTPGatewayTimeout(text=f"resolving /ipns/{name} timed out; retry\n") from None
    if resolved is None:
        raise web.HTTPNotFound(text=f"/ipns/{name}: no record found for this name\n")
    cache = f"public, max-age={max(0, int(resolved.ttl))}"
    if want_record:
        if segments:
            raise web.HTTPBadRequest(text="an IPNS record has no path: ask /ipns/<name>\n")
        return _record(name, resolved.record, cache)
    display = "/".join((f"/ipns/{name}", *segments))
    target = Target(resolved.value, segments, slash, display, cache)
    return await _serve(request, lease, target, wanted)


def _record(name: str, record: bytes, cache: str) -> web.Response:
    """The signed record as the spec's ``application/vnd.ipfs.ipns-record`` (clients verify
    it themselves: it is served as it came, never re-signed)."""
    return web.Response(
        body=record,
        headers={
            "Content-Type": IPNS_RECORD_TYPE,
            "Cache-Control": cache,
            "Content-Disposition": f'attachment; filename="{name}.ipns-record"',
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept",
        },
    )


async def _serve(
    request: web.Request, lease: Lease | None, target: Target, wanted: Wanted | None
) -> web.StreamResponse:
    """Walk the path (its blocks first in a CAR), then answer in the negotiated format.

    A bare CID asking raw or CAR consults only the index before answering: HEAD and 404s
    never read a package file.
    """
    blocks = request.app[_BLOCKS]
    get = block_getter(blocks, request.app[_FETCH], request.remote)
    walked: list[CID] = []
    cid = target.root
    if target.segments:
        try:
            cid, walked = await asyncio.to_thread(walk_path, get, cid, target.segments)
        except UnixFSReadError as e:
            raise read_error(e, target) from None
    if wanted is None:
        return await serve_deserialized(request, lease, get, cid, target)
    size = await asyncio.to_thread(blocks.block_size, cid)
    if size is None:
        block = await asyncio.to_thread(get, cid)  # a block fetched for this machine
        if block is None:
            raise web.HTTPNotFound(text=f"{cid} is not on this node\n")
        size = len(block)
    headers = _headers(str(cid), wanted)
    if target.segments or target.cache != IMMUTABLE:
        _path_headers(headers, target, wanted, [*walked, cid])
    if not_modified(request, headers["ETag"]):
        return web.Response(status=304, headers=headers)
    if wanted.fmt == "raw":
        return await _raw(request, get, cid, size, headers, lease)
    walk = itertools.chain(
        ((c, fetch_block(get, c)) for c in walked), dag_walk(get, cid, wanted.scope)
    )
    return await _car(request, walk, walked[0] if walked else cid, headers, wanted, lease)


def _path_headers(headers: dict[str, str], target: Target, wanted: Wanted, cids: list[CID]) -> None:
    """Headers of a raw/CAR answer named by a path: its own ETag, location and cache time."""
    headers["X-Ipfs-Path"] = target.display
    headers["X-Ipfs-Roots"] = ",".join(map(str, cids))
    headers["Cache-Control"] = target.cache
    if wanted.fmt == "car":
        # The CAR holds the path's blocks too: it is named by the root CID and the path (for
        # /ipns/ too: a new record means new bytes, so the ETag must change with the root).
        by_cid = "/".join((f"/ipfs/{target.root}", *target.segments))
        headers["ETag"] = headers["ETag"].replace(str(cids[-1]), by_cid, 1)
    if "Content-Location" in headers:
        headers["Content-Location"] = headers["Content-Location"].replace(
            f"/ipfs/{cids[-1]}", quote(target.display), 1
        )


def negotiate(query: Mapping[str, str], accept: str | None) -> Wanted | None:
    """What to answer: ``format`` wins over ``Accept`` (spec); None if neither names a
    verifiable format (deserialize: a browser's ``text/html, */*`` or pacman's nothing).

    ``car-version``/``car-order``/``car-dups`` query parameters win over the same
    parameters of the ``Accept`` media type (spec). Raises :class:`NotAcceptable`.
    """
    fmt = query.get("format")
    if fmt is not None:
        if fmt == "raw":
            return Wanted("raw")
        if fmt == "car":
            return Wanted("car", _car_dups(_car_query(query, {})))
        raise NotAcceptable(f"format={fmt[:40]!r} is not served here (raw, car)")
    if not accept:
        return None
    wanted = [m for m in (_media(item) for item in accept.split(",")) if _quality(m[1]) > 0]
    for media, params in sorted(wanted, key=lambda m: -_quality(m[1])):
        if media == RAW_TYPE:
            return Wanted("raw", from_accept=True)
        if media == CAR_TYPE:
            try:
                return Wanted("car", _car_dups(_car_query(query, params)), from_accept=True)
            except NotAcceptable:
                continue
    if wanted and all(media.startswith(_VERIFIABLE) for media, _ in wanted):
        raise NotAcceptable(f"none of {accept[:200]!r} is served here ({RAW_TYPE}, {CAR_TYPE})")
    return None  # text/html, */*, application/octet-stream...: the deserialized content


def _with_scope(wanted: Wanted, query: Mapping[str, str]) -> Wanted:
    """``dag-scope`` of a CAR: ``block`` is the terminal block alone; ``entity`` a file's
    whole DAG or a directory's own blocks; ``all`` everything under it. ``entity-bytes`` (a
    trustless Range) is not served:
    answering it with the whole DAG would break the spec's "minimal set of blocks"."""
    if wanted.fmt != "car":
        return wanted
    if "entity-bytes" in query:
        raise web.HTTPBadRequest(text="entity-bytes is not supported by this gateway\n")
    scope = query.get("dag-scope", "all")
    if scope not in ("block", "entity", "all"):
        raise web.HTTPBadRequest(text="dag-scope must be block, entity or all\n")
    return Wanted(wanted.fmt, wanted.dups, wanted.from_accept, scope)


def _car_query(query: Mapping[str, str], params: dict[str, str]) -> dict[str, str]:
    """CAR parameters: from the media type, overridden by ``car-*`` query parameters."""
    merged = {k: params[k] for k in _CAR_PARAMS if k in params}
    merged.update({k: query[f"car-{k}"].lower() for k in _CAR_PARAMS if f"car-{k}" in query})
    return merged


def _media(item: str) -> tuple[str, dict[str, str]]:
    """``type/sub; k=v; ...`` -> (lower-case type, params)."""
    parts = [p.strip() for p in item.split(";")]
    params: dict[str, str] = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        params[k.strip().lower()] = v.strip().strip('"').lower()
    return parts[0].lower(), params


def _quality(params: dict[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 0.0


def _car_dups(params: dict[str, str]) -> bool:
    """True for ``dups=y``; refuses CAR versions and orders we do not write."""
    if params.get("version", "1") != "1":
        raise NotAcceptable("only CARv1 is served here")
    if params.get("order", "dfs") not in ("dfs", "unk", ""):
        raise NotAcceptable("only order=dfs is served here")
    dups = params.get("dups", "n")
    if dups not in ("y", "n", ""):
        raise NotAcceptable("dups must be y or n")
    return dups == "y"


def _headers(cid: str, wanted: Wanted) -> dict[str, str]:
    if wanted.fmt == "raw":
        content_type, etag, name = RAW_TYPE, f'"{cid}.raw"', f"{cid}.bin"
    else:
        dups = "y" if wanted.dups else "n"
        content_type = f"{CAR_TYPE}; version=1; order=dfs; dups={dups}"
        # Our DFS walk is deterministic, so the bytes are too: a strong ETag is honest.
        scope = "" if wanted.scope == "all" else f".{wanted.scope}"
        etag, name = f'"{cid}.car.v1.dfs.dups-{dups}{scope}"', f"{cid}.car"
    headers = {
        "Content-Type": content_type,
        "ETag": etag,
        "Cache-Control": IMMUTABLE,
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-Type-Options": "nosniff",
        "X-Ipfs-Path": f"/ipfs/{cid}",
        "X-Ipfs-Roots": cid,
        "Vary": "Accept",
        "Accept-Ranges": "none",
    }
    if wanted.from_accept:
        location = f"/ipfs/{cid}?format={wanted.fmt}"
        if wanted.fmt == "car":
            location += f"&car-dups={'y' if wanted.dups else 'n'}"
        headers["Content-Location"] = location
    return headers


async def _raw(
    request: web.Request,
    get: Getter,
    cid: CID,
    size: int,
    headers: dict[str, str],
    lease: Lease | None,
) -> web.StreamResponse:
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        return web.Response(headers=headers)
    block = await asyncio.to_thread(get, cid)
    if block is None:
        raise web.HTTPNotFound(text=f"{cid} is not on this node\n")
    if not await pace(request, lease, len(block)):
        return web.Response(status=499)  # nobody is listening: not even logged as an error
    return web.Response(body=block, headers=headers)


async def _car(
    request: web.Request,
    dag: Iterator[tuple[CID, bytes]],
    root: CID,
    headers: dict[str, str],
    wanted: Wanted,
    lease: Lease | None,
) -> web.StreamResponse:
    """Stream ``dag`` (path blocks, then the terminal DAG) as a CAR rooted at ``root``;
    blocks are read and verified on a worker thread, a batch at a time.

    Pacing is per batch (~1 MiB): one bucket reservation and at most one sleep each.
    """
    resp = web.StreamResponse(headers=headers)
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    walk = _frames(dag, wanted.dups)
    try:
        first = await asyncio.to_thread(_batch, walk)
    except (BlockstoreError, UnixFSReadError) as e:  # the root itself went bad: nothing sent
        log.warning("gateway: %s", e)
        raise web.HTTPNotFound(text=f"{root} is not on this node\n") from None
    await resp.prepare(request)
    try:
        await resp.write(encode_header(root))
        batch = first
        while batch:
            if not await pace(request, lease, sum(map(len, batch))):
                cut(request)
                return resp
            for piece in batch:  # frame heads and blocks as they are: no joining copies
                await resp.write(piece)
            try:
                batch = await asyncio.to_thread(_batch, walk)
            except Exception as e:  # whatever it is, the CAR must not look complete
                log.warning("gateway: CAR of %s cut short: %s", root, e)
                cut(request)
                return resp
        await resp.write_eof()
    except ConnectionResetError:
        # The peer hung up (it had enough, or switched source): normal, not an error.
        log.debug("gateway: client went away during the CAR of %s", root)
    return resp


def _frames(walk: Iterator[tuple[CID, bytes]], dups: bool) -> Iterator[bytes]:
    """CAR frames of a DFS walk, each distinct block only once unless ``dups``."""
    seen: set[bytes] = set()
    for cid, block in walk:
        if not dups:
            name = cid.to_bytes()
            if name in seen:
                continue
            seen.add(name)
        yield frame_head(cid, len(block))
        yield block


def _batch(frames: Iterator[bytes]) -> list[bytes]:
    """Up to about ``_BATCH_BYTES`` of frames (fewer trips between threads)."""
    out: list[bytes] = []
    total = 0
    for frame in frames:
        out.append(frame)
        total += len(frame)
        if total >= _BATCH_BYTES:
            break
    return out


def _probe(wanted: Wanted) -> web.StreamResponse:
    """``/ipfs/bafkqaaa``: the spec's probe that this is a trustless gateway."""
    headers = _headers(PROBE_CID, wanted)
    if wanted.fmt == "raw":
        return web.Response(body=b"", headers=headers)
    cid_field = b"\x00" + _PROBE_CID_BYTES
    body = b"\xa2\x65roots\x81\xd8\x2a" + bytes([0x40 | len(cid_field)]) + cid_field
    body += b"\x67version\x01"
    return web.Response(body=encode_varint(len(body)) + body, headers=headers)
