"""The seed's steps 2 and 3: audits of what peers announce, and seeding from upstream.

The schedulers (:mod:`.audit`, :mod:`.seed`) decide when and what; this module gives them
the node's real download path: an audit is a download of the announced package from the
announcing peer *only* (no mirror may fill in), a seed is a download from the mirrors
*only*; both are admitted like any other download, so an audited or seeded package enters
the cache (and the node's announced set) only when verified.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from pacswarm.fetch.download import DownloadFailed
from pacswarm.fetch.plan import Scope
from pacswarm.fetch.source import Want
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.swarm.audit import Auditor, pick_audit
from pacswarm.swarm.protocol import Entry
from pacswarm.swarm.seed import FIRST_ROUND_DELAY, SeedCandidate, Seeder

if TYPE_CHECKING:
    from pathlib import Path

    from pacswarm.fetch.download import Downloader
    from pacswarm.store import Store
    from pacswarm.swarm.service import Swarm

log = logging.getLogger(__name__)


class Duties:
    def __init__(self, swarm: Swarm, downloader: Downloader, store: Store, data_dir: Path) -> None:
        self.swarm = swarm
        self.downloader = downloader
        self.store = store
        self._counts: dict[str, int] = {}
        rng = random.Random()
        config = swarm.config
        self.auditor = Auditor(self._pick, self._audit, config.audit, rng)
        self.seeder = Seeder(
            self._candidates,
            self._cached,
            self._holders,
            self._seed,
            config.seed,
            data_dir / "seed-ledger.json",
            rng,
            # A minute after start, or sooner when the interval itself is shorter.
            first_delay=min(FIRST_ROUND_DELAY, config.seed.interval),
        )

    def start(self) -> None:
        if self.swarm.config.audit.per_hour > 0:
            self.swarm.background(self.auditor.run())
        if self.swarm.config.seed.random_packages > 0:
            self.swarm.background(self.seeder.run())

    # -- audits ------------------------------------------------------------------------------

    def _pick(self) -> tuple[str, str, str, Entry] | None:
        swarm = self.swarm
        if swarm.host is None or swarm.cache is None:
            return None
        connected = [p for p in swarm.host.connected_peers() if swarm.trusted(p)]
        candidates = [
            (peer, repo, arch, entry)
            for peer in connected
            for repo, arch in swarm.dbs.indexed()
            for entry in swarm.cache.peer_entries(peer, repo, arch)
        ]
        return pick_audit(
            candidates, swarm.config.audit.max_size, swarm.rng, self.auditor.last_audited()
        )

    async def _audit(self, peer: str, repo: str, arch: str, entry: Entry) -> bool:
        swarm = self.swarm
        record = swarm.dbs.lookup(repo, arch, entry.filename)
        if record is None or not swarm.believe(repo, arch, entry):
            return True  # the db moved on: nothing to hold against the peer
        rp = RequestPath(repo, arch, entry.filename, FileKind.PACKAGE)
        own = self._own_cid(repo, arch, entry.sha256)
        if own is not None:
            # We verified this file ourselves: its CID is known, so a different one is a lie.
            if own != entry.cid:
                swarm.strike(peer, f"announced {entry.cid} for {entry.filename}, which is {own}")
                if swarm.cache is not None:
                    swarm.cache.forget(peer, entry.sha256)
                return False
            return True
        want = Want(rp, record)
        sources = swarm.sources(want, peers={peer})
        if not sources or self.downloader.active(rp) is not None:
            return True  # gone meanwhile, or pacman is fetching it: no verdict on the peer
        swarm.why[want.key] = "audited"
        dl = self.downloader.get_or_start(want, sources, Scope.EXTRA_ONLY)
        try:
            await asyncio.shield(dl.done)
        except DownloadFailed as e:
            swarm.why.pop(want.key, None)
            log.info("swarm: audit of %s from %s failed: %s", entry.filename, peer, e)
            return False
        names = {s.name for s in sources}
        if not set(dl.sources) <= names:  # pacman joined and a mirror finished it
            return True
        log.info("swarm: audit of %s from %s passed", entry.filename, peer)
        return True

    def _own_cid(self, repo: str, arch: str, sha256: str) -> str | None:
        own = self.swarm.own
        if own is None:
            return None
        return next((e.cid for e in own.announced(repo, arch, "all") if e.sha256 == sha256), None)

    # -- seeding -----------------------------------------------------------------------------

    def _candidates(self) -> list[SeedCandidate]:
        dbs, cache = self.swarm.dbs, self.swarm.cache
        # One query now, then lookups: choose() asks for every uncached package of the dbs.
        self._counts = cache.holder_counts() if cache is not None else {}
        return [
            SeedCandidate(repo, arch, r.filename, r.sha256, r.csize)
            for repo, arch in dbs.indexed()
            for r in dbs.records(repo, arch).values()
        ]

    def _cached(self, sha256: str) -> bool:
        return self.store.has_sha256(sha256)

    def _holders(self, sha256: str) -> int:
        return self._counts.get(sha256, 0)

    async def _seed(self, candidate: SeedCandidate) -> bool:
        record = self.swarm.dbs.lookup(candidate.repo, candidate.arch, candidate.filename)
        if record is None:
            return False
        rp = RequestPath(candidate.repo, candidate.arch, candidate.filename, FileKind.PACKAGE)
        self.swarm.why[(rp.repo, rp.arch, rp.filename)] = "seeded"
        try:
            await self.downloader.fetch(Want(rp, record), scope=Scope.NO_PEERS)
        except DownloadFailed as e:
            self.swarm.why.pop((rp.repo, rp.arch, rp.filename), None)
            log.info("swarm: seeding %s failed: %s", candidate.filename, e)
            return False
        log.info("swarm: seeded %s", candidate.filename)
        return True
