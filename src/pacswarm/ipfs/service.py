"""The node's IPFS side, as the proxy sees it: verified packages in, content out.

The proxy hands every package it has verified and cached to :meth:`IpfsService.publish`; the
service imports it into the blockstore (CIDs identical to kubo's, leaves as byte ranges of the
cached file) and makes it reachable: over the peer-facing Trustless Gateway, and over libp2p
(Bitswap, DHT provider records) once the host runs. Nothing unverified ever gets here, so
nothing unverified is ever offered to peers.

Layout in the data directory::

    ipfs/identity.key    the libp2p ed25519 key (mode 0600): the peer ID survives restarts
    ipfs/config.json     peer ID, libp2p and gateway addresses, written at every start
    ipfs/blocks.sqlite   the blockstore's index (leaves = ranges of cache files) and datastore
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from pacswarm.config import Config
from pacswarm.errors import ConfigError
from pacswarm.ipfs.blockstore import BlockstoreError, PackageBlockstore
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.gateway import gateway_app
from pacswarm.ipfs.host import P2PHost
from pacswarm.requestpath import FileKind, RequestPath

if TYPE_CHECKING:
    from pacswarm.ipns.names import NameResolver
    from pacswarm.swarm.access import Access

log = logging.getLogger(__name__)


def package_key(rp: RequestPath) -> str:
    return f"{rp.repo}/{rp.arch}/{rp.filename}"


def key_to_path(key: str) -> RequestPath:
    repo, arch, filename = key.split("/", 2)
    return RequestPath(repo, arch, filename, FileKind.PACKAGE)


def _interface_ips() -> list[str]:
    """IPv4 addresses of this machine's interfaces (what 0.0.0.0 really listens on)."""
    import ifaddr  # zeroconf's dependency, already installed with py-libp2p's mDNS

    return [
        ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)
    ]


def expand_unspecified(addrs: list[str], ips: list[str]) -> list[str]:
    """``/ip4/0.0.0.0/...`` -> one multiaddr per interface address, as kubo reports them.

    Peers cannot dial 0.0.0.0; ``pacswarm id`` and config.json should say what they can.
    """
    out: list[str] = []
    for addr in addrs:
        if addr.startswith("/ip4/0.0.0.0/") and ips:
            out += [addr.replace("/ip4/0.0.0.0/", f"/ip4/{ip}/", 1) for ip in ips]
        else:
            out.append(addr)
    return out


class _ServedBlocks:
    """The blockstore as Bitswap sees it: a corrupt or unreadable block is simply absent.

    The blockstore has already reported the corruption (and dropped the package); the peer
    gets a DONT_HAVE instead of a broken stream.
    """

    def __init__(self, blocks: PackageBlockstore) -> None:
        self._blocks = blocks

    def get(self, cid: CID) -> bytes | None:
        try:
            return self._blocks.get(cid)
        except BlockstoreError:
            return None

    def has(self, cid: CID) -> bool:
        return self._blocks.has(cid)


class IpfsService:
    def __init__(
        self,
        config: Config,
        cache_path: Callable[[RequestPath], Path],
        drop_package: Callable[[RequestPath], None],
        *,
        access: Access | None = None,
        peer_filter: Callable[[str], bool] | None = None,
        resolver: NameResolver | None = None,
        fetch: Callable[[CID], Awaitable[bytes | None]] | None = None,
    ) -> None:
        self.config = config
        self.dir = config.data_dir / "ipfs"
        self._cache_path = cache_path
        self._drop_package = drop_package
        self._loop: asyncio.AbstractEventLoop | None = None
        self.blocks: PackageBlockstore | None = None
        self._gateway: web.AppRunner | None = None
        self.host: P2PHost | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.gateway_port: int | None = None
        self._access = access
        self._peer_filter = peer_filter
        self._resolver = resolver
        self._fetch = fetch
        #: Called on the event loop with each package's root CID once it is importable by
        #: peers (after a verified commit, and at start for packages imported before).
        self.on_imported: list[Callable[[RequestPath, CID], None]] = []
        #: Called with the libp2p host before it listens: protocols served from here are in
        #: the very first identify peers get (they decide from it whether we are pacswarm).
        self.before_listen: list[Callable[[P2PHost], None]] = []
        #: Awaited before each import: the node waits there while pacman's downloads run
        #: (:meth:`Downloader.quiet`), so importing never slows a burst of misses.
        self.before_import: Callable[[], Awaitable[None]] | None = None
        # One import at a time, in commit order (asyncio.Lock is FIFO): after a burst they
        # queue rather than share the CPU, and each waits again if pacman starts over.
        self._importer = ThreadPoolExecutor(1, thread_name_prefix="ipfs-import")
        self._in_order = asyncio.Lock()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.blocks = PackageBlockstore(
            self.dir / "blocks.sqlite",
            locate=lambda key: self._cache_path(key_to_path(key)),
            on_corrupt=self._on_corrupt,
        )
        self._gateway = web.AppRunner(
            gateway_app(self.blocks, self._access, resolver=self._resolver, fetch=self._fetch),
            access_log=None,
        )
        await self._gateway.setup()
        site = web.TCPSite(self._gateway, self.config.gateway_host, self.config.gateway_port)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(
                f"cannot listen on gateway_listen = {self.config.gateway_listen}: {e.strerror}; "
                "choose another with --gateway-listen HOST:PORT"
            ) from None
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.gateway_port = sockets[0].getsockname()[1] if sockets else self.config.gateway_port
        log.info(
            "trustless gateway on http://%s:%s/ipfs/", self.config.gateway_host, self.gateway_port
        )
        # A fresh file each start: addresses of an earlier run (ports may differ) must go.
        self.write_info({"gateway": f"{self.config.gateway_host}:{self.gateway_port}"}, fresh=True)
        self.host = P2PHost(
            self.dir / "identity.key",
            listen_addrs=list(self.config.p2p_listen),
            bootstrap=list(self.config.bootstrap),
            mdns=self.config.mdns,
            blocks=_ServedBlocks(self.blocks),
            peer_filter=self._peer_filter,
            access=self._access,
        )
        for prepare in self.before_listen:
            prepare(self.host)
        try:
            await self.host.start()
        except OSError as e:
            raise ConfigError(
                f"cannot start libp2p on p2p_listen = {list(self.config.p2p_listen)}: {e}; "
                "choose others with --p2p-listen MULTIADDR"
            ) from None
        addrs = expand_unspecified(self.host.listen_addrs(), _interface_ips())
        log.info("libp2p peer %s listening on %s", self.host.peer_id, ", ".join(addrs))
        self.write_info({"peer_id": self.host.peer_id, "addrs": addrs})

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # An import already running cannot be cancelled: let it finish before the store closes.
        await asyncio.to_thread(self._importer.shutdown, True, cancel_futures=True)
        if self.host is not None:
            await self.host.stop()
        if self._gateway is not None:
            await self._gateway.cleanup()
        if self.blocks is not None:
            self.blocks.close()

    def write_info(self, info: dict[str, object], *, fresh: bool = False) -> None:
        path = self.dir / "config.json"
        try:
            current = {} if fresh else json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
        current.update(info)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # readers (pacswarm id, scripts) never see half a file

    # -- packages in ----------------------------------------------------------------------

    def publish(self, rp: RequestPath, path: Path) -> None:
        """A verified package was cached: import it (off the event loop) and offer it."""
        task = asyncio.create_task(self._publish(rp, path), name=f"ipfs import {rp}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def imports_done(self, timeout: float = 20.0) -> None:
        """Until the packages cached so far are imported (``pacswarm publish`` waits here, so
        the folder it publishes holds what pacman just downloaded)."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _publish(self, rp: RequestPath, path: Path) -> CID | None:
        assert self.blocks is not None
        async with self._in_order:
            if self.before_import is not None:
                await self.before_import()
            if not path.exists():  # evicted while it waited
                return None
            loop = asyncio.get_running_loop()
            try:
                root = await loop.run_in_executor(
                    self._importer, self.blocks.add_package, package_key(rp), path
                )
            except (OSError, BlockstoreError) as e:
                log.warning("could not add %s to IPFS: %s", rp, e)
                return None
        if not path.exists():  # evicted while it was imported: its blocks go too
            self.forget(rp)
            return None
        log.info("ipfs: %s is /ipfs/%s", rp.filename, root)
        self._imported(rp, root)
        if self.host is not None:
            try:
                await self.host.provide(root)
            except Exception as e:  # a DHT hiccup must not lose the import
                log.info("could not announce %s on the DHT: %s", root, e)
        return root

    async def import_existing(self, cached: list[RequestPath]) -> None:
        """Import packages cached before this start (or before IPFS existed) that it lacks."""
        assert self.blocks is not None
        known = set(await asyncio.to_thread(self.blocks.keys))
        for rp in cached:
            if package_key(rp) not in known:
                await self._publish(rp, self._cache_path(rp))
            elif (root := self.blocks.root_of(package_key(rp))) is not None:
                self._imported(rp, root)

    def _imported(self, rp: RequestPath, root: CID) -> None:
        for callback in list(self.on_imported):
            try:
                callback(rp, root)
            except Exception:
                log.exception("on_imported subscriber failed for %s", rp)

    def forget(self, rp: RequestPath) -> None:
        """The package left the cache: its blocks go too (shared chunks stay if still used)."""
        if self.blocks is not None:
            self.blocks.remove_package(package_key(rp))

    def _on_corrupt(self, key: str) -> None:
        """Called from any thread when a cached file no longer matches its CIDs."""
        log.error("cached %s is corrupt on disk (bit rot?): removing it from the cache", key)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_package, key_to_path(key))
