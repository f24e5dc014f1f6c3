"""Seeding: download a few random packages the swarm lacks, within a daily byte budget.

``[seed] random_packages = N`` makes this node fetch N packages of its current dbs every
``interval`` seconds, from upstream through the normal pipeline (the lead's ``download``
callback: verified, committed, then announced like anything else). It prefers packages
that no peer holds, then the ones fewest peers hold, randomised among equals, so seeding
nodes spread the swarm's coverage instead of all copying the same popular package.

The budget (``daily_budget`` bytes per UTC day) is what keeps a metered link safe, so it is
never exceeded: a package that does not fit in what is left is skipped (a smaller one may
still fit), and the bytes are written to a small JSON ledger *before* each download starts
(atomically: temp file + rename), so neither a restart nor a crash mid-download gives the
day its budget back. A download that fails keeps its charge: its bytes may well have
crossed the link, and the callback cannot say how many.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pacswarm.config_tables import SeedConfig

log = logging.getLogger(__name__)

#: Seconds after start before the first round: the node first refreshes its dbs and learns
#: its peers' inventories, or "fewest holders" would be a guess.
FIRST_ROUND_DELAY = 60.0
LEDGER_VERSION = 1


@dataclass(frozen=True)
class SeedCandidate:
    """A package of a current db that seeding may download."""

    repo: str
    arch: str
    filename: str
    sha256: str
    size: int


def utc_day(now: float) -> str:
    """The budget's day for wall-clock time ``now``: the UTC date, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(now, UTC).date().isoformat()


def choose_seeds(
    candidates: Sequence[SeedCandidate],
    cached: Callable[[str], bool],
    holders: Callable[[str], int],
    count: int,
    budget_left: int,
    rng: random.Random,
) -> list[SeedCandidate]:
    """Up to ``count`` uncached candidates, fewest holders first, within ``budget_left`` bytes.

    Ties are broken at random. A candidate bigger than what is left is skipped, not a reason
    to stop: a smaller one further down may still fit. Sizes of 0 or less (unknown) are
    skipped too, since their bytes could not be counted against the budget.
    """
    if count <= 0 or budget_left <= 0:
        return []
    unique: dict[str, SeedCandidate] = {}
    for cand in candidates:
        if 0 < cand.size <= budget_left and cand.sha256 not in unique:
            unique[cand.sha256] = cand
    ranked = [(holders(c.sha256), rng.random(), c) for c in unique.values() if not cached(c.sha256)]
    ranked.sort(key=lambda r: (r[0], r[1]))
    chosen: list[SeedCandidate] = []
    for _, _, cand in ranked:
        if cand.size <= budget_left:
            chosen.append(cand)
            budget_left -= cand.size
            if len(chosen) == count:
                break
    return chosen


class Ledger:
    """Bytes seeding spent today, in a JSON file that survives restarts.

    The file is ``{"version": 1, "day": "YYYY-MM-DD", "spent": bytes}``; another day's
    count is today's zero. An unreadable file counts as the whole budget spent today (the
    safe side for a metered link): it is moved aside to ``<name>.unreadable`` (so it can
    still be looked at) and replaced by one saying so, and seeding resumes tomorrow.
    """

    def __init__(self, path: Path, budget: int, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.budget = budget
        self._clock = clock
        self._day, self._spent = self._load()

    def _load(self) -> tuple[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "", 0
        except (OSError, ValueError) as e:
            return self._unreadable(str(e))
        day, spent = (data.get("day"), data.get("spent")) if isinstance(data, dict) else (0, 0)
        if not isinstance(day, str) or isinstance(spent, bool) or not isinstance(spent, int):
            return self._unreadable('expected {"day": "YYYY-MM-DD", "spent": bytes}')
        return day, max(spent, 0)

    def _unreadable(self, why: str) -> tuple[str, int]:
        today = utc_day(self._clock())
        aside = self.path.with_name(self.path.name + ".unreadable")
        log.warning(
            "seed ledger %s is unreadable (%s): counting today's budget as spent, seeding "
            "resumes tomorrow; the old file is kept as %s",
            self.path,
            why,
            aside,
        )
        try:
            os.replace(self.path, aside)
            self._write(today, self.budget)
        except OSError as e:
            log.warning("could not replace seed ledger %s: %s", self.path, e)
        return today, self.budget

    def spent(self, now: float) -> int:
        """Bytes spent on the UTC day of ``now``."""
        return self._spent if self._day == utc_day(now) else 0

    def left(self, now: float) -> int:
        return max(self.budget - self.spent(now), 0)

    def charge(self, size: int, now: float) -> None:
        """Add ``size`` bytes to today's count; the file is written before this returns."""
        today, spent = utc_day(now), self.spent(now) + size
        self._write(today, spent)
        self._day, self._spent = today, spent

    def _write(self, day: str, spent: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = {"version": LEDGER_VERSION, "day": day, "spent": spent}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class Seeder:
    """Every ``config.interval`` seconds, downloads a few packages peers lack (see module doc).

    ``candidates()`` lists the packages of the current dbs; ``cached(sha256)`` says whether
    this node already holds one; ``holders(sha256)`` how many peers announced it;
    ``download(c)`` fetches it through the normal pipeline and returns True if it was
    verified and committed. ``first_delay`` and ``clock`` are there for tests.
    """

    def __init__(
        self,
        candidates: Callable[[], list[SeedCandidate]],
        cached: Callable[[str], bool],
        holders: Callable[[str], int],
        download: Callable[[SeedCandidate], Awaitable[bool]],
        config: SeedConfig,
        ledger: Path,
        rng: random.Random,
        *,
        first_delay: float = FIRST_ROUND_DELAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._candidates = candidates
        self._cached = cached
        self._holders = holders
        self._download = download
        self._config = config
        self._rng = rng
        self._first_delay = first_delay
        self._clock = clock
        self.ledger = Ledger(ledger, config.daily_budget, clock)
        self._lock = asyncio.Lock()  # one round at a time: both charge the same budget
        #: Packages seeded (verified and committed) since start, for the status page.
        self.seeded = 0
        self.failed = 0

    def choose(self, now: float) -> list[SeedCandidate]:
        """What a round started at ``now`` would download: not cached, fewest holders
        first, within what is left of today's budget."""
        left = self.ledger.left(now)
        if self._config.random_packages <= 0 or left <= 0:
            return []
        return choose_seeds(
            self._candidates(),
            self._cached,
            self._holders,
            self._config.random_packages,
            left,
            self._rng,
        )

    async def round(self) -> int:
        """One seeding round now; returns how many packages were downloaded and verified."""
        async with self._lock:
            done = 0
            for cand in self.choose(self._clock()):
                done += await self._seed_one(cand)
            return done

    async def _seed_one(self, cand: SeedCandidate) -> bool:
        # Checked again just before: pacman may have fetched it since the round was chosen,
        # and the day may have turned (or an earlier download of this round failed).
        if self._cached(cand.sha256):
            return False
        now = self._clock()
        if cand.size > self.ledger.left(now):
            return False
        self.ledger.charge(cand.size, now)
        try:
            ok = bool(await self._download(cand))
        except Exception as e:
            log.warning(
                "seeding %s (%s/%s) failed: %s",
                cand.filename,
                cand.repo,
                cand.arch,
                e,
                exc_info=not isinstance(e, OSError | asyncio.TimeoutError),
            )
            ok = False
        if ok:
            self.seeded += 1
            log.info("seeded %s (%s/%s, %d bytes)", cand.filename, cand.repo, cand.arch, cand.size)
        else:
            self.failed += 1
        return ok

    async def run(self) -> None:
        """Round after round, ``first_delay`` after start and then every ``interval``.

        Returns at once if seeding is off (``random_packages`` or ``daily_budget`` 0).
        Cancel the task to stop it: a download in flight is cancelled with it.
        """
        if self._config.random_packages <= 0 or self._config.daily_budget <= 0:
            log.info("seeding is off ([seed] random_packages or daily_budget is 0)")
            return
        await asyncio.sleep(self._first_delay)
        while True:
            try:
                await self.round()
            except Exception:
                log.exception("seeding round failed; trying again in %.0f s", self._config.interval)
            await asyncio.sleep(self._config.interval)

    def status(self) -> dict[str, object]:
        """Today's budget and what was seeded (status page)."""
        now = self._clock()
        return {
            "day": utc_day(now),
            "spent": self.ledger.spent(now),
            "budget": self.ledger.budget,
            "seeded": self.seeded,
            "failed": self.failed,
        }


__all__ = ["Ledger", "SeedCandidate", "Seeder", "choose_seeds", "utc_day"]
