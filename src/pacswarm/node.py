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
from typing import Any

from aiohttp import web

from pacswarm.config import DEFAULT_MIRROR, Config
from pacswarm.dbsync import RepoDbs
from pacswarm.download import Downloader
from pacswarm.errors import ConfigError, MirrorlistError
from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipfs.service import IpfsService
from pacswarm.mirrorlist import parse_mirrorlist, read_mirrorlist, usable_mirrors
from pacswarm.peersource import PeerSource
from pacswarm.proxy import Proxy
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store
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
    def __init__(self, config: Config, mirrors: list[str]) -> None:
        self.config = config
        self.store = Store(config.data_dir)
        self.upstream = Upstream(mirrors, config)
        self.dbs = RepoDbs(self.store, self.upstream, config)
        self.downloader = Downloader(self.store, self.upstream, config)
        self.proxy = Proxy(self.store, self.dbs, self.downloader, self.upstream)
        self.ipfs = IpfsService(config, self.store.cache_path, self.evict)
        self.downloader.on_committed.append(self.ipfs.publish)
        self.peers = PeerSource(self.store, self.upstream, config, self.downloader.on_committed)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def evict(self, rp: RequestPath) -> None:
        """Drop a package from the cache and its blocks from IPFS: never one without the other.

        Used for bit rot found by the blockstore; eviction by size will use it too.
        """
        self.store.remove_package(rp)
        self.ipfs.forget(rp)

    def app(self) -> web.Application:
        # Requests larger than this are not pacman's; aiohttp answers 400/431 for them.
        app = web.Application(client_max_size=64 * 1024, handler_args={"max_field_size": 8190})
        app.add_routes(self.proxy.routes())
        return app

    async def start(self) -> None:
        self.store.open()
        self.store.recover()
        self.dbs.load_held()
        await self.upstream.start()
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
        cached = [
            RequestPath(p.repo, p.arch, p.filename, FileKind.PACKAGE) for p in self.store.cached()
        ]
        self._background(self.ipfs.import_existing(cached))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Downloads first (nothing new gets committed and published), then the listeners.
        await self.downloader.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.ipfs.stop()
        await self.upstream.close()
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
