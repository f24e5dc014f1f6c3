"""Who may fetch, for real: the gateway seen from other hosts on a LAN, Bitswap between peers.

The gateway runs in this process (root namespace) on 127.0.0.1 and on the bridge of a LAN of
network namespaces (tests/support/netns.py); curl inside a namespace is a client with a
non-loopback address, i.e. another machine on the network the laptop joined. Bitswap runs
between real P2PHost instances on 127.0.0.1 (its access rule is by peer ID, not address).
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pacswarm.config_tables import SwarmConfig
from pacswarm.ipfs.bitswap import WRITERS, MemoryBlocks
from pacswarm.ipfs.bitswap_fetch import FetchError
from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.gateway import gateway_app
from pacswarm.ipfs.host import P2PHost
from pacswarm.ipfs.unixfs import import_bytes
from pacswarm.swarm.access import Access
from tests.support.netns import Lan, NsHost, lan

pytestmark = pytest.mark.timeout(120)

KEY = "extra/x86_64/big-1.0-1-x86_64.pkg.tar.zst"
BIG = os.urandom(3 * 1024 * 1024)
MiB = 1024 * 1024
PEER = "12D3KooWPeerOfTheSwarmPeerOfTheSwarmPeerOfTheSwarm"


def swarm(**changes: object) -> SwarmConfig:
    return replace(SwarmConfig(), **changes)  # type: ignore[arg-type]


@pytest.fixture
def blocks(tmp_path: Path) -> Iterator[tuple[PackageBlockstore, CID]]:
    path = tmp_path / "cache" / KEY
    path.parent.mkdir(parents=True)
    path.write_bytes(BIG)
    store = PackageBlockstore(tmp_path / "b.sqlite", lambda key: tmp_path / "cache" / key)
    root = store.add_package(KEY, path)
    yield store, root
    store.close()


@pytest.fixture
def net() -> Iterator[Lan]:
    with lan(n=2) as hosts:
        yield hosts


@asynccontextmanager
async def gateway(store: PackageBlockstore, access: Access | None, net: Lan) -> AsyncIterator[int]:
    """The gateway on 127.0.0.1 and on the LAN bridge, one port; yields the port."""
    runner = web.AppRunner(gateway_app(store, access))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await web.TCPSite(runner, net.host_ip, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@dataclass
class Answer:
    status: int
    headers: str
    body: bytes
    seconds: float


async def curl(host: NsHost, url: str, tmp: Path) -> Answer:
    """GET ``url`` from inside ``host``'s namespace (a client on another machine)."""
    tag = os.urandom(4).hex()
    head, body = tmp / f"{tag}.head", tmp / f"{tag}.body"
    argv = ["curl", "-s", "-m", "60", "-D", str(head), "-o", str(body), url]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*host.command(argv))
    try:
        await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    seconds = time.monotonic() - started
    headers = head.read_text(errors="replace") if head.exists() else ""
    status = int(headers.split()[1]) if headers else 0
    return Answer(status, headers.lower(), body.read_bytes() if body.exists() else b"", seconds)


def car_url(ip: str, port: int, root: CID) -> str:
    return f"http://{ip}:{port}/ipfs/{root}?format=car"


def test_a_stranger_gets_403_that_says_what_to_do_and_loopback_is_served(
    blocks: tuple[PackageBlockstore, CID], net: Lan, tmp_path: Path
) -> None:
    store, root = blocks

    async def main() -> tuple[Answer, int, int]:
        async with gateway(store, Access(swarm()), net) as port:
            stranger = await curl(net[0], car_url(net.host_ip, port, root), tmp_path)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/ipfs/{root}?format=raw"
                async with session.get(url) as resp:
                    local = resp.status
            # A stranger learns nothing, not even that a CID is malformed.
            probe = await curl(net[0], f"http://{net.host_ip}:{port}/ipfs/nonsense", tmp_path)
            return stranger, local, probe.status

    stranger, local, probe = asyncio.run(main())
    assert stranger.status == 403
    text = stranger.body.decode()
    assert net[0].ip in text
    assert "join its swarm" in text and "serve_public = true" in text
    assert local == 200
    assert probe == 403


def test_a_swarm_peers_ip_is_served_until_it_leaves(
    blocks: tuple[PackageBlockstore, CID], net: Lan, tmp_path: Path
) -> None:
    store, root = blocks
    access = Access(swarm())

    async def main() -> tuple[Answer, Answer, Answer]:
        async with gateway(store, access, net) as port:
            url = car_url(net.host_ip, port, root)
            access.peer_joined(PEER, [net[0].ip])
            peer, other = await curl(net[0], url, tmp_path), await curl(net[1], url, tmp_path)
            access.peer_left(PEER)
            gone = await curl(net[0], url, tmp_path)
            return peer, other, gone

    peer, other, gone = asyncio.run(main())
    assert peer.status == 200
    assert len(peer.body) > len(BIG)  # the whole CAR
    assert other.status == 403  # the machine next to it is not in the swarm
    assert gone.status == 403


def test_serve_public_serves_anyone(
    blocks: tuple[PackageBlockstore, CID], net: Lan, tmp_path: Path
) -> None:
    store, root = blocks

    async def main() -> Answer:
        async with gateway(store, Access(swarm(serve_public=True)), net) as port:
            return await curl(net[1], car_url(net.host_ip, port, root), tmp_path)

    answer = asyncio.run(main())
    assert answer.status == 200 and len(answer.body) > len(BIG)


def test_no_access_is_todays_behaviour(
    blocks: tuple[PackageBlockstore, CID], net: Lan, tmp_path: Path
) -> None:
    store, root = blocks

    async def main() -> Answer:
        async with gateway(store, None, net) as port:
            return await curl(net[1], car_url(net.host_ip, port, root), tmp_path)

    assert asyncio.run(main()).status == 200


def test_over_peer_concurrency_gets_429_with_retry_after(
    blocks: tuple[PackageBlockstore, CID], net: Lan, tmp_path: Path
) -> None:
    """Two slow CARs in flight (a low rate keeps them there); the third request waits."""
    store, root = blocks
    access = Access(swarm(peer_concurrency=2, peer_rate=256 * 1024))
    access.peer_joined(PEER, [net[0].ip])
    access.peer_joined(PEER + "2", [net[1].ip])

    async def main() -> tuple[Answer, Answer, Answer]:
        async with gateway(store, access, net) as port:
            url = car_url(net.host_ip, port, root)
            slow = [asyncio.create_task(curl(net[0], url, tmp_path)) for _ in range(2)]
            key = f"ip:{net[0].ip}"
            deadline = time.monotonic() + 20
            while (access.usage(key) or (0, 0, 0))[1] < 2:
                assert time.monotonic() < deadline, f"two CARs never in flight: {access.usage(key)}"
                await asyncio.sleep(0.02)
            third = await curl(net[0], url, tmp_path)
            neighbour = await curl(net[1], f"{url.split('?')[0]}?format=raw", tmp_path)
            for task in slow:  # the two clients hang up: their slots come free
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            deadline = time.monotonic() + 20
            while (access.usage(key) or (0, 0, 0))[1] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            again = await curl(net[0], f"{url.split('?')[0]}?format=raw", tmp_path)
            return third, neighbour, again

    third, neighbour, again = asyncio.run(main())
    assert again.status == 200
    assert third.status == 429
    assert "retry-after: 1" in third.headers
    assert b"peer_concurrency" in third.body
    assert neighbour.status == 200  # the limit is per client


def test_peer_rate_paces_a_client(
    blocks: tuple[PackageBlockstore, CID], net: Lan, tmp_path: Path
) -> None:
    """Every byte goes through the client's bucket; 3 MiB at 1 MiB/s cannot come in a blink."""
    store, root = blocks
    rate = MiB
    access = Access(swarm(peer_rate=rate))
    access.peer_joined(PEER, [net[0].ip])

    async def main() -> Answer:
        async with gateway(store, access, net) as port:
            return await curl(net[0], car_url(net.host_ip, port, root), tmp_path)

    answer = asyncio.run(main())
    assert answer.status == 200 and len(answer.body) > len(BIG)
    usage = access.usage(f"ip:{net[0].ip}")
    assert usage is not None
    header_bytes = 60  # the CAR header is written before the first paced batch
    assert len(answer.body) - header_bytes <= usage[0] <= len(answer.body)
    # (size - one second's burst) / rate = 2 s; unpaced, a veth moves 3 MiB in milliseconds.
    assert len(answer.body) / answer.seconds < 4 * rate


# ── Bitswap ────────────────────────────────────────────────────────────────────────────


def _blocks_of(data: bytes) -> tuple[CID, MemoryBlocks]:
    result = import_bytes(data)
    leaves = [(leaf.cid, data[leaf.offset : leaf.offset + leaf.length]) for leaf in result.leaves]
    return result.root, MemoryBlocks(leaves + [(n.cid, n.block) for n in result.inner])


@asynccontextmanager
async def p2p_hosts(tmp_path: Path, *sources: MemoryBlocks | None) -> AsyncIterator[list[P2PHost]]:
    started: list[P2PHost] = []
    try:
        for i, source in enumerate(sources):
            host = P2PHost(
                tmp_path / f"key{i}", ["/ip4/127.0.0.1/tcp/0"], mdns=False, blocks=source
            )
            await host.start()
            started.append(host)
        yield started
    finally:
        for host in started:
            await host.stop()


def test_bitswap_serves_swarm_peers_and_tells_others_it_has_nothing(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    root, source = _blocks_of(data)

    async def main() -> tuple[str, bytes, Access, str]:
        async with p2p_hosts(tmp_path, source, None, None) as (seeder, member, stranger):
            access = Access(swarm(peer_rate=MiB, peer_concurrency=1))
            assert seeder.bitswap is not None
            seeder.bitswap.access = access
            access.peer_joined(member.peer_id, ["127.0.0.1"])
            addr = [seeder.listen_addrs()[0]]
            with pytest.raises(FetchError) as refused:
                await stranger.fetch_file(root, io.BytesIO(), addr, stall_timeout=20)
            out = io.BytesIO()
            await member.fetch_file(root, out, addr)
            return str(refused.value), out.getvalue(), access, member.peer_id

    refused, got, access, member = asyncio.run(main())
    assert "no peer has block" in refused  # a DONT_HAVE, not a 20 s stall
    assert got == data
    usage = access.usage(f"peer:{member}")
    assert usage is not None and usage[0] >= len(data)  # every block went through its bucket
    assert usage[2] >= WRITERS - 1  # peer_concurrency = 1: one responder stream, not WRITERS


# ── the LAN harness itself (other tests rely on it: mDNS between nodes) ───────────────

_MCAST_RECV = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("224.0.0.251"), socket.inet_aton(sys.argv[1])))
s.settimeout(20)
print("ready", flush=True)
print(s.recvfrom(100)[0].decode(), flush=True)
"""
_MCAST_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
for _ in range(20):
    s.sendto(b"hello lan", ("224.0.0.251", 5353))
    time.sleep(0.1)
"""


def test_lan_hosts_reach_each_other_by_multicast_and_are_removed_even_on_failure() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), lan(n=2) as hosts:
        names, bridge = [h.netns for h in hosts], hosts.bridge
        receiver = hosts[1].popen(
            [sys.executable, "-c", _MCAST_RECV, hosts[1].ip], stdout=subprocess.PIPE, text=True
        )
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        sent = hosts[0].run([sys.executable, "-c", _MCAST_SEND, hosts[0].ip])
        assert sent.returncode == 0, sent.stderr
        assert receiver.stdout.readline().strip() == "hello lan"  # what mDNS needs
        hosts[0].popen(["sleep", "600"])  # left running: the harness must stop it
        raise RuntimeError("the test failed")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert bridge not in links
