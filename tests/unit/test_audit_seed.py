"""Audits and seeding: the two schedulers of the swarm, driven by real asyncio and real files.

The callbacks are small in-test functions standing in for the lead's download paths (the
real pipeline is covered by the multi-node integration tests); what is asserted here is
what a user would notice: the day's byte budget holds across restarts, nothing cached is
fetched again, what peers lack goes first, every peer gets audited, a failing callback
does not stop a loop, the off switches are off, and cancelling stops at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from pacswarm.config_tables import AuditConfig, SeedConfig
from pacswarm.swarm.audit import Auditor, pick_audit
from pacswarm.swarm.protocol import Entry
from pacswarm.swarm.seed import SeedCandidate, Seeder

NOON = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
#: Generous bound for "stops promptly": normal is well under a millisecond.
PROMPT = 10.0


async def cancel_promptly(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and check it ended cancelled (wait() never re-cancels, so a loop
    that swallowed the cancel fails here instead of hanging the test)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=PROMPT)
    assert task in done, "still running after cancel"
    assert task.cancelled()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Upstream:
    """What seeding downloads: counts the bytes that crossed the 'link' per UTC day."""

    def __init__(self, clock: Clock, cache: set[str] | None = None) -> None:
        self.clock = clock
        self.cache: set[str] = cache if cache is not None else set()
        self.bytes_per_day: Counter[str] = Counter()
        self.downloaded: list[str] = []
        self.fail: set[str] = set()

    async def download(self, cand: SeedCandidate) -> bool:
        await asyncio.sleep(0)
        day = datetime.fromtimestamp(self.clock(), UTC).date().isoformat()
        self.bytes_per_day[day] += cand.size
        self.downloaded.append(cand.sha256)
        if cand.sha256 in self.fail:
            raise ConnectionResetError("mirror hung up")
        self.cache.add(cand.sha256)
        return True


def cand(name: str, size: int, repo: str = "extra") -> SeedCandidate:
    return SeedCandidate(repo, "x86_64", f"{name}-1-1-x86_64.pkg.tar.zst", name * 4, size)


def seeder(
    tmp_path: Path,
    candidates: list[SeedCandidate],
    upstream: Upstream,
    *,
    holders: dict[str, int] | None = None,
    count: int = 10,
    budget: int = 1000,
    seed: int = 1,
    first_delay: float = 0.0,
    interval: float = 3600.0,
) -> Seeder:
    held = holders or {}
    return Seeder(
        candidates=lambda: list(candidates),
        cached=upstream.cache.__contains__,
        holders=lambda sha: held.get(sha, 0),
        download=upstream.download,
        config=SeedConfig(random_packages=count, interval=interval, daily_budget=budget),
        ledger=tmp_path / "seed-ledger.json",
        rng=random.Random(seed),
        first_delay=first_delay,
        clock=upstream.clock,
    )


# --- seeding -------------------------------------------------------------------------------


def test_the_daily_budget_holds_across_a_restart_and_renews_the_next_utc_day(
    tmp_path: Path,
) -> None:
    clock = Clock()
    up = Upstream(clock)
    pkgs = [cand(f"p{i:02}", 300) for i in range(20)]

    async def main() -> None:
        assert await seeder(tmp_path, pkgs, up).round() == 3  # 900 of 1000 bytes
        # A restart (a new Seeder on the same ledger) the same day gets no fresh budget.
        assert await seeder(tmp_path, pkgs, up).round() == 0
        clock.now += 3600
        assert await seeder(tmp_path, pkgs, up, seed=7).round() == 0
        # Just past midnight UTC: a new day, a new budget.
        clock.now = NOON + DAY / 2 + 1
        assert await seeder(tmp_path, pkgs, up).round() == 3

    asyncio.run(main())
    assert up.bytes_per_day == {"2026-12-02": 900, "2026-12-03": 900}
    assert len(set(up.downloaded)) == 6


def test_a_failed_download_keeps_its_charge_and_does_not_stop_the_round(tmp_path: Path) -> None:
    clock = Clock()
    up = Upstream(clock)
    pkgs = [cand(f"p{i:02}", 300) for i in range(5)]
    up.fail = {p.sha256 for p in pkgs}  # every download breaks after its bytes crossed

    async def main() -> None:
        s = seeder(tmp_path, pkgs, up)
        assert await s.round() == 0
        assert s.status()["failed"] == 3
        assert await seeder(tmp_path, pkgs, up).round() == 0

    asyncio.run(main())
    assert up.bytes_per_day["2026-12-02"] == 900


def test_the_bytes_are_on_disk_before_a_download_starts(tmp_path: Path) -> None:
    """A crash mid-download, then a restart, must not give the day its budget back."""
    up = Upstream(Clock())
    big = cand("big", 700)
    after_crash: list[int] = []

    async def crashes_midway(c: SeedCandidate) -> bool:
        restarted = seeder(tmp_path, [big], up)  # what a restart would read right now
        after_crash.append(restarted.ledger.spent(NOON))
        after_crash.append(await restarted.round())
        return True

    async def main() -> None:
        s = seeder(tmp_path, [big, cand("two", 700)], up)
        s._download = crashes_midway
        await s.round()

    asyncio.run(main())
    assert after_crash == [700, 0]


def test_a_package_bigger_than_what_is_left_is_skipped_for_smaller_ones(tmp_path: Path) -> None:
    up = Upstream(Clock())
    huge, first, second, small = (
        cand("hug", 5000),
        cand("fst", 600),
        cand("snd", 600),
        cand("sml", 300),
    )
    # Preference order (fewest holders): huge (never fits), first, second (no longer fits
    # once first is in), small (still fits).
    order = [huge, first, second, small]
    holders = {c.sha256: i for i, c in enumerate(order)}

    async def main() -> None:
        assert await seeder(tmp_path, order, up, holders=holders).round() == 2

    asyncio.run(main())
    assert up.downloaded == [first.sha256, small.sha256]
    assert up.bytes_per_day["2026-12-02"] == 900


def test_cached_packages_are_never_seeded_again(tmp_path: Path) -> None:
    clock = Clock()
    pkgs = [cand(f"p{i:02}", 100) for i in range(12)]
    already = {p.sha256 for p in pkgs[:4]}
    up = Upstream(clock, cache=set(already))

    async def main() -> None:
        for day in range(4):  # big budget, many rounds: every uncached one, each once
            clock.now = NOON + day * DAY
            await seeder(tmp_path, pkgs, up, count=3, budget=10_000, seed=day).round()

    asyncio.run(main())
    assert len(up.downloaded) == 8
    assert sorted(up.downloaded) == sorted({p.sha256 for p in pkgs} - already)


def test_a_package_cached_while_the_round_runs_is_not_downloaded(tmp_path: Path) -> None:
    up = Upstream(Clock())
    first, second = cand("aaa", 100), cand("bbb", 100)
    holders = {first.sha256: 0, second.sha256: 1}

    async def pacman_meanwhile(c: SeedCandidate) -> bool:
        up.cache.add(second.sha256)  # pacman fetched it during our first download
        return await Upstream.download(up, c)

    async def main() -> None:
        s = seeder(tmp_path, [first, second], up, holders=holders)
        s._download = pacman_meanwhile
        assert await s.round() == 1

    asyncio.run(main())
    assert up.downloaded == [first.sha256]


def test_packages_no_peer_holds_go_first_randomised_among_equals(tmp_path: Path) -> None:
    pkgs = [cand(f"p{i:02}", 10) for i in range(12)]
    holders = {p.sha256: (0 if i % 3 == 0 else 1 + i % 3) for i, p in enumerate(pkgs)}
    lacking = {p.sha256 for p in pkgs if holders[p.sha256] == 0}  # 4 of 12
    chosen_sets = set()
    for seed in range(20):
        s = seeder(tmp_path, pkgs, Upstream(Clock()), holders=holders, count=2, seed=seed)
        chosen = s.choose(NOON)
        assert len(chosen) == 2
        assert {c.sha256 for c in chosen} <= lacking
        chosen_sets.add(frozenset(c.sha256 for c in chosen))
    assert len(chosen_sets) > 1  # not always the same two
    # With more wanted than nobody holds, the rest come from the least-held.
    s = seeder(tmp_path, pkgs, Upstream(Clock()), holders=holders, count=6)
    assert [holders[c.sha256] for c in s.choose(NOON)] == [0, 0, 0, 0, 2, 2]


def test_seeding_off_does_nothing(tmp_path: Path) -> None:
    up = Upstream(Clock())
    pkgs = [cand("aaa", 10)]

    async def main() -> None:
        for s in (seeder(tmp_path, pkgs, up, count=0), seeder(tmp_path, pkgs, up, budget=0)):
            await asyncio.wait_for(s.run(), PROMPT)  # returns: nothing scheduled
            assert await s.round() == 0

    asyncio.run(main())
    assert up.downloaded == []
    assert not (tmp_path / "seed-ledger.json").exists()


def test_the_first_round_waits_then_rounds_repeat_until_cancelled(tmp_path: Path) -> None:
    up = Upstream(Clock())
    pkgs = [cand(f"p{i:02}", 10) for i in range(50)]

    async def main() -> None:
        waiting = asyncio.create_task(seeder(tmp_path, pkgs, up, first_delay=3600).run())
        for _ in range(20):
            await asyncio.sleep(0)
        assert up.downloaded == []  # not at once
        await cancel_promptly(waiting)
        s = seeder(tmp_path, pkgs, up, count=2, budget=10_000, first_delay=0.001, interval=0.001)
        task = asyncio.create_task(s.run())
        while len(up.downloaded) < 6:  # three rounds at least
            await asyncio.sleep(0.001)
        await cancel_promptly(task)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert len(up.downloaded) == len(set(up.downloaded))


def test_cancel_stops_a_seeding_download_in_flight(tmp_path: Path) -> None:
    up = Upstream(Clock())
    seen: list[str] = []

    async def hangs(c: SeedCandidate) -> bool:
        seen.append("started")
        if len(seen) > 1:
            return True  # only the first one hangs, so a swallowed cancel cannot hang the test
        try:
            await asyncio.Event().wait()
        finally:
            seen.append("cancelled")
        return True

    async def main() -> None:
        s = seeder(tmp_path, [cand("aaa", 10)], up)
        s._download = hangs
        task = asyncio.create_task(s.run())
        while not seen:
            await asyncio.sleep(0.001)
        await cancel_promptly(task)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen == ["started", "cancelled"]


def test_an_unreadable_ledger_counts_today_as_spent_and_is_kept_aside(tmp_path: Path) -> None:
    clock = Clock()
    up = Upstream(clock)
    ledger = tmp_path / "seed-ledger.json"
    ledger.write_text("{not json", encoding="utf-8")
    pkgs = [cand(f"p{i:02}", 100) for i in range(3)]

    async def main() -> None:
        assert await seeder(tmp_path, pkgs, up).round() == 0
        assert await seeder(tmp_path, pkgs, up).round() == 0  # a restart: still spent
        kept = tmp_path / "seed-ledger.json.unreadable"
        assert kept.read_text(encoding="utf-8") == "{not json"
        clock.now += DAY
        assert await seeder(tmp_path, pkgs, up).round() == 3

    asyncio.run(main())
    assert json.loads(ledger.read_text(encoding="utf-8"))["spent"] == 300
    assert not list(tmp_path.glob("*.tmp"))


# --- audits --------------------------------------------------------------------------------


def entry(name: str, size: int = 1000) -> Entry:
    return Entry(name * 4, "bafy" + name, size, f"{name}-1-1-any.pkg.tar.zst")


def announced() -> list[tuple[str, str, str, Entry]]:
    """Peer 'big' announced 300 packages, the others a handful."""
    out = [("big", "extra", "x86_64", entry(f"b{i:03}")) for i in range(300)]
    out += [("small", "core", "x86_64", entry("s1")), ("tiny", "core", "x86_64", entry("t1"))]
    out += [("mid", "extra", "x86_64", entry(f"m{i}")) for i in range(5)]
    return out


def auditor_for(
    audit, per_hour: float = 2.0, max_size: int = 10_000, seed: int = 1, cands=None
) -> Auditor:
    rng = random.Random(seed)
    pool = announced() if cands is None else cands
    holder: list[Auditor] = []

    def pick():
        return pick_audit(pool, max_size, rng, holder[0].last_audited())

    clock = Clock()

    def tick() -> float:
        clock.now += 1
        return clock.now

    a = Auditor(pick, audit, AuditConfig(per_hour=per_hour, max_size=max_size), rng, clock=tick)
    holder.append(a)
    return a


def test_audits_spread_across_peers_however_much_each_announced() -> None:
    audited: list[str] = []

    async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
        audited.append(peer)
        return True

    async def main() -> None:
        a = auditor_for(audit)
        for _ in range(40):
            assert await a.once() is True
        assert {p: r.passed for p, r in a.peers().items()} == Counter(audited)

    asyncio.run(main())
    assert set(audited[:4]) == {"big", "small", "tiny", "mid"}  # every peer, first round
    counts = Counter(audited)
    assert min(counts.values()) >= 5, counts  # 'big' does not crowd out the others
    assert counts["big"] <= 20, counts


def test_only_packages_up_to_max_size_are_audited() -> None:
    cands = [("p1", "extra", "x86_64", entry("huge", 10**9))]
    cands += [("p1", "extra", "x86_64", entry("ok", 500)), ("p2", "extra", "x86_64", entry("z", 0))]
    rng = random.Random(3)
    assert {pick_audit(cands, 1000, rng)[3].filename for _ in range(50)} == {  # type: ignore[index]
        "ok-1-1-any.pkg.tar.zst"
    }
    assert pick_audit(cands[:1], 1000, rng) is None
    assert pick_audit([], 1000, rng) is None


def test_a_bad_audit_is_recorded_against_that_peer() -> None:
    async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
        return peer != "tiny"

    async def main() -> Auditor:
        a = auditor_for(audit)
        results = [await a.once() for _ in range(12)]
        assert results.count(False) == a.peers()["tiny"].failed
        return a

    a = asyncio.run(main())
    tiny = a.peers()["tiny"]
    assert tiny.failed >= 2 and tiny.passed == 0
    assert all(r.failed == 0 and r.passed >= 1 for p, r in a.peers().items() if p != "tiny")
    assert {r.outcome for r in a.recent() if r.peer == "tiny"} == {"failed"}


def test_a_failing_audit_callback_does_not_stop_the_loop() -> None:
    calls: list[str] = []

    async def main() -> Auditor:
        finished = asyncio.Event()

        async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
            calls.append(peer)
            if len(calls) >= 8:
                finished.set()
            if len(calls) % 2:
                raise RuntimeError("peer connection blew up")
            return True

        a = auditor_for(audit, per_hour=3.6e6)  # mean spacing 1 ms
        task = asyncio.create_task(a.run())
        waiter = asyncio.create_task(finished.wait())
        await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), "the audit loop stopped"
        assert waiter.done()
        await cancel_promptly(task)
        return a

    a = asyncio.run(main())
    errors = sum(r.errors for r in a.peers().values())
    passed = sum(r.passed for r in a.peers().values())
    assert errors >= 4 and passed >= 4 and errors + passed == len(calls)


def test_never_two_audits_at_once() -> None:
    state = {"now": 0, "most": 0, "calls": 0}

    async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
        state["now"] += 1
        state["calls"] += 1
        state["most"] = max(state["most"], state["now"])
        if state["calls"] <= 40:  # later ones return at once: a swallowed cancel cannot hang
            await asyncio.sleep(0.002)
        state["now"] -= 1
        return True

    async def main() -> None:
        a = auditor_for(audit, per_hour=3.6e6)
        task = asyncio.create_task(a.run())
        await asyncio.gather(*(a.once() for _ in range(10)))  # a manual audit next to run()
        await cancel_promptly(task)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert state["calls"] >= 10
    assert state["most"] == 1


def test_audits_off_and_nothing_to_audit_do_nothing() -> None:
    calls: list[str] = []

    async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
        calls.append(peer)
        return True

    async def main() -> None:
        await asyncio.wait_for(auditor_for(audit, per_hour=0).run(), PROMPT)  # returns
        empty = auditor_for(audit, cands=[])
        assert await empty.once() is None
        assert empty.peers() == {}

    asyncio.run(main())
    assert calls == []


def test_cancel_stops_an_audit_in_flight() -> None:
    seen: list[str] = []

    async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
        seen.append("started")
        if len(seen) > 1:
            return True  # only the first one hangs, so a swallowed cancel cannot hang the test
        try:
            await asyncio.Event().wait()
        finally:
            seen.append("cancelled")
        return True

    async def main() -> None:
        task = asyncio.create_task(auditor_for(audit, per_hour=3.6e6).run())
        while not seen:
            await asyncio.sleep(0.001)
        await cancel_promptly(task)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen == ["started", "cancelled"]


def test_a_failing_pick_is_survived() -> None:
    picks = iter([RuntimeError("announcement cache is locked"), ("p1", "core", "any", entry("a"))])

    def pick():
        item = next(picks)
        if isinstance(item, Exception):
            raise item
        return item

    async def audit(peer: str, repo: str, arch: str, e: Entry) -> bool:
        return True

    async def main() -> None:
        a = Auditor(pick, audit, AuditConfig(), random.Random(1))
        assert await a.once() is None
        assert await a.once() is True
        assert a.peers()["p1"].passed == 1

    asyncio.run(main())
