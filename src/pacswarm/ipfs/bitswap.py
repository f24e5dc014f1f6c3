"""Bitswap 1.0-1.2 on py-libp2p streams: a server for any peer and the plumbing for our client.

Why not py-libp2p's ``BitswapClient``: its server writes blocks back on the *requester's*
stream, which kubo and Helia treat as send-only (their fetches hang), and its client stalls
for 1 s on every incomplete batch. This module speaks the wire protocol itself, using only
py-libp2p's protobuf ``Message`` and host streams:

* every inbound Bitswap stream is read until it ends; wants are answered on a stream *we*
  open to that peer (the spec's model; a few such streams per peer, see :class:`_Responder`),
  so kubo, Helia and py-libp2p all accept the blocks;
* blocks and presences arriving on any stream (inbound, or our own outbound want stream,
  where py-libp2p's stock server answers) go to :class:`BlockSink` s, i.e. running fetches
  (:mod:`.bitswap_fetch`).

Everything here runs on the trio thread; :class:`BlockSource` is the one synchronous,
thread-safe door to the blockstore.

Who is served (:mod:`pacswarm.swarm.access`, when the engine has an :class:`Access`): a peer
that may not fetch is answered as if we held nothing: DONT_HAVE for every want that asks for
one (kubo, Helia and our own client then move on to other peers at once, where silence would
cost them a timeout), and never a block or a HAVE, so a stranger cannot probe what this node
holds. Per admitted peer, ``peer_concurrency`` bounds its responder streams and ``peer_rate``
paces what they write (a sleep per message of up to ``SEND_BUDGET`` bytes).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol

import trio
from libp2p.abc import IHost, INetStream
from libp2p.bitswap.pb.bitswap_pb2 import Message
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from pacswarm.ipfs.bitswap_wire import (
    PROTO_100,
    PROTO_120,
    PROTOCOLS,
    MessageReader,
    cid_from_prefix,
    cid_prefix,
    close_stream,
    encode_message,
    widen_receive_window,
)
from pacswarm.ipfs.cid import CID, CIDError, encode_varint
from pacswarm.swarm.access import Access, Lease

log = logging.getLogger(__name__)

SEND_BUDGET = 1024 * 1024  # bytes of blocks per outgoing message
IDLE_CLOSE = 60.0  # seconds before an idle responder stream is closed
WRITERS = 8  # responder streams per peer (see _Responder)
MAX_QUEUED = 8192  # wants queued per peer: a peer cannot make us hold an unbounded list


class BlockSource(Protocol):
    """Where the server finds blocks. Synchronous and thread-safe: called on the trio thread."""

    def get(self, cid: CID) -> bytes | None: ...

    def has(self, cid: CID) -> bool: ...


class MemoryBlocks:
    """A dict-backed :class:`BlockSource` (tests, small tools). Keyed by digest, like kubo."""

    def __init__(self, blocks: Iterable[tuple[CID, bytes]] = ()) -> None:
        self._blocks: dict[bytes, bytes] = {cid.digest: data for cid, data in blocks}

    def put(self, cid: CID, data: bytes) -> None:
        self._blocks[cid.digest] = data

    def get(self, cid: CID) -> bytes | None:
        return self._blocks.get(cid.digest)

    def has(self, cid: CID) -> bool:
        return cid.digest in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)


#: What a peer that may not fetch is told we hold.
_NOTHING = MemoryBlocks()


class BlockSink(Protocol):
    """Receives what peers send us; implemented by a running fetch (trio thread only)."""

    def offer(self, peer: ID, digest: bytes, data: bytes) -> bool:
        """Take the block if this sink asked for it; True if taken."""
        ...

    def claims(self, peer: ID, digest: bytes) -> bool:
        """True if ``digest`` is a block this sink already received (a harmless duplicate)."""
        ...

    def expects_from(self, peer: ID) -> bool:
        """True if wants to ``peer`` are outstanding (so an unknown block from it is bad)."""
        ...

    def fail(self, error: Exception) -> None: ...

    def dont_have(self, peer: ID, digest: bytes) -> None: ...


# ── responder: answers one peer's wants on a stream we open ─────────────────────────────


class _Responder:
    """Queue and writer tasks for one peer. Wants are answered in arrival order.

    Several writers, each on its own stream: py-libp2p's yamux polls every 10 ms for a
    window update once a stream's 256 KiB send window is used up, so one stream caps a
    transfer at ~25 MB/s; with ``WRITERS`` streams the others keep sending meanwhile.
    """

    def __init__(self, engine: BitswapEngine, peer: ID, protocol: TProtocol) -> None:
        self.engine = engine
        self.peer = peer
        self.protocol = protocol
        self.blocks: OrderedDict[bytes, CID] = OrderedDict()
        self.presences: OrderedDict[bytes, tuple[CID, bool]] = OrderedDict()
        self.lot = trio.lowlevel.ParkingLot()
        self.active = 0
        self.closing = False

    def want(self, cid: CID, want_have: bool, send_dont_have: bool, source: BlockSource) -> None:
        if want_have:
            has = source.has(cid)
            if has or send_dont_have:
                self.presences[cid.digest] = (cid, has)
        elif source.has(cid):
            self.blocks[cid.digest] = cid
        elif send_dont_have:
            self.presences[cid.digest] = (cid, False)
        self.lot.unpark_all()

    def cancel(self, cid: CID) -> None:
        self.blocks.pop(cid.digest, None)
        self.presences.pop(cid.digest, None)

    def _next_message(self) -> bytes:
        msg = Message()
        size = 0
        if self.blocks and not self.engine.admits(self.peer):  # it left the swarm meanwhile
            for digest, cid in self.blocks.items():
                self.presences[digest] = (cid, False)
            self.blocks.clear()
        while self.blocks and size < SEND_BUDGET:
            _, cid = self.blocks.popitem(last=False)
            data = self.engine.blocks.get(cid)
            if data is None:
                self.presences[cid.digest] = (cid, False)
                continue
            if size and size + len(data) > SEND_BUDGET:
                self.blocks[cid.digest] = cid
                self.blocks.move_to_end(cid.digest, last=False)
                break
            size += len(data)
            if self.protocol == PROTO_100:
                msg.blocks.append(data)
            else:
                msg.payload.add(prefix=cid_prefix(cid), data=data)
        if self.protocol != PROTO_100:
            while self.presences:
                _, (cid, has) = self.presences.popitem(last=False)
                kind = Message.Have if has else Message.DontHave
                msg.blockPresences.add(cid=cid.to_bytes(), type=kind)
        else:
            self.presences.clear()
        body = msg.SerializeToString()
        return encode_varint(len(body)) + body if body else b""

    async def run(self) -> None:
        """Start the writers; ends when all of them went idle, or the peer is gone."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(WRITERS):
                    self.active += 1
                    nursery.start_soon(self._writer)
        finally:
            self.closing = True
            self.engine.responder_done(self)

    async def _writer(self) -> None:
        """One stream's writer: exits after IDLE_CLOSE s without work or on a dead stream."""
        stream: INetStream | None = None
        lease: Lease | None = None
        try:
            access = self.engine.access
            if access is not None:
                lease = access.enter_bitswap(self.peer.to_base58())
                if lease is None:  # peer_concurrency streams already write to this peer
                    return
            while True:
                if not self.blocks and not self.presences:
                    with trio.move_on_after(IDLE_CLOSE):
                        await self.lot.park()
                    if not self.blocks and not self.presences:
                        return
                data = self._next_message()
                if not data:
                    continue
                if lease is not None and (wait := lease.pace(len(data))) > 0:
                    await trio.sleep(wait)
                if stream is None:
                    stream = await self.engine.host.new_stream(self.peer, [self.protocol])
                await stream.write(data)
        except Exception as e:
            log.debug("bitswap responder stream to %s ended: %r", self.peer, e)
        finally:
            if lease is not None:
                lease.close()
            self.active -= 1
            if self.active == 0:  # no checkpoint since the queue was seen empty
                self.closing = True
                self.engine.responder_done(self)
            if stream is not None:
                await close_stream(stream)


# ── the engine ──────────────────────────────────────────────────────────────────────────


class BitswapEngine:
    """Bitswap for one libp2p host: serves ``blocks``, routes received blocks to sinks.

    ``access``: who is served and how much (None: every peer, unlimited). It may be set after
    construction (it is read on every want), e.g. ``host.bitswap.access = access``.
    """

    def __init__(self, host: IHost, blocks: BlockSource, access: Access | None = None) -> None:
        self.host = host
        self.blocks = blocks
        self.access = access
        self.sinks: set[BlockSink] = set()
        self._responders: dict[ID, _Responder] = {}
        self._want_streams: dict[ID, INetStream] = {}
        self._want_locks: dict[ID, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for proto in PROTOCOLS:
            self.host.set_stream_handler(proto, self._handle_stream)

    async def stop(self) -> None:
        for proto in PROTOCOLS:
            self.host.remove_stream_handler(proto)
        for stream in list(self._want_streams.values()):
            await close_stream(stream)
        self._want_streams.clear()
        self._nursery = None

    # inbound ----------------------------------------------------------------------------

    async def _handle_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        protocol = TProtocol(str(stream.get_protocol() or PROTO_100))
        await widen_receive_window(stream)
        await self._read_loop(stream, peer, protocol)
        await close_stream(stream)

    async def _read_loop(self, stream: INetStream, peer: ID, protocol: TProtocol) -> None:
        reader = MessageReader(stream)
        while True:
            try:
                msg = await reader.read()
            except Exception as e:
                log.debug("bad bitswap message from %s: %r", peer, e)
                return
            if msg is None:
                return
            try:
                self._on_message(peer, protocol, msg)
            except Exception as e:  # our want streams run in the host's nursery: never raise
                log.info("bitswap message from %s broke its handling (%r): stream ended", peer, e)
                return

    def _on_message(self, peer: ID, protocol: TProtocol, msg: Message) -> None:
        if msg.HasField("wantlist") and msg.wantlist.entries:
            self._on_wants(peer, protocol, msg.wantlist)
        for data in msg.blocks:
            self._on_block(peer, hashlib.sha256(data).digest(), data)
        for block in msg.payload:
            try:
                cid = cid_from_prefix(block.prefix, block.data)
            except (CIDError, ValueError) as e:
                self._on_bad_block(peer, f"unusable block prefix ({e})")
                continue
            self._on_block(peer, cid.digest, block.data)
        for presence in msg.blockPresences:
            if presence.type == Message.DontHave:
                try:
                    cid, _ = CID.from_bytes(presence.cid)
                except CIDError:
                    continue
                for sink in list(self.sinks):
                    sink.dont_have(peer, cid.digest)

    def admits(self, peer: ID) -> bool:
        """True if ``peer`` may fetch blocks (always, without an :class:`Access`)."""
        return self.access is None or self.access.may_fetch_bitswap(peer.to_base58())

    def _on_wants(self, peer: ID, protocol: TProtocol, wantlist: Message.Wantlist) -> None:
        source = self.blocks if self.admits(peer) else _NOTHING
        responder = self._responders.get(peer)
        if responder is None or responder.closing:
            if self._nursery is None:
                return
            responder = _Responder(self, peer, protocol)
            self._responders[peer] = responder
            self._nursery.start_soon(responder.run)
        if wantlist.full:
            responder.blocks.clear()
            responder.presences.clear()
        for entry in wantlist.entries:
            try:
                cid, _ = CID.from_bytes(entry.block)
            except CIDError:
                continue
            if entry.cancel:
                responder.cancel(cid)
            elif len(responder.blocks) + len(responder.presences) >= MAX_QUEUED:
                log.debug("peer %s exceeds %d queued wants; dropping the rest", peer, MAX_QUEUED)
                return
            else:
                want_have = entry.wantType == Message.Wantlist.Have
                responder.want(cid, want_have, entry.sendDontHave, source)

    def responder_done(self, responder: _Responder) -> None:
        if self._responders.get(responder.peer) is responder:
            del self._responders[responder.peer]

    def _on_block(self, peer: ID, digest: bytes, data: bytes) -> None:
        taken = False
        for sink in list(self.sinks):
            taken = sink.offer(peer, digest, data) or taken
        if taken or digest in self._recent:
            return
        if any(sink.claims(peer, digest) for sink in self.sinks):
            return
        self._on_bad_block(peer, f"a block (sha256 {digest.hex()[:16]}...) we never asked for")

    def _on_bad_block(self, peer: ID, what: str) -> None:
        for sink in list(self.sinks):
            if sink.expects_from(peer):
                sink.fail(BlockMismatchError(f"peer {peer} sent {what}: corrupt or wrong block"))

    def forget(self, digests: Iterable[bytes]) -> None:
        """Remember recently wanted digests so late duplicates are not taken for corruption."""
        for digest in digests:
            self._recent[digest] = None
        while len(self._recent) > 8192:
            self._recent.popitem(last=False)

    # outbound wants -------------------------------------------------------------------------

    async def send_wants(
        self, peer: ID, cids: list[CID], cancel: bool = False, cancels: Sequence[CID] = ()
    ) -> None:
        """Send want-blocks (or, ``cancel``, cancels) to ``peer`` on our long-lived want stream.

        ``cancels``: CIDs to cancel in the same message. Received blocks must be cancelled:
        Helia keeps a served want in its ledger and never serves that CID again otherwise.
        """
        msg = Message()
        for cid in cids:
            msg.wantlist.entries.add(
                block=cid.to_bytes(),
                priority=1,
                cancel=cancel,
                wantType=Message.Wantlist.Block,
                sendDontHave=not cancel,
            )
        for cid in cancels:
            msg.wantlist.entries.add(block=cid.to_bytes(), cancel=True)
        if not msg.wantlist.entries:
            return
        data = encode_message(msg)
        async with self._want_locks.setdefault(peer, trio.Lock()):
            stream = self._want_streams.get(peer)
            try:
                if stream is None:
                    stream = await self._open_want_stream(peer)
                await stream.write(data)
            except Exception:
                self._want_streams.pop(peer, None)
                if stream is not None:
                    await close_stream(stream, reset=True)
                if cancel or not cids:
                    return
                stream = await self._open_want_stream(peer)
                await stream.write(data)

    async def _open_want_stream(self, peer: ID) -> INetStream:
        stream = await self.host.new_stream(peer, PROTOCOLS)
        self._want_streams[peer] = stream
        if self._nursery is not None:
            protocol = TProtocol(str(stream.get_protocol() or PROTO_120))
            self._nursery.start_soon(self._read_want_stream, stream, peer, protocol)
        return stream

    async def _read_want_stream(self, stream: INetStream, peer: ID, protocol: TProtocol) -> None:
        """py-libp2p's stock server answers on our want stream: accept blocks there too.

        The end of its read side says nothing about the write side (kubo and Helia never
        answer here), so the stream stays in use until a write fails.
        """
        await widen_receive_window(stream)
        await self._read_loop(stream, peer, protocol)


class BlockMismatchError(RuntimeError):
    """A peer sent bytes that do not hash to any CID we asked it for."""
