"""Resolving IPNS names: ours from the publisher, others' from pubsub or the DHT.

Implements :class:`~pacswarm.ipns.names.NameResolver` for the gateway's ``/ipns/`` routes.
Choices, and why:

* Our own name is answered from :class:`IpnsPublisher` (no network, always current).
* For another name, the first resolve subscribes to its IPNS-over-PubSub topic: from then
  on every record its publisher sends arrives by itself and a resolve needs no lookup.
  Until one arrives (and once the cached one is older than its TTL) the DHT is asked, under
  the binary routing key, within ``timeout`` seconds.
* Every record, from either path, is validated against the name (signature, expiry,
  V1/V2 agreement) and kept only if it beats the one held: higher Sequence, ties to the
  later Validity (Helia's rule). A replayed old record or a forged one never replaces a
  good one.
* Bounded: at most ``max_names`` names are cached and subscribed (least recently resolved
  go first, and their topic is left).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacswarm.ipfs.dhtvalues import better_record
from pacswarm.ipns.names import Resolved
from pacswarm.ipns.publisher import IpnsPublisher, ipfs_root
from pacswarm.ipns.record import (
    IpnsRecord,
    IpnsRecordError,
    parse_ipns_name,
    pubsub_topic,
    routing_key,
    validate_record,
)

if TYPE_CHECKING:
    from pacswarm.ipfs.host import P2PHost

log = logging.getLogger(__name__)

#: Seconds a DHT lookup may take: below pacman's 10 s, so that pacman behind the gateway
#: gets a 504 (and tries its next Server) rather than giving up itself.
DHT_TIMEOUT = 8.0
MAX_NAMES = 256
_NS = 10**9


@dataclass
class _Entry:
    record: IpnsRecord
    fetched: float  # when this record (or one as good) last came in
    via: str  # "pubsub" or "dht"


class IpnsResolver:
    """``resolve(name) -> Resolved | None`` (see the module docstring)."""

    def __init__(
        self,
        own: IpnsPublisher,
        host: P2PHost | None,
        *,
        timeout: float = DHT_TIMEOUT,
        max_names: int = MAX_NAMES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own = own
        self._host = host
        self._timeout = timeout
        self._max = max_names
        self._clock = clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._topics: dict[bytes, str] = {}
        self._background: set[asyncio.Task[None]] = set()

    def attach(self, host: P2PHost) -> None:
        """Look names up through ``host`` from now on (the gateway may get this resolver
        before the node's P2PHost exists)."""
        self._host = host

    async def resolve(self, name: str) -> Resolved | None:
        """The current record of ``name``, validated; None if none is found.

        Raises IpnsRecordError for a string that is no IPNS name (the gateway says 400) and
        ``asyncio.TimeoutError`` when the DHT did not answer in time and nothing is cached.
        """
        multihash = parse_ipns_name(name)
        if multihash == self._own.multihash:
            own = self._own.current
            return _resolved(own) if own is not None and self._valid(own) else None
        entry = self._cache.get(multihash)
        if entry is not None:
            self._cache.move_to_end(multihash)
            if not self._valid(entry.record):
                entry = None
            elif self._clock() < entry.fetched + entry.record.ttl_ns / _NS:
                return _resolved(entry.record)
        if self._host is None:
            return _resolved(entry.record) if entry is not None else None
        await self._subscribe(multihash)
        try:
            raw = await asyncio.wait_for(self._host.get_ipns(routing_key(multihash)), self._timeout)
        except TimeoutError:
            if entry is not None:
                return _resolved(entry.record)  # stale for its TTL, still valid: better than none
            raise
        except Exception as e:  # the host stopped, a bridge error: as if nothing was found
            log.warning("ipns: DHT lookup of %s failed: %r", name, e)
            raw = None
        if raw is not None:
            self.offer(multihash, raw, "dht")
        entry = self._cache.get(multihash)
        return _resolved(entry.record) if entry is not None else None

    def offer(self, multihash: bytes, raw: bytes, via: str) -> bool:
        """Keep ``raw`` for the name if valid and at least as good as the one held.

        True if it is now the cached record. A record as good as the held one refreshes its
        TTL clock (the publisher still stands by it)."""
        try:
            record = validate_record(raw, multihash, now_ns=int(self._clock() * _NS))
        except IpnsRecordError as e:
            log.info("ipns: refused a record from %s for %s: %s", via, multihash.hex()[:16], e)
            return False
        held = self._cache.get(multihash)
        if (
            held is not None
            and held.record.raw != record.raw
            and not better_record(record, held.record)
        ):
            log.info(
                "ipns: record %d from %s loses to the held %d: kept the held one",
                record.sequence,
                via,
                held.record.sequence,
            )
            return False
        self._cache[multihash] = _Entry(record, self._clock(), via)
        self._cache.move_to_end(multihash)
        self._evict()
        return True

    def cached(self, name: str) -> tuple[IpnsRecord, str] | None:
        """The record held for ``name`` and how it came (``"pubsub"``/``"dht"``), if any."""
        entry = self._cache.get(parse_ipns_name(name))
        return (entry.record, entry.via) if entry is not None else None

    async def stop(self) -> None:
        """Leave every topic joined for resolving."""
        for task in list(self._background):
            task.cancel()
        topics, self._topics = list(self._topics.values()), {}
        if self._host is not None:
            for topic in topics:
                try:
                    await self._host.pubsub.leave(topic)
                except Exception as e:
                    log.debug("ipns: leaving %s failed: %r", topic, e)

    def _valid(self, record: IpnsRecord) -> bool:
        return record.validity_ns >= self._clock() * _NS

    async def _subscribe(self, multihash: bytes) -> None:
        if multihash in self._topics or self._host is None:
            return
        topic = pubsub_topic(multihash)

        def validate(_peer: str, data: bytes) -> bool:
            try:
                validate_record(data, multihash, now_ns=int(self._clock() * _NS))
            except IpnsRecordError:
                return False
            return True

        def deliver(_origin: str, data: bytes) -> None:
            self.offer(multihash, data, "pubsub")

        try:
            await self._host.pubsub.join(topic, validate, deliver)
        except Exception as e:
            log.warning("ipns: cannot subscribe to %s: %r (the DHT is still asked)", topic, e)
            return
        self._topics[multihash] = topic
        self._evict()

    def _evict(self) -> None:
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        while len(self._topics) > self._max:
            stale = next((m for m in self._topics if m not in self._cache), None)
            stale = stale if stale is not None else next(iter(self._topics))
            self._leave(self._topics.pop(stale))

    def _leave(self, topic: str) -> None:
        if self._host is None:
            return
        task = asyncio.get_running_loop().create_task(self._host.pubsub.leave(topic))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _resolved(record: IpnsRecord) -> Resolved | None:
    root = ipfs_root(record)
    if root is None:
        log.info("ipns: record value %r is not /ipfs/<cid>: not resolvable here", record.value)
        return None
    return Resolved(value=root, record=record.raw, ttl=record.ttl_ns / _NS)
