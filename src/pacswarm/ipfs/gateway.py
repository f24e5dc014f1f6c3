"""The peer-facing IPFS Trustless Gateway: ``GET``/``HEAD /ipfs/{cid}``, raw blocks and CARs.

Why a trustless gateway and not Bitswap for bulk transfer between pacswarm peers: a CAR stream
cut from cached files costs far less CPU per byte than Noise + Yamux in Python, and every
block is still checked against its CID by the receiver (see ``gatewayclient``).

What is answered (Trustless Gateway spec, ipfs/specs ``http-gateways/trustless-gateway.md``):

- ``?format=raw`` / ``Accept: application/vnd.ipld.raw``: the one block;
- ``?format=car`` / ``Accept: application/vnd.ipld.car``: a CARv1 of the whole DAG in DFS
  order, streamed from the blockstore (a 1 GB package is never in memory). ``dups=n`` unless
  the client asks for ``dups=y`` (the spec's default when unspecified and we can choose);
- the probe CID ``bafkqaaa`` (identity, empty) in both formats.

Status codes: 400 for a malformed CID or a request naming no format (the spec's answer for a
strict, trustless-only gateway: we never deserialize), 406 for formats or CAR variants we do
not produce, 404 for content we do not hold (we are non-recursive: we never fetch for others)
and for paths under a CID (our DAGs are files: nothing to traverse). Once a CAR stream has
started, a missing or corrupt block cuts the connection: the client then sees a broken
transfer, never a short but well-formed CAR.

Who is answered (:mod:`pacswarm.swarm.access`, when an :class:`Access` is given): a client
that is neither this machine nor a swarm peer gets 403 before anything else is looked at (a
stranger learns nothing, not even whether a CID is malformed); a client with
``peer_concurrency`` requests in flight gets 429 with ``Retry-After``; ``peer_rate`` paces
the response: the stream sleeps between batches (never per byte) so the client gets about
that many bytes per second, shared across its requests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web

from pacswarm.ipfs.blockstore import BlockstoreError, PackageBlockstore
from pacswarm.ipfs.car import encode_header, frame_head
from pacswarm.ipfs.cid import CID, CIDError, encode_varint
from pacswarm.swarm.access import Access, Lease

log = logging.getLogger(__name__)

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
IMMUTABLE = "public, max-age=29030400, immutable"
PROBE_CID = "bafkqaaa"
_PROBE_CID_BYTES = b"\x01\x55\x00\x00"  # CIDv1, raw, identity multihash of nothing
#: How many block bytes one trip to the worker thread gathers for a CAR stream.
_BATCH_BYTES = 1024 * 1024
_CAR_PARAMS = ("version", "order", "dups")
_BLOCKS: web.AppKey[PackageBlockstore] = web.AppKey("blocks", PackageBlockstore)
_ACCESS: web.AppKey[Access | None] = web.AppKey("access")
#: Seconds a client over its concurrency limit is told to wait (a small file takes ~that).
RETRY_AFTER = 1
#: Longest single sleep while pacing (see ``_pace``).
_PACE_STEP = 0.25
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


def gateway_app(blocks: PackageBlockstore, access: Access | None = None) -> web.Application:
    """An application serving only ``GET``/``HEAD /ipfs/{cid}`` from ``blocks``.

    ``access``: who may fetch and how much (None: anyone, unlimited, as before swarms).
    """
    app = web.Application()
    app[_BLOCKS] = blocks
    app[_ACCESS] = access
    app.router.add_get("/ipfs/{cid}", _admit)  # also answers HEAD
    return app


async def _admit(request: web.Request) -> web.StreamResponse:
    """Refused (403) and busy (429) clients first; then the request, holding a slot."""
    access = request.app[_ACCESS]
    if access is None:
        return await _handle(request, None)
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
        return await _handle(request, lease)


async def _pace(request: web.Request, lease: Lease | None, nbytes: int) -> bool:
    """Sleep as long as the client's rate asks before sending ``nbytes`` (no-op unlimited).

    In short steps: a client that hangs up mid-wait frees its slot within ``_PACE_STEP``
    rather than after the whole wait (seconds, at a low ``peer_rate``). False: it hung up.
    """
    if lease is None:
        return True
    wait = lease.pace(nbytes)
    while wait > 0:
        step = min(wait, _PACE_STEP)
        await asyncio.sleep(step)
        wait -= step
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
    return True


async def _handle(request: web.Request, lease: Lease | None) -> web.StreamResponse:
    """Format first (400/406 cost nothing), then the CID (400), then the store (404).

    Only the index is consulted before answering: HEAD and 404s never read a package file.
    """
    text = request.match_info["cid"]
    try:
        wanted = negotiate(request.query, request.headers.get("Accept"))
    except NotAcceptable as e:
        raise web.HTTPNotAcceptable(text=f"{e}\n") from None
    if wanted is None:
        raise web.HTTPBadRequest(
            text="trustless gateway: ask for ?format=raw or ?format=car "
            f"(Accept: {RAW_TYPE} or {CAR_TYPE})\n"
        )
    wanted = _with_scope(wanted, request.query)
    if text == PROBE_CID:
        return _probe(wanted)
    try:
        cid = CID.parse(text)
    except CIDError as e:
        raise web.HTTPBadRequest(text=f"malformed CID: {e}\n") from None
    blocks = request.app[_BLOCKS]
    size = await asyncio.to_thread(blocks.block_size, cid)
    if size is None:
        raise web.HTTPNotFound(text=f"{cid} is not on this node\n")
    headers = _headers(str(cid), wanted)
    if _not_modified(request, headers["ETag"]):
        return web.Response(status=304, headers=headers)
    if wanted.fmt == "raw":
        return await _raw(request, blocks, cid, size, headers, lease)
    return await _car(request, blocks, cid, headers, wanted, lease)


def negotiate(query: Mapping[str, str], accept: str | None) -> Wanted | None:
    """What to answer: ``format`` wins over ``Accept`` (spec); None if neither names one.

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
    if not accept or all(_media(item)[0] in ("*/*", "") for item in accept.split(",")):
        return None
    for media, params in sorted(
        (_media(item) for item in accept.split(",")), key=lambda m: -_quality(m[1])
    ):
        if _quality(params) <= 0:
            continue
        if media == RAW_TYPE:
            return Wanted("raw", from_accept=True)
        if media == CAR_TYPE:
            try:
                return Wanted("car", _car_dups(_car_query(query, params)), from_accept=True)
            except NotAcceptable:
                continue
    raise NotAcceptable(f"none of {accept[:200]!r} is served here ({RAW_TYPE}, {CAR_TYPE})")


def _with_scope(wanted: Wanted, query: Mapping[str, str]) -> Wanted:
    """``dag-scope`` of a CAR: ``block`` is the root alone; ``entity`` and ``all`` are the
    whole file (our DAGs are files). ``entity-bytes`` (a trustless Range) is not served:
    answering it with the whole DAG would break the spec's "minimal set of blocks"."""
    if wanted.fmt != "car":
        return wanted
    if "entity-bytes" in query:
        raise web.HTTPBadRequest(text="entity-bytes is not supported by this gateway\n")
    scope = query.get("dag-scope", "all")
    if scope not in ("block", "entity", "all"):
        raise web.HTTPBadRequest(text="dag-scope must be block, entity or all\n")
    return Wanted(
        wanted.fmt, wanted.dups, wanted.from_accept, "block" if scope == "block" else "all"
    )


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


def _not_modified(request: web.Request, etag: str) -> bool:
    """If-None-Match: the spec requires 304 when the client already has these bytes."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def _raw(
    request: web.Request,
    blocks: PackageBlockstore,
    cid: CID,
    size: int,
    headers: dict[str, str],
    lease: Lease | None,
) -> web.StreamResponse:
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        return web.Response(headers=headers)
    try:
        block = await asyncio.to_thread(blocks.get, cid)
    except BlockstoreError as e:
        log.warning("gateway: %s", e)
        raise web.HTTPNotFound(text=f"{cid} is not on this node\n") from None
    if block is None:
        raise web.HTTPNotFound(text=f"{cid} is not on this node\n")
    if not await _pace(request, lease, len(block)):
        return web.Response(status=499)  # nobody is listening: not even logged as an error
    return web.Response(body=block, headers=headers)


async def _car(
    request: web.Request,
    blocks: PackageBlockstore,
    cid: CID,
    headers: dict[str, str],
    wanted: Wanted,
    lease: Lease | None,
) -> web.StreamResponse:
    """Stream the DAG; blocks are read and verified on a worker thread, a batch at a time.

    Pacing is per batch (~1 MiB): one bucket reservation and at most one sleep each.
    """
    resp = web.StreamResponse(headers=headers)
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    dag = blocks.dag_blocks(cid)
    walk = _frames(itertools.islice(dag, 1) if wanted.scope == "block" else dag, wanted.dups)
    try:
        first = await asyncio.to_thread(_batch, walk)
    except BlockstoreError as e:  # the root itself went bad: nothing sent yet
        log.warning("gateway: %s", e)
        raise web.HTTPNotFound(text=f"{cid} is not on this node\n") from None
    await resp.prepare(request)
    try:
        await resp.write(encode_header(cid))
        batch = first
        while batch:
            if not await _pace(request, lease, sum(map(len, batch))):
                _cut(request)
                return resp
            for piece in batch:  # frame heads and blocks as they are: no joining copies
                await resp.write(piece)
            try:
                batch = await asyncio.to_thread(_batch, walk)
            except Exception as e:  # whatever it is, the CAR must not look complete
                log.warning("gateway: CAR of %s cut short: %s", cid, e)
                _cut(request)
                return resp
        await resp.write_eof()
    except ConnectionResetError:
        # The peer hung up (it had enough, or switched source): normal, not an error.
        log.debug("gateway: client went away during the CAR of %s", cid)
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


def _cut(request: web.Request) -> None:
    """Drop the connection so the client sees a failed transfer, not a complete CAR."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _probe(wanted: Wanted) -> web.StreamResponse:
    """``/ipfs/bafkqaaa``: the spec's probe that this is a trustless gateway."""
    headers = _headers(PROBE_CID, wanted)
    if wanted.fmt == "raw":
        return web.Response(body=b"", headers=headers)
    cid_field = b"\x00" + _PROBE_CID_BYTES
    body = b"\xa2\x65roots\x81\xd8\x2a" + bytes([0x40 | len(cid_field)]) + cid_field
    body += b"\x67version\x01"
    return web.Response(body=encode_varint(len(body)) + body, headers=headers)
