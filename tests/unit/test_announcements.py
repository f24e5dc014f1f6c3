"""The announcement cache and the own set, on a real SQLite file in tmp_path."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB
from pacswarm.swarm.announcements import AnnouncementCache, Believe, Holder, OwnSet
from pacswarm.swarm.protocol import Entry

DAY = 24 * 3600.0


def entry(i: int, cid_seed: str = "") -> Entry:
    sha = hashlib.sha256(f"pkg{i}".encode()).hexdigest()
    cid = str(CID.of(f"root{i}{cid_seed}".encode(), DAG_PB))
    return Entry(sha, cid, 1000 + i, f"pkg{i}-1.0-1-x86_64.pkg.tar.zst")


def believe_all(repo: str, arch: str, e: Entry) -> bool:
    return True


def believe_below(n: int) -> Believe:
    """A db that knows packages 0..n-1 only (what a db refresh changes)."""
    known = {entry(i).sha256 for i in range(n)}
    return lambda repo, arch, e: e.sha256 in known


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[AnnouncementCache]:
    c = AnnouncementCache(tmp_path / "swarm.sqlite", max_entries=1000, peer_expiry=7 * DAY)
    yield c
    c.close()


def test_add_then_holders_newest_first(cache: AnnouncementCache) -> None:
    assert cache.add("A", "extra", "x86_64", [entry(1)], 100.0, believe_all) == 1
    cache.add("B", "extra", "x86_64", [entry(1, "b")], 200.0, believe_all)
    cache.add("C", "extra", "x86_64", [entry(1)], 150.0, believe_all)
    assert [h.peer for h in cache.holders(entry(1).sha256)] == ["B", "C", "A"]
    cache.seen("A", 300.0)  # A is alive again: it comes first
    first = cache.holders(entry(1).sha256)[0]
    assert first == Holder("A", entry(1).cid, 1001, 300.0)
    assert cache.holders(entry(1).sha256)[1].cid == entry(1, "b").cid
    assert cache.holders(entry(2).sha256) == []


def test_one_holder_row_per_peer_even_across_repos(cache: AnnouncementCache) -> None:
    cache.add("A", "testing", "x86_64", [entry(1)], 100.0, believe_all)
    cache.add("A", "extra", "x86_64", [entry(1)], 200.0, believe_all)
    assert [h.peer for h in cache.holders(entry(1).sha256)] == ["A"]
    assert cache.peer_entries("A", "testing", "x86_64") == [entry(1)]


def test_bounded_to_max_entries_dropping_the_oldest(tmp_path: Path) -> None:
    cache = AnnouncementCache(tmp_path / "c.sqlite", max_entries=50, peer_expiry=DAY)
    for i in range(120):
        cache.add(f"P{i % 7}", "extra", "x86_64", [entry(i)], float(i), believe_all)
    assert len(cache) == 50
    assert cache.holders(entry(0).sha256) == []
    assert cache.holders(entry(119).sha256) != []
    assert all(cache.holders(entry(i).sha256) for i in range(70, 120))
    cache.close()


def test_peers_not_seen_for_peer_expiry_are_forgotten(cache: AnnouncementCache) -> None:
    cache.add("old", "extra", "x86_64", [entry(1), entry(2)], 0.0, believe_all)
    cache.add("live", "extra", "x86_64", [entry(1)], 0.0, believe_all)
    cache.seen("live", 6 * DAY)
    assert cache.expire(7 * DAY + 1) == 2
    assert [h.peer for h in cache.holders(entry(1).sha256)] == ["live"]
    assert cache.peers() == ["live"]
    assert cache.expire(7 * DAY + 2) == 0


def test_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "swarm.sqlite"
    cache = AnnouncementCache(path, max_entries=100, peer_expiry=DAY)
    cache.add("A", "extra", "x86_64", [entry(1), entry(2)], 10.0, believe_all)
    cache.add("B", "extra", "x86_64", [entry(9)], 10.0, believe_below(3))  # pending
    cache.close()
    again = AnnouncementCache(path, max_entries=100, peer_expiry=DAY)
    assert len(again) == 2
    assert again.peer_entries("A", "extra", "x86_64") == sorted(
        [entry(1), entry(2)], key=lambda e: e.sha256
    )
    assert again.pending() == 1
    assert again.recheck(believe_all, 20.0) == 1
    assert [h.peer for h in again.holders(entry(9).sha256)] == ["B"]
    again.close()


def test_unbelieved_entries_pend_until_a_db_refresh(cache: AnnouncementCache) -> None:
    old_db = believe_below(5)
    assert cache.add("A", "extra", "x86_64", [entry(1), entry(7)], 100.0, old_db) == 1
    assert cache.holders(entry(7).sha256) == []
    assert cache.pending() == 1
    assert cache.recheck(old_db, 200.0) == 0  # still not in the db
    assert cache.recheck(believe_below(10), 300.0) == 1  # the refreshed db has it
    assert [h.peer for h in cache.holders(entry(7).sha256)] == ["A"]
    assert cache.pending() == 0


def test_pending_entries_are_dropped_after_pending_ttl(tmp_path: Path) -> None:
    cache = AnnouncementCache(tmp_path / "c.sqlite", 100, DAY, pending_ttl=60.0)
    cache.add("A", "extra", "x86_64", [entry(7)], 100.0, believe_below(1))
    assert cache.recheck(believe_all, 161.0) == 0
    assert cache.pending() == 0 and len(cache) == 0
    cache.close()


def test_pending_is_bounded_and_one_peer_cannot_take_it_all(tmp_path: Path) -> None:
    cache = AnnouncementCache(tmp_path / "c.sqlite", 100, DAY, pending_max=80)
    nothing = believe_below(0)
    cache.add("honest", "extra", "x86_64", [entry(i) for i in range(5)], 1.0, nothing)
    flood = [entry(i, "evil") for i in range(1000, 3000)]
    cache.add("hostile", "extra", "x86_64", flood, 2.0, nothing)
    assert cache.pending() <= 80
    assert cache.recheck(believe_all, 3.0) == 5 + 80 // 8
    assert len(cache.holders(entry(0).sha256)) == 1
    for i in range(40):
        cache.add(
            f"P{i}", "extra", "x86_64", [entry(5000 + i * 3 + k) for k in range(3)], 4.0, nothing
        )
    assert cache.pending() == 80
    cache.close()


def test_replace_peer_drops_what_the_inventory_no_longer_lists(cache: AnnouncementCache) -> None:
    cache.add("A", "extra", "x86_64", [entry(1), entry(2)], 10.0, believe_all)
    cache.add("A", "core", "x86_64", [entry(3)], 10.0, believe_all)
    cache.add("A", "extra", "x86_64", [entry(8)], 10.0, believe_below(5))  # pending
    n = cache.replace_peer("A", "extra", "x86_64", [entry(2), entry(4)], 20.0, believe_all)
    assert n == 2
    assert {e.sha256 for e in cache.peer_entries("A", "extra", "x86_64")} == {
        entry(2).sha256,
        entry(4).sha256,
    }
    assert cache.peer_entries("A", "core", "x86_64") == [entry(3)]  # other repos kept
    assert cache.pending() == 0


def test_forget_one_package_or_a_whole_peer(cache: AnnouncementCache) -> None:
    cache.add("A", "extra", "x86_64", [entry(1), entry(2)], 10.0, believe_all)
    cache.add("B", "extra", "x86_64", [entry(1)], 10.0, believe_all)
    cache.forget("A", entry(1).sha256)
    assert [h.peer for h in cache.holders(entry(1).sha256)] == ["B"]
    assert len(cache.peer_entries("A", "extra", "x86_64")) == 1
    cache.forget("B")
    assert cache.holders(entry(1).sha256) == []
    assert cache.peers() == ["A"]


def test_arch_scale_200000_rows(tmp_path: Path) -> None:
    """200,000 rows (the default cache_entries): bulk adds, queries and expiry complete."""
    cache = AnnouncementCache(tmp_path / "big.sqlite", max_entries=200_000, peer_expiry=DAY)
    entries = [entry(i) for i in range(20_000)]
    for p in range(11):  # 220,000 offered: the oldest 20,000 go
        cache.add(f"peer{p}", "extra", "x86_64", entries, float(p), believe_all)
    assert len(cache) == 200_000
    assert len(cache.holders(entries[123].sha256)) == 10
    assert len(cache.peer_entries("peer5", "extra", "x86_64")) == 20_000
    assert cache.peers()[0] == "peer10" and "peer0" not in cache.peers()
    cache.seen("peer10", DAY + 5.0)
    assert cache.expire(DAY + 11.0) == 180_000  # all but peer10, seen at DAY + 5
    assert len(cache) == 20_000
    cache.close()


def test_own_set_privacy_modes(tmp_path: Path) -> None:
    own = OwnSet(tmp_path / "swarm.sqlite")
    own.add("extra", "x86_64", entry(1), "verified")
    own.add("extra", "x86_64", entry(2), "seeded")
    own.add("extra", "x86_64", entry(3), "audited")
    assert {e.sha256 for e in own.announced("extra", "x86_64", "all")} == {
        entry(i).sha256 for i in (1, 2, 3)
    }
    assert {e.sha256 for e in own.announced("extra", "x86_64", "seeded")} == {
        entry(i).sha256 for i in (2, 3)
    }
    assert own.announcable("extra", "x86_64", entry(1).sha256, "all")
    assert not own.announcable("extra", "x86_64", entry(1).sha256, "seeded")
    assert own.announcable("extra", "x86_64", entry(2).sha256, "seeded")
    assert own.announced("core", "x86_64", "all") == []
    with pytest.raises(ValueError, match="announce mode"):
        own.announced("extra", "x86_64", "some")
    with pytest.raises(ValueError, match="why"):
        own.add("extra", "x86_64", entry(4), "found")
    own.close()


def test_own_set_keeps_the_seeded_reason_and_forgets_removed(tmp_path: Path) -> None:
    path = tmp_path / "swarm.sqlite"
    own = OwnSet(path)
    own.add("extra", "x86_64", entry(2), "seeded")
    own.add("extra", "x86_64", entry(2), "verified")  # pacman installed it later
    assert own.announcable("extra", "x86_64", entry(2).sha256, "seeded")
    own.remove("extra", "x86_64", entry(2).filename)
    assert own.announced("extra", "x86_64", "all") == []
    own.add("extra", "x86_64", entry(5), "verified")
    own.close()
    cache = AnnouncementCache(path, 10, DAY)  # shares the file
    cache.add("A", "extra", "x86_64", [entry(1)], 1.0, believe_all)
    again = OwnSet(path)
    assert again.announced("extra", "x86_64", "all") == [entry(5)]
    assert len(cache) == 1
    cache.close()
    again.close()


def test_minted_peer_ids_cannot_grow_the_peers_table(tmp_path: Path) -> None:
    """Gossip origins are signed, but identities are free: the peers table is bounded too."""
    cache = AnnouncementCache(tmp_path / "c.sqlite", max_entries=50, peer_expiry=DAY)
    for i in range(300):
        cache.add(f"sybil{i}", "extra", "x86_64", [entry(i % 10)], float(i), believe_all)
        cache.seen(f"idle{i}", float(i))
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        (count,) = db.execute("SELECT count(*) FROM ann_peer").fetchone()
    assert count == 50 and len(cache) == 50
    assert cache.expire(float(299) + DAY + 1) == 50  # rows whose peer row went expire too
    assert len(cache) == 0 and cache.peers() == []
    cache.close()
