"""The libp2p side of a pacswarm node: an asyncio-facing host over py-libp2p on a trio thread.

One :class:`P2PHost` owns (or shares) a :class:`~pacswarm.ipfs.bridge.TrioBridge`; every
py-libp2p object lives and is touched only on that trio thread. The asyncio API is a handful
of coroutines that hop over the bridge.

Choices, and why:

* Noise + Yamux only: what kubo and Helia speak; no plaintext, no mplex to downgrade to.
* py-libp2p's AutoConnector is replaced by a quiet one: by default it wants 50-150
  connections and keeps redialling every peer it ever heard of (field notes). pacswarm dials
  its bootstrap list, mDNS finds, and whoever it fetches from; nothing else.
* Kademlia (py-libp2p's KadDHT, server mode, no random walk) for provide/find_providers;
  peers enter its routing table once identify shows they speak the DHT protocol.
* Bitswap is our own (:mod:`.bitswap`, :mod:`.bitswap_fetch`): the stock one answers on the
  wrong stream for kubo/Helia and is slow as a client.
* Gossipsub (:mod:`.pubsub`, parameters set on purpose there) and one-shot request/response
  protocols (:mod:`.reqresp`) run on every host: ``host.pubsub``, ``host.requests``.
* Peers are watched on the trio thread: a ``peer_filter`` (a private swarm's allowlist) is
  applied as soon as a connection comes up, and the asyncio side gets ``watch_peers``
  callbacks plus snapshots (``peer_ips``, ``peer_protocols``) instead of touching libp2p
  state from its own thread.
* Every inbound stream's handler runs inside :func:`.hostbuild.guard_streams` (one
  malformed frame from one peer costs only its stream, never the host); the peer's
  ``stream_errors`` count goes up.
* How the py-libp2p host is built (Noise, Yamux, the quiet AutoConnector) is in
  :mod:`.hostbuild`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import multiaddr  # type: ignore[import-untyped]
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from pacswarm.ipfs.bitswap import BitswapEngine, BlockSource, MemoryBlocks
from pacswarm.ipfs.bitswap_block import fetch_block
from pacswarm.ipfs.bitswap_fetch import (
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_WINDOW,
    FetchError,
    fetch_file,
)
from pacswarm.ipfs.bridge import TrioBridge
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.dhtvalues import DhtValues, IpnsRecordStore
from pacswarm.ipfs.hostbuild import (
    build_host,
    close_connections,
    guard_streams,
    protocols,
    quiet_libp2p_logs,
    remote_ips,
)
from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipfs.pubsub import PubsubService
from pacswarm.ipfs.reqresp import RequestService
from pacswarm.swarm.access import Access

log = logging.getLogger(__name__)

DEFAULT_LISTEN = ["/ip4/0.0.0.0/tcp/4001"]
KAD_PROTOCOL = "/ipfs/kad/1.0.0"
IDENTIFY_WAIT = 5.0
#: How long identify is still awaited, after a peer was reported without it.
IDENTIFY_LATE = 60.0

PeerCallback = Callable[[str], None]


class PeerRefused(ConnectionError):
    """A dial to a peer that this host's ``peer_filter`` does not allow."""


@dataclass(frozen=True)
class Provider:
    """A peer that announced a CID on the DHT, with the addresses we know for it."""

    peer_id: str
    addrs: tuple[str, ...]


class _ConnectNotifee(INotifee):
    """Feeds newly connected peers to the DHT routing table once identify has run."""

    def __init__(self, p2p: P2PHost) -> None:
        self._p2p = p2p

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        nursery = self._p2p._nursery
        if nursery is not None:
            nursery.start_soon(self._p2p._on_connected, conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._p2p._on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class P2PHost:
    """A libp2p host (Noise, Yamux, identify, ping, Kademlia, Bitswap, gossipsub) for asyncio.

    ``peer_filter(peer_id) -> bool`` (runs on the trio thread: quick and thread-safe): a peer
    failing it is disconnected right after it connects, never dialled, never reported by
    :meth:`watch_peers`, never added to the DHT.
    """

    def __init__(
        self,
        identity_path: Path,
        listen_addrs: Sequence[str] | None = None,
        bootstrap: Sequence[str] = (),
        mdns: bool = True,
        blocks: BlockSource | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        bridge: TrioBridge | None = None,
        access: Access | None = None,
        peer_filter: Callable[[str], bool] | None = None,
    ) -> None:
        quiet_libp2p_logs()
        self.identity_path = Path(identity_path)
        self._listen = list(DEFAULT_LISTEN if listen_addrs is None else listen_addrs)
        self._bootstrap = list(bootstrap)
        self._mdns = mdns
        self.blocks: BlockSource = blocks if blocks is not None else MemoryBlocks()
        self.window = window
        self._owns_bridge = bridge is None
        self.bridge = bridge or TrioBridge()
        self._key = load_or_create_identity(self.identity_path)
        self.peer_id: str = ID.from_pubkey(self._key.public_key).to_base58()
        # trio-thread state
        self.libp2p_host: IHost | None = None
        self.dht: KadDHT | None = None
        self.bitswap: BitswapEngine | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._stopped: trio.Event | None = None
        self._addrs: list[str] = []
        self.pubsub = PubsubService(self.bridge)
        self.requests = RequestService(self.bridge)
        #: /ipns/ records this host's DHT serves (ours and peers'), binary keys.
        self.ipns_records = IpnsRecordStore()
        self.dht_values: DhtValues | None = None  # trio thread only
        self._peer_filter = peer_filter
        self._access = access
        # Peer snapshots for the asyncio side, written on the trio thread under _lock.
        self._lock = threading.Lock()
        self._watchers: list[tuple[PeerCallback, PeerCallback, asyncio.AbstractEventLoop]] = []
        self._ips: dict[str, list[str]] = {}  # every connected peer
        self._protocols: dict[str, list[str]] = {}  # peers reported to watchers
        self._stream_errors: dict[str, int] = {}  # inbound streams whose handler raised

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the trio thread (if ours) and the host; listening when this returns."""
        if self._owns_bridge and not self.bridge.running:
            self.bridge.start()
        try:
            await self.bridge.run(self._start_in_trio)
        except BaseException:
            if self._owns_bridge:
                await self.bridge.aclose()
            raise
        for addr in self._bootstrap:
            try:
                await self.connect(addr)
            except Exception as e:
                log.warning("bootstrap peer %s unreachable: %s", addr, e)

    async def stop(self) -> None:
        """Close every connection and stream, stop the DHT; end the trio thread if ours."""
        try:
            if self.bridge.running and self._stop is not None:
                await self.bridge.run(self._stop_in_trio)
        finally:
            if self._owns_bridge:
                await self.bridge.aclose()

    async def _start_in_trio(self) -> None:
        await self.bridge.nursery.start(self._serve)

    async def _stop_in_trio(self) -> None:
        assert self._stop is not None and self._stopped is not None
        self._stop.set()
        with trio.move_on_after(10):
            await self._stopped.wait()

    async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The host's whole life on the trio thread, from listening to closing."""
        self._stop, self._stopped = trio.Event(), trio.Event()
        listen = [multiaddr.Multiaddr(a) for a in self._listen]
        host = build_host(self._key, listen, self._mdns)
        guard_streams(host.get_network(), self._count_stream_error)
        self.libp2p_host = host
        self.dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False)
        self.dht_values = DhtValues(host, self.dht, self.ipns_records)
        self.dht_values.install()
        self.bitswap = BitswapEngine(host, self.blocks, self._access)
        pubsub, router = self.pubsub.build(host)
        self.requests.attach(host)
        try:
            async with (
                host.run(listen),
                background_trio_service(self.dht),
                background_trio_service(pubsub),
                background_trio_service(router),
                trio.open_nursery() as nursery,
            ):
                await pubsub.wait_until_ready()
                self._nursery = nursery
                self.bitswap.start(nursery)
                host.get_network().register_notifee(_ConnectNotifee(self))
                self._watch_mdns(True)
                self._addrs = [str(a) for a in host.get_addrs()]
                task_status.started()
                await self._stop.wait()
                self._watch_mdns(False)
                await self.bitswap.stop()
                await close_connections(host)
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("libp2p host failed")
            raise
        finally:
            self._nursery = None
            self.pubsub.detach()
            self.requests.detach()
            self._stopped.set()

    def _watch_mdns(self, on: bool) -> None:
        if not self._mdns:
            return
        if on:
            peerDiscovery.register_peer_discovered_handler(self._on_mdns_peer)
        else:
            peerDiscovery.unregister_peer_discovered_handler(self._on_mdns_peer)

    def _on_mdns_peer(self, info: PeerInfo) -> None:
        """Called on zeroconf's thread: hop onto the trio thread to dial the peer."""
        if info.peer_id == ID.from_base58(self.peer_id) or not self._allowed(info.peer_id):
            return
        if self._nursery is not None:
            self.bridge.start_soon(self._dial_quietly, info)

    async def _dial_quietly(self, info: PeerInfo) -> None:
        assert self.libp2p_host is not None
        try:
            with trio.fail_after(10):
                await self.libp2p_host.connect(info)
        except Exception as e:
            log.debug("mDNS peer %s: dial failed: %r", info.peer_id, e)

    # peers (trio thread) ------------------------------------------------------------------

    def _allowed(self, peer: ID) -> bool:
        if self._peer_filter is None:
            return True
        try:
            return bool(self._peer_filter(peer.to_base58()))
        except Exception:
            log.exception("peer_filter raised for %s: refusing the peer", peer)
            return False

    async def _on_connected(self, peer: ID) -> None:
        """A connection came up: refuse it, or wait for identify, report it, feed the DHT."""
        host = self.libp2p_host
        if host is None:
            return
        if not self._allowed(peer):
            log.info("peer %s fails the peer filter: disconnecting", peer)
            with trio.move_on_after(5):
                await host.disconnect(peer)
            return
        name = peer.to_base58()
        with self._lock:
            self._ips[name] = remote_ips(host, peer)
        with trio.move_on_after(IDENTIFY_WAIT):
            while not protocols(host, peer):
                await trio.sleep(0.05)
        self._report_connect(host, peer)
        if not protocols(host, peer):
            # Reported unidentified (a busy peer): report again once identify lands, or a
            # pacswarm peer would count as a plain IPFS peer for the whole connection.
            with trio.move_on_after(IDENTIFY_LATE):
                while not protocols(host, peer):
                    await trio.sleep(0.5)
            self._report_connect(host, peer, late=True)
        await self._add_to_dht(peer)

    def _report_connect(self, host: IHost, peer: ID, *, late: bool = False) -> None:
        name = peer.to_base58()
        with self._lock:
            if name not in self._ips:
                return  # gone already
            known = self._protocols.get(name)
            if known is not None and not (late and not known):
                return  # reported for an earlier connection (or already identified)
            self._protocols[name] = protocols(host, peer)
            if late and not self._protocols[name]:
                return  # still nothing to tell
            for on_connect, _, loop in self._watchers:
                _call_soon(loop, on_connect, name)

    def _on_disconnected(self, peer: ID) -> None:
        host = self.libp2p_host
        name = peer.to_base58()
        with self._lock:
            if host is not None and host.get_network().get_connections(peer):
                self._ips[name] = remote_ips(host, peer)
                return  # another connection to the peer is still up
            self._ips.pop(name, None)
            if self._protocols.pop(name, None) is None:
                return  # never reported: nothing to take back
            for _, on_disconnect, loop in self._watchers:
                _call_soon(loop, on_disconnect, name)

    async def _add_to_dht(self, peer: ID) -> None:
        """Let an identified peer into the routing table if it is a DHT server."""
        host, dht = self.libp2p_host, self.dht
        if host is None or dht is None:
            return
        if KAD_PROTOCOL in protocols(host, peer):
            try:
                await dht.add_peer(peer)
            except Exception as e:
                log.debug("DHT add_peer %s failed: %r", peer, e)

    # asyncio API ----------------------------------------------------------------------------

    def _count_stream_error(self, peer: str) -> None:
        with self._lock:
            self._stream_errors[peer] = self._stream_errors.get(peer, 0) + 1

    def stream_errors(self) -> dict[str, int]:
        """Inbound streams, per peer, that were reset because their handler raised."""
        with self._lock:
            return dict(self._stream_errors)

    def watch_peers(self, on_connect: PeerCallback, on_disconnect: PeerCallback) -> None:
        """Call ``on_connect(peer_id)`` / ``on_disconnect(peer_id)`` on this asyncio loop.

        ``on_connect`` fires once per peer, after identify (so :meth:`peer_protocols` is
        filled) or after ``IDENTIFY_WAIT`` seconds, and then once more if identify lands
        later (within ``IDENTIFY_LATE``); peers already connected are reported at once.
        ``on_disconnect`` fires when the last connection to a reported peer closes.
        Callbacks must not block; an exception is logged and ignored.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            self._watchers.append((on_connect, on_disconnect, loop))
            for name in self._protocols:
                _call_soon(loop, on_connect, name)

    def peer_ips(self, peer_id: str) -> list[str]:
        """Remote IP addresses of the current connections to ``peer_id`` (may be empty)."""
        with self._lock:
            return list(self._ips.get(peer_id, ()))

    def peer_protocols(self, peer_id: str) -> list[str]:
        """Protocols ``peer_id`` announced in identify (empty until it is reported)."""
        with self._lock:
            return list(self._protocols.get(peer_id, ()))

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (``.../tcp/PORT/p2p/PEERID``) the host listens on."""
        suffix = f"/p2p/{self.peer_id}"
        return [a if a.endswith(suffix) else a + suffix for a in self._addrs]

    async def connect(self, addr: str) -> str:
        """Dial a ``/.../p2p/PEERID`` multiaddr; returns the peer ID."""
        return await self.bridge.run(self._connect_in_trio, addr)

    async def _connect_in_trio(self, addr: str) -> str:
        assert self.libp2p_host is not None
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        if not self._allowed(info.peer_id):
            raise PeerRefused(f"peer {info.peer_id} is not allowed by this node's peer filter")
        with trio.fail_after(15):
            await self.libp2p_host.connect(info)
        return info.peer_id.to_base58()

    def connected_peers(self) -> list[str]:
        host = self.libp2p_host
        return [p.to_base58() for p in host.get_connected_peers()] if host else []

    async def provide(self, cid: CID) -> bool:
        """Announce on the DHT that this node has ``cid``."""
        return await self.bridge.run(self._provide_in_trio, cid)

    async def _provide_in_trio(self, cid: CID) -> bool:
        assert self.dht is not None
        return bool(await self.dht.provide(str(cid)))

    async def find_providers(self, cid: CID, limit: int = 20) -> list[Provider]:
        """Peers the DHT knows to have ``cid`` (ourselves included if we provide it)."""
        return await self.bridge.run(self._find_providers_in_trio, cid, limit)

    async def _find_providers_in_trio(self, cid: CID, limit: int) -> list[Provider]:
        assert self.dht is not None
        infos = await self.dht.find_providers(str(cid), limit)
        return [Provider(i.peer_id.to_base58(), tuple(str(a) for a in i.addrs)) for i in infos]

    async def put_ipns(self, key: bytes, record: bytes) -> int:
        """Store an IPNS record under its binary DHT key here and at the closest peers;
        returns how many peers accepted it (see :mod:`.dhtvalues`)."""
        return await self.bridge.run(self._values().put, key, record)

    async def get_ipns(self, key: bytes) -> bytes | None:
        """The best valid IPNS record for a binary DHT key, held here or found on the DHT."""
        return await self.bridge.run(self._values().get, key)

    def _values(self) -> DhtValues:
        if self.dht_values is None or self.libp2p_host is None:
            raise RuntimeError("the DHT is not running: start the P2PHost first")
        return self.dht_values

    async def fetch_file(
        self,
        root: CID,
        out: BinaryIO,
        peers: list[str] | None = None,
        window: int | None = None,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        *,
        max_size: int | None = None,
        deadline: float | None = None,
        offset: int = 0,
    ) -> int:
        """Fetch the UnixFS file ``root`` over Bitswap into ``out``; returns bytes written.

        ``peers``: multiaddrs to fetch from (dialled first); default: the connected peers,
        else DHT providers. ``out`` is written on the trio thread: leave it alone until this
        returns. Every block is checked against its CID (``BlockMismatchError``).
        ``stall_timeout``: seconds without any block before the next peer is tried (or
        :class:`FetchError`); the proxy, bound by pacman's 10 s rule, may want it short.
        ``max_size`` (the db's CSIZE), ``deadline`` and ``offset`` (write the file from there
        on): see :func:`.bitswap_fetch.fetch_file`; give ``max_size`` for any DAG a peer chose.
        """
        window = window or self.window
        args = (root, out, peers, window, stall_timeout, max_size, deadline, offset)
        return await self.bridge.run(self._fetch_in_trio, *args)

    async def _fetch_in_trio(
        self,
        root: CID,
        out: BinaryIO,
        peers: list[str] | None,
        window: int,
        stall_timeout: float,
        max_size: int | None = None,
        deadline: float | None = None,
        offset: int = 0,
    ) -> int:
        assert self.libp2p_host is not None and self.bitswap is not None
        ids = [ID.from_base58(await self._connect_in_trio(a)) for a in peers or []]
        if peers is None:
            ids = list(self.libp2p_host.get_connected_peers())
        if not ids:
            for provider in await self._find_providers_in_trio(root, 5):
                if provider.peer_id != self.peer_id and provider.addrs:
                    addr = f"{provider.addrs[0]}/p2p/{provider.peer_id}"
                    try:
                        ids.append(ID.from_base58(await self._connect_in_trio(addr)))
                    except Exception as e:
                        log.debug("provider %s unreachable: %r", provider.peer_id, e)
        if not ids:
            raise FetchError(f"no peer to fetch {root} from")
        return await fetch_file(
            self.bitswap,
            root,
            out,
            ids,
            window,
            stall_timeout,
            max_size=max_size,
            deadline=deadline,
            offset=offset,
        )

    async def fetch_block(self, cid: CID, timeout: float = 5.0) -> bytes | None:
        """One block from the connected peers over Bitswap (checked), or None."""
        return await self.bridge.run(self._fetch_block_in_trio, cid, timeout)

    async def _fetch_block_in_trio(self, cid: CID, timeout: float) -> bytes | None:
        if self.libp2p_host is None or self.bitswap is None:
            return None
        peers = list(self.libp2p_host.get_connected_peers())
        return await fetch_block(self.bitswap, cid, peers, timeout)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: PeerCallback, peer_id: str) -> None:
    def run() -> None:
        try:
            callback(peer_id)
        except Exception:
            log.exception("peer watcher %r raised for %s", callback, peer_id)

    with contextlib.suppress(RuntimeError):  # the asyncio loop is closed
        loop.call_soon_threadsafe(run)
