"""Packages from peers: fetched by CID, then verified exactly like a mirror download.

A peer is not trusted any more than a mirror: the root CID usually comes from its own
announcement, so a CAR that matches its CIDs proves only that the peer sent what it named.
What makes the file acceptable is the same check as for mirrors: the sha256 and size the
repo db gives, and a signature the pacman keyring trusts. Only then does it enter the cache
(and get published onward).

The swarm (announcements, choosing peers, racing them against mirrors) builds on this; the
transfer here is the peer's Trustless Gateway (CAR over HTTP, every block checked as it
streams, never more than the db's size written).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp

from pacswarm.config import Config
from pacswarm.errors import VerificationError
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.gatewayclient import GatewayFetchError, fetch_car
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store
from pacswarm.upstream import Upstream
from pacswarm.verify import verify_package

log = logging.getLogger(__name__)

Committed = Callable[[RequestPath, Path], None]


class PeerSource:
    def __init__(
        self, store: Store, upstream: Upstream, config: Config, on_committed: list[Committed]
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.config = config
        self.on_committed = on_committed

    async def fetch_from_gateway(
        self, rp: RequestPath, record: PackageRecord, base_url: str, root: CID
    ) -> Path:
        """Fetch ``rp`` from a peer's gateway, verify it, cache it; return the cached path.

        Raises :class:`GatewayFetchError` (transfer) or :class:`VerificationError` (content);
        either way nothing is cached and no temp file is left.
        """
        fd, temp = self.store.new_temp(rp.filename)
        try:
            with os.fdopen(fd, "w+b") as out:
                timeout = aiohttp.ClientTimeout(
                    total=None, sock_connect=self.config.connect_timeout,
                    sock_read=self.config.stall_timeout,
                )  # fmt: skip
                async with aiohttp.ClientSession(timeout=timeout, read_bufsize=1 << 20) as s:
                    await fetch_car(s, base_url, root, out, max_size=record.csize)
                out.flush()
                os.fsync(out.fileno())
            signature = record.pgpsig or await self._signature(rp)
            verdict = await verify_package(
                self.config.gpgdir, temp, record.sha256, record.csize, signature
            )
            if not verdict.ok:
                raise VerificationError(f"{rp.filename} from peer {base_url}: {verdict.reason}")
            dest = self.store.commit_package(
                rp, temp, record.sha256, record.csize, signature or b"", f"peer {base_url}"
            )
        except (GatewayFetchError, VerificationError, OSError) as e:
            temp.unlink(missing_ok=True)
            log.warning("peer fetch of %s failed, nothing cached: %s", rp, e)
            raise
        log.info("cached %s (verified, from peer %s, /ipfs/%s)", rp, base_url, root)
        for callback in self.on_committed:
            callback(rp, dest)
        return dest

    async def _signature(self, rp: RequestPath) -> bytes | None:
        """No %PGPSIG% in the db: the mirrors' ``.sig`` (gpg decides whether it is any good)."""
        sig = RequestPath(rp.repo, rp.arch, rp.filename + ".sig", FileKind.PACKAGE_SIG)
        return await self.upstream.fetch_small(sig)
