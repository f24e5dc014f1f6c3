"""The observing routes of the pacman-facing listener: ``/metrics`` (and the status page).

Read-only and cheap: a scrape or a page view reads snapshots the node keeps anyway, and
nothing here can change what the node does. The traffic record is saved here too
(:mod:`pacswarm.traffic` is the pure model).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from pacswarm.metrics import CONTENT_TYPE, Metrics
from pacswarm.store import Store
from pacswarm.traffic import SAVE_EVERY, Traffic

log = logging.getLogger(__name__)

TRAFFIC_FILE = "traffic.json"


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

    def __init__(self, metrics: Metrics, store: Store) -> None:
        self.metrics = metrics
        self.store = store
        self.traffic_path = store.data_dir / TRAFFIC_FILE

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.scrape)]

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
