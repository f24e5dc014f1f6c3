"""The node's repo folders and its IPNS name, fed by the node's events (issue 8).

What happens, in order::

    db held (dbsync.on_held) ─┐
    package imported (CID) ───┼─▶ RepoFolders (debounced, incremental) ─▶ new root
    package evicted ──────────┘                                             │
                                          IpnsPublisher.publish(root) ◀─────┘
                                          (record kept, DHT + /record/ pubsub)

The gateway answers ``/ipns/<name>/...`` through :attr:`IpnsService.resolver`, made with the
service (the gateway is built before the libp2p host) and attached to the host before it
listens.

Publishes are coalesced: while one is announcing (a DHT put takes seconds), newer roots
wait, and only the newest of them is published next.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipns.folderservice import RepoFolders
from pacswarm.ipns.publisher import IpnsPublisher, IpnsPublishError
from pacswarm.ipns.resolver import IpnsResolver
from pacswarm.ipns.sequence import SequenceCounter
from pacswarm.requestpath import RequestPath

if TYPE_CHECKING:
    from pacswarm.config import Config
    from pacswarm.dbsync import RepoDbs
    from pacswarm.ipfs.blockstore import PackageBlockstore
    from pacswarm.ipfs.host import P2PHost
    from pacswarm.store import Store

log = logging.getLogger(__name__)


class IpnsService:
    def __init__(self, config: Config, store: Store, dbs: RepoDbs) -> None:
        self.config = config
        self.store = store
        self.dbs = dbs
        data = config.data_dir
        key = load_or_create_identity(data / "ipfs" / "identity.key").private_key
        (data / "ipns").mkdir(parents=True, exist_ok=True)
        sequence = SequenceCounter(data / "ipns" / "sequence")
        self.publisher = IpnsPublisher(key, sequence, config.ipns, None)
        #: What the gateway resolves ``/ipns/<name>`` with (it exists before the host).
        self.resolver = IpnsResolver(self.publisher, None)
        self.folders: RepoFolders | None = None
        self._next_root: CID | None = None
        self._publishing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reading: set[tuple[str, str]] = set()  # repos whose db files are being read
        self._stale: set[tuple[str, str]] = set()  # ... and changed again meanwhile

    @property
    def name(self) -> str:
        return self.publisher.name

    def attach(self, host: P2PHost) -> None:
        """``IpfsService.before_listen``: our record is served by the host's DHT from its
        first connection, and names are looked up through it."""
        self.publisher.attach(host)
        self.resolver.attach(host)

    async def start(self, blocks: PackageBlockstore) -> None:
        """Make the folders and link the held dbs; nothing is built yet.

        The node then replays its cached packages (``on_imported``) and calls :meth:`go`:
        the first build sees the whole tree, so a restart with nothing changed gives the
        same root as before and publishes no half-built one.
        """
        self.folders = RepoFolders(blocks)
        self.folders.on_root.append(self._on_root)
        for repo, arch in self.dbs.indexed():
            await self._db_files(repo, arch)

    async def go(self) -> None:
        """Start building (debounced) and publishing, with the republish loop."""
        if self.folders is None:
            return
        await self.folders.start()
        await self.publisher.start()
        log.info("ipns: this node's folders are /ipns/%s", self.publisher.name)

    async def stop(self) -> None:
        for task in [*self._tasks, self._publishing]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.folders is not None:
            await self.folders.stop()
        await self.publisher.stop()
        await self.resolver.stop()

    # -- the node's events -----------------------------------------------------------------

    def on_imported(self, rp: RequestPath, cid: CID) -> None:
        """A verified package has its CID: link it (and its ``.sig``) in its folder."""
        if self.folders is None:
            return
        record = self.dbs.lookup(rp.repo, rp.arch, rp.filename)
        path = self.store.cache_path(rp)
        try:
            sig: bytes | None = path.with_name(path.name + ".sig").read_bytes()
        except OSError:
            sig = None
        size = record.csize if record is not None else path.stat().st_size
        self.folders.package_added(rp.repo, rp.arch, rp.filename, cid, size, sig)

    def on_evicted(self, rp: RequestPath) -> None:
        if self.folders is not None:
            self.folders.package_removed(rp.repo, rp.arch, rp.filename)

    def on_db_held(self, rp: RequestPath) -> None:
        """A db file was refreshed: the folder links the held copies.

        One ``pacman -Sy`` refreshes up to four files of a repo; they are read once per
        burst (a read already running reads again once, for what came in meanwhile).
        """
        if self.folders is None:
            return
        folder = (rp.repo, rp.arch)
        if folder in self._reading:
            self._stale.add(folder)
        else:
            self._reading.add(folder)
            self._background(self._reread(*folder))

    async def _reread(self, repo: str, arch: str) -> None:
        try:
            await self._db_files(repo, arch)
            while (repo, arch) in self._stale:
                self._stale.discard((repo, arch))
                await self._db_files(repo, arch)
        finally:
            self._reading.discard((repo, arch))

    async def _db_files(self, repo: str, arch: str) -> None:
        folder = self.store.db_dir / repo / arch
        names = [f"{repo}.db", f"{repo}.files"]
        names += [name + ".sig" for name in names]
        files = await asyncio.to_thread(_read_present, folder, names)
        if files and self.folders is not None and f"{repo}.db" in files:
            self.folders.db_updated(repo, arch, files)

    # -- publishing ------------------------------------------------------------------------

    def _on_root(self, root: CID) -> None:
        if not self.config.ipns.publish:
            return
        self._next_root = root
        if self._publishing is None or self._publishing.done():
            self._publishing = asyncio.create_task(self._publish_newest(), name="ipns publish")

    async def _publish_newest(self) -> None:
        while self._next_root is not None:
            root, self._next_root = self._next_root, None
            try:  # a root pacswarm publish got out first is not signed again
                await self.publisher.publish(root, unless_current=True)
            except Exception as e:  # a full disk for the counter: the next root retries
                log.warning("ipns: could not publish /ipfs/%s: %s", root, e)

    async def publish_now(self) -> dict[str, object]:
        """``pacswarm publish``: build the folders now and publish their root."""
        if self.folders is None:
            raise IpnsPublishError("the node has not started its folders yet; retry in a moment")
        root = await self.folders.flush() or self.folders.root
        if root is None:
            raise IpnsPublishError(
                "nothing to publish yet: no repo db is held (run pacman -Sy through this node)"
            )
        await self.publisher.publish(root)
        current = self.publisher.current
        return {
            "name": self.publisher.name,
            "root": str(root),
            "sequence": current.sequence if current is not None else None,
        }

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _read_present(folder: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    for name in names:
        try:
            out[name] = (folder / name).read_bytes()
        except FileNotFoundError:
            continue
    return out
