"""The node's Prometheus metrics (``/metrics``), in a registry of its own.

Why a registry per node and not prometheus-client's global one: tests (and one process that
would run two nodes) must not see each other's figures, and the global registry also carries
the Python process collectors, which say nothing about pacswarm.

Two kinds of figures:

* events counted as they happen, fed by the download path through one small observer
  interface (:class:`pacswarm.fetch.download.DownloadObserver`, which :class:`Metrics`
  implements) and by the proxy (hits, misses, bytes sent from the cache);
* states read when scraped (peers, strikes, cache size, announcements, gossip), from a
  :class:`Gauges` snapshot the node provides: nothing to keep in sync.

"Bytes by source": bytes pacman got from the cache (``source="cache"``) and bytes fetched
for it from peers or mirrors (``source="peer"`` / ``"mirror"``). The same split feeds the
status page's traffic (:mod:`pacswarm.traffic`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pacswarm.traffic import Traffic

#: Seconds: a package download takes from a fraction of a second to many minutes.
DOWNLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds to the first byte from a source: a good one answers in well under a second.
FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def source_kind(name: str) -> str:
    """``cache``, ``peer``, ``mirror`` (or ``db``) from a source's name (``Source.name``).

    Sources name themselves ``cache``, ``peer <url>``, ``peer bitswap <id>`` or a mirror's
    URL; the metrics keep the kind only, so labels stay few whatever the number of mirrors.
    """
    if name in ("cache", "db"):  # "db": the repo db's own %PGPSIG%
        return name
    if name.startswith("peer "):
        return "peer"
    return "mirror"


@dataclass(frozen=True)
class Gauges:
    """What the node is at the moment of a scrape."""

    peers: int = 0
    strikes: int = 0
    cache_bytes: int = 0
    cache_packages: int = 0
    announcements: int = 0
    gossip_received: int = 0
    gossip_dropped: int = 0


class _StateCollector(Collector):
    """Reads a :class:`Gauges` snapshot at each scrape."""

    def __init__(self, snapshot: Callable[[], Gauges]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        g = self.snapshot()
        yield GaugeMetricFamily("pacswarm_peers", "Swarm members connected now", g.peers)
        # A gauge: the reputation forgets long-quiet peers, and their strikes with them.
        yield GaugeMetricFamily(
            "pacswarm_strikes", "Strikes counted against the peers remembered", g.strikes
        )
        yield GaugeMetricFamily(
            "pacswarm_cache_bytes", "Bytes of verified packages cached", g.cache_bytes
        )
        yield GaugeMetricFamily(
            "pacswarm_cache_packages", "Verified packages in the cache", g.cache_packages
        )
        yield GaugeMetricFamily(
            "pacswarm_announcement_entries",
            "Entries in the peers' announcement cache",
            g.announcements,
        )
        yield CounterMetricFamily(
            "pacswarm_gossip_messages", "Gossip messages received from peers", g.gossip_received
        )
        yield CounterMetricFamily(
            "pacswarm_gossip_dropped",
            "Gossip messages dropped (malformed, over rate)",
            g.gossip_dropped,
        )

    def describe(self) -> Iterable[Metric]:
        return []  # state read at scrape time: nothing to check at registration


class Metrics:
    """Counters and histograms of one node, and the traffic record for its status page."""

    def __init__(self, traffic: Traffic | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.traffic = traffic or Traffic()
        r = self.registry
        self.requests = Counter(
            "pacswarm_requests", "HTTP requests from pacman, by kind of file", ["kind"], registry=r
        )
        self.bytes = Counter(
            "pacswarm_bytes",
            "Bytes by source (cache: sent from the cache; peer/mirror: fetched) and kind",
            ["source", "kind"],
            registry=r,
        )
        self.hits = Counter(
            "pacswarm_cache_hits", "Requests answered from the cache", ["kind"], registry=r
        )
        self.misses = Counter(
            "pacswarm_cache_misses", "Requests that needed a download", ["kind"], registry=r
        )
        self.verification_failures = Counter(
            "pacswarm_verification_failures",
            "Downloads refused by verification, by reason and source",
            ["reason", "source"],
            registry=r,
        )
        self.signature_checks = Counter(
            "pacswarm_signature_checks",
            "Package signatures decided, by who decided (in-process or gpg) and outcome",
            ["path", "outcome"],
            registry=r,
        )
        self.download_seconds = Histogram(
            "pacswarm_download_seconds",
            "Duration of package downloads, by outcome",
            ["outcome"],
            buckets=DOWNLOAD_BUCKETS,
            registry=r,
        )
        self.first_byte_seconds = Histogram(
            "pacswarm_first_byte_seconds",
            "Time from a download's start to its first byte",
            buckets=FIRST_BYTE_BUCKETS,
            registry=r,
        )

    def watch(self, snapshot: Callable[[], Gauges]) -> None:
        """Expose the node's state, read from ``snapshot`` at every scrape."""
        self.registry.register(_StateCollector(snapshot))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric of this node."""
        return generate_latest(self.registry)

    # -- the proxy ---------------------------------------------------------------------------

    def request(self, kind: str) -> None:
        self.requests.labels(kind).inc()

    def hit(self, kind: str, sent: int) -> None:
        """A file answered from the cache: ``sent`` bytes go to pacman."""
        self.hits.labels(kind).inc()
        self.bytes.labels("cache", kind).inc(sent)
        self.traffic.add("cache", sent)

    def miss(self, kind: str) -> None:
        self.misses.labels(kind).inc()

    # -- the download path (DownloadObserver) ------------------------------------------------

    def received(self, source: str, size: int, peer_id: str | None) -> None:
        """``size`` bytes of a package arrived from ``source`` (a source's name), run by the
        swarm peer ``peer_id`` if it is one."""
        kind = source_kind(source)
        self.bytes.labels(kind, "package").inc(size)
        self.traffic.add(kind, size)
        if peer_id is not None:
            self.traffic.gave(self.traffic.peers, peer_id, size)
        elif kind == "mirror":
            self.traffic.gave(self.traffic.mirrors, source, size)

    def db_received(self, mirror: str, size: int) -> None:
        """``size`` bytes of a repo db (or its ``.sig``) arrived from ``mirror``: dbs only
        ever come from mirrors, and they count in what the mirrors cost."""
        self.bytes.labels("mirror", "db").inc(size)
        self.traffic.add("mirror", size)
        self.traffic.gave(self.traffic.mirrors, mirror, size)

    def signature_checked(self, path: str, accepted: bool) -> None:
        """A signature was decided by ``path`` (``"in-process"`` or ``"gpg"``)."""
        self.signature_checks.labels(path, "accepted" if accepted else "refused").inc()

    def first_byte(self, seconds: float) -> None:
        self.first_byte_seconds.observe(seconds)

    def finished(self, seconds: float, ok: bool) -> None:
        self.download_seconds.labels("verified" if ok else "failed").observe(seconds)

    def verification_failed(self, reason: str, sources: Iterable[str]) -> None:
        """A download's bytes or signature were refused; ``sources`` sent them."""
        for kind in sorted({source_kind(s) for s in sources} or {"none"}):
            self.verification_failures.labels(reason, kind).inc()
