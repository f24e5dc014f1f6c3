"""The observing routes of the pacman-facing listener: ``/metrics``, ``/status``, ``/status.json``.

Read-only and cheap: a scrape or a page view reads snapshots the node keeps anyway, and
nothing here can change what the node does. The traffic record is saved here too
(:mod:`pacswarm.traffic` is the pure model).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from pacswarm import status
from pacswarm.gc import cache_cap
from pacswarm.metrics import CONTENT_TYPE, Gauges, Metrics
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store
from pacswarm.traffic import SAVE_EVERY, Traffic

if TYPE_CHECKING:
    from pacswarm.node import Node

log = logging.getLogger(__name__)

TRAFFIC_FILE = "traffic.json"
#: The page loads nothing from anywhere: a browser enforces it, whatever the markup says.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Cache-Control": "no-store",
}


def load_traffic(path: Path) -> Traffic:
    """The saved traffic record; a fresh one if there is none or it is damaged (logged)."""
    try:
        return Traffic.from_json(path.read_text())
    except FileNotFoundError:
        return Traffic()
    except (OSError, ValueError, UnicodeDecodeError) as e:
        log.warning("%s unreadable (%s): traffic figures start again from zero", path, e)
        return Traffic()


class Observe:
    """The handlers of ``/metrics``, and the keeper of the traffic record on disk."""

    def __init__(
        self, metrics: Metrics, store: Store, snapshot: Callable[[], status.Snapshot]
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.snapshot = snapshot
        self.traffic_path = store.data_dir / TRAFFIC_FILE

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.scrape),
            web.get("/status", self.page),
            web.get("/status.json", self.json),
        ]

    async def page(self, request: web.Request) -> web.Response:
        model = status.build(self.snapshot())
        return web.Response(
            text=status.render_html(model), content_type="text/html", headers=PAGE_HEADERS
        )

    async def json(self, request: web.Request) -> web.Response:
        model = status.build(self.snapshot())
        return web.Response(
            text=status.to_json(model), content_type="application/json", headers=PAGE_HEADERS
        )

    async def scrape(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def save(self) -> None:
        """Write the traffic record if it changed; a failure is logged (statistics only)."""
        traffic = self.metrics.traffic
        if not traffic.dirty:
            return
        try:
            self.store.write_atomic(self.traffic_path, traffic.to_json().encode())
            traffic.dirty = False
        except OSError as e:
            log.warning("could not save the traffic figures to %s: %s", self.traffic_path, e)

    async def keep_saved(self) -> None:
        """Save every :data:`SAVE_EVERY` seconds while the node runs (the node saves at stop)."""
        while True:
            await asyncio.sleep(SAVE_EVERY)
            await asyncio.to_thread(self.save)


def gauges_of(node: Node) -> Gauges:
    """The node's state for a metrics scrape (cheap: one SQL query, in-memory figures)."""
    cached = node.store.cached()  # scraped only between start and stop: the store is open
    swarm = node.swarm
    return Gauges(
        peers=len(swarm.members),
        strikes=sum(swarm.reputation.struck().values()),
        cache_bytes=sum(p.size for p in cached),
        cache_packages=len(cached),
        announcements=len(swarm.cache) if swarm.cache is not None else 0,
        gossip_received=swarm.gossip.received,
        gossip_dropped=swarm.gossip.dropped,
    )


def snapshot_of(node: Node) -> status.Snapshot:
    """What the status page shows, read from the node's parts (no network, no waiting)."""
    now, mono = time.time(), time.monotonic()
    gauges = gauges_of(node)
    struck = node.swarm.reputation.struck()
    health = node.upstream.health
    return status.Snapshot(
        now=now,
        traffic=node.metrics.traffic,
        cache_bytes=gauges.cache_bytes,
        cache_packages=gauges.cache_packages,
        cache_cap=_cap_bytes(node),
        downloads=tuple(
            status.DownloadInfo(d.rp.repo, d.rp.filename, d.written, d.size, tuple(d.sources))
            for d in node.downloader.running()
        ),
        peers=tuple(
            status.PeerInfo(p, struck.get(p, 0), node.metrics.traffic.peers.get(p, 0))
            for p in sorted(node.swarm.members)
        ),
        mirrors=tuple(
            status.MirrorInfo(
                url,
                (st := health.state(url)).penalised_until <= mono,
                st.failures,
                st.last_error,
            )
            for url in health.urls
        ),
        dbs=tuple(_held_db(node.store, repo, arch) for repo, arch in node.dbs.indexed()),
        freeze_after=node.config.db_freeze_after,
    )


def _held_db(store: Store, repo: str, arch: str) -> status.DbInfo:
    path = store.db_path(RequestPath(repo, arch, f"{repo}.db", FileKind.DB))
    try:
        modified: float | None = path.stat().st_mtime
    except OSError:
        modified = None
    return status.DbInfo(repo, arch, modified)


def _cap_bytes(node: Node) -> int | None:
    """``cache_max_size`` in bytes now (a share is resolved against the cache's filesystem)."""
    try:
        return cache_cap(node.store, node.config)
    except OSError:
        return None
