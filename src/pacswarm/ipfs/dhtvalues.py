"""IPNS records on the Kademlia DHT under the spec's *binary* key, asking and answering.

Why this exists: py-libp2p 0.8.1's ``KadDHT.put_value``/``get_value`` take a text key and
encode it as UTF-8, and its PUT_VALUE handler decodes the key as UTF-8 before validating, so
the spec's key (``b"/ipns/"`` + the raw multihash of the name, not valid UTF-8) is refused
on the way in and never produced on the way out: records land where kubo and Helia never
look (field notes). Here the same wire messages (py-libp2p's ``kademlia_pb2``) are built
with the binary key, and inbound PUT_VALUE/GET_VALUE for ``/ipns/`` keys are answered from
our own validated store; every other DHT message is handed to KadDHT unchanged, one
message at a time (:class:`_OneMessage`), so provider records and FIND_NODE keep working.

Everything that touches libp2p (:class:`DhtValues`) runs on the host's trio thread.
:class:`IpnsRecordStore` is thread-safe: the asyncio side reads it (the resolver, tests).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio
import varint  # type: ignore[import-untyped]
from libp2p.abc import IHost, INetStream
from libp2p.kad_dht import KadDHT
from libp2p.kad_dht.common import (
    BUCKET_SIZE,
    MAX_DHT_MESSAGE_SIZE,
    PROTOCOL_ID,
    format_time_rfc3339,
)
from libp2p.kad_dht.pb.kademlia_pb2 import Message, Record
from libp2p.kad_dht.utils import maybe_consume_signed_record
from libp2p.peer.id import ID
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr  # type: ignore[import-untyped]

from pacswarm.ipns.record import ROUTING_PREFIX, IpnsRecord, IpnsRecordError, validate_record

log = logging.getLogger(__name__)

#: Records kept for the DHT, and their bytes in all: a record may be 10 KiB, so a count
#: alone would let a peer flooding PUT_VALUE with new names pin 100 MB.
MAX_RECORDS = 10_000
MAX_BYTES = 8 * 1024 * 1024
#: Peers asked at once, and most peers one lookup asks in all.
ALPHA = 3
MAX_QUERIED = 20
#: Seconds one peer may take to answer one message.
PEER_TIMEOUT = 10.0
#: Seconds the rest of a batch still has once one peer answered with a valid record: a
#: gateway resolving for pacman (10 s rule) must not wait for the slowest peer.
FOUND_GRACE = 0.5


class StaleRecord(IpnsRecordError):
    """A valid record that loses to the one held (lower sequence, or same and older)."""


def better_record(new: IpnsRecord, old: IpnsRecord | None) -> bool:
    """Does ``new`` replace ``old``? Higher Sequence wins; a tie goes to the later Validity
    (Helia's rule; boxo too). The same record is not "better"."""
    if old is None:
        return True
    if new.sequence != old.sequence:
        return new.sequence > old.sequence
    return new.validity_ns > old.validity_ns


def ipns_multihash(key: bytes) -> bytes:
    """The name's multihash inside a binary routing key; IpnsRecordError if it is none."""
    if not key.startswith(ROUTING_PREFIX) or len(key) <= len(ROUTING_PREFIX):
        raise IpnsRecordError(f"DHT key {key[:16]!r}... is not an /ipns/ routing key")
    return key[len(ROUTING_PREFIX) :]


def check_record(key: bytes, raw: bytes, now: float) -> IpnsRecord:
    """``raw`` validated as a record of the name that ``key`` routes to."""
    return validate_record(raw, ipns_multihash(key), now_ns=int(now * 1e9))


class IpnsRecordStore:
    """Validated IPNS records by binary routing key: the best one per name, bounded.

    What this node answers GET_VALUE with, and what PUT_VALUE from peers (and our own
    publisher) fill. Expired records are dropped when read. Oldest-stored go first when
    full, except pinned keys (our own name: a flood of other names never pushes it out).
    """

    def __init__(
        self,
        max_records: int = MAX_RECORDS,
        clock: Callable[[], float] = time.time,
        *,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._max = max_records
        self._max_bytes = max_bytes
        self._clock = clock
        self._records: OrderedDict[bytes, IpnsRecord] = OrderedDict()
        self._bytes = 0
        self._pinned: set[bytes] = set()
        self._lock = threading.Lock()

    def pin(self, key: bytes) -> None:
        """Never evict ``key`` to make room (it still goes when it expires)."""
        with self._lock:
            self._pinned.add(key)

    def offer(self, key: bytes, raw: bytes) -> bool:
        """Keep ``raw`` if valid and better than what is held; True if it was stored.

        The same record again is no change (False). Raises IpnsRecordError for an invalid
        record and :class:`StaleRecord` for one that loses to the record held.
        """
        record = check_record(key, raw, self._clock())
        with self._lock:
            held = self._records.get(key)
            if held is not None and held.raw == record.raw:
                return False
            if not better_record(record, held):
                assert held is not None
                raise StaleRecord(
                    f"record sequence {record.sequence} loses to the held {held.sequence}"
                )
            self._bytes += len(record.raw) - (len(held.raw) if held is not None else 0)
            self._records[key] = record
            self._records.move_to_end(key)
            self._evict()
        return True

    def _evict(self) -> None:
        """Drop the oldest unpinned records while over either bound (lock held)."""
        while len(self._records) > self._max or self._bytes > self._max_bytes:
            victim = next((k for k in self._records if k not in self._pinned), None)
            if victim is None:
                return
            self._bytes -= len(self._records.pop(victim).raw)

    def get(self, key: bytes) -> IpnsRecord | None:
        """The record held for ``key``, if any and not expired."""
        with self._lock:
            record = self._records.get(key)
            if record is not None and record.validity_ns < self._clock() * 1e9:
                del self._records[key]
                self._bytes -= len(record.raw)
                record = None
        return record

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class _OneMessage:
    """A stream that yields one already-read DHT frame, then EOF; writes go to the real one.

    Lets KadDHT's own handler answer a message we read first, without knowing it.
    """

    def __init__(self, stream: INetStream, frame: bytes) -> None:
        self._stream = stream
        self._frame = frame
        self.was_reset = False

    async def read(self, n: int | None = None) -> bytes:
        size = len(self._frame) if n is None or n < 0 else n
        out, self._frame = self._frame[:size], self._frame[size:]
        return out

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        return None

    async def reset(self) -> None:
        self.was_reset = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return bytes(varint.encode(len(body))) + body


class DhtValues:
    """Binary-key GET_VALUE/PUT_VALUE for ``/ipns/`` records on one host (trio thread)."""

    def __init__(self, host: IHost, dht: KadDHT, store: IpnsRecordStore) -> None:
        self._host = host
        self._dht = dht
        self.store = store

    def install(self) -> None:
        """Take over the Kademlia protocol handler (after KadDHT set its own)."""
        self._host.set_stream_handler(PROTOCOL_ID, self.handle_stream)

    # answering ------------------------------------------------------------------------------

    async def handle_stream(self, stream: INetStream) -> None:
        """Each message in turn: ours if it is an /ipns/ value, else KadDHT's."""
        peer = stream.muxed_conn.peer_id
        added = False
        while True:
            try:
                body = await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE)
            except Exception:  # EOF, oversized or broken: as KadDHT, end the stream
                await stream.close()
                return
            message = Message()
            try:
                message.ParseFromString(body)
            except Exception:
                await stream.reset()
                return
            ours = message.type in (Message.GET_VALUE, Message.PUT_VALUE)
            if not (ours and message.key.startswith(ROUTING_PREFIX)):
                one = _OneMessage(stream, bytes(varint.encode(len(body))) + body)
                await self._dht.handle_stream(one)  # type: ignore[arg-type]
                if one.was_reset:
                    await stream.reset()
                    return
                continue
            if not added:
                added = True
                await self._dht.add_peer(peer, skip_server_mode_check=True)
            if not maybe_consume_signed_record(message, self._host, peer):
                await stream.reset()
                return
            reply = self._answer(message, peer)
            if reply is None:
                await stream.reset()
                return
            await stream.write(_frame(reply))

    def _answer(self, message: Message, peer: ID) -> Message | None:
        """The reply to an /ipns/ GET_VALUE or PUT_VALUE; None means reset (a refused put)."""
        key = bytes(message.key)
        reply = Message()
        reply.type = message.type
        reply.key = key
        reply.senderRecord = env_to_send_in_RPC(self._host)[0]
        if message.type == Message.PUT_VALUE:
            if not message.HasField("record") or bytes(message.record.key) != key:
                log.info("DHT PUT_VALUE from %s: no record or key mismatch: refused", peer)
                return None
            try:
                stored = self.store.offer(key, bytes(message.record.value))
            except IpnsRecordError as e:
                log.info("DHT PUT_VALUE /ipns/ from %s refused: %s", peer, e)
                return None
            log.debug("DHT PUT_VALUE /ipns/ from %s: %s", peer, "stored" if stored else "same")
            reply.record.CopyFrom(message.record)
            return reply
        held = self.store.get(key)
        if held is not None:
            reply.record.key = key
            reply.record.value = held.raw
            reply.record.timeReceived = format_time_rfc3339()
        closest = self._dht.routing_table.find_local_closest_peers(key, BUCKET_SIZE)
        self._dht._add_closer_peers_to_response(reply, closest, exclude_peer_id=peer)
        return reply

    # asking ---------------------------------------------------------------------------------

    async def _exchange(self, peer: ID, message: Message) -> Message | None:
        """Send one message to ``peer`` and read its answer (None: no usable answer)."""
        stream = None
        try:
            with trio.move_on_after(PEER_TIMEOUT):
                stream = await self._host.new_stream(peer, [PROTOCOL_ID])
                await stream.write(_frame(message))
                body = await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE)
                reply = Message()
                reply.ParseFromString(body)
                if not maybe_consume_signed_record(reply, self._host, peer):
                    return None
                return reply
            log.debug("DHT peer %s did not answer within %s s", peer, PEER_TIMEOUT)
        except Exception as e:
            log.debug("DHT exchange with %s failed: %r", peer, e)
        finally:
            if stream is not None:
                # Shielded: a lookup that ended early still closes its streams.
                with trio.CancelScope(shield=True) as scope, contextlib.suppress(Exception):
                    scope.deadline = trio.current_time() + 2
                    await stream.close()
        return None

    def _request(self, kind: int, key: bytes, raw: bytes | None = None) -> Message:
        message = Message()
        message.type = kind  # type: ignore[assignment]
        message.key = key
        message.senderRecord = env_to_send_in_RPC(self._host)[0]
        if raw is not None:
            message.record.CopyFrom(Record(key=key, value=raw))
        return message

    async def _closest(self, key: bytes) -> list[ID]:
        me = self._host.get_id()
        try:
            peers = await self._dht.peer_routing.find_closest_peers_network(key)
        except Exception as e:
            log.debug("DHT lookup of closest peers failed: %r", e)
            peers = []
        return [p for p in peers if p != me]

    async def put(self, key: bytes, raw: bytes) -> int:
        """Store ``raw`` here and at the closest peers to ``key``; how many peers took it.

        Raises IpnsRecordError for a record this node itself would refuse.
        """
        with contextlib.suppress(StaleRecord):
            # A peer sent us a newer one of our own name; still offer ours to the others.
            self.store.offer(key, raw)
        accepted = 0
        limiter = trio.CapacityLimiter(ALPHA)

        async def one(peer: ID) -> None:
            nonlocal accepted
            async with limiter:
                accepted += await self.put_to(peer, key, raw)

        async with trio.open_nursery() as nursery:
            for peer in await self._closest(key):
                nursery.start_soon(one, peer)
        return accepted

    async def put_to(self, peer: ID, key: bytes, raw: bytes) -> bool:
        """PUT_VALUE ``raw`` at one peer, unchecked here; True if the peer took it (echoed)."""
        reply = await self._exchange(peer, self._request(Message.PUT_VALUE, key, raw))
        return reply is not None and reply.type == Message.PUT_VALUE and reply.key == key

    async def get(self, key: bytes) -> bytes | None:
        """The best valid record for ``key``: held here or found at the closest peers."""
        now = time.time()
        held = self.store.get(key)
        best: IpnsRecord | None = held
        queue = await self._closest(key)
        asked: set[ID] = set()
        while queue and len(asked) < MAX_QUERIED:
            batch = []
            while queue and len(batch) < ALPHA:
                peer = queue.pop(0)
                if peer not in asked:
                    asked.add(peer)
                    batch.append(peer)
            replies = await self._ask_all(batch, self._request(Message.GET_VALUE, key))
            for reply in replies:
                best = self._better_of(best, key, reply, now)
                queue.extend(p for p in self._closer(reply) if p not in asked)
            if best is not None and best is not held:
                break  # found on the network: the closest peers answered this round
        return best.raw if best is not None else None

    async def _ask_all(self, peers: list[ID], message: Message) -> list[Message]:
        """The GET_VALUE answers of ``peers``, asked at once; once one carries a valid
        record the others get ``FOUND_GRACE`` seconds more, not ``PEER_TIMEOUT``."""
        replies: list[Message] = []
        key = bytes(message.key)

        async def one(peer: ID, scope: trio.CancelScope) -> None:
            reply = await self._exchange(peer, message)
            if reply is None or reply.type != Message.GET_VALUE:
                return
            replies.append(reply)
            if reply.HasField("record") and reply.record.value:
                with contextlib.suppress(IpnsRecordError):
                    check_record(key, bytes(reply.record.value), time.time())
                    scope.deadline = min(scope.deadline, trio.current_time() + FOUND_GRACE)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer, nursery.cancel_scope)
        return replies

    def _better_of(
        self, best: IpnsRecord | None, key: bytes, reply: Message, now: float
    ) -> IpnsRecord | None:
        if not reply.HasField("record") or not reply.record.value:
            return best
        try:
            record = check_record(key, bytes(reply.record.value), now)
        except IpnsRecordError as e:
            log.info("DHT peer sent an invalid record for an /ipns/ key: %s", e)
            return best
        return record if better_record(record, best) else best

    def _closer(self, reply: Message) -> list[ID]:
        me = self._host.get_id()
        found = []
        for entry in reply.closerPeers:
            try:
                peer = ID(entry.id)
                if peer != me and entry.addrs:
                    addrs = [Multiaddr(a) for a in entry.addrs]
                    self._host.get_peerstore().add_addrs(peer, addrs, 600)
                if peer != me:
                    found.append(peer)
            except Exception:
                continue
        return found
