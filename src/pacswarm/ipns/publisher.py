"""Publishing this node's IPNS record: sign, keep, announce (DHT + gossipsub), republish.

The record says ``/ipfs/<root of the repo folders>``. Choices, and why:

* Every record takes the next number of the persisted :class:`SequenceCounter`, also when
  the root did not change (a republish re-signs with a fresh Validity): resolvers keep the
  highest sequence, and some (py-libp2p's own validator) break ties differently than Helia.
* The current record is written beside the sequence file (``<sequence>.record``), so a
  restarted node announces it again at once, without waiting for a new root: the DHT peers
  that held it may be gone, and a subscriber that joined while we were down has nothing.
* Announcing is best effort: a DHT put under the binary routing key (:mod:`..ipfs.dhtvalues`)
  and a gossipsub message on the name's ``/record/`` topic. Network failures are logged,
  never raised: the record is already ours (the gateway serves it), the next republish
  retries.
* Republish: every ``republish`` seconds; a record with less than half its lifetime left is
  re-signed first (Helia republishes under 24 h of 48 h). The loop's clock and sleep are
  parameters, so the timing is tested without waiting hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from libp2p.crypto.keys import PrivateKey

from pacswarm.config_tables import IpnsConfig
from pacswarm.errors import PacswarmError
from pacswarm.ipfs.cid import CID, CIDError
from pacswarm.ipns.record import (
    IpnsRecord,
    IpnsRecordError,
    build_record,
    ipns_name,
    name_multihash,
    pubsub_topic,
    routing_key,
    validate_record,
)
from pacswarm.ipns.sequence import SequenceCounter

if TYPE_CHECKING:
    from pacswarm.ipfs.host import P2PHost

log = logging.getLogger(__name__)

#: Seconds one announcement (DHT put + pubsub) may take before it is left to the next one.
ANNOUNCE_TIMEOUT = 60.0
_NS = 10**9


class IpnsPublishError(PacswarmError):
    """Publishing is switched off, or a record cannot be built; the message says why."""


def ipfs_root(record: IpnsRecord) -> CID | None:
    """The CID of an ``/ipfs/<cid>`` record value (None for any other value)."""
    value = record.value.decode("utf-8", errors="replace")
    if not value.startswith("/ipfs/"):
        return None
    try:
        return CID.parse(value[len("/ipfs/") :].split("/", 1)[0])
    except (CIDError, ValueError):
        return None


def next_republish(
    now: float, validity: float, last_announce: float, config: IpnsConfig
) -> tuple[float, bool]:
    """(seconds until the next republish, re-sign then?) for a record valid until
    ``validity``, last announced at ``last_announce``. Pure.

    Due every ``republish`` seconds after the last announcement; due at once, and re-signed,
    when less than half the lifetime is left (so a record never nears expiry on the DHT).
    """
    resign_at = validity - config.lifetime / 2
    if now >= resign_at:
        return 0.0, True
    due = max(0.0, last_announce + config.republish - now)
    if now + due >= resign_at:
        return resign_at - now, True
    return due, False


class IpnsPublisher:
    """This node's IPNS name and its current record (see the module docstring)."""

    def __init__(
        self,
        key: PrivateKey,
        sequence: SequenceCounter,
        config: IpnsConfig,
        host: P2PHost | None,
        clock: Callable[[], float] = time.time,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._key = key
        self._sequence = sequence
        self.config = config
        self._host = host
        self._clock = clock
        self._sleep = sleep
        self.multihash = name_multihash(key.get_public_key())
        self.name = ipns_name(self.multihash)
        self.routing_key = routing_key(self.multihash)
        self.topic = pubsub_topic(self.multihash)
        self.record_path = sequence.path.with_name(sequence.path.name + ".record")
        self._current: IpnsRecord | None = None
        self._last_announce = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._joined = False
        if host is not None:
            self.attach(host)

    def attach(self, host: P2PHost) -> None:
        """Announce through ``host`` from now on (for a node that builds the host after the
        publisher, e.g. in ``IpfsService.before_listen``); our key is pinned in its DHT
        record store, so our record is served whatever else peers store there."""
        self._host = host
        host.ipns_records.pin(self.routing_key)

    # state ----------------------------------------------------------------------------------

    @property
    def record(self) -> bytes | None:
        """The current record's wire bytes (None before the first publish)."""
        return self._current.raw if self._current is not None else None

    @property
    def current(self) -> IpnsRecord | None:
        """The current record, parsed (sequence, validity, TTL, value)."""
        return self._current

    @property
    def root(self) -> CID | None:
        """The folder root the current record points at."""
        return ipfs_root(self._current) if self._current is not None else None

    def load(self) -> None:
        """Take the persisted record as current, if it is ours and still valid."""
        try:
            raw = self.record_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning(
                "ipns: cannot read %s (%s): a new record is made at the next root",
                self.record_path,
                e,
            )
            return
        try:
            record = validate_record(raw, self.multihash, now_ns=int(self._clock() * _NS))
        except IpnsRecordError as e:
            log.info("ipns: the saved record %s is not usable (%s): ignored", self.record_path, e)
            return
        self._sequence.observe(record.sequence)  # the counter never goes below it
        self._current = record

    # publishing -----------------------------------------------------------------------------

    async def publish(self, root: CID, *, unless_current: bool = False) -> bytes:
        """Sign ``/ipfs/<root>`` with the next sequence, keep it, announce it; the record.

        ``unless_current``: if the current record already points at ``root`` (another
        publish got there while this one waited), that record is kept as it is.

        Raises :class:`IpnsPublishError` when ``[ipns] publish = false``, or a
        :class:`~pacswarm.ipns.sequence.SequenceError` when the counter cannot be written
        (nothing is announced then). Network failures are logged, not raised.
        """
        if not self.config.publish:
            raise IpnsPublishError(
                "IPNS publishing is off ([ipns] publish = false in the config); "
                "set it to true to publish this node's folders"
            )
        async with self._lock:
            current = self._current
            if unless_current and current is not None and current.value == f"/ipfs/{root}".encode():
                return current.raw
            record = await self._sign(f"/ipfs/{root}")
            log.info("ipns: %s -> /ipfs/%s (sequence %d)", self.name, root, record.sequence)
            await self._announce(record)
        return record.raw

    async def _sign(self, value: str) -> IpnsRecord:
        sequence = await asyncio.to_thread(self._sequence.next)
        now_ns = int(self._clock() * _NS)
        raw = build_record(
            self._key,
            value,
            sequence=sequence,
            now_ns=now_ns,
            lifetime_ns=int(self.config.lifetime * _NS),
            ttl_ns=int(self.config.ttl * _NS),
        )
        record = validate_record(raw, self.multihash, now_ns=now_ns)
        self._current = record
        await asyncio.to_thread(self._save, raw)
        return record

    def _save(self, raw: bytes) -> None:
        tmp = self.record_path.with_name(f".{self.record_path.name}.{os.getpid()}.tmp")
        try:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(raw)
            os.replace(tmp, self.record_path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning(
                "ipns: cannot save the record to %s (%s): a restart re-publishes "
                "only at the next root",
                self.record_path,
                e,
            )

    async def _announce(self, record: IpnsRecord) -> None:
        """DHT put and gossipsub publish; failures logged (the next republish retries)."""
        self._last_announce = self._clock()
        host = self._host
        if host is None:
            return
        await self._join_own_topic(host)
        await asyncio.gather(self._put(host, record), self._gossip(host, record))

    async def _put(self, host: P2PHost, record: IpnsRecord) -> None:
        try:
            peers = await asyncio.wait_for(
                host.put_ipns(self.routing_key, record.raw), ANNOUNCE_TIMEOUT
            )
            log.info("ipns: record %d stored at %d DHT peer(s)", record.sequence, peers)
        except Exception as e:
            log.warning("ipns: DHT put of record %d failed: %r", record.sequence, e)

    async def _gossip(self, host: P2PHost, record: IpnsRecord) -> None:
        try:
            await asyncio.wait_for(host.pubsub.publish(self.topic, record.raw), ANNOUNCE_TIMEOUT)
        except Exception as e:
            log.warning("ipns: pubsub publish of record %d failed: %r", record.sequence, e)

    async def _join_own_topic(self, host: P2PHost) -> None:
        """Subscribe to our own topic: it keeps us in the topic's mesh (so a publish reaches
        subscribers at once), and a newer record of our name seen there (a restored backup
        published elsewhere) lifts our counter above it."""
        if self._joined:
            return

        def validate(_peer: str, data: bytes) -> bool:
            try:
                validate_record(data, self.multihash, now_ns=int(self._clock() * _NS))
            except IpnsRecordError:
                return False
            return True

        def deliver(origin: str, data: bytes) -> None:
            with contextlib.suppress(IpnsRecordError):
                seen = validate_record(data, self.multihash, now_ns=int(self._clock() * _NS))
                if self._current is None or seen.sequence > self._current.sequence:
                    log.warning(
                        "ipns: peer %s relays record %d of our own name: counter raised",
                        origin,
                        seen.sequence,
                    )
                    self._sequence.observe(seen.sequence)

        try:
            await host.pubsub.join(self.topic, validate, deliver)
            self._joined = True
        except Exception as e:
            log.warning("ipns: cannot join our topic %s: %r", self.topic, e)

    # republishing ---------------------------------------------------------------------------

    async def republish(self) -> None:
        """Announce the current record again, re-signed first if half its lifetime is gone."""
        async with self._lock:
            record = self._current
            if record is None:
                return
            _, resign = next_republish(
                self._clock(), record.validity_ns / _NS, self._last_announce, self.config
            )
            if resign:
                record = await self._sign(record.value.decode("utf-8"))
                log.info("ipns: record re-signed as sequence %d", record.sequence)
            await self._announce(record)

    async def start(self) -> None:
        """Load the saved record, announce it at once, then keep republishing (nothing at
        all with ``publish = false``: not even our own gateway serves an old record)."""
        if not self.config.publish:
            return
        self.load()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ipns-republish")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        """Republish when due; after each sleep the due time is computed again, since a
        publish() in between (a new root) counts as an announcement."""
        first = True
        while True:
            record = self._current
            if record is None:
                first = False  # a publish() announces its own record
                await self._sleep(self.config.republish)
                continue
            delay, _ = next_republish(
                self._clock(), record.validity_ns / _NS, self._last_announce, self.config
            )
            if delay > 0 and not first:
                await self._sleep(max(delay, 1.0))
                continue
            first = False
            try:
                await self.republish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ipns: republish failed; trying again in %g s", self.config.republish)
                await self._sleep(self.config.republish)
