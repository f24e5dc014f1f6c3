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
from yarl import URL

from pacswarm import __version__
from pacswarm.config import Config
from pacswarm.fetch.source import SourceFault
from pacswarm.health import MirrorHealth
from pacswarm.mirrorlist import mirror_url
from pacswarm.requestpath import RequestPath

log = logging.getLogger(__name__)


class MirrorFault(SourceFault):
    """One mirror failed one request. ``penalise`` is False for a plain 404 (not synced yet)."""


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
        """Open ``rp`` on ``mirror``. Connection problems become :class:`MirrorFault`.

        Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, and only where
        :func:`redirect_refusal` allows: a mirror cannot send us to plain HTTP or elsewhere.
        """
        if self._session is None:
            raise RuntimeError("Upstream.start() was not called")
        headers: dict[str, str] = dict(extra_headers or {})
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if if_modified_since is not None:
            # Never a date in the future: a mirror that sent one would make every honest
            # mirror answer 304 for ever (see dbsync); a clock skew of minutes is harmless.
            headers["If-Modified-Since"] = formatdate(
                min(if_modified_since, time.time()), usegmt=True
            )
        url = URL(mirror_url(mirror, rp.repo, rp.arch, rp.filename))
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with self._session.request(
                    method, url, headers=headers, allow_redirects=False
                ) as resp:
                    if resp.status in _REDIRECTS and "Location" in resp.headers:
                        try:
                            target = url.join(URL(resp.headers["Location"]))
                        except ValueError as e:  # yarl: bad IPv6 host, port out of range
                            raise MirrorFault(f"{url}: unusable redirect ({e})") from None
                        refusal = redirect_refusal(url, target)
                        if refusal is not None:
                            raise MirrorFault(f"{url}: {refusal}")
                        url = target
                        continue
                    yield resp
                    return
            raise MirrorFault(f"{url}: more than {MAX_REDIRECTS} redirects")
        except TimeoutError:
            raise MirrorFault(f"timed out on {url}") from None
        except aiohttp.ClientError as e:
            raise MirrorFault(f"{type(e).__name__} on {url}: {e}") from None


#: Redirects a mirror may chain; real mirrors use one at most.
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def redirect_refusal(origin: URL, target: URL) -> str | None:
    """Why a redirect from ``origin`` to ``target`` must not be followed, or None. Pure.

    Package bytes are verified whatever their path, but repo dbs are not signed: a mirror
    reached over https that could bounce us to http would hand anyone on the network the
    power to feed pacman an old or frozen db. A redirect to another host is refused too:
    that host is not a mirror the user chose, and its failures would count against this one.
    """
    if target.scheme not in ("http", "https"):
        return f"redirect to {target.scheme!r} URL refused"
    if origin.scheme == "https" and target.scheme != "https":
        return f"redirect from https to plain http ({target}) refused"
    same_port = target.port == origin.port or target.scheme != origin.scheme  # http -> https
    if target.host != origin.host or not same_port:
        return (
            f"redirect to another host ({target.host}) refused; "
            "if you trust it, list it as a mirror of its own"
        )
    return None
