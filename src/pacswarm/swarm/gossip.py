"""Announcements over gossipsub: what this node tells the swarm, and what it believes.

Outgoing: each package this node verified (and may announce, per ``[swarm] announce``) is
queued and sent in batches (:func:`.protocol.batch_news`) a moment later, so a pacman
transaction of 200 packages makes a handful of messages, not 200: py-libp2p drops bursts.

Incoming, in two steps:

* :meth:`Gossip.validate` runs on the libp2p thread for every message before gossipsub
  forwards it: size, a full decode, the sender's rate. A False drops the message (and
  gossipsub counts it against the forwarder). Pure and quick; a lock guards the rate table.
* :meth:`Gossip.deliver` runs on the asyncio loop: the origin must be believed (allowlist,
  not ignored for strikes); entries go to the announcement cache, which keeps those that
  match no package of the current dbs only as pending (a db refresh may make them valid).
  A digest that does not match what we hold for that peer makes us pull its inventory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pacswarm.swarm.protocol import (
    MAX_MESSAGE,
    Digest,
    Entry,
    News,
    ProtocolError,
    batch_news,
    decode_news,
    encode_news,
)

log = logging.getLogger(__name__)

#: Messages per second a peer may send us (sustained) and in one burst. Announcements are
#: batched (up to MAX_ENTRIES per message) and digests come every ``digest_interval``, so an
#: honest node stays far below; a flood is dropped before it is forwarded.
RATE_PER_PEER = 20.0
BURST_PER_PEER = 200.0
#: How long outgoing announcements wait to be batched with the next ones.
BATCH_DELAY = 0.25
#: Peers tracked by the rate table before the idlest are forgotten (memory stays bounded).
RATE_TABLE_MAX = 4096


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateTable:
    """Token buckets per peer; thread-safe (gossipsub validates on its own thread)."""

    def __init__(self, rate: float = RATE_PER_PEER, burst: float = BURST_PER_PEER) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, peer: str, now: float) -> bool:
        with self._lock:
            bucket = self._buckets.get(peer)
            if bucket is None:
                if len(self._buckets) >= RATE_TABLE_MAX:
                    oldest = min(self._buckets, key=lambda p: self._buckets[p].at)
                    del self._buckets[oldest]
                bucket = self._buckets[peer] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            if bucket.tokens < 1:
                return False
            bucket.tokens -= 1
            return True


class Gossip:
    """The announcement side of one node, independent of how messages travel."""

    def __init__(
        self,
        publish: Callable[[str, bytes], Awaitable[None]],
        topic_of: Callable[[str, str], str],
        on_news: Callable[[str, News], None],
        digest_of: Callable[[str, str], Digest | None] = lambda repo, arch: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._clock = clock
        self._digest_of = digest_of
        self._topic_of = topic_of
        self._on_news = on_news
        self.rates = RateTable()
        self.refused: dict[str, int] = {}
        self.received = 0  # messages that reached validate (metrics)
        self.dropped = 0  # of which refused (metrics; ``refused`` has them by peer)
        self._refused_lock = threading.Lock()
        self._queue: dict[tuple[str, str], list[Entry]] = {}
        self._flush: asyncio.Task[None] | None = None
        self.gateway_port: int | None = None
        self.sent = 0

    # -- incoming ----------------------------------------------------------------------------

    def validate(self, peer: str, data: bytes) -> bool:
        """Before forwarding: well-formed and within the sender's rate (libp2p thread)."""
        reason = None
        with self._refused_lock:
            self.received += 1
        if len(data) > MAX_MESSAGE:
            reason = "oversized"
        elif not self.rates.allow(peer, self._clock()):
            reason = "over rate"
        else:
            try:
                decode_news(data)
            except ProtocolError as e:
                reason = f"malformed: {e}"
        if reason is None:
            return True
        with self._refused_lock:
            self.refused[peer] = self.refused.get(peer, 0) + 1
            self.dropped += 1
            count = self.refused[peer]
        if count in (1, 10, 100, 1000) or count % 10000 == 0:
            log.warning(
                "swarm: dropped message from %s (%s; %d dropped so far)", peer, reason, count
            )
        return False

    def deliver(self, origin: str, data: bytes, topic: tuple[str, str]) -> None:
        """A validated message that came on ``topic`` (repo, arch) (asyncio loop)."""
        try:
            news = decode_news(data)
        except ProtocolError:  # validated already
            return
        if (news.repo, news.arch) != topic:
            return  # news for another repo sent on this topic: a confused or hostile sender
        self._on_news(origin, news)

    # -- outgoing ----------------------------------------------------------------------------

    def announce(self, repo: str, arch: str, entry: Entry) -> None:
        """Queue ``entry`` for the next batch on its repo's topic."""
        self._queue.setdefault((repo, arch), []).append(entry)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._flush_later(), name="swarm announce")

    async def _flush_later(self) -> None:
        await asyncio.sleep(BATCH_DELAY)
        queue, self._queue = self._queue, {}
        for (repo, arch), entries in queue.items():
            # The digest rides on the batch for free: receivers check their view at once.
            digest = self._digest_of(repo, arch)
            for news in batch_news(repo, arch, entries, self.gateway_port, digest):
                await self._send(repo, arch, news)

    async def send_digest(self, repo: str, arch: str) -> None:
        digest = self._digest_of(repo, arch)
        if digest is not None:
            await self._send(repo, arch, News(repo, arch, (), self.gateway_port, digest))

    async def _send(self, repo: str, arch: str, news: News) -> None:
        try:
            await self._publish(self._topic_of(repo, arch), encode_news(news))
            self.sent += 1
        except Exception as e:  # the swarm is best effort; the cache and pacman go on
            log.info("swarm: could not publish on %s/%s: %s", repo, arch, e)

    async def close(self) -> None:
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
            await asyncio.gather(self._flush, return_exceptions=True)
