"""One pacswarm node: wires the store, mirrors, dbs, downloads and the proxy together.

Start-up order matters: the store recovers from any crash *before* the proxy accepts a
request, so a restarted node never serves a file that was not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from pacswarm.config import DEFAULT_MIRROR, Config
from pacswarm.dbsync import RepoDbs
from pacswarm.errors import ConfigError, MirrorlistError
from pacswarm.events import Committed, NodeEvents
from pacswarm.fastverify import FastPath
from pacswarm.fetch.admit import Admission, GpgVerifier
from pacswarm.fetch.download import Downloader
from pacswarm.fetch.peers import GatewaySource, PeerHealth, peer_session
from pacswarm.fetch.plan import SourcePlan
from pacswarm.fetch.source import CacheSource, Want
from pacswarm.gc import Collector
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipfs.service import IpfsService
from pacswarm.ipns.service import IpnsService
from pacswarm.metrics import Metrics
from pacswarm.mirrorlist import parse_mirrorlist, read_mirrorlist, usable_mirrors
from pacswarm.proxy import Proxy
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.serve_status import TRAFFIC_FILE, Observe, gauges_of, load_traffic, snapshot_of
from pacswarm.store import Store
from pacswarm.swarm.blocks import PeerBlocks
from pacswarm.swarm.duties import Duties
from pacswarm.swarm.service import Swarm
from pacswarm.upstream import Upstream

log = logging.getLogger(__name__)

IMPORTED_MIRRORLIST = "mirrorlist"


def initialise(config: Config) -> tuple[bool, list[str]]:
    """Create the data directory and import the mirrorlist once. Idempotent.

    Returns (created, mirrors). An existing import is never overwritten: edit
    ``DATA_DIR/mirrorlist`` or pass ``--mirrorlist`` to change mirrors.
    """
    store = Store(config.data_dir)
    created = store.initialise()
    # The IPFS repo: the libp2p identity (same peer ID forever after), created once.
    load_or_create_identity(config.data_dir / "ipfs" / "identity.key")
    imported = config.data_dir / IMPORTED_MIRRORLIST
    if imported.exists():
        return created, parse_mirrorlist(imported.read_text(), str(imported))
    mirrors: list[str] = []
    if config.mirrorlist.exists():
        mirrors = usable_mirrors(
            read_mirrorlist(config.mirrorlist), config.listen_host, config.listen_port
        )
        source = str(config.mirrorlist)
    if not mirrors:
        mirrors = [DEFAULT_MIRROR]
        source = "the built-in default (no usable mirrorlist found)"
    text = f"# Imported by pacswarm init from {source}\n" + "".join(
        f"Server = {m}\n" for m in mirrors
    )
    store.write_atomic(imported, text.encode())
    log.info("imported %d mirror(s) from %s", len(mirrors), source)
    return created, mirrors


def resolve_mirrors(config: Config) -> list[str]:
    """The mirrors to use: ``mirrors`` key, else an explicit mirrorlist, else the import."""
    if config.mirrors:
        candidates = list(config.mirrors)
    elif config.mirrorlist_explicit:
        candidates = read_mirrorlist(config.mirrorlist)
    else:
        _, candidates = initialise(config)
    mirrors = usable_mirrors(candidates, config.listen_host, config.listen_port)
    if not mirrors:
        raise MirrorlistError(
            "no usable mirror: every Server points at this node or the list is empty; "
            f"add a mirror to {config.data_dir / IMPORTED_MIRRORLIST} or pass --mirrorlist"
        )
    return mirrors


class Node:
    """The composition root: the only place that knows every part and wires them."""

    def __init__(self, config: Config, mirrors: list[str]) -> None:
        self.config = config
        self.events = NodeEvents()
        self.store = Store(config.data_dir)
        self.metrics = Metrics(load_traffic(config.data_dir / TRAFFIC_FILE))
        self.observe = Observe(self.metrics, self.store, lambda: snapshot_of(self))
        self.upstream = Upstream(mirrors, config)
        self.dbs = RepoDbs(self.store, self.upstream, config)
        self.dbs.on_received = self.metrics.db_received
        self.peer_health = PeerHealth(config.mirror_penalty)
        self._peer_session: aiohttp.ClientSession | None = None
        self.swarm = Swarm(config, self.dbs, self.peer_health, self.peer_session)
        plan = SourcePlan(
            lambda: CacheSource(self.store.cache_path, self.evict),
            self.upstream,
            self.peer_health.penalised,
            peers=self.swarm.sources,
            peers_ready=self.swarm.ready,
        )
        self.fast = FastPath(config.gpgdir) if config.fast_verify else None
        verifier = GpgVerifier(config.gpgdir, self.fast)
        admission = Admission(self.store, self.upstream, verifier, self.events)
        admission.on_checked = self.metrics.signature_checked
        self.downloader = Downloader(self.store, plan, admission, config, self.metrics)
        self.ipns = IpnsService(config, self.store, self.dbs)
        self.proxy = Proxy(
            self.store,
            self.dbs,
            self.downloader,
            self.upstream,
            config.verify_window,
            publish_now=self._publish_now,
            gc_now=self.gc_now,
            metrics=self.metrics,
        )
        self.metrics.watch(lambda: gauges_of(self))
        peer_blocks = PeerBlocks(self.swarm.gateway_urls, self.peer_session, self._bitswap_block)
        self.ipfs = IpfsService(
            config,
            self.store.cache_path,
            self.evict,
            access=self.swarm.access,
            peer_filter=self.swarm.peer_filter,
            resolver=self.ipns.resolver,
            fetch=peer_blocks.fetch,
        )
        self.ipfs.before_import = self.downloader.quiet  # pacman's downloads first
        self.duties = Duties(self.swarm, self.downloader, self.store, config.data_dir)
        self.events.committed.subscribe(self.swarm.on_committed)  # before the import
        self.events.committed.subscribe(self._publish)
        self.gc = Collector(self.store, config, self.evict)
        self.events.committed.subscribe(self.gc.poke)
        self.events.evicted.subscribe(self.ipfs.forget)
        self.events.evicted.subscribe(self.swarm.on_evicted)
        self.ipfs.on_imported.append(self.swarm.on_imported)
        self.ipfs.on_imported.append(self.ipns.on_imported)
        self.events.evicted.subscribe(self.ipns.on_evicted)
        self.dbs.on_held.append(self.ipns.on_db_held)
        self.ipfs.before_listen.append(self.swarm.serve)
        self.ipfs.before_listen.append(self.ipns.attach)
        self.dbs.on_index = self.swarm.on_db_updated
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _publish_now(self) -> dict[str, object]:
        """``pacswarm publish``: the imports still waiting for downloads to end go first."""
        await self.ipfs.imports_done()
        return await self.ipns.publish_now()

    def _publish(self, committed: Committed) -> None:
        self.ipfs.publish(committed.rp, committed.path)

    async def _bitswap_block(self, cid: CID) -> bytes | None:
        host = self.ipfs.host
        return None if host is None else await host.fetch_block(cid)

    def evict(self, rp: RequestPath) -> None:
        """Drop a package from the cache, then tell subscribers (IPFS drops its blocks, the
        swarm its announcements, the folders their link); the store's journal of the
        removal is cleared only then, so a crash in between is finished at the next start.

        The one path for every removal: bit rot found by the blockstore or the cache
        source, and eviction (:mod:`pacswarm.gc`).
        """
        self.store.remove_package(rp)
        self.events.evicted.emit(rp)
        self.store.removal_done(rp)

    async def gc_now(self, dry_run: bool) -> dict[str, Any]:
        """``pacswarm gc`` on the running node (``POST /api/gc``)."""
        return self.gc.run(dry_run).to_json()

    async def fetch_from_peer(
        self, rp: RequestPath, record: PackageRecord, base_url: str, root: CID
    ) -> Path:
        """Download ``rp`` with a peer's gateway first in the plan (mirrors after it).

        The peer's bytes are admitted like a mirror's; a peer that fails or lies is
        penalised and the download goes on with the next source. Raises DownloadFailed.
        """
        peer = GatewaySource(base_url, root, self.peer_session(), self.peer_health)
        return await self.downloader.fetch(Want(rp, record), extra=[peer])

    def peer_session(self) -> aiohttp.ClientSession:
        """The HTTP session for peers' gateways, made on first use (inside the loop)."""
        if self._peer_session is None:
            self._peer_session = peer_session(self.config)
        return self._peer_session

    async def close_peer_session(self) -> None:
        if self._peer_session is not None:
            await self._peer_session.close()
            self._peer_session = None

    def app(self) -> web.Application:
        # Requests larger than this are not pacman's; aiohttp answers 400/431 for them.
        app = web.Application(client_max_size=64 * 1024, handler_args={"max_field_size": 8190})
        app.add_routes(self.observe.routes())
        app.add_routes(self.proxy.routes())
        return app

    async def _warm_fast_path(self) -> None:
        """Build the trust cache now (gpg lists the keyring), not in the first download."""
        if self.fast is None:
            log.info("signatures: every one checked by gpg (fast_verify = false)")
        elif await asyncio.to_thread(lambda: self.fast is not None and self.fast.enabled):
            log.info("signatures: the usual ones decided in-process, the rest by gpg")
        else:
            log.warning(
                "signatures: every one checked by gpg: %s/gpg.conf or its trustdb uses options "
                "the in-process check does not follow",
                self.config.gpgdir,
            )

    async def start(self) -> None:
        self.store.open()
        self.store.recover()
        self.dbs.load_held()
        self.swarm.open(self.config.data_dir)
        await self.upstream.start()
        await self._warm_fast_path()
        # One line per request at log_level = "debug" (status, size, time): enough to see a
        # 304, a 206 resume or a cut transfer without a packet capture.
        access = logging.getLogger("pacswarm.access") if self.config.log_level == "debug" else None
        self._runner = web.AppRunner(
            self.app(),
            access_log=access,
            access_log_format='%a "%r" %s %b %Tfs',
            handle_signals=False,
            # On stop, give in-flight responses a moment, not aiohttp's default minute: the
            # downloads they follow are already cancelled, and pacman resumes elsewhere.
            shutdown_timeout=5.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen_host, self.config.listen_port)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {self.config.listen}: {e.strerror}; "
                "is another pacswarm running? choose another with --listen HOST:PORT"
            ) from None
        log.info(
            "pacswarm serving on http://%s (mirrors: %s)",
            self.config.listen,
            ", ".join(self.upstream.mirrors),
        )
        await self.ipfs.start()
        if self.ipfs.host is not None:
            await self.swarm.start(self.ipfs.host, self.ipfs.gateway_port)
            self.duties.start()
        if self.ipfs.blocks is not None:
            await self.ipns.start(self.ipfs.blocks)
        # Blocks, announcements and folders are open now: finish interrupted evictions, then
        # bring the cache within its settings before importing what stays.
        self.gc.resume()
        self.gc.run()
        cached = [
            RequestPath(p.repo, p.arch, p.filename, FileKind.PACKAGE) for p in self.store.cached()
        ]
        self._background(self._import_then_publish(cached))
        self._background(self.observe.keep_saved())

    async def _import_then_publish(self, cached: list[RequestPath]) -> None:
        await self.ipfs.import_existing(cached)
        await self.ipns.go()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self.gc.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Downloads first (nothing new gets committed and published), then the listeners.
        await self.swarm.stop_tasks()
        await self.ipns.stop()
        await self.downloader.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.ipfs.stop()
        self.swarm.close()
        await self.close_peer_session()
        await self.upstream.close()
        self.observe.save()
        self.store.close()


async def serve(config: Config, mirrors: list[str]) -> None:
    """Run until SIGINT or SIGTERM."""
    node = Node(config, mirrors)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await node.stop()
