"""A windowed Bitswap fetch of a UnixFS file, written to a file object in order.

Why not py-libp2p's ``MerkleDag.fetch_file``: it asks for fixed batches of 32 blocks and
waits a 1 s retry interval whenever a batch comes back incomplete (~14 MB/s on loopback).
Here W want-blocks stay in flight and every arriving block frees a slot at once.

The DAG is walked as a flat list of *slots* in file order. A slot holds a CID until its block
arrives: a raw leaf then holds the bytes; a dag-pb node is replaced, wherever it sits, by its
inline data and its children, so the requests for the next subtree go out long before the
writer gets there. The writer drains ready slots from the head. Every block is matched by its
sha256 to a CID we asked for; bytes matching nothing we asked that peer for abort the fetch.

Bounds (a peer chooses the DAG; only the root CID is ours): every node is checked by
:class:`~pacswarm.ipfs.unixfs.FileBudget`, by position in the walk, so its declared size must be
what its parent declared for it, the root's at most ``max_size`` (the db's CSIZE), and the
links walked at most :func:`~pacswarm.ipfs.unixfs.max_blocks_for` it: a DAG that links one
child many times over can cost no more than an honest file of ``max_size``. The slots held are
those positions, at most ``window`` wants are in flight, and the whole fetch has a deadline.

Peers: wants go to one peer at a time; a DontHave moves that CID to the next peer, a peer we
cannot open a Bitswap stream to is dropped, and a stall (no block for ``stall_timeout``)
moves every outstanding want to the next peer. Received blocks are cancelled at the sender,
as the spec asks (Helia never serves a CID again to a peer that did not cancel it).
"""

from __future__ import annotations

import logging
from typing import BinaryIO

import trio
from libp2p.peer.id import ID

from pacswarm.ipfs.bitswap import BitswapEngine
from pacswarm.ipfs.cid import CID, DAG_PB, RAW, CIDError
from pacswarm.ipfs.unixfs import FileBudget, FileNode, UnixFSError, default_deadline

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64  # Helia breaks at 256 (yamux frame > py-libp2p's window)
DEFAULT_STALL_TIMEOUT = 30.0
MAX_SCAN = 4096  # slots next_wants looks at past the ready ones (see there)


class FetchError(RuntimeError):
    """A Bitswap fetch failed: no peer has a block, peers stopped answering, bad DAG."""


class _Slot:
    """One position of the walk: a CID due, then its bytes; ``size`` is what it must hold.

    Slots form a singly linked list in file order, so a node's block is replaced by its
    children in place, in time proportional to its links (a list splice would cost the
    length of the walk for every node). ``start`` is its offset in the file: positions
    wholly before the fetch's offset are never made, the one straddling it is cut when written.
    """

    __slots__ = ("cid", "data", "next", "size", "start")

    def __init__(
        self, cid: CID | None, data: bytes | None = None, size: int | None = None, start: int = 0
    ) -> None:
        self.cid = cid
        self.data = data
        self.size = size  # None only for the root: bounded by max_size instead
        self.start = start
        self.next: _Slot | None = None


class FileFetch:
    """State of one fetch; a :class:`~pacswarm.ipfs.bitswap.BlockSink` of the engine."""

    def __init__(
        self,
        root: CID,
        peers: list[ID],
        window: int,
        max_size: int | None = None,
        offset: int = 0,
    ) -> None:
        self.budget = FileBudget(max_size)
        self.offset = offset
        self.peers = peers
        self.window = window
        first = _Slot(root)
        self.head: _Slot | None = first  # the first slot not yet written
        self.scan: _Slot | None = first  # slots before it are all ready
        self.waiting: dict[bytes, list[_Slot]] = {root.digest: [first]}
        self.inflight: dict[bytes, tuple[CID, int]] = {}  # digest -> (cid, peer index)
        self.seen: set[bytes] = set()
        self.tried: dict[bytes, set[int]] = {}
        self.current = 0
        self.error: Exception | None = None
        self.wake = trio.Event()
        self.progressed = False
        self.rotations = 0
        self.received: dict[int, list[CID]] = {}  # peer index -> CIDs to cancel there
        self.dead: set[int] = set()  # peers we could not send wants to

    # BlockSink ------------------------------------------------------------------------------

    def offer(self, peer: ID, digest: bytes, data: bytes) -> bool:
        entry = self.inflight.pop(digest, None)
        if entry is None:
            return False
        self.received.setdefault(entry[1], []).append(entry[0])
        self.seen.add(digest)
        try:
            node = self.budget.decode(entry[0], data) if entry[0].codec == DAG_PB else None
            for slot in self.waiting.pop(digest, []):
                self._fill(slot, data, node)
        except (CIDError, UnixFSError, FetchError) as e:
            self.fail(FetchError(f"bad DAG from {peer}: {e}"))
        self._poke()
        return True

    def claims(self, peer: ID, digest: bytes) -> bool:
        return digest in self.seen

    def expects_from(self, peer: ID) -> bool:
        return peer in self.peers and any(self.peers[i] == peer for _, i in self.inflight.values())

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._poke()

    def dont_have(self, peer: ID, digest: bytes) -> None:
        entry = self.inflight.get(digest)
        if entry is None or self.peers[entry[1]] != peer:
            return
        tried = self.tried.setdefault(digest, set())
        tried.add(entry[1])
        del self.inflight[digest]  # re-requested from the next peer by the main loop
        if len(tried | self.dead) >= len(self.peers):
            self.fail(FetchError(f"no peer has block {entry[0]}"))
        self._poke()

    def _poke(self) -> None:
        """Wake the fetch loop, also if it is not waiting yet (it checks ``progressed``)."""
        self.progressed = True
        self.wake.set()

    # DAG walk -------------------------------------------------------------------------------

    def _fill(self, slot: _Slot, data: bytes, node: FileNode | None) -> None:
        """Put an arrived block in its position: bytes for a leaf, children for a node."""
        assert slot.cid is not None
        if slot.cid.codec == RAW:
            self.budget.leaf(slot.cid, len(data), slot.size)
            slot.data = data
            return
        if node is None:
            raise FetchError(f"unsupported codec 0x{slot.cid.codec:x}")
        self.budget.node(slot.cid, node, slot.size)  # before a child is made
        start, children = slot.start, list[_Slot]()
        if node.data and start + len(node.data) > self.offset:
            children.append(_Slot(None, node.data, start=start))
        start += len(node.data)
        for link, size in zip(node.links, node.blocksizes, strict=True):
            if start + size > self.offset:  # else wholly before the offset: never fetched
                children.append(_Slot(link.cid, size=size, start=start))
            start += size
        self._replace(slot, children)

    def _replace(self, slot: _Slot, children: list[_Slot]) -> None:
        """Put ``children`` where ``slot`` is: the slot object becomes the first of them."""
        if not children:
            slot.cid, slot.data = None, b""
            return
        first, rest = children[0], children[1:]
        after = slot.next
        slot.cid, slot.data, slot.size, slot.start = first.cid, first.data, first.size, first.start
        for child in [slot, *rest]:
            if child.cid is not None:
                self.waiting.setdefault(child.cid.digest, []).append(child)
        prev = slot
        for child in rest:
            prev.next = child
            prev = child
        prev.next = after

    def next_wants(self) -> dict[int, list[CID]]:
        """CIDs to request now (window permitting), grouped by peer index.

        Looks at most :data:`MAX_SCAN` slots past the ready ones: a DAG repeating one CID in
        many places must not make every call walk all of them.
        """
        out: dict[int, list[CID]] = {}
        budget = self.window - len(self.inflight)
        slot, advancing, looked = self.scan, True, 0
        while budget > 0 and slot is not None and looked < MAX_SCAN:
            current, slot = slot, slot.next
            if current.data is not None or current.cid is None:
                if advancing:
                    self.scan = slot
                continue
            advancing = False
            looked += 1
            digest = current.cid.digest
            if digest in self.inflight:
                continue
            tried = self.tried.get(digest, set())
            peer = next((p for p in self._peer_order() if p not in tried), None)
            if peer is None:  # every peer said DontHave or failed: dont_have() reports it
                continue
            self.inflight[digest] = (current.cid, peer)
            out.setdefault(peer, []).append(current.cid)
            budget -= 1
        return out

    def _peer_order(self) -> list[int]:
        n = len(self.peers)
        return [i for i in ((self.current + k) % n for k in range(n)) if i not in self.dead]

    def peer_failed(self, index: int, error: Exception) -> None:
        """Wants could not be sent to a peer (no Bitswap, gone): ask the others instead."""
        self.dead.add(index)
        self._poke()  # re-plan at once rather than wait for a block
        self.received.pop(index, None)
        for digest, (_, i) in list(self.inflight.items()):
            if i == index:
                self.tried.setdefault(digest, set()).add(index)
                del self.inflight[digest]
        if len(self.dead) == len(self.peers):
            peer = self.peers[index]
            self.fail(FetchError(f"no peer reachable over Bitswap (last, {peer}: {error!r})"))

    def drain(self, out: BinaryIO) -> int:
        """Write the ready slots at the head; returns bytes written."""
        written = 0
        while self.head is not None and self.head.data is not None:
            slot = self.head
            data = slot.data
            assert data is not None
            if slot.start < self.offset:
                data = data[self.offset - slot.start :]
            out.write(data)
            written += len(data)
            self.head = slot.next
        return written

    @property
    def done(self) -> bool:
        return self.head is None

    def rotate(self) -> dict[int, list[CID]]:
        """Peers stopped answering: move every outstanding want to the next peer."""
        stale: dict[int, list[CID]] = {}
        for digest, (cid, index) in list(self.inflight.items()):
            stale.setdefault(index, []).append(cid)
            self.tried.setdefault(digest, set()).add(index)
            del self.inflight[digest]
        self.current = (self.current + 1) % len(self.peers)
        self.rotations += 1
        return stale


async def fetch_file(
    engine: BitswapEngine,
    root: CID,
    out: BinaryIO,
    peers: list[ID],
    window: int = DEFAULT_WINDOW,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    *,
    max_size: int | None = None,
    deadline: float | None = None,
    offset: int = 0,
) -> int:
    """Fetch the UnixFS file ``root`` from ``peers`` into ``out``; returns bytes written.

    Runs on the trio thread. ``max_size``: the most bytes the file may have (the db's CSIZE);
    a DAG declaring more, or whose parts disagree with what their parents declared, is refused
    at the block that says so. None is only for DAGs you trust. ``deadline``: seconds for the
    whole fetch (default :func:`default_deadline`). ``offset``: write the file from there on;
    subtrees wholly before it are not fetched (the blocksizes say where they end). Raises
    :class:`FetchError` for a bad DAG, when no peer has a block, none answers for
    ``stall_timeout`` seconds, or the deadline passes; ``BlockMismatchError`` on a corrupt
    block.
    """
    if not peers:
        raise FetchError(f"no peers to fetch {root} from")
    limit = default_deadline(max_size) if deadline is None else deadline
    fetch = FileFetch(root, peers, max(1, window), max_size, offset)
    engine.sinks.add(fetch)
    try:
        with trio.fail_after(limit):
            return await _run(engine, fetch, out, stall_timeout)
    except trio.TooSlowError:
        raise FetchError(
            f"{root} not fetched within the deadline of {limit:g} s: the peers are too slow"
        ) from None
    finally:
        engine.sinks.discard(fetch)
        await _cancel_outstanding(engine, fetch)


async def _run(engine: BitswapEngine, fetch: FileFetch, out: BinaryIO, stall_timeout: float) -> int:
    """The fetch loop: write what is ready, send wants, wait for blocks."""
    written = 0
    peers = fetch.peers
    while True:
        written += fetch.drain(out)
        if fetch.error is not None:
            raise fetch.error
        if fetch.done:
            return written
        wants, received = fetch.next_wants(), fetch.received
        fetch.received = {}
        for index in wants.keys() | received.keys():
            cancels = received.get(index, [])
            try:
                await engine.send_wants(peers[index], wants.get(index, []), cancels=cancels)
            except Exception as e:
                fetch.peer_failed(index, e)
        await _wait_progress(engine, fetch, stall_timeout)


async def _wait_progress(engine: BitswapEngine, fetch: FileFetch, stall_timeout: float) -> None:
    """Sleep until a block, a DontHave or an error arrives; rotate peers on a stall."""
    if fetch.progressed or fetch.error is not None:
        fetch.progressed = False
        return
    fetch.wake = trio.Event()
    with trio.move_on_after(stall_timeout) as scope:
        await fetch.wake.wait()
    fetch.progressed = False
    if not scope.cancelled_caught:
        return
    if fetch.rotations >= len(fetch.peers) - 1:
        raise FetchError(f"no block arrived for {stall_timeout:.0f} s (peers: {fetch.peers})")
    for index, cids in fetch.rotate().items():
        engine.forget(c.digest for c in cids)
        await engine.send_wants(fetch.peers[index], cids, cancel=True)


async def _cancel_outstanding(engine: BitswapEngine, fetch: FileFetch) -> None:
    """Cancel what is still wanted, and what arrived since the last message (see send_wants)."""
    by_peer: dict[int, list[CID]] = {i: list(c) for i, c in fetch.received.items()}
    for cid, index in fetch.inflight.values():
        by_peer.setdefault(index, []).append(cid)
    engine.forget(fetch.inflight.keys())
    engine.forget(fetch.seen)
    with trio.move_on_after(2) as scope:
        scope.shield = True
        for index, cids in by_peer.items():
            try:
                await engine.send_wants(fetch.peers[index], cids, cancel=True)
            except Exception as e:
                log.debug("could not cancel wants at %s: %r", fetch.peers[index], e)
