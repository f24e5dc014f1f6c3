"""The one loop over mirrors, and the one way to read a whole (small) body from one.

Dbs, pass-through files and signatures are asked of the mirrors in health order with
:func:`each_mirror`; package downloads use the same order through their source plan. The rule
for what the user finally sees is here too: 404 when every mirror said "not found" (a file not
synced yet is not a fault), 502 otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp

from pacswarm.errors import UpstreamError
from pacswarm.fetch.source import Want
from pacswarm.upstream import MirrorFault, Upstream

T = TypeVar("T")
log = logging.getLogger(__name__)

#: How much of a body :func:`read_body` takes per read: small enough that a trickling mirror
#: still makes progress visible to the stall timeout, big enough to be cheap for 60 MB dbs.
READ_PIECE = 256 * 1024


async def each_mirror(upstream: Upstream, what: str, attempt: Callable[[str], Awaitable[T]]) -> T:
    """Call ``attempt(mirror)`` for each mirror in health order until one returns.

    ``attempt`` raises :class:`MirrorFault` to move on: the mirror is penalised unless the
    fault says otherwise (a plain 404). A mirror that returns is marked as having succeeded.
    When every mirror failed, :class:`UpstreamError` lists them all, with status 404 if each
    one said "not found" and 502 otherwise.
    """
    attempts: list[tuple[str, str]] = []
    not_found = 0
    for mirror in upstream.candidates():
        try:
            result = await attempt(mirror)
        except MirrorFault as e:
            attempts.append((mirror, str(e)))
            if e.status == 404:
                not_found += 1
            if e.penalise:
                upstream.failed(mirror, str(e))
            continue
        upstream.succeeded(mirror)
        return result
    raise UpstreamError(what, attempts, final_status(len(attempts), not_found))


def final_status(tried: int, not_found: int) -> int:
    """What the user sees when every source failed: 404 only if each one said "not found"."""
    return 404 if tried and not_found == tried else 502


def check_status(resp: aiohttp.ClientResponse, *ok: int) -> None:
    """Turn an unwanted HTTP status into the :class:`MirrorFault` the loop expects."""
    if resp.status in ok:
        return
    if resp.status == 404:
        raise MirrorFault("404 not found", penalise=False, status=404)
    raise MirrorFault(f"HTTP {resp.status}")


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however it trickles in, or :class:`MirrorFault`.

    ``resp.content.read(n)`` returns whatever has arrived, not ``n`` bytes: reading a body in
    one call truncates anything bigger than what the first packets carried. This reads until
    the end, refuses more than ``limit`` bytes, and checks ``Content-Length`` when given.
    """
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise MirrorFault(f"{resp.url.name} is {declared} bytes, more than the {limit} allowed")
    parts: list[bytes] = []
    got = 0
    try:
        async for piece in resp.content.iter_chunked(READ_PIECE):
            got += len(piece)
            if got > limit:
                raise MirrorFault(f"{resp.url.name} is larger than the {limit} bytes allowed")
            parts.append(piece)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise MirrorFault(f"{resp.url.name} cut at byte {got}: {type(e).__name__} {e}") from None
    if declared is not None and got != declared:
        raise MirrorFault(f"{resp.url.name} truncated at {got} of {declared} bytes")
    return b"".join(parts)


#: Bytes a package download asks of the socket per read (asyncio's default is 256 KiB).
SOCKET_READ = 1 << 20


def _read_big(resp: aiohttp.ClientResponse) -> None:
    """Let the connection under a package download read up to :data:`SOCKET_READ` at once.

    Each read costs a loop step, a pwrite, a hash update and a wake-up of the readers, so
    on a fast link (loopback, a LAN peer) 4x fewer of them is CPU saved. Only after the first
    body bytes: a first read of 1 MiB would be written and hashed whole before a reader
    wakes, up to ~1 ms more to pacman's first byte. asyncio's plain-TCP
    transport reads ``max_size`` bytes per ``recv``; other transports (TLS) have no such
    attribute and are left alone.
    """
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = SOCKET_READ  # type: ignore[attr-defined]


#: pacman's own cap on a package ``.sig`` (dload.c: "hard upper limit of 16KiB").
MAX_SIGNATURE = 16 * 1024


class MirrorSource:
    """One upstream mirror as a package :class:`~pacswarm.fetch.source.Source`.

    Resumes with ``Range``; a mirror without Range support (200 to a Range request) still
    continues the file: the bytes before the offset are dropped. A 206 from another offset,
    or any status but 200/206, is a fault.
    """

    first_byte_within: float | None = None  # a slow mirror is judged by the stall watchdog
    peer_id: str | None = None

    def __init__(self, upstream: Upstream, mirror: str) -> None:
        self.upstream = upstream
        self.mirror = mirror

    @property
    def name(self) -> str:
        return self.mirror

    def can_deliver(self, want: Want, offset: int) -> bool:
        return True  # a mirror is asked; whether it has the file, only it can say

    async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
        async with self.upstream.open(self.mirror, want.rp, offset=offset) as resp:
            check_status(resp, 200, 206)
            content_range = resp.headers.get("Content-Range", "")
            if resp.status == 206 and not content_range.startswith(f"bytes {offset}-"):
                raise MirrorFault(f"wrong Content-Range {content_range!r} for bytes {offset}-")
            # A 200 to a Range request is the whole file (no Range support): its first
            # ``offset`` bytes are read and dropped, so the download still continues.
            skip = offset if resp.status == 200 else 0
            if skip:
                log.info("%s has no Range support: dropping the first %d bytes", self.mirror, skip)
            started = False
            async for chunk in resp.content.iter_any():
                if not started:  # the first bytes at once (pacman's first byte), then big reads
                    _read_big(resp)
                    started = True
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if chunk:
                    yield chunk

    def failed(self, reason: str, *, bad_content: bool = False) -> None:
        self.upstream.failed(self.mirror, reason)

    def succeeded(self) -> None:
        self.upstream.succeeded(self.mirror)
