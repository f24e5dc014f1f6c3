"""The source plan: which sources a download asks, in which order.

Order: the node's own cache, then extra sources the caller names (peers that announced the
package), then the mirrors. Within peers and within mirrors, healthy ones keep their order
and penalised ones go last (soonest forgiven first), so a source that just lied is asked
again only when nothing better is left. The plan is drawn afresh each time a download
(re)starts, so it reflects what the last attempts taught.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pacswarm.fetch.mirrors import MirrorSource
from pacswarm.fetch.source import Source
from pacswarm.upstream import Upstream

#: Whether a source is being penalised now (by name); for sources with their own health.
Penalised = Callable[[str, float], bool]


def order_by_health(sources: Sequence[Source], penalised: Penalised, now: float) -> list[Source]:
    """Healthy sources in their given order, then the penalised ones. Pure."""
    healthy = [s for s in sources if not penalised(s.name, now)]
    sick = [s for s in sources if penalised(s.name, now)]
    return healthy + sick


class SourcePlan:
    def __init__(
        self, cache: Callable[[], Source], upstream: Upstream, peers_penalised: Penalised
    ) -> None:
        self._cache = cache
        self.upstream = upstream
        self._peers_penalised = peers_penalised

    def sources(self, extra: Sequence[Source] = ()) -> list[Source]:
        now = time.monotonic()
        mirrors = [MirrorSource(self.upstream, m) for m in self.upstream.candidates()]
        return [self._cache(), *order_by_health(extra, self._peers_penalised, now), *mirrors]
