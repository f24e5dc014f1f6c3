"""Peers that announced a package, as sources of the one download pipeline.

Which peers, in which order (:func:`order_offers`): peers on the same LAN first (their bytes
cross no metered or slow uplink), and among equals the one with the fewest transfers in
flight, ties broken at random, so a cluster spreads the load instead of every node hammering
the peer that announced first. Each offer becomes one source (:func:`peer_sources`): the
peer's Trustless Gateway when its URL is known (plain HTTP, the cheapest path), Bitswap over
our libp2p host otherwise (:class:`BitswapSource`). Peers serving a ban for bad bytes
(:class:`~pacswarm.swarm.reputation.Reputation`) are left out.

Nothing here trusts a peer: its bytes are admitted by the download exactly like a mirror's
(sha256 against the db, then the signature); each Bitswap block is checked against its CID on
the way in, and a block or DAG that lies strikes the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, cast

import aiohttp
from libp2p.peer.id import ID

from pacswarm.fetch.peers import GatewaySource, PeerHealth, strike
from pacswarm.fetch.source import Source, SourceFault, Want
from pacswarm.ipfs.bitswap import BlockMismatchError
from pacswarm.ipfs.bitswap_fetch import FetchError, fetch_file
from pacswarm.ipfs.bridge import BridgeError
from pacswarm.ipfs.cid import CID, CIDError
from pacswarm.ipfs.host import P2PHost
from pacswarm.swarm.reputation import Reputation

log = logging.getLogger(__name__)

#: Bytes a Bitswap transfer may get ahead of the download before the trio side waits.
BUFFER_LIMIT = 16 * 1024 * 1024
#: How often a Bitswap transfer checks that the peer is still connected.
CONNECTION_CHECK = 0.25
#: Seconds the trio side waits for the download to take buffered bytes before giving up
#: (the download is gone or the asyncio loop is stuck; either way the fetch must end).
BUFFER_WAIT = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PeerOffer:
    """One peer that announced a package: what it called it and how busy it is with us.

    ``cid``: the root CID the peer announced (text). ``gateway_url``: its gateway, e.g.
    ``http://192.168.1.5:4080``, or None (Bitswap then). ``lan``: same LAN (see
    :func:`is_lan`). ``busy``: transfers this node has in flight from it now.
    """

    peer_id: str
    cid: str
    gateway_url: str | None
    lan: bool
    busy: int


def order_offers(offers: Sequence[PeerOffer], rng: random.Random) -> list[PeerOffer]:
    """LAN peers first, then fewest transfers in flight, ties in random order. Pure."""
    shuffled = list(offers)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda o: (not o.lan, o.busy))  # stable: keeps the shuffle


def is_lan(ips: Iterable[str], local: Sequence[Network] = ()) -> bool:
    """Whether any of a peer's IPs is on our LAN. Pure.

    LAN: loopback, private and link-local ranges (RFC 1918, fc00::/7, fe80::/10, ...), or a
    network this machine has an address in (``local``: IPv6 LANs mostly use global addresses
    of a shared /64, and some LANs use public IPv4). Unparsable IPs count as not LAN.
    """
    for text in ips:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_private or ip.is_link_local:
            return True
        if any(ip.version == net.version and ip in net for net in local):
            return True
    return False


def parse_local_networks(route: str, if_inet6: str) -> list[Network]:
    """Networks this machine is directly on, from Linux's ``/proc/net/route`` (on-link IPv4
    routes: no gateway, not the default route) and ``/proc/net/if_inet6`` (address, prefix
    length; loopback and link-local left out: :func:`is_lan` knows them already). Pure."""
    nets: list[Network] = []
    for line in route.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[2] != "00000000" or fields[7] == "00000000":
            continue
        with contextlib.suppress(ValueError):
            dest, mask = (bytes.fromhex(f)[::-1] for f in (fields[1], fields[7]))
            prefix = bin(int.from_bytes(mask, "big")).count("1")
            nets.append(ipaddress.IPv4Network((ipaddress.IPv4Address(dest), prefix), strict=False))
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        with contextlib.suppress(ValueError):
            ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            if not (ip.is_loopback or ip.is_link_local):
                nets.append(ipaddress.IPv6Network((ip, int(fields[2], 16)), strict=False))
    return nets


def local_networks() -> list[Network]:
    """:func:`parse_local_networks` of this machine (empty where /proc/net is not Linux's)."""
    texts: list[str] = []
    for name in ("/proc/net/route", "/proc/net/if_inet6"):
        try:
            with open(name, encoding="ascii", errors="replace") as f:
                texts.append(f.read())
        except OSError:
            texts.append("")
    return parse_local_networks(*texts)


def peer_sources(
    offers: Sequence[PeerOffer],
    host: P2PHost | None,
    session: aiohttp.ClientSession,
    reputation: Reputation,
    health: PeerHealth,
    first_byte_within: float,
) -> list[Source]:
    """One source per offer, in the offers' order; ignored peers and bad CIDs left out.

    A peer with a gateway URL is asked over HTTP, else over Bitswap (only if ``host``, our
    libp2p host, is running: without IPFS such a peer cannot be asked).
    """
    now = time.monotonic()
    sources: list[Source] = []
    for offer in offers:
        if reputation.ignored(offer.peer_id, now):
            continue
        try:
            root = CID.parse(offer.cid)
        except (CIDError, ValueError) as e:
            log.debug("peer %s announced a bad CID %r: %s", offer.peer_id, offer.cid, e)
            continue
        if offer.gateway_url:
            sources.append(
                GatewaySource(
                    offer.gateway_url,
                    root,
                    session,
                    health,
                    peer_id=offer.peer_id,
                    reputation=reputation,
                    first_byte_within=first_byte_within,
                )
            )
        elif host is not None:
            sources.append(
                BitswapSource(host, offer.peer_id, root, reputation, health, first_byte_within)
            )
    return sources


class BitswapSource:
    """One peer over Bitswap, for one root CID, streamed to the download as blocks arrive.

    The Bitswap fetch (:func:`pacswarm.ipfs.bitswap_fetch.fetch_file`, by peer ID for a
    connected peer, else ``P2PHost.fetch_file`` with ``addr``) writes the file in order to a
    file object on the trio thread;
    :class:`_QueueWriter` hands each piece to this asyncio task as it is written, so the
    download sees the first bytes as soon as the first leaf arrives (the first-byte deadline
    and the stall watchdog judge the peer, not the whole fetch). Cancelling the stream (the
    download moved on) cancels the trio fetch, which cancels its wants at the peer.
    """

    def __init__(
        self,
        host: P2PHost,
        peer_id: str,
        root: CID,
        reputation: Reputation,
        health: PeerHealth,
        first_byte_within: float,
        *,
        addr: str | None = None,
    ) -> None:
        self.host = host
        self.peer_id = peer_id
        self.root = root
        self.reputation = reputation
        self.health = health
        self.first_byte_within: float | None = first_byte_within
        self.addr = addr  # a multiaddr to dial; None: the peer is connected already

    @property
    def name(self) -> str:
        return f"peer bitswap {self.peer_id}"

    def can_deliver(self, want: Want, offset: int) -> bool:
        return offset < want.size

    async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
        writer = _QueueWriter(asyncio.get_running_loop())
        fetch = asyncio.create_task(
            self._fetch(cast(BinaryIO, writer), want, offset),
            name=f"bitswap {self.root} from {self.peer_id}",
        )
        fetch.add_done_callback(lambda task: (writer.end(), _retrieved(task)))
        watch = asyncio.create_task(self._watch_connection(writer))
        try:
            while (piece := await writer.get()) is not None:
                yield piece
            await self._outcome(fetch)
        finally:
            watch.cancel()
            writer.close()  # first: a trio side waiting for room must not keep waiting
            fetch.cancel()  # cancels the trio fetch, which cancels our wants at the peer
            await asyncio.wait({fetch, watch})

    async def _fetch(self, out: BinaryIO, want: Want, offset: int) -> int:
        """``P2PHost.fetch_file`` for a multiaddr; for a connected peer, the same Bitswap
        fetch by peer ID on the trio thread. Why not ``fetch_file(peers=["/p2p/ID"])``: the
        host would "connect" it, which puts an empty address in the peerstore (which the DHT
        then hands to others)."""
        if self.addr is not None:
            return await self.host.fetch_file(
                self.root, out, [self.addr], offset=offset, max_size=want.size
            )
        return await self.host.bridge.run(self._fetch_in_trio, out, want.size, offset)

    async def _fetch_in_trio(self, out: BinaryIO, size: int, offset: int) -> int:
        engine = self.host.bitswap
        if engine is None:
            raise BridgeError("the libp2p host is not running")
        peer = ID.from_base58(self.peer_id)
        return await fetch_file(
            engine, self.root, out, [peer], self.host.window, max_size=size, offset=offset
        )

    async def _watch_connection(self, writer: _QueueWriter) -> None:
        """End the transfer as soon as the peer's connection is gone (a killed peer), rather
        than when the stall watchdog notices that nothing comes any more."""
        was_connected = False
        while True:
            await asyncio.sleep(CONNECTION_CHECK)
            connected = self._connected()
            if was_connected and not connected:
                writer.abort(f"the peer disconnected (after {writer.taken} bytes)")
                return
            was_connected = was_connected or connected

    def _connected(self) -> bool:
        try:
            return self.peer_id in self.host.connected_peers()
        except RuntimeError:  # the trio thread changed the connections while we looked
            return True

    async def _outcome(self, fetch: asyncio.Task[int]) -> None:
        """The fetch's end as the download understands it: done, or a SourceFault."""
        try:
            await fetch
        except BlockMismatchError as e:
            strike(self.reputation, self.peer_id, str(e))
            raise SourceFault(f"sent a block that does not match its CID: {e}") from None
        except FetchError as e:
            if str(e).startswith("bad DAG"):
                strike(self.reputation, self.peer_id, str(e))
            raise SourceFault(str(e)) from None
        except BridgeError as e:
            raise SourceFault(f"libp2p is not running: {e}", penalise=False) from None
        except (OSError, ValueError) as e:  # an unparsable address, a refused dial
            raise SourceFault(f"cannot reach the peer: {type(e).__name__}: {e}") from None

    def failed(self, reason: str, *, bad_content: bool = False) -> None:
        log.warning("%s failed: %s (skipped for a while)", self.name, reason)
        self.health.failed(self.name, reason, time.monotonic())
        if bad_content:
            strike(self.reputation, self.peer_id, reason)

    def succeeded(self) -> None:
        self.health.succeeded(self.name, time.monotonic())


def _retrieved(task: asyncio.Task[int]) -> None:
    """Mark a finished fetch's outcome as seen (the stream may be gone: no warning then)."""
    if not task.cancelled():
        task.exception()


class _QueueWriter:
    """A write-only file object for the trio thread whose bytes come out on asyncio.

    ``write`` (trio thread) appends to a deque and wakes the asyncio reader with
    ``call_soon_threadsafe``; ``get`` (asyncio) takes what is there. Buffering is bounded:
    beyond :data:`BUFFER_LIMIT` bytes not yet taken, ``write`` waits (blocking the trio
    thread, which only happens if the asyncio loop is stuck: the download writes to a local
    file far faster than a network delivers) and raises after :data:`BUFFER_WAIT` s or once
    the reader is gone (``close``), which ends the fetch.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = BUFFER_LIMIT) -> None:
        self._loop = loop
        self._limit = limit
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._closed = False
        self._error: str | None = None
        self.taken = 0  # bytes handed to the download
        self._room = threading.Condition()
        self._ready = asyncio.Event()

    # trio thread ----------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> int:
        piece = bytes(data)
        with self._room:
            if not self._room.wait_for(
                lambda: self._closed or self._buffered < self._limit, BUFFER_WAIT
            ):
                raise OSError(f"the download took no bytes for {BUFFER_WAIT:g} s")
            if self._closed:
                raise OSError("the download no longer wants these bytes")
            self._pieces.append(piece)
            self._buffered += len(piece)
        self._wake()
        return len(piece)

    def flush(self) -> None:
        pass

    # asyncio loop ---------------------------------------------------------------------------

    def end(self) -> None:
        """The fetch finished (either way): ``get`` returns None once the pieces are taken."""
        self._ended = True
        self._ready.set()

    def abort(self, reason: str) -> None:
        """End the transfer with a fault: ``get`` raises :class:`SourceFault` (``reason``)."""
        self._error = reason
        self._ready.set()

    def close(self) -> None:
        with self._room:
            self._closed = True
            self._pieces.clear()
            self._buffered = 0
            self._room.notify_all()

    async def get(self) -> bytes | None:
        """The next piece, or None once the fetch ended and everything was taken.

        Raises :class:`SourceFault` once aborted (what arrived before is still handed over).
        """
        while True:
            with self._room:
                if self._pieces:
                    pieces = list(self._pieces)
                    self._pieces.clear()
                    self._buffered = 0
                    self._room.notify_all()
                    piece = b"".join(pieces)
                    self.taken += len(piece)
                    return piece
            if self._error is not None:
                raise SourceFault(self._error)
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            self._loop.call_soon_threadsafe(self._ready.set)
