"""IPNS between real libp2p hosts on 127.0.0.1: publish on one node, resolve on another.

Three P2PHosts (py-libp2p, our DHT value handler, gossipsub) with mDNS off and no bootstrap:
nothing leaves loopback. What a user of ``/ipns/<name>/`` would notice: another node finds
the name's current root, by the DHT under the spec's binary key (served by a peer that is not
the publisher) and over IPNS-over-PubSub; and a replayed old record or a forged one never
takes the place of the good one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import trio
import varint  # type: ignore[import-untyped]
from aiohttp import web
from libp2p.abc import INetStream
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.peer.id import ID
from libp2p.utils.varint import read_varint_prefixed_bytes_limited

from pacswarm.cli import main
from pacswarm.config import load_config
from pacswarm.config_tables import IpnsConfig
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.dhtvalues import DhtValues
from pacswarm.ipfs.host import P2PHost
from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipns.publisher import IpnsPublisher
from pacswarm.ipns.record import build_record, ipns_name, name_multihash, routing_key
from pacswarm.ipns.resolver import IpnsResolver
from pacswarm.ipns.sequence import SequenceCounter
from pacswarm.node import Node
from pacswarm.proxy import COMMAND_HEADER
from tests.support.protowire import field_value_offset

T = TypeVar("T")
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
ROOT1 = CID.of(b"folder root one")
ROOT2 = CID.of(b"folder root two")
ROOT3 = CID.of(b"folder root three")
CONFIG = IpnsConfig(lifetime=48 * 3600.0, ttl=300.0, republish=4 * 3600.0)

pytestmark = pytest.mark.timeout(120)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


@asynccontextmanager
async def hosts(tmp_path: Path, count: int) -> AsyncIterator[list[P2PHost]]:
    started: list[P2PHost] = []
    try:
        for i in range(count):
            host = P2PHost(tmp_path / f"key{i}", LOOPBACK, bootstrap=(), mdns=False)
            await host.start()
            started.append(host)
        yield started
    finally:
        for host in started:
            await host.stop()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def in_routing_table(host: P2PHost, count: int) -> None:
    async def size() -> int:
        assert host.dht is not None
        return host.dht.get_routing_table_size()

    async def check() -> bool:
        return await host.bridge.run(size) >= count

    await until(check, f"{count} peer(s) in the DHT routing table of {host.peer_id}")


def publisher_for(tmp_path: Path, host: P2PHost | None, index: int = 0) -> IpnsPublisher:
    key = load_or_create_identity(tmp_path / f"key{index}").private_key
    sequence = SequenceCounter(tmp_path / f"ipns{index}" / "sequence")
    return IpnsPublisher(key, sequence, CONFIG, host)


def test_dht_resolves_a_name_through_a_peer_under_the_binary_key(tmp_path: Path) -> None:
    """A publishes; B (a DHT peer) stores the record under b"/ipns/" + multihash; A goes
    away; C, which never met A, resolves A's name from B."""

    async def main() -> None:
        async with hosts(tmp_path, 3) as (a, b, c):
            await a.connect(b.listen_addrs()[0])
            await c.connect(b.listen_addrs()[0])
            await in_routing_table(a, 1)
            publisher = publisher_for(tmp_path, a)
            await publisher.publish(ROOT1)
            key = routing_key(publisher.multihash)
            assert key.startswith(b"/ipns/\x00$\x08\x01") and len(key) == 6 + 38
            held = b.ipns_records.get(key)  # what B's DHT stored, under the binary key
            assert held is not None and held.raw == publisher.record

            async def text_store_size() -> int:
                assert b.dht is not None
                return b.dht.value_store.size()

            assert await b.bridge.run(text_store_size) == 0  # nothing in py's text-key store
            await a.stop()
            resolver = IpnsResolver(publisher_for(tmp_path / "c", c), c)
            resolved = await resolver.resolve(publisher.name)
            assert resolved is not None and resolved.value == ROOT1
            assert resolved.record == publisher.record and resolved.ttl == 300.0
            assert resolver.cached(publisher.name) is not None
            assert resolver.cached(publisher.name)[1] == "dht"  # type: ignore[index]
            await resolver.stop()

    run(main())


def test_pubsub_brings_a_new_record_without_a_lookup(tmp_path: Path) -> None:
    """B resolves A's name once (DHT, and it subscribes); A's next publish reaches B over
    the /record/ topic, and B answers the new root inside the old record's TTL."""

    async def main() -> None:
        async with hosts(tmp_path, 2) as (a, b):
            await a.connect(b.listen_addrs()[0])
            await in_routing_table(a, 1)
            publisher = publisher_for(tmp_path, a)
            await publisher.publish(ROOT1)
            resolver = IpnsResolver(publisher_for(tmp_path / "b", None), None)
            resolver.attach(b)  # as a node does: the gateway gets it before the host exists
            first = await resolver.resolve(publisher.name)
            assert first is not None and first.value == ROOT1

            async def b_in_mesh() -> bool:
                return b.peer_id in await a.pubsub.mesh_peers(publisher.topic)

            await until(b_in_mesh, "B in the mesh of A's /record/ topic")
            await publisher.publish(ROOT2)

            async def arrived() -> bool:
                held = resolver.cached(publisher.name)
                return held is not None and held[0].sequence == 2

            await until(arrived, "record 2 over pubsub")
            assert resolver.cached(publisher.name)[1] == "pubsub"  # type: ignore[index]
            resolved = await resolver.resolve(publisher.name)
            assert resolved is not None and resolved.value == ROOT2
            await resolver.stop()

    run(main())


def test_old_or_forged_records_never_replace_the_good_one(tmp_path: Path) -> None:
    """With record 2 of A's name held by B (DHT store and resolver cache), C replays
    record 1 and sends a forged 99, by PUT_VALUE and by pubsub: B keeps 2; a real 3 wins."""

    async def main() -> None:
        async with hosts(tmp_path, 3) as (a, b, c):
            await a.connect(b.listen_addrs()[0])
            await c.connect(b.listen_addrs()[0])
            await in_routing_table(a, 1)
            publisher = publisher_for(tmp_path, a)
            key_a = load_or_create_identity(tmp_path / "key0").private_key
            await publisher.publish(ROOT1)
            old = publisher.record
            assert old is not None
            resolver = IpnsResolver(publisher_for(tmp_path / "b", b), b)
            await resolver.resolve(publisher.name)

            async def b_in_mesh() -> bool:
                return b.peer_id in await a.pubsub.mesh_peers(publisher.topic)

            await until(b_in_mesh, "B in the mesh of A's topic")
            await publisher.publish(ROOT2)
            key = routing_key(publisher.multihash)

            async def b_has(seq: int) -> bool:
                held = resolver.cached(publisher.name)
                stored = b.ipns_records.get(key)
                return held is not None and held[0].sequence == seq and stored is not None

            await until(lambda: b_has(2), "record 2 at B")
            forged = bytearray(
                build_record(
                    key_a,
                    f"/ipfs/{ROOT3}",
                    sequence=99,
                    now_ns=time.time_ns(),
                    lifetime_ns=3600 * 10**9,
                    ttl_ns=10**9,
                )
            )
            forged[field_value_offset(bytes(forged), 8) + 8] ^= 1  # signatureV2 fails

            async def put_at_b(raw: bytes) -> bool:
                assert c.dht_values is not None
                return await c.dht_values.put_to(ID.from_base58(b.peer_id), key, raw)

            assert await c.bridge.run(put_at_b, old) is False
            assert await c.bridge.run(put_at_b, bytes(forged)) is False
            assert b.ipns_records.get(key).sequence == 2  # type: ignore[union-attr]

            received = b.pubsub.received()
            await c.pubsub.publish(publisher.topic, old)

            async def delivered() -> bool:
                return b.pubsub.received() > received

            await until(delivered, "the replayed record 1 delivered to B")
            drops = b.pubsub.drops().get(c.peer_id, 0)
            await c.pubsub.publish(publisher.topic, bytes(forged))

            async def dropped() -> bool:
                return b.pubsub.drops().get(c.peer_id, 0) > drops

            await until(dropped, "the forged record dropped by B's validator")
            resolved = await resolver.resolve(publisher.name)
            assert resolved is not None and resolved.value == ROOT2
            assert resolver.cached(publisher.name)[0].sequence == 2  # type: ignore[index]

            await publisher.publish(ROOT3)  # the real owner still moves on
            await until(lambda: b_has(3), "record 3 at B")
            resolved = await resolver.resolve(publisher.name)
            assert resolved is not None and resolved.value == ROOT3
            await resolver.stop()

    run(main())


def test_publish_with_the_network_down_keeps_the_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host is gone: publish still signs and keeps the record and says what failed."""

    async def main() -> IpnsPublisher:
        async with hosts(tmp_path, 1) as (a,):
            publisher = publisher_for(tmp_path, a)
            await a.stop()
            with caplog.at_level(logging.WARNING, logger="pacswarm.ipns.publisher"):
                raw = await publisher.publish(ROOT1)
            assert raw == publisher.record and publisher.root == ROOT1
            return publisher

    publisher = run(main())
    assert publisher.record_path.read_bytes() == publisher.record
    assert "DHT put of record 1 failed" in caplog.text
    assert "pubsub publish of record 1 failed" in caplog.text


# --- the command line: `pacswarm id` and `pacswarm publish` ------------------------------


def test_id_prints_the_ipns_name_of_the_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["id", "--data-dir", str(data), "--mirrorlist", str(tmp_path / "none")]) == 0
    key = load_or_create_identity(data / "ipfs" / "identity.key")
    name = ipns_name(name_multihash(key.public_key))
    assert f"ipns: /ipns/{name}\n" in capsys.readouterr().out
    assert name.startswith("k51qzi5uqu5")


def test_publish_without_a_running_node_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    assert main(["publish", "--listen", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"no pacswarm node answers at http://127.0.0.1:{port}/api/publish" in err
    assert "pacswarm serve" in err


def test_publish_asks_the_node_and_prints_name_root_sequence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real pacman-facing app (Node.app()) with a publish_now over a real publisher."""
    config = load_config(None, {"data_dir": str(tmp_path / "data"), "listen": "127.0.0.1:0"})
    node = Node(config, ["http://127.0.0.1:9/$repo/os/$arch"])
    pub = publisher_for(tmp_path, None)

    async def publish_now() -> dict[str, Any]:
        raw = await pub.publish(ROOT1)
        assert pub.current is not None and raw == pub.record
        return {"name": pub.name, "root": str(ROOT1), "sequence": pub.current.sequence}

    node.proxy.publish_now = publish_now

    async def main_() -> tuple[list[int], list[str], int, int]:
        runner = web.AppRunner(node.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            codes = [
                await asyncio.to_thread(main, ["publish", "--listen", f"127.0.0.1:{port}"])
                for _ in range(2)
            ]
            outs = capsys.readouterr().out.split("published ")[1:]
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/api/publish"
                async with session.post(url) as bare:  # no command header: a web page
                    forbidden = bare.status
                node.proxy.publish_now = None
                async with session.post(url, headers={COMMAND_HEADER: "publish"}) as off:
                    unavailable = off.status
        finally:
            await runner.cleanup()
        return codes, outs, forbidden, unavailable

    codes, outs, forbidden, unavailable = run(main_())
    assert codes == [0, 0]
    assert outs[0] == f"/ipns/{pub.name}\n  root: /ipfs/{ROOT1}\n  sequence: 1\n"
    assert outs[1].endswith("  sequence: 2\n")
    assert (forbidden, unavailable) == (403, 503)


class _Replay:
    """A stream that gives back one frame already read, then reads the real stream."""

    def __init__(self, stream: Any, frame: bytes) -> None:
        self._stream, self._frame = stream, frame

    async def read(self, n: int | None = None) -> bytes:
        if self._frame:
            size = len(self._frame) if n is None or n < 0 else n
            out, self._frame = self._frame[:size], self._frame[size:]
            return out
        return bytes(await self._stream.read(n))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _SilentOnGet(DhtValues):
    """A DHT peer that takes GET_VALUE for /ipns/ keys and never answers (a stuck peer)."""

    async def handle_stream(self, stream: INetStream) -> None:
        body = await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE)
        message = Message()
        message.ParseFromString(body)
        if message.type == Message.GET_VALUE and message.key.startswith(b"/ipns/"):
            await trio.sleep_forever()
        frame = bytes(varint.encode(len(body))) + body
        await super().handle_stream(_Replay(stream, frame))  # type: ignore[arg-type]


def test_a_stuck_dht_peer_does_not_hold_up_the_answer(tmp_path: Path) -> None:
    """C asks B (has the record) and S (never answers GET_VALUE) at once: C resolves from B
    without waiting S out (S alone would take longer than the resolver's timeout)."""

    async def main() -> None:
        async with hosts(tmp_path, 4) as (a, b, c, s):

            async def silence() -> None:
                assert s.libp2p_host is not None and s.dht is not None
                _SilentOnGet(s.libp2p_host, s.dht, s.ipns_records).install()

            await s.bridge.run(silence)
            await a.connect(b.listen_addrs()[0])
            for peer in (b, s):
                await c.connect(peer.listen_addrs()[0])
            await in_routing_table(a, 1)
            await in_routing_table(c, 2)
            publisher = publisher_for(tmp_path, None)
            publisher.attach(a)  # a host made after the publisher
            await publisher.publish(ROOT1)
            assert b.ipns_records.get(publisher.routing_key) is not None
            resolver = IpnsResolver(publisher_for(tmp_path / "c", c), c)
            resolved = await resolver.resolve(publisher.name)
            assert resolved is not None and resolved.value == ROOT1
            await resolver.stop()

    run(main())
