"""Repo databases: always from upstream, kept for offline use, never rolled back.

Arch does not sign its dbs, so they never come from peers: each pacman ``-Sy`` asks the mirrors
(conditionally, with the Last-Modified of the copy we hold). What we hold is what pacman gets,
and it is also the index every package download is verified against, so:

* a corrupt db (not a tar of ``desc`` files) is refused and the old copy kept;
* a db whose newest entry is older than the one we hold (a stale or malicious mirror: a
  *rollback*) is refused;
* a db whose newest entry is older than ``db_freeze_after`` is logged as possibly *frozen*;
* when every mirror fails, the last good copy is served (offline mode) and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from pacswarm.config import Config
from pacswarm.errors import RepoDbError, UpstreamError
from pacswarm.repodb import PackageRecord, RepoDb, parse_repo_db
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store
from pacswarm.upstream import MirrorFault, Upstream

log = logging.getLogger(__name__)

#: Arch's largest db file (extra.files) is ~60 MB; refuse anything absurdly larger.
MAX_DB_SIZE = 512 * 1024 * 1024


@dataclass(frozen=True)
class DbCopy:
    """The copy of a db file pacman will get. ``offline`` when no mirror could be asked."""

    path: Path
    offline: bool = False


def _last_modified(header: str | None) -> float:
    if header:
        try:
            return parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


def is_index_db(rp: RequestPath) -> bool:
    """The db that lists packages and their checksums: ``core.db`` (not .files, not .sig)."""
    return rp.filename == f"{rp.repo}.db"


class RepoDbs:
    def __init__(self, store: Store, upstream: Upstream, config: Config) -> None:
        self.store = store
        self.upstream = upstream
        self.config = config
        self._index: dict[tuple[str, str], RepoDb] = {}
        self._locks: dict[Path, asyncio.Lock] = {}

    def load_held(self) -> None:
        """Index the dbs kept from earlier runs, so a restart works offline straight away."""
        for path in sorted(self.store.db_dir.glob("*/*/*.db")):
            repo, arch = path.parts[-3], path.parts[-2]
            if path.name != f"{repo}.db":
                continue
            try:
                self._index[(repo, arch)] = parse_repo_db(path.read_bytes())
            except (OSError, RepoDbError) as e:
                log.warning("ignoring held db %s: %s", path, e)

    def lookup(self, repo: str, arch: str, filename: str) -> PackageRecord | None:
        db = self._index.get((repo, arch))
        return db.get(filename) if db is not None else None

    def has_index(self, repo: str, arch: str) -> bool:
        return (repo, arch) in self._index

    async def ensure_index(self, repo: str, arch: str) -> None:
        """Fetch ``repo.db`` if we have never seen it (a package asked before any -Sy)."""
        if (repo, arch) in self._index:
            return
        rp = RequestPath(repo, arch, f"{repo}.db", FileKind.DB)
        try:
            await self.refresh(rp)
        except UpstreamError as e:
            log.info("no index for %s/%s: %s", repo, arch, e)

    async def refresh(self, rp: RequestPath) -> DbCopy:
        """Bring our copy of ``rp`` up to date from the first mirror that answers."""
        held = self.store.db_path(rp)
        lock = self._locks.setdefault(held, asyncio.Lock())
        async with lock:
            return await self._refresh_locked(rp, held)

    async def _refresh_locked(self, rp: RequestPath, held: Path) -> DbCopy:
        held_mtime = held.stat().st_mtime if held.exists() else None
        attempts: list[tuple[str, str]] = []
        not_found = 0
        for mirror in self.upstream.candidates():
            try:
                outcome = await self._try_mirror(mirror, rp, held, held_mtime)
            except MirrorFault as e:
                attempts.append((mirror, str(e)))
                if e.penalise:
                    self.upstream.failed(mirror, str(e))
                else:
                    not_found += 1
                continue
            if outcome:
                self.upstream.succeeded(mirror)
                return DbCopy(held)
            attempts.append((mirror, "older than the copy held (stale mirror?)"))
        if held.exists():
            log.warning(
                "offline: serving the last good copy of %s (%s)",
                rp,
                "; ".join(f"{m}: {r}" for m, r in attempts) or "no mirror",
            )
            return DbCopy(held, offline=True)
        status = 404 if attempts and not_found == len(attempts) else 502
        raise UpstreamError(str(rp), attempts, status)

    async def _try_mirror(
        self, mirror: str, rp: RequestPath, held: Path, held_mtime: float | None
    ) -> bool:
        """True if our copy is now current; False if the mirror's copy is a rollback."""
        async with self.upstream.open(mirror, rp, if_modified_since=held_mtime) as resp:
            if resp.status == 304 and held_mtime is not None:
                return True
            if resp.status == 404:
                raise MirrorFault("404 not found", penalise=False, status=404)
            if resp.status != 200:
                raise MirrorFault(f"HTTP {resp.status}")
            size = resp.content_length
            if size is not None and size > MAX_DB_SIZE:
                raise MirrorFault(f"db of {size} bytes is larger than {MAX_DB_SIZE}")
            data = await resp.content.read(MAX_DB_SIZE + 1)
            if len(data) > MAX_DB_SIZE:
                raise MirrorFault(f"db larger than {MAX_DB_SIZE} bytes")
            if size is not None and len(data) != size:
                raise MirrorFault(f"db truncated at {len(data)} of {size} bytes")
            last_modified = _last_modified(resp.headers.get("Last-Modified"))
        return self._accept(mirror, rp, held, held_mtime, data, last_modified)

    def _accept(
        self,
        mirror: str,
        rp: RequestPath,
        held: Path,
        held_mtime: float | None,
        data: bytes,
        last_modified: float,
    ) -> bool:
        if is_index_db(rp):
            try:
                db = parse_repo_db(data)
            except RepoDbError as e:
                raise MirrorFault(f"sent a corrupt {rp.filename}: {e}") from None
            current = self._index.get((rp.repo, rp.arch))
            if current is not None and db.newest_mtime < current.newest_mtime:
                log.warning("rollback refused: %s from %s is older than the copy held", rp, mirror)
                self.upstream.failed(mirror, f"served an older {rp.filename} (rollback)")
                return False
            age = time.time() - db.newest_mtime
            if db.records and age > self.config.db_freeze_after:
                log.warning(
                    "%s may be frozen: its newest entry is %.1f days old (mirror %s)",
                    rp,
                    age / 86400,
                    mirror,
                )
            self.store.write_atomic(held, data, mtime=last_modified)
            self._index[(rp.repo, rp.arch)] = db
            log.info("updated %s from %s (%d packages)", rp, mirror, len(db.records))
            return True
        if held_mtime is not None and last_modified < held_mtime:
            log.warning("rollback refused: %s from %s is older than the copy held", rp, mirror)
            return False
        self.store.write_atomic(held, data, mtime=last_modified)
        return True
