"""How a py-libp2p host is built for pacswarm, and the guards around it.

Split from :mod:`.host` (which holds the asyncio-facing :class:`~.host.P2PHost`): these are
the py-libp2p-facing parts, touched only on the trio thread.

* Noise + Yamux only, and py-libp2p's AutoConnector replaced by one that dials nobody (by
  default it wants 50-150 connections and redials every peer it ever heard of).
* :func:`guard_streams`: py-libp2p runs inbound stream handlers in the connection's task, so
  a handler that raised (one malformed frame from one peer) cancelled the swarm and ended the
  whole host; wrapped, the stream is reset and counted, and everything else carries on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import multiaddr  # type: ignore[import-untyped]
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream, INetwork
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger("pacswarm.ipfs.host")


class _QuietAutoConnector(AutoConnector):
    """py-libp2p's AutoConnector with the redial loop switched off (module docstring)."""

    async def maybe_connect(self) -> None:
        return None


StreamHandler = Callable[[INetStream], Awaitable[None]]


def guard_streams(network: INetwork, on_error: Callable[[str], None]) -> None:
    """Wrap the swarm's one entry point for inbound streams (see the module docstring)."""
    if not isinstance(network, Swarm):
        return
    inner: StreamHandler = network.common_stream_handler

    async def guarded(stream: INetStream) -> None:
        try:
            await inner(stream)
        except Exception as e:
            peer = stream.muxed_conn.peer_id.to_base58()
            protocol = stream.get_protocol()
            log.info(
                "stream %s from %s failed (%s: %s): reset", protocol, peer, type(e).__name__, e
            )
            on_error(peer)
            with contextlib.suppress(Exception):
                await stream.reset()

    network.set_stream_handler(guarded)


def build_host(key: KeyPair, listen: list[multiaddr.Multiaddr], mdns: bool) -> IHost:
    noise = NoiseTransport(key, noise_privkey=new_x25519_key_pair().private_key)
    config = ConnectionConfig(min_connections=0, low_watermark=0)
    host = new_host(
        key_pair=key,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=listen,
        enable_mDNS=mdns,
        connection_config=config,
    )
    network = host.get_network()
    if isinstance(network, Swarm):
        network.auto_connector = _QuietAutoConnector(network, config.auto_connect_interval)
    return host


def quiet_libp2p_logs() -> None:
    """KadDHT warns on every peer that simply closes its query stream: keep that out of logs."""
    dht_log = logging.getLogger("libp2p.kad_dht.kad_dht")
    if dht_log.level == logging.NOTSET:
        dht_log.setLevel(logging.ERROR)


def protocols(host: IHost, peer: ID) -> list[str]:
    try:
        return [str(p) for p in host.get_peerstore().get_protocols(peer) or []]
    except Exception:
        return []


async def close_connections(host: IHost) -> None:
    """Close every connection, so peers see us go (py-libp2p leaves the sockets open)."""
    with trio.move_on_after(3):
        for peer in list(host.get_connected_peers()):
            with contextlib.suppress(Exception):
                await host.disconnect(peer)


def remote_ips(host: IHost, peer: ID) -> list[str]:
    ips: list[str] = []
    for conn in host.get_network().get_connections(peer):
        try:
            address = conn.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
        except Exception:
            address = None
        if address and address[0] not in ips:
            ips.append(str(address[0]))
    return ips
