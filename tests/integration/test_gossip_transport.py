"""The swarm's transport on loopback: gossipsub, request/response, peer filter and watching.

Real P2PHost instances (py-libp2p on a trio thread each) on 127.0.0.1, mDNS off, no
bootstrap list: nothing here reaches the public network. Each test checks that no thread
outlives it (trio threads, py-libp2p's seen-cache sweeper).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils import encode_varint_prefixed

from pacswarm.ipfs.bitswap import MemoryBlocks
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.host import P2PHost, PeerRefused
from pacswarm.ipfs.pubsub import GRAYLIST_THRESHOLD, MAX_PUBLISH, PubsubError
from pacswarm.ipfs.reqresp import RequestFailed
from pacswarm.ipfs.unixfs import import_bytes
from pacswarm.swarm.protocol import INVENTORY_PROTOCOL

T = TypeVar("T")
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
TOPIC = "/pacswarm-test/1/core/x86_64"
ENTRY = 200  # bytes per announcement entry, about what a real one costs
BATCH = 250  # entries per message, as a real announcer batches them

pytestmark = pytest.mark.timeout(180)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 150))


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


@asynccontextmanager
async def hosts(tmp_path: Path, count: int, **kwargs: Any) -> AsyncIterator[list[P2PHost]]:
    """Started loopback hosts, always stopped."""
    started: list[P2PHost] = []
    try:
        for i in range(count):
            host = P2PHost(tmp_path / f"key{i}", LOOPBACK, bootstrap=(), mdns=False, **kwargs)
            await host.start()
            started.append(host)
        yield started
    finally:
        for host in started:
            await host.stop()


async def until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


async def chain(nodes: list[P2PHost], topic: str) -> None:
    """Connect nodes in a line and wait until each has its neighbours in its mesh."""
    for left, right in itertools.pairwise(nodes):
        await left.connect(right.listen_addrs()[0])
    for i, node in enumerate(nodes):
        neighbours = {n.peer_id for n in nodes[max(i - 1, 0) : i + 2] if n is not node}
        deadline = time.monotonic() + 20
        while not neighbours <= set(await node.pubsub.mesh_peers(topic)):
            assert time.monotonic() < deadline, f"mesh of node {i} never formed"
            await asyncio.sleep(0.05)


def entry(publisher: int, n: int) -> bytes:
    head = f"{publisher}:{n:06d}:".encode()
    return head + b"x" * (ENTRY - len(head))


def entries_of(data: bytes) -> list[str]:
    assert len(data) % ENTRY == 0, len(data)
    return [data[i : i + 11].decode() for i in range(0, len(data), ENTRY)]


def ignore(peer: str, data: bytes) -> None:
    return None


def accept(peer: str, data: bytes) -> bool:
    return True


async def four_in_a_line(nodes: list[P2PHost], got: list[tuple[str, bytes]]) -> None:
    """Publishers 0-1-2 and subscriber 3 in a line: 0 and 1 reach 3 only through relays."""
    *publishers, subscriber = nodes
    for node in publishers:
        await node.pubsub.join(TOPIC, accept, ignore)
    await subscriber.pubsub.join(TOPIC, accept, lambda peer, data: got.append((peer, data)))
    await chain(nodes, TOPIC)
    assert subscriber.connected_peers() == [publishers[2].peer_id]


# ── gossipsub: nothing lost ─────────────────────────────────────────────────────────────


def test_10000_batched_announcements_from_3_peers_all_arrive(tmp_path: Path) -> None:
    total = 10_000
    shares = [range(p, total, 3) for p in range(3)]

    async def main() -> tuple[list[tuple[str, bytes]], list[str], float]:
        got: list[tuple[str, bytes]] = []
        async with hosts(tmp_path, 4) as nodes:
            await four_in_a_line(nodes, got)

            async def announce(p: int) -> None:
                mine = [entry(p, n) for n in shares[p]]
                for i in range(0, len(mine), BATCH):
                    await nodes[p].pubsub.publish(TOPIC, b"".join(mine[i : i + BATCH]))

            started = time.perf_counter()
            await asyncio.gather(*(announce(p) for p in range(3)))
            await until(lambda: sum(len(d) for _, d in got) >= total * ENTRY, 60, "entries")
            seconds = time.perf_counter() - started
            return got, [n.peer_id for n in nodes[:3]], seconds

    got, publishers, seconds = run(main())
    received = [e for _, data in got for e in entries_of(data)]
    assert sorted(received) == sorted(
        entry(p, n)[:11].decode() for p in range(3) for n in shares[p]
    )
    assert {origin for origin, _ in got} == set(publishers)  # two of them only via relays
    print(
        f"\n10,000 announcements in {len(got)} messages: {seconds:.2f} s, "
        f"{total / seconds:,.0f} entries/s"
    )


def test_a_burst_of_450_unbatched_messages_all_arrive(tmp_path: Path) -> None:
    """py-libp2p's defaults lose most of this burst (rate limit of 10/s, 32-slot queues)."""
    each = 150

    async def main() -> tuple[list[tuple[str, bytes]], float]:
        got: list[tuple[str, bytes]] = []
        async with hosts(tmp_path, 4) as nodes:
            await four_in_a_line(nodes, got)

            async def burst(p: int) -> None:
                for n in range(each):
                    await nodes[p].pubsub.publish(TOPIC, entry(p, n))

            started = time.perf_counter()
            await asyncio.gather(*(burst(p) for p in range(3)))
            try:
                await until(lambda: len(got) >= 3 * each, 60, "the whole burst")
            finally:
                print(f"\nburst: {len(got)} of {3 * each} messages arrived")
            return got, time.perf_counter() - started

    got, seconds = run(main())
    assert sorted(e for _, d in got for e in entries_of(d)) == sorted(
        entry(p, n)[:11].decode() for p in range(3) for n in range(each)
    )
    print(f"burst of {3 * each} in {seconds:.2f} s")


# ── validation and scores ───────────────────────────────────────────────────────────────


def test_validator_drops_malformed_counts_the_sender_and_delivers_the_rest(tmp_path: Path) -> None:
    def well_formed(peer: str, data: bytes) -> bool:
        if data == b"explode":
            raise ValueError("a validator bug")
        return data.startswith(b"ok:")

    async def main() -> tuple[list[tuple[str, bytes]], dict[str, int], int, int, str]:
        got: list[tuple[str, bytes]] = []
        async with hosts(tmp_path, 2) as (sender, receiver):
            await sender.pubsub.join(TOPIC, accept, ignore)
            await receiver.pubsub.join(TOPIC, well_formed, lambda p, d: got.append((p, d)))
            await chain([sender, receiver], TOPIC)
            for data in (b"ok:1", b"garbage", b"ok:2", b"explode", b"ok:3"):
                await sender.pubsub.publish(TOPIC, data)
            with pytest.raises(PubsubError, match="smaller batches"):
                await sender.pubsub.publish(TOPIC, b"ok:" + b"x" * MAX_PUBLISH)
            await until(lambda: len(got) >= 3, 20, "the good messages")
            await asyncio.sleep(0.5)  # anything else would have arrived by now
            pubsub = receiver.pubsub
            return got, pubsub.drops(), pubsub.received(), pubsub.dropped(), sender.peer_id

    got, drops, received, dropped, sender_id = run(main())
    assert got == [(sender_id, b"ok:1"), (sender_id, b"ok:2"), (sender_id, b"ok:3")]
    assert drops == {sender_id: 2}
    assert (received, dropped) == (3, 2)


def test_a_negative_app_score_lowers_the_gossipsub_score_and_graylists(tmp_path: Path) -> None:
    async def main() -> tuple[float, float, list[bytes], dict[str, int]]:
        got: list[bytes] = []
        async with hosts(tmp_path, 2) as (peer, me):
            await peer.pubsub.join(TOPIC, accept, ignore)
            await me.pubsub.join(TOPIC, accept, lambda p, d: got.append(d))
            await chain([peer, me], TOPIC)
            before = await me.pubsub.peer_score(peer.peer_id, TOPIC)
            me.pubsub.set_score(peer.peer_id, -1.0)
            after = await me.pubsub.peer_score(peer.peer_id, TOPIC)
            await peer.pubsub.publish(TOPIC, b"while graylisted")
            await until(lambda: me.pubsub.drops().get(peer.peer_id) == 1, 20, "the drop")
            me.pubsub.set_score(peer.peer_id, 0.0)
            await peer.pubsub.publish(TOPIC, b"forgiven")
            await until(lambda: bool(got), 20, "the message after forgiving")
            return before, after, got, me.pubsub.drops()

    before, after, got, _drops = run(main())
    assert after < before
    assert after < GRAYLIST_THRESHOLD
    assert got == [b"forgiven"]


# ── request/response ────────────────────────────────────────────────────────────────────

ECHO = "/pacswarm-test/echo/1.0.0"


def test_request_response_round_trip_errors_limits_and_timeout(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    async def handler(peer: str, data: bytes) -> bytes:
        seen.append((peer, threading.current_thread().name))
        if data == b"boom":
            raise ValueError("handler failed")
        if data == b"big":
            return b"x" * 2_000_000
        if data == b"medium":
            return b"y" * 300_000
        if data == b"slow":
            await asyncio.sleep(30)
        return b"echo:" + data

    async def main() -> dict[str, Any]:
        async with hosts(tmp_path, 2) as (server, client):
            server.requests.serve(ECHO, handler, max_request=1024, max_response=1_000_000)
            await client.connect(server.listen_addrs()[0])
            out: dict[str, Any] = {"client": client.peer_id}
            out["echo"] = await client.requests.ask(server.peer_id, ECHO, b"hello")
            for name, data, kw in [
                ("boom", b"boom", {}),
                ("big", b"big", {}),
                ("small_limit", b"medium", {"max_response": 100_000}),
                ("too_long_request", b"z" * 2048, {}),
                ("unknown", b"hello", {"protocol": "/nobody/speaks/this"}),
            ]:
                protocol = kw.pop("protocol", ECHO)
                with pytest.raises(RequestFailed) as failed:
                    await client.requests.ask(server.peer_id, protocol, data, **kw)
                out[name] = str(failed.value)
            started = time.monotonic()
            with pytest.raises(RequestFailed) as failed:
                await client.requests.ask(server.peer_id, ECHO, b"slow", timeout=1.0)
            out["slow"], out["slow_s"] = str(failed.value), time.monotonic() - started
            out["after"] = await client.requests.ask(server.peer_id, ECHO, b"again")
            return out

    out = run(main())
    assert out["echo"] == b"echo:hello" and out["after"] == b"echo:again"
    assert all(peer == out["client"] for peer, _ in seen)
    assert {thread for _, thread in seen} == {threading.main_thread().name}  # the asyncio loop
    assert "/pacswarm-test/echo/1.0.0" in out["boom"] and "reset or closed" in out["boom"]
    assert "reset or closed" in out["big"]  # the server refuses to send over its limit
    assert "response over 100000 bytes" in out["small_limit"]
    assert "reset or closed" in out["too_long_request"]
    assert "does not speak it" in out["unknown"]
    assert "no response within 1.0 s" in out["slow"]
    assert out["slow_s"] < 10


# ── peers: filter and watch ─────────────────────────────────────────────────────────────


def test_peer_filter_disconnects_strangers_and_watch_peers_reports_friends(tmp_path: Path) -> None:
    events: list[tuple[str, str, list[str], list[str]]] = []

    async def main() -> dict[str, Any]:
        async with hosts(tmp_path, 2) as (friend, stranger):
            allowed = {friend.peer_id}
            me = P2PHost(tmp_path / "me", LOOPBACK, mdns=False, peer_filter=allowed.__contains__)
            await me.start()
            try:

                def on_connect(peer: str) -> None:
                    events.append(("connect", peer, me.peer_protocols(peer), me.peer_ips(peer)))

                def on_disconnect(peer: str) -> None:
                    events.append(("disconnect", peer, [], []))

                me.watch_peers(on_connect, on_disconnect)
                await stranger.connect(me.listen_addrs()[0])
                await friend.connect(me.listen_addrs()[0])
                await until(lambda: bool(events), 10, "the friend reported")
                await until(lambda: me.peer_id not in stranger.connected_peers(), 10, "refusal")
                with pytest.raises(PeerRefused):
                    await me.connect(stranger.listen_addrs()[0])
                still = me.connected_peers()
                await friend.stop()
                await until(lambda: len(events) >= 2, 10, "the friend's disconnect")
                return {"still": still, "friend": friend.peer_id, "stranger": stranger.peer_id}
            finally:
                await me.stop()

    out = run(main())
    (kind, peer, protocols, ips), (kind2, peer2, _, _) = events
    assert (kind, peer) == ("connect", out["friend"])
    assert "/meshsub/1.2.0" in protocols and "/ipfs/id/1.0.0" in protocols
    assert ips == ["127.0.0.1"]
    assert (kind2, peer2) == ("disconnect", out["friend"])
    assert out["still"] == [out["friend"]]  # the stranger was dropped, never reported


def test_a_graylisted_forwarder_cannot_make_us_lose_what_honest_ones_relay(tmp_path: Path) -> None:
    """Origin O reaches S through B (graylisted by S) and C: every message still arrives."""
    count = 60

    async def main() -> tuple[list[bytes], dict[str, int], str]:
        got: list[bytes] = []
        async with hosts(tmp_path, 4) as (origin, bad, good, me):
            for node in (origin, bad, good):
                await node.pubsub.join(TOPIC, accept, ignore)
            await me.pubsub.join(TOPIC, accept, lambda p, d: got.append(d))
            for left, right in [(origin, bad), (origin, good), (bad, me), (good, me)]:
                await left.connect(right.listen_addrs()[0])
            for node, peers in [
                (me, {bad, good}),
                (origin, {bad, good}),
                (bad, {me}),
                (good, {me}),
            ]:
                wanted = {p.peer_id for p in peers}
                deadline = time.monotonic() + 20
                while not wanted <= set(await node.pubsub.mesh_peers(TOPIC)):
                    assert time.monotonic() < deadline, "mesh never formed"
                    await asyncio.sleep(0.05)
            me.pubsub.set_score(bad.peer_id, -1.0)
            for n in range(count):
                await origin.pubsub.publish(TOPIC, b"m%03d" % n)
            try:
                await until(lambda: len(got) >= count, 30, "every message")
            finally:
                print(f"\n{len(got)} of {count} arrived; drops {me.pubsub.drops()}")
            return got, me.pubsub.drops(), bad.peer_id

    got, drops, bad_id = run(main())
    assert sorted(got) == [b"m%03d" % n for n in range(count)]
    assert set(drops) <= {bad_id}


# ── hostile frames: one peer's garbage must cost only its own stream ───────────────────

MESHSUB = ["/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0"]
BITSWAP = ["/ipfs/bitswap/1.2.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.0.0"]
BAD_FRAMES = {
    # 0x0f is field 1 with wire type 7, which no protobuf has (as tests/support/hostile.py)
    "garbage": encode_varint_prefixed(b"\x0f" + bytes(range(63))),
    "truncated": encode_varint_prefixed(b"\x0a" * 100)[:20],  # then the stream closes
    "oversized": b"\x80\x80\x80\x20" + b"\x00" * 1000,  # a 64 MiB frame announced
    "noise": random.Random(7).randbytes(8192),
}


async def send_raw(attacker: P2PHost, victim: str, protocol: str, frames: list[bytes]) -> None:
    """Open one stream and write ``frames``; a new stream whenever the victim resets it."""

    async def in_trio() -> None:
        assert attacker.libp2p_host is not None
        stream = None
        for frame in frames:
            for _ in range(2):
                try:
                    if stream is None:
                        stream = await attacker.libp2p_host.new_stream(
                            ID.from_base58(victim), [TProtocol(protocol)]
                        )
                    await stream.write(frame)
                    break
                except Exception:
                    stream = None  # reset by the victim: try once on a fresh stream
        if stream is not None:
            with trio.move_on_after(1):
                await stream.close()

    await attacker.bridge.run(in_trio)


def junk_rpc(rng: random.Random, topic: str) -> bytes:
    """A frame from a flood: mostly well-formed RPCs full of nonsense, some no RPC at all."""
    kind = rng.randrange(5)
    if kind == 0:
        return encode_varint_prefixed(b"\x0f" + rng.randbytes(rng.randint(0, 200)))
    rpc = rpc_pb2.RPC()
    if kind == 1:  # a publish with a random origin, seqno and signature
        rpc.publish.add(
            from_id=rng.randbytes(rng.randint(0, 40)),
            data=rng.randbytes(rng.randint(0, 300)),
            seqno=rng.randbytes(8),
            topicIDs=[topic],
            signature=rng.randbytes(64),
            key=rng.randbytes(rng.randint(0, 40)),
        )
    elif kind == 2:
        rpc.subscriptions.add(subscribe=rng.random() < 0.5, topicid=rng.choice([topic, "x"]))
    elif kind == 3:
        rpc.control.ihave.add(topicID=topic, messageIDs=[rng.randbytes(20) for _ in range(5)])
        rpc.control.iwant.add(messageIDs=[rng.randbytes(rng.randint(0, 30))])
    else:
        rpc.control.graft.add(topicID=topic)
        rpc.control.prune.add(topicID=topic, backoff=rng.randrange(1 << 40))
    return encode_varint_prefixed(rpc.SerializeToString())


async def still_serves(victim: P2PHost, honest: P2PHost, root: CID, got: list[bytes]) -> int:
    """The victim delivers honest gossip, answers a request and serves Bitswap; file size."""
    assert victim.bridge.running, "the victim's libp2p side died"
    await honest.pubsub.publish(TOPIC, b"honest after the attack")
    await until(lambda: b"honest after the attack" in got, 20, "honest gossip")
    answer = await honest.requests.ask(victim.peer_id, INVENTORY_PROTOCOL, b"inventory?")
    assert answer == b"inventory!"
    out = io.BytesIO()
    return await honest.fetch_file(root, out, peers=[victim.listen_addrs()[0]], stall_timeout=10)


@asynccontextmanager
async def victim_honest_attacker(tmp_path: Path, got: list[bytes]) -> AsyncIterator[Any]:
    """A victim serving gossip, a request protocol and a file; honest and hostile peers."""
    data = random.Random(1).randbytes(600_000)
    dag = import_bytes(data)
    blocks = MemoryBlocks(
        (leaf.cid, data[leaf.offset : leaf.offset + leaf.length]) for leaf in dag.leaves
    )
    for inner in dag.inner:
        blocks.put(inner.cid, inner.block)

    async def answer(peer: str, request: bytes) -> bytes:
        return b"inventory!"

    async with hosts(tmp_path, 2) as (honest, attacker):
        victim = P2PHost(tmp_path / "victim", LOOPBACK, mdns=False, blocks=blocks)
        await victim.start()
        try:
            victim.requests.serve(INVENTORY_PROTOCOL, answer, max_request=64, max_response=64)
            await honest.pubsub.join(TOPIC, accept, ignore)
            await victim.pubsub.join(TOPIC, accept, lambda p, d: got.append(d))
            await chain([honest, victim], TOPIC)
            await attacker.connect(victim.listen_addrs()[0])
            yield victim, honest, attacker, dag
        finally:
            await victim.stop()


def test_malformed_frames_on_every_protocol_cost_only_the_attackers_streams(
    tmp_path: Path,
) -> None:
    """Without the guards the first non-RPC gossipsub frame ended the victim's whole host."""

    async def main() -> tuple[int, int, dict[str, int], dict[str, int], str, str]:
        got: list[bytes] = []
        async with victim_honest_attacker(tmp_path, got) as (victim, honest, attacker, dag):
            for protocol in [*MESHSUB, INVENTORY_PROTOCOL, *BITSWAP]:
                for frame in BAD_FRAMES.values():
                    await send_raw(attacker, victim.peer_id, protocol, [frame])
            await asyncio.sleep(0.5)
            size = await still_serves(victim, honest, dag.root, got)
            drops = victim.pubsub.drops()
            print(f"\ndrops {drops}, stream errors {victim.stream_errors()}")
            return size, dag.size, drops, victim.stream_errors(), attacker.peer_id, honest.peer_id

    size, expected, drops, _errors, attacker_id, honest_id = run(main())
    assert size == expected
    # garbage, truncated, oversized and noise on each of the three gossipsub versions
    assert drops.get(attacker_id, 0) >= 3 * 3, drops
    assert honest_id not in drops


def test_a_flood_of_5000_junk_frames_from_one_peer_leaves_the_victim_working(
    tmp_path: Path,
) -> None:
    """Junk RPCs (random keys, signatures, controls) and non-RPC frames, 500 per stream.

    Without the guards a published message with a garbage key ended the victim's pubsub
    service (py's signature check raises under ``push_msg``), and the host with it.
    """

    async def main() -> tuple[int, int, dict[str, int], str]:
        got: list[bytes] = []
        rng = random.Random(5000)
        async with victim_honest_attacker(tmp_path, got) as (victim, honest, attacker, dag):
            frames = [junk_rpc(rng, TOPIC) for _ in range(5000)]
            for i in range(0, len(frames), 500):
                protocol = MESHSUB[i // 500 % len(MESHSUB)]
                await send_raw(attacker, victim.peer_id, protocol, frames[i : i + 500])
            await asyncio.sleep(1)
            size = await still_serves(victim, honest, dag.root, got)
            print(f"\nflood: drops {victim.pubsub.drops()}, stream errors {victim.stream_errors()}")
            return size, dag.size, victim.pubsub.drops(), honest.peer_id

    size, expected, drops, honest_id = run(main())
    assert size == expected
    assert honest_id not in drops
