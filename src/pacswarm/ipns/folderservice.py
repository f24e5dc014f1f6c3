"""The node's repo folders, kept up to date as packages come and go (issue 8).

Events (a db refreshed, a package verified or evicted, a repo dropped) only record what the
tree should become; one build runs once they have been quiet for ``quiet`` seconds, or at
most ``max_delay`` seconds after the first pending one, so a burst of 500 verified packages
costs a handful of builds, not 500. A build (in a worker thread, it touches SQLite)::

    pending changes --> copies (.sig, dbs) imported via add_copy --> FolderTree updated
        --> build (only changed shards re-encoded) --> put_blocks("@folder/<n>", ...)
        --> generations older than n-1 removed, copies no kept generation links removed
        --> on_root(root) on the event loop

The last two generations are kept so a peer walking the previous root still finds its
blocks. Packages are linked, not copied: their blocks are the cache's. ``.sig`` files and dbs
are copied (``@sig/<repo>/<arch>/<file>.sig``; ``@db/<repo>/<arch>/<name>/<sha256>``, keyed by
content, so a db refresh does not take the previous generation's db away from it).

Restart: the newest ``@folder/<n>`` key in the blockstore is the root until the first build;
the caller replays its events (db_updated per held db, package_added per cached package),
ideally before :meth:`RepoFolders.start`, and since the tree depends only on its entries the
first build then gives the same root, stores nothing and reports nothing.

Events must be called on the event loop's thread; they never block and never raise for
what a build finds (a package whose blocks are gone is logged and left unlinked), only for
names a directory cannot hold (:class:`~pacswarm.ipfs.unixfsdir.DirectoryError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pacswarm.ipfs.blockstore import BlockstoreError, PackageBlockstore
from pacswarm.ipfs.cid import CID, RAW, CIDError
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfsdir import DirectoryError, Entry, check_name
from pacswarm.ipns.folders import FolderBuild, FolderTree

log = logging.getLogger(__name__)

FOLDER_PREFIX = "@folder/"
SIG_PREFIX = "@sig/"
DB_PREFIX = "@db/"
#: Generations whose blocks are kept: the current root and the one before it.
KEPT_GENERATIONS = 2


def sig_key(repo: str, arch: str, filename: str) -> str:
    return f"{SIG_PREFIX}{repo}/{arch}/{filename}.sig"


def db_key(repo: str, arch: str, name: str, data: bytes) -> str:
    return f"{DB_PREFIX}{repo}/{arch}/{name}/{hashlib.sha256(data).hexdigest()[:32]}"


def folder_generation(key: str) -> int | None:
    """``@folder/<n>`` -> n; None for anything else."""
    tail = key.removeprefix(FOLDER_PREFIX)
    return int(tail) if tail != key and tail.isdigit() else None


@dataclass(frozen=True)
class _Link:
    """A package to link: its blocks are the cache's (add_package)."""

    cid: CID


@dataclass(frozen=True)
class _Copy:
    """A small file to copy into the blockstore under ``key`` and link."""

    key: str
    data: bytes
    by_content: bool  # the key names the content: already held means already imported


Change = _Link | _Copy | None  # None: unlink
Name = tuple[str, str, str]  # (repo, arch, name)


class RepoFolders:
    """The published tree, debounced and incremental; see the module docstring."""

    def __init__(
        self, blocks: PackageBlockstore, *, quiet: float = 1.0, max_delay: float = 5.0
    ) -> None:
        if quiet <= 0 or max_delay < quiet:
            raise ValueError(f"need 0 < quiet <= max_delay (got quiet={quiet}, max={max_delay})")
        self.blocks = blocks
        self.quiet = quiet
        self.max_delay = max_delay
        self.on_root: list[Callable[[CID], None]] = []
        self.root: CID | None = None
        self.builds = 0  # builds run (stored or not): what the debounce saves
        self.last_build: FolderBuild | None = None
        # event-loop side
        self._pending: dict[Name, Change] = {}
        self._drops: set[tuple[str, str]] = set()
        self._db_names: dict[tuple[str, str], set[str]] = {}
        self._changes = 0
        self._first: float | None = None
        self._last = 0.0
        self._failed_at: float | None = None
        self._started = False
        self._timer: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[FolderBuild | None] | None = None
        self._lock = asyncio.Lock()
        # build-thread side (only touched by one build at a time, under _lock)
        self._loaded = False
        self._tree = FolderTree()
        self._generation = 0
        self._stored: CID | None = None
        self._copies: dict[Name, str] = {}  # linked name -> its copy key
        self._held: set[str] = set()  # copy keys in the blockstore
        self._in_use: dict[int, frozenset[str]] = {}  # generation -> copy keys it links

    @property
    def generation(self) -> int:
        return self._generation

    # -- events -----------------------------------------------------------------------------

    def db_updated(self, repo: str, arch: str, files: Mapping[str, bytes]) -> None:
        """The repo's db files now are ``files`` (name -> content); names no longer given
        (a ``.files.sig`` not held any more) are unlinked."""
        for name in files:
            _check(repo, arch, name)
        folder = (repo, arch)
        for name in self._db_names.get(folder, set()) - set(files):
            self._change((repo, arch, name), None)
        for name, data in files.items():
            copy = _Copy(db_key(repo, arch, name, data), bytes(data), by_content=True)
            self._change((repo, arch, name), copy)
        self._db_names[folder] = set(files)

    def package_added(
        self, repo: str, arch: str, filename: str, cid: CID, size: int, sig: bytes | None
    ) -> None:
        """Link a verified package (and its detached signature, when held).

        ``size`` (the file's) is not what the link needs: kubo's link Tsize counts the DAG's
        inner nodes too, so the build reads it from the package's root block."""
        _check(repo, arch, filename)
        self._change((repo, arch, filename), _Link(cid))
        sig_copy = None if sig is None else _Copy(sig_key(repo, arch, filename), sig, False)
        self._change((repo, arch, filename + ".sig"), sig_copy)

    def package_removed(self, repo: str, arch: str, filename: str) -> None:
        self._change((repo, arch, filename), None)
        self._change((repo, arch, filename + ".sig"), None)

    def repo_dropped(self, repo: str, arch: str) -> None:
        """The repo is no longer indexed: its whole ``repo/os/arch`` folder goes."""
        for name in [n for n in self._pending if n[:2] == (repo, arch)]:
            del self._pending[name]
        self._db_names.pop((repo, arch), None)
        self._drops.add((repo, arch))
        self._mark()

    def _change(self, name: Name, change: Change) -> None:
        self._pending[name] = change
        self._mark()

    def _mark(self) -> None:
        now = time.monotonic()
        self._changes += 1
        if self._first is None:
            self._first = now
        self._last = now
        self._arm()

    # -- scheduling -------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._started and self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._debounce())

    def _wake_at(self) -> float | None:
        if self._first is not None:
            return min(self._last + self.quiet, self._first + self.max_delay)
        if self._failed_at is not None:  # a failed build: try again, not in a tight loop
            return self._failed_at + self.max_delay
        return None

    async def _debounce(self) -> None:
        try:
            while (wake := self._wake_at()) is not None:
                delay = wake - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # new events may have moved the wake-up time
                await self._run_build()
        finally:
            self._timer = None

    async def start(self) -> None:
        """Load the last stored root, then build whenever events call for it."""
        async with self._lock:
            await asyncio.to_thread(self._load)
        self._started = True
        if self._first is not None:
            self._arm()

    async def stop(self) -> None:
        """Stop building: pending events are dropped (the next start replays them); a build
        already running in its thread is waited for, so the blockstore can be closed."""
        self._started = False
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                built = await self._inflight  # stored, even if the wait for it was cancelled
                if built is not None:
                    self.root = built.root
        self._pending.clear()
        self._drops.clear()
        self._first = None
        self._failed_at = None
        self._changes = 0

    async def flush(self) -> CID | None:
        """Build now, whatever is pending (``pacswarm publish``); the current root."""
        await self._run_build()
        return self.root

    # -- building ---------------------------------------------------------------------------

    async def _run_build(self) -> None:
        async with self._lock:
            pending, drops, changes = self._pending, self._drops, self._changes
            self._pending, self._drops, self._changes = {}, set(), 0
            self._first = None
            started = time.perf_counter()
            self._inflight = asyncio.ensure_future(
                asyncio.to_thread(self._build_sync, pending, drops)
            )
            try:
                stored = await asyncio.shield(self._inflight)
            except Exception as e:  # disk full, a locked db...: the tree is kept, retried
                log.error("folder: build of %d changes failed (retrying later): %s", changes, e)
                self._requeue(pending, drops, changes)
                self._failed_at = time.monotonic()
                return
            self._failed_at = None
            self.builds += 1
        ms = (time.perf_counter() - started) * 1000
        if stored is None:
            log.debug("folder: %d changes, root unchanged (%.1f ms)", changes, ms)
            return
        self.root = stored.root
        log.info("folder: %d changes -> root %s in %.1f ms", changes, stored.root, ms)
        for callback in list(self.on_root):
            try:
                callback(stored.root)
            except Exception:
                log.exception("folder: on_root subscriber failed for %s", stored.root)

    def _requeue(self, pending: dict[Name, Change], drops: set[tuple[str, str]], n: int) -> None:
        """Put a failed build's changes back under the newer ones (applying twice is
        harmless): what a newer event or a newer drop of the folder superseded stays out."""
        for name, change in pending.items():
            if name[:2] not in self._drops:
                self._pending.setdefault(name, change)
        self._drops |= drops
        self._changes += n

    def _load(self) -> None:
        """The newest stored generation is the current root (thread)."""
        if self._loaded:
            return
        generations = sorted(
            n for k in self.blocks.keys(FOLDER_PREFIX) if (n := folder_generation(k)) is not None
        )
        if generations:
            self._generation = generations[-1]
            self._stored = self.blocks.root_of(f"{FOLDER_PREFIX}{self._generation}")
            self.root = self._stored
        self._held = set(self.blocks.keys(SIG_PREFIX)) | set(self.blocks.keys(DB_PREFIX))
        # Which copies the stored generation links is not kept: assume all of them.
        self._in_use = {self._generation: frozenset(self._held)}
        self._loaded = True

    def _build_sync(
        self, pending: dict[Name, Change], drops: set[tuple[str, str]]
    ) -> FolderBuild | None:
        """Apply the changes, build, store a new generation if the root moved (thread)."""
        self._load()
        for folder in drops:
            self._tree.drop(*folder)
            for name in [n for n in self._copies if n[:2] == folder]:
                del self._copies[name]
        for name, change in pending.items():
            self._apply(name, change)
        build = self._tree.build()
        self.last_build = build
        if build.root == self._stored:
            return None
        generation = self._generation + 1
        blocks = ((b.cid, b.data) for b in build.blocks)
        self.blocks.put_blocks(f"{FOLDER_PREFIX}{generation}", build.root, build.size, blocks)
        self._generation, self._stored = generation, build.root
        self._in_use[generation] = frozenset(self._copies.values())
        self._collect(generation)
        return build

    def _apply(self, name: Name, change: Change) -> None:
        repo, arch, filename = name
        try:
            if change is None:
                self._tree.remove(repo, arch, filename)
                self._copies.pop(name, None)
                return
            if isinstance(change, _Link):
                entry = Entry(change.cid, self._tsize(change.cid))
                self._copies.pop(name, None)
            else:
                cid = self.blocks.root_of(change.key) if change.by_content else None
                if cid is None:
                    cid = self.blocks.add_copy(change.key, change.data)
                    self._held.add(change.key)
                entry = Entry(cid, self._tsize(cid))
                self._copies[name] = change.key
            self._tree.set(repo, arch, filename, entry)
        except (BlockstoreError, DirectoryError, CIDError) as e:
            log.warning("folder: %s/os/%s/%s left out: %s", repo, arch, filename, e)

    def _tsize(self, cid: CID) -> int:
        """What kubo's directory link says of a file: its DAG's cumulative size."""
        if cid.codec == RAW:
            size = self.blocks.block_size(cid)
            if size is None:
                raise BlockstoreError(f"{cid} is not in the blockstore (evicted?)")
            return size
        block = self.blocks.get(cid)
        if block is None:
            raise BlockstoreError(f"{cid} is not in the blockstore (evicted?)")
        return len(block) + sum(link.tsize for link in decode_node(block).links)

    def _collect(self, generation: int) -> None:
        """Drop generations before the kept ones, and copies no kept generation links."""
        for key in self.blocks.keys(FOLDER_PREFIX):
            n = folder_generation(key)
            if n is not None and n <= generation - KEPT_GENERATIONS:
                self.blocks.remove_package(key)
        for n in [n for n in self._in_use if n <= generation - KEPT_GENERATIONS]:
            del self._in_use[n]
        keep = frozenset().union(*self._in_use.values())
        for key in sorted(self._held - keep):
            self.blocks.remove_package(key)
            self._held.discard(key)


def _check(repo: str, arch: str, name: str) -> None:
    """Refuse at once a name no directory can hold, rather than losing it in a build."""
    for part in (repo, arch, name):
        check_name(part)
