"""Upstream mirrors over HTTP: one shared aiohttp session, mirror order and health.

This is the only module that talks to mirrors. Callers decide what to do with a response;
this module decides *which* mirror to ask and remembers which ones misbehaved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate

import aiohttp

from pacswarm import __version__
from pacswarm.config import Config
from pacswarm.health import MirrorHealth
from pacswarm.mirrorlist import mirror_url
from pacswarm.requestpath import RequestPath

log = logging.getLogger(__name__)

#: Signatures are a few hundred bytes; anything much bigger is not a signature.
MAX_SIGNATURE = 64 * 1024


class MirrorFault(Exception):
    """One mirror failed one request. ``penalise`` is False for a plain 404 (not synced yet)."""

    def __init__(self, reason: str, *, penalise: bool = True, status: int = 502) -> None:
        super().__init__(reason)
        self.penalise = penalise
        self.status = status


class Upstream:
    def __init__(self, mirrors: list[str], config: Config) -> None:
        self.mirrors = mirrors
        self.config = config
        self.health = MirrorHealth(mirrors, config.mirror_penalty)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.config.connect_timeout,
            # A read that waits longer than this is a stall: give up on that mirror.
            sock_read=self.config.stall_timeout,
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,  # bytes must reach the hash exactly as the mirror has them
            # Big reads: one loop iteration (write, hash, wake readers) per MiB, not per 64 KiB.
            read_bufsize=1 << 20,
            headers={"User-Agent": f"pacswarm/{__version__}"},
            connector=aiohttp.TCPConnector(limit=64, limit_per_host=16, ttl_dns_cache=300),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def candidates(self) -> list[str]:
        return self.health.ordered(time.monotonic())

    def failed(self, mirror: str, reason: str) -> None:
        log.warning("mirror %s failed: %s (skipped for a while)", mirror, reason)
        self.health.failed(mirror, reason, time.monotonic())

    def succeeded(self, mirror: str) -> None:
        self.health.succeeded(mirror, time.monotonic())

    @asynccontextmanager
    async def open(
        self,
        mirror: str,
        rp: RequestPath,
        *,
        offset: int = 0,
        if_modified_since: float | None = None,
        method: str = "GET",
        extra_headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open ``rp`` on ``mirror``. Connection problems become :class:`MirrorFault`."""
        if self._session is None:
            raise RuntimeError("Upstream.start() was not called")
        headers: dict[str, str] = dict(extra_headers or {})
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if if_modified_since is not None:
            headers["If-Modified-Since"] = formatdate(if_modified_since, usegmt=True)
        url = mirror_url(mirror, rp.repo, rp.arch, rp.filename)
        try:
            async with self._session.request(
                method, url, headers=headers, allow_redirects=True
            ) as resp:
                yield resp
        except TimeoutError:
            raise MirrorFault(f"timed out on {url}") from None
        except aiohttp.ClientError as e:
            raise MirrorFault(f"{type(e).__name__} on {url}: {e}") from None

    async def fetch_small(self, rp: RequestPath, limit: int = MAX_SIGNATURE) -> bytes | None:
        """First mirror's copy of a small file (a signature); None if no mirror has it."""
        for mirror in self.candidates():
            try:
                async with self.open(mirror, rp) as resp:
                    if resp.status != 200:
                        continue
                    data = await resp.content.read(limit + 1)
                    if len(data) > limit:
                        log.warning("%s on %s is larger than %d bytes; ignored", rp, mirror, limit)
                        continue
                    return data
            except (MirrorFault, aiohttp.ClientError, TimeoutError) as e:
                log.info("could not fetch %s from %s: %s", rp, mirror, e)
        return None
