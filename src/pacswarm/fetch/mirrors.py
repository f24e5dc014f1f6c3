"""The one loop over mirrors, and the one way to read a whole (small) body from one.

Dbs, pass-through files and signatures are asked of the mirrors in health order with
:func:`each_mirror`; package downloads use the same order through their source plan. The rule
for what the user finally sees is here too: 404 when every mirror said "not found" (a file not
synced yet is not a fault), 502 otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from pacswarm.errors import UpstreamError
from pacswarm.upstream import MirrorFault, Upstream

T = TypeVar("T")

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
    status = 404 if attempts and not_found == len(attempts) else 502
    raise UpstreamError(what, attempts, status)


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
