"""Single blocks from swarm peers, for what this machine browses but does not hold.

Why: ``/ipns/<another node's name>/core/os/x86_64/`` on this node's gateway needs the other
node's directory blocks, which no download brought here. A peer's Trustless Gateway answers
``?format=raw`` for any block it holds, directories included; every answer is checked
against its CID, so a lying peer costs one request and nothing else.

The gateway calls this only for this machine's own clients (loopback): the node never
becomes a relay that fetches the network for strangers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from pacswarm.ipfs.cid import CID

log = logging.getLogger(__name__)

#: Largest block accepted (UnixFS blocks are at most 1 MiB; kubo's limit is 2 MiB).
MAX_BLOCK = 2 * 1024 * 1024
#: Longest wait for one peer's answer.
BLOCK_TIMEOUT = 5.0
#: Peers asked at once for one block.
ASK_AT_ONCE = 3
RAW = "application/vnd.ipld.raw"


class PeerBlocks:
    """``await fetch(cid)``: the block from the first swarm peer whose answer checks out."""

    def __init__(
        self,
        gateways: Callable[[], Sequence[str]],
        session: Callable[[], aiohttp.ClientSession],
        bitswap: Callable[[CID], Awaitable[bytes | None]] | None = None,
    ) -> None:
        """``gateways()``: base URLs (``http://ip:port``) of the swarm peers' gateways, best
        first; ``session()``: the HTTP session for peers; ``bitswap(cid)``: the block from
        connected peers over Bitswap, asked when no gateway has it (a peer whose gateway
        port we never heard of, or one that is not pacswarm at all)."""
        self._gateways = gateways
        self._session = session
        self._bitswap = bitswap

    async def fetch(self, cid: CID) -> bytes | None:
        block = await self._from_gateways(cid)
        if block is None and self._bitswap is not None:
            try:
                block = await self._bitswap(cid)
            except Exception as e:  # a stopped host, a libp2p hiccup: nobody had it
                log.debug("block %s over Bitswap: %r", cid, e)
            if block is not None and not cid.verify(block):
                return None
        return block

    async def _from_gateways(self, cid: CID) -> bytes | None:
        urls = list(self._gateways())
        for start in range(0, len(urls), ASK_AT_ONCE):
            batch = urls[start : start + ASK_AT_ONCE]
            tasks = [asyncio.create_task(self._ask(url, cid)) for url in batch]
            try:
                for done in asyncio.as_completed(tasks):
                    block = await done
                    if block is not None:
                        return block
            finally:
                for task in tasks:
                    task.cancel()
        return None

    async def _ask(self, base_url: str, cid: CID) -> bytes | None:
        url = f"{base_url}/ipfs/{cid}?format=raw"
        try:
            async with asyncio.timeout(BLOCK_TIMEOUT):
                async with self._session().get(url, headers={"Accept": RAW}) as resp:
                    if resp.status != 200:
                        return None
                    data = await resp.content.read(MAX_BLOCK + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.debug("block %s from %s: %r", cid, base_url, e)
            return None
        if len(data) > MAX_BLOCK or not cid.verify(data):
            log.info("block %s from %s does not match its CID: ignored", cid, base_url)
            return None
        return data
