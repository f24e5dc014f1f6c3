"""The announcement side of a node, without a network: batching, validation, topic checks."""

from __future__ import annotations

import asyncio

from pacswarm.swarm.gossip import BURST_PER_PEER, Gossip, RateTable
from pacswarm.swarm.protocol import MAX_MESSAGE, Entry, News, decode_news, encode_news, topic

SHA = "ab" * 32
CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def _entry(i: int) -> Entry:
    return Entry(f"{i:064x}", CID, 1000 + i, f"pkg{i}-1.0-1-x86_64.pkg.tar.zst")


def _gossip(sent: list[tuple[str, bytes]], heard: list[tuple[str, News]]) -> Gossip:
    async def publish(name: str, data: bytes) -> None:
        sent.append((name, data))

    # A stopped clock: no token comes back mid-test, however slow the machine is.
    return Gossip(
        publish, topic, lambda origin, news: heard.append((origin, news)), clock=lambda: 0.0
    )


def test_a_burst_is_allowed_then_the_rate_holds_per_peer() -> None:
    rates = RateTable(rate=10.0, burst=5.0)
    assert [rates.allow("p", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert rates.allow("q", 0.0)  # another peer has its own bucket
    assert rates.allow("p", 0.1)  # one token back after 1/rate seconds
    assert not rates.allow("p", 0.1)


def test_validate_drops_malformed_oversized_and_flooding_messages_and_counts_them() -> None:
    gossip = _gossip([], [])
    good = encode_news(News("core", "x86_64", (_entry(1),), 4080, None))
    assert gossip.validate("honest", good)
    assert not gossip.validate("liar", b"\x01\x01garbage")
    assert not gossip.validate("liar", b"x" * (MAX_MESSAGE + 1))
    flood = [gossip.validate("flood", good) for _ in range(int(BURST_PER_PEER) + 50)]
    assert flood.count(False) == 50
    assert gossip.refused == {"liar": 2, "flood": flood.count(False)}


def test_news_for_another_repo_than_its_topic_is_not_believed() -> None:
    heard: list[tuple[str, News]] = []
    gossip = _gossip([], heard)
    extra = encode_news(News("extra", "x86_64", (_entry(1),), None, None))
    gossip.deliver("peer", extra, ("core", "x86_64"))
    assert heard == []
    gossip.deliver("peer", extra, ("extra", "x86_64"))
    assert [origin for origin, _ in heard] == ["peer"]


def test_announcements_are_batched_into_few_messages_on_their_topic() -> None:
    sent: list[tuple[str, bytes]] = []

    async def burst() -> None:
        gossip = _gossip(sent, [])
        gossip.gateway_port = 4080
        for i in range(600):  # one pacman transaction's worth, announced one by one
            gossip.announce("extra", "x86_64", _entry(i))
        await asyncio.sleep(0.5)
        await gossip.close()

    asyncio.run(burst())
    assert 1 <= len(sent) <= 5
    assert {name for name, _ in sent} == {topic("extra", "x86_64")}
    decoded = [decode_news(data) for _, data in sent]
    assert sorted(e.sha256 for n in decoded for e in n.entries) == sorted(
        _entry(i).sha256 for i in range(600)
    )
    assert all(n.gateway_port == 4080 for n in decoded)
