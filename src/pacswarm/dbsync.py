"""Repo databases: always from upstream, kept for offline use, never rolled back.

Arch does not sign its dbs, so they never come from peers: each pacman ``-Sy`` asks the mirrors
(conditionally, with the Last-Modified of the copy we hold). What we hold is what pacman gets,
and the ``.db`` is also the index every package download is verified against, so:

* only the names pacman uses are synced and kept: ``<repo>.db``, ``<repo>.files`` and their
  ``.sig`` (``.db.tar.gz``/``.files.tar.gz`` are served as aliases of the same copy); any other
  ``core.db*`` name is a 404 that asks no mirror;
* a body is streamed to a temp file (never held whole in memory), under a size cap and a
  stall watchdog, then checked in a worker thread by :mod:`pacswarm.repodb` (capped streaming
  decompression, only plain members, capped member sizes and count): a ``.db`` is parsed into
  the index, a ``.files`` is checked to be such a tar, a ``.sig`` only size-capped;
* any problem (corrupt, too big, a bomb, dated in the future, a rollback, truncated, stalled)
  is a :class:`MirrorFault`: that mirror is named in the log, penalised, and the next one asked;
* a db whose newest entry is older than ``db_freeze_after`` is logged as possibly *frozen*;
* when every mirror fails, the last good copy is served (offline mode) and the log says so.

Time rules (a db from "the future" must not freeze a repo):

* an entry or a ``Last-Modified`` more than :data:`MAX_CLOCK_SKEW` after our clock makes the
  db bad (a mirror fault); within the skew, the time stored (the held file's mtime, which is the
  ``Last-Modified`` pacman sees and our next ``If-Modified-Since``) is capped at *now*, and no
  ``If-Modified-Since`` after now is ever sent (a held copy from an older version or a clock
  that jumped back), so no mirror can make the honest ones answer 304 for good;
* the *rollback floor* of a ``.db`` is ``min(newest entry, when we accepted it)``; for a ``.files``
  or ``.sig`` it is the held copy's capped mtime. One mirror alone therefore cannot raise the
  floor above the moment its db reached us: for honest dbs (written before we fetched them) the
  floor is exactly their newest entry, as before; a db dated ahead blocks, at most, honest dbs
  older than the moment we took it, and the next genuine repo update passes. When we accepted
  it is the held file's ctime (we write it and nothing else changes it), so this survives
  restarts;
* an operator resets everything with ``pacswarm reset-db [REPO]...`` (:func:`reset_held`): it
  drops the held copies, and a copy that is no longer on disk sets no floor, so the next ``-Sy``
  takes whatever the first good mirror has, whether or not the node is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiohttp

from pacswarm.config import Config
from pacswarm.errors import RepoDbError, UpstreamError
from pacswarm.fetch.mirrors import (
    MAX_SIGNATURE,
    READ_PIECE,
    check_status,
    each_mirror,
    read_body,
)
from pacswarm.repodb import PackageRecord, RepoDb, check_files_db_file, parse_repo_db_file
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store
from pacswarm.upstream import MirrorFault, Upstream

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Arch's largest db file (extra.files) is ~45 MB compressed; refuse anything absurdly larger.
MAX_DB_SIZE = 512 * 1024 * 1024
#: How far ahead of our clock a db's dates may be. Honest dbs are written before we fetch them,
#: so only a wrong clock puts them ahead; an hour covers a drifting clock, not a wrong zone.
MAX_CLOCK_SKEW = 3600.0
#: How often the stall watchdog of a db download looks at its progress (seconds).
WATCHDOG_TICK = 0.25
#: At most this many dbs are parsed at once, so their memory adds up to little.
PARSE_SLOTS = 2


@dataclass(frozen=True)
class DbCopy:
    """The copy of a db file pacman will get. ``offline`` when no mirror could be asked."""

    path: Path
    offline: bool = False


@dataclass(frozen=True)
class _Index:
    """A parsed ``.db`` and its rollback floor (see the module docstring)."""

    db: RepoDb
    floor: float


def canonical_name(rp: RequestPath) -> str | None:
    """The held file ``rp`` names (``core.db.tar.gz`` is ``core.db``), or None for a name
    pacman never asks for (those are neither fetched nor kept)."""
    for kind in ("db", "files"):
        for sig in ("", ".sig"):
            canonical = f"{rp.repo}.{kind}{sig}"
            if rp.filename in (canonical, f"{rp.repo}.{kind}.tar.gz{sig}"):
                return canonical
    return None


def is_index_db(rp: RequestPath) -> bool:
    """The db that lists packages and their checksums: ``core.db`` (not .files, not .sig)."""
    return rp.filename == f"{rp.repo}.db"


def reset_held(db_dir: Path, repos: list[str]) -> list[Path]:
    """Delete the held copies of ``repos`` (all when empty); returns the files removed.

    Safe while the node is stopped or running: a copy that is gone sets no rollback floor.
    """
    removed: list[Path] = []
    if not db_dir.is_dir():
        return removed
    for repo_dir in sorted(db_dir.iterdir()):
        if (repos and repo_dir.name not in repos) or not repo_dir.is_dir():
            continue
        for path in sorted(repo_dir.glob("*/*")):
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
        for arch_dir in repo_dir.iterdir():
            with contextlib.suppress(OSError):
                arch_dir.rmdir()
        with contextlib.suppress(OSError):
            repo_dir.rmdir()
    return removed


def _http_time(header: str | None) -> float | None:
    if header:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            return parsedate_to_datetime(header).timestamp()
    return None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class RepoDbs:
    def __init__(self, store: Store, upstream: Upstream, config: Config) -> None:
        self.store = store
        self.upstream = upstream
        self.config = config
        self._index: dict[tuple[str, str], _Index] = {}
        # One lock per held file, dropped when its last user leaves (the dict stays small).
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}
        self._parse_slots = asyncio.Semaphore(PARSE_SLOTS)
        #: Called with (repo, arch) whenever a db's index changes (the swarm listens).
        self.on_index: Callable[[str, str], None] | None = None
        #: Called with each db file newly held (``core.db``, ``core.files``, their ``.sig``):
        #: the repo folders link the current copies.
        self.on_held: list[Callable[[RequestPath], None]] = []
        #: Called with (mirror, bytes) for each db file a mirror sent whole (the traffic).
        self.on_received: Callable[[str, int], None] | None = None

    def load_held(self) -> None:
        """Index the dbs kept from earlier runs, so a restart works offline straight away."""
        now = time.time()
        for path in sorted(self.store.db_dir.glob("*/*/*.db")):
            repo, arch = path.parts[-3], path.parts[-2]
            if path.name != f"{repo}.db":
                continue
            try:
                db = parse_repo_db_file(path)
                accepted = path.stat().st_ctime
            except (OSError, RepoDbError) as e:
                log.warning("ignoring held db %s: %s", path, e)
                continue
            self._index[(repo, arch)] = _Index(db, min(db.newest_mtime, int(accepted), int(now)))

    def indexed(self) -> list[tuple[str, str]]:
        """The (repo, arch) pairs whose db is held and parsed."""
        return sorted(self._index)

    def records(self, repo: str, arch: str) -> dict[str, PackageRecord]:
        held = self._index.get((repo, arch))
        return held.db.records if held is not None else {}

    def lookup(self, repo: str, arch: str, filename: str) -> PackageRecord | None:
        held = self._index.get((repo, arch))
        return held.db.get(filename) if held is not None else None

    async def refresh(self, rp: RequestPath) -> DbCopy:
        """Bring our copy of ``rp`` up to date from the first mirror that answers well."""
        name = canonical_name(rp)
        if name is None:
            raise UpstreamError(
                str(rp), [("pacswarm", "not a db file pacman asks for; no mirror asked")], 404
            )
        rp = RequestPath(rp.repo, rp.arch, name, FileKind.DB)
        held = self.store.db_path(rp)
        lock, users = self._locks.get(held, (asyncio.Lock(), 0))
        self._locks[held] = (lock, users + 1)
        try:
            async with lock:
                return await self._refresh_locked(rp, held)
        finally:
            lock, users = self._locks[held]
            if users == 1:
                del self._locks[held]
            else:
                self._locks[held] = (lock, users - 1)

    async def _refresh_locked(self, rp: RequestPath, held: Path) -> DbCopy:
        try:
            return await each_mirror(self.upstream, str(rp), lambda m: self._try_mirror(m, rp))
        except UpstreamError as e:
            if not held.exists():
                raise
            log.warning(
                "offline: serving the last good copy of %s (%s)",
                rp,
                "; ".join(f"{m}: {r}" for m, r in e.attempts) or "no mirror",
            )
            return DbCopy(held, offline=True)

    def _if_modified_since(self, rp: RequestPath, held: Path, now: float) -> float | None:
        """Our copy's time, if it is worth a conditional request (never a time after now)."""
        if is_index_db(rp) and (rp.repo, rp.arch) not in self._index:
            return None  # no index in memory: we need the whole db, not a 304
        try:
            mtime = held.stat().st_mtime
        except OSError:
            return None
        return mtime if mtime <= now else None

    async def _try_mirror(self, mirror: str, rp: RequestPath) -> DbCopy:
        """Make our copy current from ``mirror``, or raise :class:`MirrorFault`."""
        held = self.store.db_path(rp)
        now = time.time()
        since = self._if_modified_since(rp, held, now)
        async with self.upstream.open(mirror, rp, if_modified_since=since) as resp:
            check_status(resp, 200, 304)
            if resp.status == 304:
                if since is None:
                    raise MirrorFault(f"answered 304 to an unconditional GET of {rp.filename}")
                return DbCopy(held)
            modified = self._last_modified(resp.headers.get("Last-Modified"), rp, now)
            if rp.filename.endswith(".sig"):
                temp = self._write_temp(rp, await read_body(resp, MAX_SIGNATURE))
            else:
                temp = await self._download(resp, rp)
        if self.on_received is not None:
            self.on_received(mirror, temp.stat().st_size)
        try:
            await self._accept(mirror, rp, held, temp, modified, now)
        finally:
            temp.unlink(missing_ok=True)
        return DbCopy(held)

    def _last_modified(self, header: str | None, rp: RequestPath, now: float) -> float:
        """The mirror's Last-Modified, capped at now; one far in the future is a fault."""
        stamp = _http_time(header)
        if stamp is None:
            return now
        if stamp > now + MAX_CLOCK_SKEW:
            raise MirrorFault(
                f"{rp.filename} has Last-Modified {_when(stamp)}, in the future "
                f"(our clock: {_when(now)}); refused"
            )
        return min(stamp, now)

    def _write_temp(self, rp: RequestPath, data: bytes) -> Path:
        fd, temp = self.store.new_temp(rp.filename)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return temp

    async def _download(self, resp: aiohttp.ClientResponse, rp: RequestPath) -> Path:
        """Stream the body to a temp file under the size cap and the stall watchdog."""
        declared = resp.content_length
        if declared is not None and declared > MAX_DB_SIZE:
            raise MirrorFault(f"{rp.filename} is {declared} bytes, more than {MAX_DB_SIZE}")
        fd, temp = self.store.new_temp(rp.filename)
        got = [0]
        try:
            with os.fdopen(fd, "wb") as f:
                await self._watched(self._copy_body(resp, rp, f, got), got, rp)
                await asyncio.to_thread(os.fsync, f.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if declared is not None and got[0] != declared:
            temp.unlink(missing_ok=True)
            raise MirrorFault(f"{rp.filename} truncated at {got[0]} of {declared} bytes")
        return temp

    async def _copy_body(
        self, resp: aiohttp.ClientResponse, rp: RequestPath, f: BinaryIO, got: list[int]
    ) -> None:
        try:
            async for piece in resp.content.iter_chunked(READ_PIECE):
                got[0] += len(piece)
                if got[0] > MAX_DB_SIZE:
                    raise MirrorFault(f"{rp.filename} is larger than {MAX_DB_SIZE} bytes")
                f.write(piece)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise MirrorFault(
                f"{rp.filename} cut at byte {got[0]}: {type(e).__name__} {e}"
            ) from None

    async def _watched(
        self, copy: Coroutine[Any, Any, None], got: list[int], rp: RequestPath
    ) -> None:
        """Run ``copy``; fewer than ``min_speed * stall_timeout`` bytes in a window is a stall."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(copy)
        window_start, window_bytes = loop.time(), got[0]
        need = max(self.config.min_speed * self.config.stall_timeout, 1)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCHDOG_TICK)
                if done:
                    return task.result()
                now = loop.time()
                if now - window_start >= self.config.stall_timeout:
                    moved = got[0] - window_bytes
                    if moved < need:
                        raise MirrorFault(
                            f"{rp.filename} stalled: {moved} bytes in "
                            f"{now - window_start:.1f} s at byte {got[0]}"
                        )
                    window_start, window_bytes = now, got[0]
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, MirrorFault):
                    await task

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run a parser in a worker thread; its errors become the mirror's fault."""
        async with self._parse_slots:
            try:
                return await asyncio.to_thread(fn, *args)
            except RepoDbError as e:
                raise MirrorFault(str(e)) from None
            except (ValueError, LookupError, ArithmeticError, UnicodeError) as e:
                # A parser bug hostile input found: still that db's fault, but worth a trace.
                log.exception("unexpected error while checking a db")
                raise MirrorFault(f"sent a db that could not be read ({e!r})") from None

    async def _accept(
        self, mirror: str, rp: RequestPath, held: Path, temp: Path, modified: float, now: float
    ) -> None:
        """Check the downloaded ``temp`` and make it the held copy, or raise MirrorFault."""
        not_after = now + MAX_CLOCK_SKEW
        if is_index_db(rp):
            started = time.monotonic()
            db = await self._in_thread(parse_repo_db_file, temp, not_after)
            took = time.monotonic() - started
            current = self._index.get((rp.repo, rp.arch)) if held.exists() else None
            if current is not None and db.newest_mtime < current.floor:
                raise MirrorFault(
                    f"rollback refused: its {rp.filename} (newest entry {_when(db.newest_mtime)})"
                    f" is older than the copy held ({_when(current.floor)})"
                )
            self._warn_if_frozen(mirror, rp, db, now)
            self._commit(rp, temp, held, modified)
            self._index[(rp.repo, rp.arch)] = _Index(db, min(db.newest_mtime, int(now)))
            if self.on_index is not None:
                self.on_index(rp.repo, rp.arch)
            log.info(
                "updated %s from %s (%d packages, parsed in %.2f s)",
                rp,
                mirror,
                len(db.records),
                took,
            )
            return
        if rp.filename.endswith(".files"):
            await self._in_thread(check_files_db_file, temp, not_after)
        if held.exists():
            floor = min(held.stat().st_mtime, now)
            if modified < floor:
                raise MirrorFault(
                    f"rollback refused: its {rp.filename} (Last-Modified {_when(modified)}) "
                    f"is older than the copy held ({_when(floor)})"
                )
        self._commit(rp, temp, held, modified)
        log.info("updated %s from %s", rp, mirror)

    def _warn_if_frozen(self, mirror: str, rp: RequestPath, db: RepoDb, now: float) -> None:
        age = now - db.newest_mtime
        if db.records and age > self.config.db_freeze_after:
            log.warning(
                "%s may be frozen: its newest entry is %.1f days old (mirror %s)",
                rp,
                age / 86400,
                mirror,
            )

    def _commit(self, rp: RequestPath, temp: Path, held: Path, mtime: float) -> None:
        """Rename the checked temp file over the held copy (atomic: same filesystem)."""
        os.utime(temp, (mtime, mtime))
        held.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, held)
        for callback in list(self.on_held):
            try:
                callback(rp)
            except Exception:
                log.exception("on_held subscriber failed for %s", rp)
