"""Whole inventories, pulled with one request when gossip is not enough.

Gossip carries news; a node that just met a peer (it joined, restarted, or the peer did) or
whose view of a peer is stale (the peer's periodic digest does not match) asks that peer for
its inventory of one repo: a bitfield in db order when both hold the same db, explicit
entries otherwise (:mod:`.protocol`). The answer replaces what we held for that peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacswarm.swarm.protocol import (
    INVENTORY_PROTOCOL,
    DbItem,
    InventoryRequest,
    ProtocolError,
    db_digest,
    decode_inventory,
    decode_request,
    encode_inventory,
    encode_request,
)

if TYPE_CHECKING:
    from pacswarm.swarm.service import Swarm

log = logging.getLogger(__name__)

#: One digest-triggered pull per peer and repo at most this often (a digest storm cannot
#: make us hammer it); joins and new connections pull at once.
PULL_EVERY = 60.0
#: Pulls running at once (joining a big swarm must not open hundreds of streams).
PULLS_AT_ONCE = 4
MAX_REQUEST = 4096
MAX_RESPONSE = 8 * 1024 * 1024
PULL_TIMEOUT = 10.0


@dataclass(frozen=True)
class DbOrder:
    items: list[DbItem]
    digest: str


class Inventory:
    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self._orders: dict[tuple[str, str], DbOrder] = {}
        self._last_pull: dict[tuple[str, str, str], float] = {}
        self._slots = asyncio.Semaphore(PULLS_AT_ONCE)
        self.pulled = 0

    def limits(self) -> tuple[int, int]:
        return MAX_REQUEST, MAX_RESPONSE

    def order(self, repo: str, arch: str) -> DbOrder:
        """The db's packages sorted by filename, and their digest (cached per db)."""
        order = self._orders.get((repo, arch))
        if order is None:
            records = self.swarm.dbs.records(repo, arch)
            items = sorted(
                (DbItem(r.filename, r.sha256, r.csize) for r in records.values()),
                key=lambda item: item.filename,
            )
            order = self._orders[(repo, arch)] = DbOrder(items, db_digest(items))
        return order

    def forget_order(self, repo: str, arch: str) -> None:
        self._orders.pop((repo, arch), None)

    async def answer(self, peer: str, data: bytes) -> bytes:
        """Serve a peer's pull: what we announce of that repo (nothing to the untrusted)."""
        request = decode_request(data)
        order = self.order(request.repo, request.arch)
        own = self.swarm.own
        held: dict[str, str] = {}
        if own is not None and self.swarm.access.believe(peer):
            mode = self.swarm.config.swarm.announce
            held = {e.sha256: e.cid for e in own.announced(request.repo, request.arch, mode)}
        return encode_inventory(
            request.repo,
            request.arch,
            order.items,
            held,
            request.db,
            self.swarm.gossip.gateway_port,
        )

    def pull_soon(self, peer: str, repo: str, arch: str) -> None:
        key = (peer, repo, arch)
        now = time.monotonic()
        if now - self._last_pull.get(key, -PULL_EVERY) < PULL_EVERY:
            return
        self._last_pull[key] = now
        if len(self._last_pull) > 10_000:  # bounded: drop the oldest half
            for old in sorted(self._last_pull, key=self._last_pull.__getitem__)[:5000]:
                del self._last_pull[old]
        self.swarm.background(self.pull(peer, repo, arch))

    async def pull_once(self, peer: str, repo: str, arch: str) -> int:
        """:meth:`pull` now (and counted for :meth:`pull_soon`'s rate limit)."""
        self._last_pull[(peer, repo, arch)] = time.monotonic()
        return await self.pull(peer, repo, arch)

    async def pull(self, peer: str, repo: str, arch: str) -> int:
        """Ask ``peer`` for its inventory of ``repo``; returns the entries believed."""
        swarm = self.swarm
        host, cache = swarm.host, swarm.cache
        if host is None or cache is None:
            return 0
        order = self.order(repo, arch)
        request = encode_request(InventoryRequest(repo, arch, order.digest))
        async with self._slots:
            try:
                data = await host.requests.ask(
                    peer,
                    INVENTORY_PROTOCOL,
                    request,
                    timeout=PULL_TIMEOUT,
                    max_response=MAX_RESPONSE,
                )
                entries, port = decode_inventory(data, order.items)
            except (ProtocolError, Exception) as e:
                log.info("swarm: inventory of %s/%s from %s failed: %s", repo, arch, peer, e)
                return 0
        if not swarm.trusted(peer):
            return 0
        swarm.set_gateway(peer, port)
        believed = cache.replace_peer(peer, repo, arch, entries, time.time(), swarm.believe)
        self.pulled += 1
        log.info(
            "swarm: %s holds %d packages of %s/%s (%d believed)",
            peer,
            len(entries),
            repo,
            arch,
            believed,
        )
        return believed
