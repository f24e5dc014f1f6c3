"""One block over Bitswap from the connected peers (trio thread).

Why beside :mod:`.bitswap_fetch`: that one walks a *file* DAG with a window of wants; a
directory block someone browses (``/ipns/<another node>/core/os/x86_64/``) is a single
want, answered by whichever peer has it. Each peer is asked once, all at the same time; the
first block that matches the CID wins (the engine checks it), DONT_HAVEs and silence from
everyone end the wait early or at the timeout.
"""

from __future__ import annotations

import trio
from libp2p.peer.id import ID

from pacswarm.ipfs.bitswap import BitswapEngine
from pacswarm.ipfs.cid import CID


class _OneBlock:
    """A BlockSink for a single CID."""

    def __init__(self, cid: CID, peers: list[ID]) -> None:
        self.cid = cid
        self.peers = set(peers)
        self.data: bytes | None = None
        self.refused: set[ID] = set()
        self.done = trio.Event()

    def offer(self, peer: ID, digest: bytes, data: bytes) -> bool:
        if digest != self.cid.digest or self.data is not None:
            return False
        self.data = data
        self.done.set()
        return True

    def claims(self, peer: ID, digest: bytes) -> bool:
        return digest == self.cid.digest and self.data is not None

    def expects_from(self, peer: ID) -> bool:
        return False  # a stray block from a peer is its problem, not this want's

    def fail(self, error: Exception) -> None:
        return None

    def dont_have(self, peer: ID, digest: bytes) -> None:
        if digest == self.cid.digest:
            self.refused.add(peer)
            if self.refused >= self.peers:
                self.done.set()


async def fetch_block(
    engine: BitswapEngine, cid: CID, peers: list[ID], timeout: float
) -> bytes | None:
    """The block from the first of ``peers`` that sends it, or None (nobody has it)."""
    if not peers:
        return None
    want = _OneBlock(cid, peers)
    engine.sinks.add(want)
    try:
        for peer in peers:
            try:
                await engine.send_wants(peer, [cid])
            except Exception:
                want.refused.add(peer)
        if want.refused >= want.peers:
            return None
        with trio.move_on_after(timeout):
            await want.done.wait()
        return want.data
    finally:
        engine.sinks.discard(want)
        engine.forget([cid.digest])
        with trio.move_on_after(2) as scope:
            scope.shield = True
            for peer in peers:
                try:
                    await engine.send_wants(peer, [cid], cancel=True)
                except Exception:
                    continue
