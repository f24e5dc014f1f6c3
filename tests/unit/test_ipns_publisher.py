"""The IPNS publisher and resolver without a network, and the ``[ipns]`` config table.

Real files (sequence counter, saved record) in tmp_path; the clock and the republish loop's
sleep are injected, so hours of republishing run in milliseconds and deterministically.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from pacswarm.config import load_config
from pacswarm.config_tables import IpnsConfig, parse_duration
from pacswarm.errors import ConfigError
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.dhtvalues import IpnsRecordStore, StaleRecord
from pacswarm.ipns.publisher import IpnsPublisher, IpnsPublishError, next_republish
from pacswarm.ipns.record import (
    IpnsRecordError,
    build_record,
    ipns_name,
    name_multihash,
    routing_key,
    validate_record,
)
from pacswarm.ipns.resolver import IpnsResolver
from pacswarm.ipns.sequence import SequenceCounter

HOUR = 3600.0
ROOT = CID.of(b"root")
OTHER_ROOT = CID.of(b"another root")
START = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> KeyPair:
    return create_new_key_pair(b"\x11" * 32)


def publisher(
    tmp_path: Path, key: KeyPair, clock: Clock, config: IpnsConfig | None = None, **kw: object
) -> IpnsPublisher:
    counter = SequenceCounter(tmp_path / "ipns" / "sequence")
    return IpnsPublisher(key.private_key, counter, config or IpnsConfig(), None, clock, **kw)  # type: ignore[arg-type]


def sequence_of(raw: bytes | None, key: KeyPair, now: float = START) -> int:
    assert raw is not None
    return validate_record(raw, name_multihash(key.public_key), now_ns=int(now * 1e9)).sequence


# --- sequence and persistence ---------------------------------------------------------------


def test_sequence_only_grows_across_restarts_and_same_root(tmp_path: Path, key: KeyPair) -> None:
    clock = Clock()
    first = publisher(tmp_path, key, clock)
    assert first.name == ipns_name(name_multihash(key.public_key))
    assert first.name.startswith("k51qzi5uqu5")
    asyncio.run(first.publish(ROOT))
    asyncio.run(first.publish(ROOT))  # the same root again: still a new sequence
    assert sequence_of(first.record, key) == 2
    restarted = publisher(tmp_path, key, clock)
    restarted.load()
    assert restarted.record == first.record and restarted.root == ROOT
    asyncio.run(restarted.publish(OTHER_ROOT))
    assert sequence_of(restarted.record, key) == 3 and restarted.root == OTHER_ROOT


def test_saved_record_lifts_a_counter_that_fell_behind(tmp_path: Path, key: KeyPair) -> None:
    """The sequence file lost (restored from an old backup): the saved record still rules."""
    clock = Clock()
    first = publisher(tmp_path, key, clock)
    for _ in range(5):
        asyncio.run(first.publish(ROOT))
    (tmp_path / "ipns" / "sequence").write_text("1\n")
    again = publisher(tmp_path, key, clock)
    again.load()
    asyncio.run(again.publish(OTHER_ROOT))
    assert sequence_of(again.record, key) == 6


def test_a_corrupt_or_foreign_saved_record_is_ignored(tmp_path: Path, key: KeyPair) -> None:
    clock = Clock()
    first = publisher(tmp_path, key, clock)
    asyncio.run(first.publish(ROOT))
    first.record_path.write_bytes(b"not a record")
    again = publisher(tmp_path, key, clock)
    again.load()
    assert again.record is None
    other = create_new_key_pair(b"\x12" * 32)
    first.record_path.write_bytes(
        build_record(other.private_key, f"/ipfs/{ROOT}", sequence=9, now_ns=int(START * 1e9),
                     lifetime_ns=10**12, ttl_ns=1)
    )  # fmt: skip
    again.load()
    assert again.record is None
    asyncio.run(again.publish(ROOT))
    assert sequence_of(again.record, key) == 2


def test_publish_off_refuses_with_the_key_to_change(tmp_path: Path, key: KeyPair) -> None:
    off = publisher(tmp_path, key, Clock(), IpnsConfig(publish=False))
    with pytest.raises(IpnsPublishError, match=r"\[ipns\] publish = false"):
        asyncio.run(off.publish(ROOT))
    assert not (tmp_path / "ipns" / "sequence").exists()


# --- republish timing --------------------------------------------------------------------------


def test_next_republish_rules() -> None:
    config = IpnsConfig(lifetime=10 * HOUR, republish=HOUR)
    valid_until = 10 * HOUR
    assert next_republish(0.0, valid_until, 0.0, config) == (HOUR, False)
    assert next_republish(0.5 * HOUR, valid_until, 0.0, config) == (0.5 * HOUR, False)
    assert next_republish(4.5 * HOUR, valid_until, 4 * HOUR, config) == (0.5 * HOUR, True)
    assert next_republish(6 * HOUR, valid_until, 4 * HOUR, config) == (0.0, True)


def _run_loop(pub: IpnsPublisher, clock: Clock, sleeps: int) -> list[tuple[float, float, int]]:
    """Start the real republish loop; each injected sleep advances the clock. Returns
    (slept, time after, sequence after the republish that followed) per sleep."""
    seen: list[tuple[float, float, int]] = []

    async def main() -> None:
        done = asyncio.Event()
        pending: list[float] = []

        async def sleep(delay: float) -> None:
            if pending:
                current = pub.current
                assert current is not None
                seen.append((pending.pop(), clock.now, current.sequence))
            if len(seen) == sleeps:
                done.set()
                await asyncio.Event().wait()
            clock.now += delay
            pending.append(delay)

        pub._sleep = sleep
        await pub.start()
        await asyncio.wait_for(done.wait(), 10)
        await pub.stop()

    asyncio.run(main())
    return seen


def test_republish_loop_every_interval_and_resign_at_half_life(
    tmp_path: Path, key: KeyPair
) -> None:
    clock = Clock()
    config = IpnsConfig(lifetime=10 * HOUR, republish=HOUR)
    pub = publisher(tmp_path, key, clock, config)
    asyncio.run(pub.publish(ROOT))
    seen = _run_loop(pub, clock, 7)
    assert [s for s, _, _ in seen] == [HOUR] * 7
    # re-signed (sequence 2) once half the 10 h lifetime was gone, with a fresh validity
    assert [(t - START, seq) for _, t, seq in seen] == [
        (1 * HOUR, 1), (2 * HOUR, 1), (3 * HOUR, 1), (4 * HOUR, 1),
        (5 * HOUR, 2), (6 * HOUR, 2), (7 * HOUR, 2),
    ]  # fmt: skip
    assert pub.current is not None and pub.current.validity_ns == int((START + 15 * HOUR) * 1e9)
    assert pub.root == ROOT


def test_restart_after_long_downtime_resigns_at_once(tmp_path: Path, key: KeyPair) -> None:
    clock = Clock()
    config = IpnsConfig(lifetime=10 * HOUR, republish=HOUR)
    asyncio.run(publisher(tmp_path, key, clock, config).publish(ROOT))
    clock.now += 6 * HOUR  # off for 6 of the record's 10 hours
    restarted = publisher(tmp_path, key, clock, config)
    seen = _run_loop(restarted, clock, 1)
    # the first republish ran before any sleep and re-signed: sequence 2 at t = 6 h
    assert restarted.current is not None
    assert seen[0][2] == 2 and seen[0][1] == START + 7 * HOUR
    assert restarted.current.validity_ns == int((START + 16 * HOUR) * 1e9)


# --- resolver without a network ---------------------------------------------------------------


def _record(key: KeyPair, seq: int, root: CID, now: float = START, life: float = HOUR) -> bytes:
    return build_record(key.private_key, f"/ipfs/{root}", sequence=seq, now_ns=int(now * 1e9),
                        lifetime_ns=int(life * 1e9), ttl_ns=60 * 10**9)  # fmt: skip


def test_resolver_own_name_and_best_record_rules(tmp_path: Path, key: KeyPair) -> None:
    clock = Clock()
    own = publisher(tmp_path, key, clock)
    resolver = IpnsResolver(own, None, clock=clock)

    async def main() -> None:
        assert await resolver.resolve(own.name) is None  # nothing published yet
        await own.publish(ROOT)
        mine = await resolver.resolve(own.name)
        assert mine is not None and mine.value == ROOT and mine.record == own.record
        peer = create_new_key_pair(b"\x13" * 32)
        name, mh = ipns_name(name_multihash(peer.public_key)), name_multihash(peer.public_key)
        assert await resolver.resolve(name) is None
        assert resolver.offer(mh, _record(peer, 5, ROOT), "pubsub")
        assert not resolver.offer(mh, _record(peer, 4, OTHER_ROOT), "pubsub")  # older
        tampered = bytearray(_record(peer, 9, OTHER_ROOT))
        tampered[tampered.index(b"\x42\x40") + 3] ^= 1
        assert not resolver.offer(mh, bytes(tampered), "dht")  # forged
        assert not resolver.offer(mh, _record(key, 9, OTHER_ROOT), "dht")  # another key's
        got = await resolver.resolve(name)
        assert got is not None and got.value == ROOT and got.ttl == 60.0
        # same sequence: the later validity wins (Helia's tie-break), an earlier one loses
        assert resolver.offer(mh, _record(peer, 5, OTHER_ROOT, life=2 * HOUR), "pubsub")
        assert not resolver.offer(mh, _record(peer, 5, ROOT, life=1.5 * HOUR), "pubsub")
        got = await resolver.resolve(name)
        assert got is not None and got.value == OTHER_ROOT
        clock.now += 3 * HOUR  # expired: never served
        assert await resolver.resolve(name) is None

    asyncio.run(main())


def test_resolver_cache_is_bounded(tmp_path: Path, key: KeyPair) -> None:
    clock = Clock()
    resolver = IpnsResolver(publisher(tmp_path, key, clock), None, clock=clock, max_names=3)
    peers = [create_new_key_pair(bytes([0x20 + i]) * 32) for i in range(5)]
    for peer in peers:
        assert resolver.offer(name_multihash(peer.public_key), _record(peer, 1, ROOT), "dht")
    names = [ipns_name(name_multihash(p.public_key)) for p in peers]
    assert [resolver.cached(n) is not None for n in names] == [False, False, True, True, True]


def test_resolver_refuses_what_is_no_ipns_name(tmp_path: Path, key: KeyPair) -> None:
    resolver = IpnsResolver(publisher(tmp_path, key, Clock()), None)
    with pytest.raises(Exception, match="not base36"):
        asyncio.run(resolver.resolve("QmNotAName"))


# --- the [ipns] table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(300, 300.0), (1.5, 1.5), ("30s", 30.0), ("5m", 300.0), ("4h", 14400.0),
     ("2d", 172800.0), ("90", 90.0), ("1.5h", 5400.0), (" 10 M", 600.0)],
)  # fmt: skip
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text, "ipns.ttl") == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "h", "-5m", "0s", 0, -1, True, "4w", None])
def test_parse_duration_refuses_with_examples(bad: object) -> None:
    with pytest.raises(ConfigError, match=r'ipns.ttl = .*"30s", "5m", "4h", "2d"|positive'):
        parse_duration(bad, "ipns.ttl")


def _load(tmp_path: Path, body: str) -> IpnsConfig:
    path = tmp_path / "pacswarm.toml"
    path.write_text(body)
    return load_config(path).ipns


def test_ipns_table_defaults_and_values(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == IpnsConfig(
        lifetime=48 * HOUR, ttl=300.0, republish=4 * HOUR, publish=True
    )
    got = _load(
        tmp_path, '[ipns]\nlifetime = "2d"\nttl = "1m"\nrepublish = 3600\npublish = false\n'
    )
    assert got == IpnsConfig(lifetime=48 * HOUR, ttl=60.0, republish=HOUR, publish=False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[ipns]\nlifetime = "3h"\n', r"republish = 14400 s is not below lifetime = 10800 s"),
        ('[ipns]\nrepublish = "48h"\n', r"record would expire before it is republished"),
        ("[ipns]\npublish = 1\n", r"ipns.publish must be true or false"),
        ('[ipns]\nttl = "soon"\n', r"ipns.ttl = 'soon': expected a duration"),
        ('[ipns]\nlifetim = "3d"\n', r"unknown key\(s\) in \[ipns\]: lifetim"),
        ('ipns = "on"\n', r"ipns must be a table"),
    ],
)
def test_ipns_table_errors_say_what_to_do(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, body)


# --- the DHT's record store ----------------------------------------------------------------


def test_dht_store_keeps_the_best_and_stays_bounded_but_never_drops_ours(key: KeyPair) -> None:
    clock = Clock()
    own_key = routing_key(name_multihash(key.public_key))
    store = IpnsRecordStore(max_records=3, clock=clock, max_bytes=10**6)
    store.pin(own_key)
    assert store.offer(own_key, _record(key, 2, ROOT))
    assert not store.offer(own_key, _record(key, 2, ROOT))  # the same again: no change
    with pytest.raises(StaleRecord, match="sequence 1 loses to the held 2"):
        store.offer(own_key, _record(key, 1, OTHER_ROOT))
    with pytest.raises(IpnsRecordError):
        store.offer(own_key, _record(create_new_key_pair(b"\x30" * 32), 9, ROOT))  # not its key
    others = [create_new_key_pair(bytes([0x40 + i]) * 32) for i in range(4)]
    keys = [routing_key(name_multihash(p.public_key)) for p in others]
    for peer, rkey in zip(others, keys, strict=True):
        assert store.offer(rkey, _record(peer, 1, ROOT))
    assert len(store) == 3
    assert store.get(own_key) is not None  # pinned: the flood pushed out the others
    assert [store.get(k) is not None for k in keys] == [False, False, True, True]
    by_bytes = IpnsRecordStore(clock=clock, max_bytes=2 * len(_record(key, 1, ROOT)) + 10)
    for peer, rkey in zip(others, keys, strict=True):
        by_bytes.offer(rkey, _record(peer, 1, ROOT))
    assert len(by_bytes) == 2
    clock.now += 2 * HOUR  # expired records are not served
    assert store.get(keys[3]) is None


def test_a_new_root_in_between_postpones_the_republish(tmp_path: Path, key: KeyPair) -> None:
    clock = Clock()
    config = IpnsConfig(lifetime=10 * HOUR, republish=HOUR)
    pub = publisher(tmp_path, key, clock, config)
    slept: list[tuple[float, float]] = []  # (delay asked, time it was asked)
    announced: list[float] = []

    async def main() -> None:
        done = asyncio.Event()
        real_announce = pub._announce

        async def announce(record: Any) -> None:
            announced.append(clock.now - START)
            await real_announce(record)

        async def sleep(delay: float) -> None:
            slept.append((delay, clock.now - START))
            if len(slept) == 1:  # a new root half-way through the first wait
                clock.now += delay / 2
                await pub.publish(OTHER_ROOT)
                clock.now += delay / 2
            elif len(slept) == 3:
                done.set()
                await asyncio.Event().wait()
            else:
                clock.now += delay

        pub._announce = announce  # type: ignore[method-assign]
        pub._sleep = sleep
        await pub.publish(ROOT)
        await pub.start()
        await asyncio.wait_for(done.wait(), 10)
        await pub.stop()

    asyncio.run(main())
    # announced: publish at 0, the start-up republish at 0, the new root at 0.5 h, then the
    # republish one interval after *that* (1.5 h), not after the first one (1 h)
    assert announced == [0.0, 0.0, 0.5 * HOUR, 1.5 * HOUR]
    assert slept == [(HOUR, 0.0), (0.5 * HOUR, HOUR), (HOUR, 1.5 * HOUR)]
