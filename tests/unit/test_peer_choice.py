"""Which peers a download asks, in which order, and where they sit in the source plan.

Pure choices (no sockets): LAN peers first, the load spread over the peers that have the
file, banned peers and bad CIDs left out, one gateway or Bitswap source per peer, and the
plan's order cache -> peers -> mirrors with penalised peers last among peers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp

from pacswarm.config import Config
from pacswarm.fetch.peers import GatewaySource, PeerHealth
from pacswarm.fetch.plan import SourcePlan
from pacswarm.fetch.source import CacheSource, Source, Want
from pacswarm.ipfs.host import P2PHost
from pacswarm.ipfs.unixfs import import_bytes
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.swarm.reputation import Reputation
from pacswarm.swarm.sources import (
    BitswapSource,
    PeerOffer,
    _QueueWriter,
    is_lan,
    order_offers,
    parse_local_networks,
    peer_sources,
)
from pacswarm.upstream import Upstream

ROOT = str(import_bytes(b"a package").root)
RP = RequestPath("core", "x86_64", "foo-1-1-x86_64.pkg.tar.zst", FileKind.PACKAGE)
WANT = Want(RP, PackageRecord(RP.filename, "foo", "1-1", 9, "0" * 64, None))


def _offer(peer: str, *, lan: bool = False, busy: int = 0, url: str | None = None) -> PeerOffer:
    return PeerOffer(peer, ROOT, url, lan, busy)


def test_lan_peers_come_first_then_the_least_busy() -> None:
    offers = [
        _offer("far-idle"),
        _offer("lan-busy", lan=True, busy=2),
        _offer("far-busy", busy=5),
        _offer("lan-idle", lan=True),
    ]
    ordered = [o.peer_id for o in order_offers(offers, random.Random(1))]
    assert ordered == ["lan-idle", "lan-busy", "far-idle", "far-busy"]


def test_equal_peers_share_the_load() -> None:
    """Three equally good peers: over many downloads each is asked first about a third of
    the time (a fixed order would send every node to the same peer)."""
    offers = [_offer(p, lan=True) for p in ("a", "b", "c")]
    rng = random.Random(7)
    first = Counter(order_offers(offers, rng)[0].peer_id for _ in range(3000))
    assert set(first) == {"a", "b", "c"}
    assert all(800 < n < 1200 for n in first.values()), first


def test_lan_is_loopback_private_link_local_or_one_of_our_networks() -> None:
    ours = [ipaddress.ip_network("81.2.69.0/24"), ipaddress.ip_network("2a02:8071:1::/64")]
    assert is_lan(["127.0.0.1"])
    assert is_lan(["192.168.1.20"]) and is_lan(["10.0.0.5"]) and is_lan(["172.16.3.4"])
    assert is_lan(["fe80::1%eth0"]) and is_lan(["fd12::3"]) and is_lan(["::ffff:192.168.0.9"])
    assert is_lan(["81.2.69.9"], ours) and is_lan(["2a02:8071:1::42"], ours)  # public, ours
    assert not is_lan(["81.2.70.7"], ours) and not is_lan(["2a02:8071:2::42"], ours)
    assert not is_lan(["not an ip", "8.8.8.8"])
    assert is_lan(["8.8.8.8", "192.168.1.2"])  # any connection's address will do


def test_our_networks_are_read_from_linux_proc_net() -> None:
    route = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default: skipped
        "eth0\t007100CB\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 203.0.113.0/24
        "eth1\t00000A0A\t01000A0A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n"  # via a gateway
    )
    inet6 = (
        "20010db8000100000000000000000042 02 40 00 00 eth0\n"
        "fe800000000000000000000000000001 02 40 20 80 eth0\n"  # link-local: known anyway
        "00000000000000000000000000000001 01 80 10 80 lo\n"
        "garbage\n"
    )
    nets = parse_local_networks(route, inet6)
    assert nets == [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:1::/64")]


def test_peer_sources_gateway_if_known_else_bitswap_and_banned_peers_left_out(
    tmp_path: Path,
) -> None:
    host = P2PHost(tmp_path / "key", ["/ip4/127.0.0.1/tcp/0"], mdns=False)  # never started
    reputation = Reputation(strikes=1, ban=3600.0)
    now = time.monotonic()  # the node's clock (since boot: a fresh machine is near 0)
    reputation.strike("banned", "sent a bad file", now=now - 2 * 3600.0)
    reputation.strike("liar", "sent a bad file", now=now + 1e12)  # banned until long after now
    offers = [
        _offer("gw", url="http://192.168.1.5:4080"),
        _offer("bs"),
        _offer("liar", url="http://192.168.1.6:4080"),
        PeerOffer("badcid", "not-a-cid", None, True, 0),
        _offer("banned"),  # its ban (from t=0) is over
    ]

    async def build(with_host: bool) -> list[Source]:
        async with aiohttp.ClientSession() as session:
            h = host if with_host else None
            return peer_sources(offers, h, session, reputation, PeerHealth(60.0), 2.0)

    sources = asyncio.run(build(True))
    assert [type(s) for s in sources] == [GatewaySource, BitswapSource, BitswapSource]
    assert [s.name for s in sources] == [
        "peer http://192.168.1.5:4080",
        "peer bitswap bs",
        "peer bitswap banned",
    ]
    assert all(s.first_byte_within == 2.0 for s in sources)
    gateway = sources[0]
    assert isinstance(gateway, GatewaySource) and gateway.peer_id == "gw"
    assert [s.name for s in asyncio.run(build(False))] == ["peer http://192.168.1.5:4080"]


def test_a_bad_content_failure_strikes_the_peer_and_a_plain_one_does_not(tmp_path: Path) -> None:
    reputation = Reputation(strikes=2, ban=3600.0)
    health = PeerHealth(60.0)

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            offer = _offer("p", url="http://192.168.1.5:4080")
            (source,) = peer_sources([offer], None, session, reputation, health, 2.0)
            source.failed("connection refused")
            assert reputation.struck() == {}
            source.failed("sent a bad foo", bad_content=True)
            source.failed("sent a bad foo", bad_content=True)

    asyncio.run(run())
    assert reputation.struck() == {"p": 2}
    assert peer_sources([_offer("p")], None, None, reputation, health, 2.0) == []  # type: ignore[arg-type]


class _Named:
    first_byte_within: float | None = 2.0
    peer_id: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name


def test_the_plan_is_cache_then_peers_then_mirrors_with_penalised_peers_last(
    tmp_path: Path,
) -> None:
    upstream = Upstream(["http://127.0.0.1:9/$repo/os/$arch"], Config(data_dir=tmp_path))
    cache = CacheSource(lambda rp: tmp_path / rp.filename, lambda rp: None)
    sick = {"peer sick"}
    asked: list[Want] = []

    def peers(want: Want) -> list[Source]:
        asked.append(want)
        return [_Named("peer sick"), _Named("peer well")]  # type: ignore[list-item]

    plan = SourcePlan(lambda: cache, upstream, lambda name, now: name in sick, peers)
    names = [s.name for s in plan.sources(WANT, [_Named("peer extra")])]  # type: ignore[list-item]
    assert names == [
        "cache",
        "peer extra",
        "peer well",
        "peer sick",
        "http://127.0.0.1:9/$repo/os/$arch",
    ]
    assert asked == [WANT]


def test_a_plan_whose_peer_lookup_breaks_still_has_the_mirrors(tmp_path: Path) -> None:
    upstream = Upstream(["http://127.0.0.1:9/$repo/os/$arch"], Config(data_dir=tmp_path))
    cache = CacheSource(lambda rp: tmp_path / rp.filename, lambda rp: None)

    def broken(want: Want) -> list[Source]:
        raise RuntimeError("announcement cache is closed")

    plan = SourcePlan(lambda: cache, upstream, lambda name, now: False, broken)
    assert [s.name for s in plan.sources(WANT)] == ["cache", "http://127.0.0.1:9/$repo/os/$arch"]
    default = SourcePlan(lambda: cache, upstream, lambda name, now: False)
    assert [s.name for s in default.sources(WANT)] == ["cache", "http://127.0.0.1:9/$repo/os/$arch"]


def test_the_bitswap_writer_streams_in_order_with_bounded_buffering() -> None:
    """The trio thread's writes come out on asyncio as they are made; past the limit the
    writer waits for the reader, and once the reader is gone a write fails (ending the fetch)
    instead of blocking the trio thread."""

    async def run() -> tuple[bytes, list[str], str]:
        writer = _QueueWriter(asyncio.get_running_loop(), limit=4)
        events: list[str] = []

        def trio_side() -> None:
            for piece in (b"ab", b"cd", b"ef"):  # the third must wait: 4 bytes are buffered
                writer.write(piece)
                events.append(f"wrote {piece.decode()}")

        thread = threading.Thread(target=trio_side)
        thread.start()
        while len(events) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        blocked = list(events)  # the third write is waiting for room
        got = await writer.get() or b""
        await asyncio.to_thread(thread.join, 5)
        writer.end()  # the fetch returned
        while (piece := await writer.get()) is not None:
            got += piece
        writer.close()
        try:
            writer.write(b"late")
            late = "accepted"
        except OSError as e:
            late = str(e)
        return got, blocked, late

    got, blocked, late = asyncio.run(run())
    assert got == b"abcdef"
    assert blocked == ["wrote ab", "wrote cd"]
    assert late == "the download no longer wants these bytes"
