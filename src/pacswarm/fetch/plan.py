"""The source plan: which sources a download asks, in which order.

Order: the node's own cache, then peers (the sources a caller names for this download, then
those ``peers(want)`` finds: the peers that announced the package, best first), then the
mirrors. Within peers and within mirrors, healthy ones keep their order and penalised ones go
last (soonest forgiven first), so a source that just lied is asked again only when nothing
better is left. The plan is drawn afresh each time a download (re)starts, so it reflects what
the last attempts taught (a peer struck out by then is no longer offered).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from pacswarm.fetch.mirrors import MirrorSource
from pacswarm.fetch.source import Source, Want
from pacswarm.upstream import Upstream

log = logging.getLogger(__name__)

#: Whether a source is being penalised now (by name); for sources with their own health.
Penalised = Callable[[str, float], bool]
#: The peers that can deliver a package, in the order to ask them (see swarm.sources).
Peers = Callable[[Want], list[Source]]


#: Waits until the peers of a package are known well enough to plan (bounded by the caller).
PeersReady = Callable[[Want], Awaitable[None]]


def no_peers(want: Want) -> list[Source]:
    """The default: a node without a swarm asks only its cache and the mirrors."""
    return []


async def always_ready(want: Want) -> None:
    return None


def order_by_health(sources: Sequence[Source], penalised: Penalised, now: float) -> list[Source]:
    """Healthy sources in their given order, then the penalised ones. Pure."""
    healthy = [s for s in sources if not penalised(s.name, now)]
    sick = [s for s in sources if penalised(s.name, now)]
    return healthy + sick


class Scope(enum.Enum):
    """Which sources a download may use."""

    #: cache, the caller's sources, the peers that announced the file, the mirrors
    ALL = "all"
    #: only the caller's sources (an audit: the announcing peer's bytes, nobody else's)
    EXTRA_ONLY = "extra-only"
    #: cache, the caller's sources and the mirrors (seeding: upstream, for the swarm's sake)
    NO_PEERS = "no-peers"


class SourcePlan:
    def __init__(
        self,
        cache: Callable[[], Source],
        upstream: Upstream,
        peers_penalised: Penalised,
        peers: Peers = no_peers,
        peers_ready: PeersReady = always_ready,
    ) -> None:
        self._cache = cache
        self.upstream = upstream
        self._peers_penalised = peers_penalised
        self.peers = peers
        self._peers_ready = peers_ready

    async def ready(self, want: Want) -> None:
        """Before the first plan of a download: a moment for the swarm to know its peers."""
        try:
            await self._peers_ready(want)
        except Exception:
            log.exception("waiting for the peers of %s failed; planning without", want)

    def sources(
        self, want: Want, extra: Sequence[Source] = (), scope: Scope = Scope.ALL
    ) -> list[Source]:
        now = time.monotonic()
        if scope is Scope.EXTRA_ONLY:
            return list(extra)
        mirrors = [MirrorSource(self.upstream, m) for m in self.upstream.candidates()]
        found = self._peers_for(want) if scope is Scope.ALL else []
        peers = [*extra, *found]
        return [self._cache(), *order_by_health(peers, self._peers_penalised, now), *mirrors]

    def _peers_for(self, want: Want) -> list[Source]:
        """``peers(want)``, never failing the download: a broken swarm leaves the mirrors."""
        try:
            return list(self.peers(want))
        except Exception:
            log.exception("finding peers for %s failed; asking the mirrors only", want)
            return []
