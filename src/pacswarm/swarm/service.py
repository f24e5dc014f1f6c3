"""The swarm of one node: who has what, what we tell them, and peers as download sources.

Wiring (``pacswarm.node`` builds one :class:`Swarm`):

* the IPFS side imports each verified package and reports its CID (:meth:`on_imported`): it
  joins the node's own set (:class:`.announcements.OwnSet`) and, if ``[swarm] announce``
  allows, is announced on gossipsub (:mod:`.gossip`);
* peers' announcements and inventories fill the announcement cache; entries are believed
  only when they match a package of the current dbs (same filename, sha256 and size);
* every download asks :meth:`sources` for the peers that announced the file, after the cache
  and before the mirrors; what a peer sends is admitted like a mirror's bytes, and a peer
  whose bytes fail verification is struck (:mod:`.reputation`) and, after a few strikes,
  ignored and scored down in gossipsub;
* on connect (and when a digest shows our view of a peer is stale) the node pulls the peer's
  whole inventory with one request (:mod:`.inventory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacswarm.config import Config
from pacswarm.fetch.source import Source, Want
from pacswarm.ipfs.cid import CID
from pacswarm.requestpath import RequestPath
from pacswarm.swarm.access import Access
from pacswarm.swarm.announcements import AnnouncementCache, OwnSet
from pacswarm.swarm.gossip import Gossip
from pacswarm.swarm.inventory import Inventory
from pacswarm.swarm.protocol import (
    INVENTORY_PROTOCOL,
    Digest,
    Entry,
    News,
    held_digest,
    topic,
)
from pacswarm.swarm.reputation import Reputation
from pacswarm.swarm.sources import (
    PeerOffer,
    is_lan,
    local_networks,
    order_offers,
    peer_sources,
)

if TYPE_CHECKING:
    import aiohttp

    from pacswarm.dbsync import RepoDbs
    from pacswarm.events import Committed
    from pacswarm.fetch.peers import PeerHealth
    from pacswarm.ipfs.host import P2PHost
    from pacswarm.repodb import PackageRecord

log = logging.getLogger(__name__)

#: Peers a download asks before the mirrors (the best few of those that announced it).
MAX_PEER_SOURCES = 4
#: How often announcements of long-gone peers are expired and gossipsub scores refreshed.
HOUSEKEEPING = 30.0
#: Longest a download waits for the inventory pulls of a repo the node just joined.
WARM_WAIT = 2.0
#: Members asked for their inventory when this node joins a repo (news brings the rest).
JOIN_PULLS = 3


class Swarm:
    def __init__(
        self,
        config: Config,
        dbs: RepoDbs,
        peer_health: PeerHealth,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.config = config
        self.dbs = dbs
        self.peer_health = peer_health
        self._session = session
        self.access = Access(config.swarm)
        self.reputation = Reputation(config.swarm.strikes, config.swarm.strike_ban)
        self.cache: AnnouncementCache | None = None
        self.own: OwnSet | None = None
        self.host: P2PHost | None = None
        self.gossip = Gossip(self._publish, topic, self._on_news, self.digest)
        self.inventory = Inventory(self)
        self.rng = random.Random()
        #: Why a package about to be downloaded is wanted ("seeded", "audited"), by key.
        self.why: dict[tuple[str, str, str], str] = {}
        #: What was verified, by key, until its import is done: the import waits for the
        #: downloads to end, and the db may have moved on to a newer version meanwhile.
        self._verified: dict[tuple[str, str, str], PackageRecord] = {}
        self._topics: set[tuple[str, str]] = set()
        #: Connected peers that are pacswarm nodes of this swarm.
        self.members: set[str] = set()
        self._gateways: dict[str, int] = {}
        self._local = local_networks()
        self._warming: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def peer_filter(self, peer_id: str) -> bool:
        """Private swarms: only allowlisted peers stay connected (``[swarm] allowlist``)."""
        return self.access.believe(peer_id)

    def open(self, data_dir: Path) -> None:
        swarm = self.config.swarm
        (data_dir / "swarm").mkdir(parents=True, exist_ok=True)
        path = data_dir / "swarm" / "announcements.sqlite"
        self.cache = AnnouncementCache(path, swarm.cache_entries, swarm.peer_expiry)
        self.own = OwnSet(path)
        self.cache.expire(time.time())

    def serve(self, host: P2PHost) -> None:
        """Answer inventory requests; before the host listens (``IpfsService.before_listen``).

        Why before: a peer decides from its first identify of us whether we are a pacswarm
        node (a member it pulls from, serves and spreads digests to). A protocol added after
        a peer connected is missing from that identify, and the peer would treat us as a
        plain IPFS node for the whole connection.
        """
        host.requests.serve(INVENTORY_PROTOCOL, self.inventory.answer, *self.inventory.limits())

    async def start(self, host: P2PHost, gateway_port: int | None) -> None:
        self.host = host
        self.gossip.gateway_port = gateway_port
        self.serve(host)  # again: a no-op replacement if before_listen ran, else needed now
        host.watch_peers(self._on_connect, self._on_disconnect)  # reports bootstrap peers too
        for repo, arch in self.dbs.indexed():
            await self._join(repo, arch)
        self.background(self._housekeeping())
        self.background(self._digests())

    async def stop_tasks(self) -> None:
        """Stop audits, seeding, pulls and gossip (before the downloads are cancelled)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.gossip.close()

    def close(self) -> None:
        """Close the announcement cache (after IPFS: its last imports may still report)."""
        cache, own, self.cache, self.own = self.cache, self.own, None, None
        if cache is not None:
            cache.close()
        if own is not None:
            own.close()

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _join(self, repo: str, arch: str) -> None:
        """Subscribe to a repo's topic and pull what the members already announced there."""
        if (repo, arch) in self._topics or self.host is None:
            return
        self._topics.add((repo, arch))

        def deliver(origin: str, data: bytes) -> None:
            self.gossip.deliver(origin, data, (repo, arch))

        try:
            await self.host.pubsub.join(topic(repo, arch), self.gossip.validate, deliver)
        except Exception as e:
            self._topics.discard((repo, arch))
            log.warning("swarm: could not join %s/%s: %s", repo, arch, e)
            return
        pulls = [self.inventory.pull_once(peer, repo, arch) for peer in self._pull_from()]
        await asyncio.gather(*pulls, return_exceptions=True)

    def _pull_from(self) -> list[str]:
        """A few members to pull a repo's inventories from on join: LAN peers first."""
        host = self.host
        members = sorted(self.members)
        self.rng.shuffle(members)
        if host is not None:
            members.sort(key=lambda p: not is_lan(host.peer_ips(p), self._local))
        return members[:JOIN_PULLS]

    async def ready(self, want: Want) -> None:
        """Before a download plans its sources: let a just-joined repo's pulls finish.

        A fresh node learns its repos from pacman's first ``-Sy``; the packages of that same
        ``pacman -Syu`` follow within milliseconds. Waiting (at most ``WARM_WAIT``) for the
        inventory pulls the new db started lets them come from peers rather than mirrors.
        """
        task = self._warming.get((want.rp.repo, want.rp.arch))
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=WARM_WAIT)

    # -- the node's events ----------------------------------------------------------------

    def on_db_updated(self, repo: str, arch: str) -> None:
        """A db changed: its order (for inventories) and what we believe may have changed."""
        self.inventory.forget_order(repo, arch)
        if self.cache is not None:
            believed = self.cache.recheck(self.believe, time.time())
            if believed:
                log.info("swarm: %d pending announcements match the new %s db", believed, repo)
        if self.host is not None and (repo, arch) not in self._topics:
            task = asyncio.create_task(self._join(repo, arch), name=f"swarm join {repo}")
            self._warming[(repo, arch)] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def on_committed(self, committed: Committed) -> None:
        """Remember what was verified: :meth:`on_imported` announces exactly that."""
        rp = committed.rp
        self._verified[(rp.repo, rp.arch, rp.filename)] = committed.record

    def on_imported(self, rp: RequestPath, cid: CID) -> None:
        """A verified package got its CID: it is ours now; announce it if allowed.

        A package cached before this start has no committed record: the db's is used.
        """
        key = (rp.repo, rp.arch, rp.filename)
        record = self._verified.pop(key, None) or self.dbs.lookup(*key)
        if record is None or self.own is None:
            return
        entry = Entry(record.sha256, str(cid), record.csize, rp.filename)
        why = self.why.pop((rp.repo, rp.arch, rp.filename), "verified")
        self.own.add(rp.repo, rp.arch, entry, why)
        if self.own.announcable(rp.repo, rp.arch, entry.sha256, self.config.swarm.announce):
            self.gossip.announce(rp.repo, rp.arch, entry)

    def on_evicted(self, rp: RequestPath) -> None:
        self._verified.pop((rp.repo, rp.arch, rp.filename), None)
        if self.own is not None:
            self.own.remove(rp.repo, rp.arch, rp.filename)

    # -- what peers tell us -----------------------------------------------------------------

    def believe(self, repo: str, arch: str, entry: Entry) -> bool:
        """An announcement is believed only for a package of the current db, byte for byte."""
        record = self.dbs.lookup(repo, arch, entry.filename)
        return record is not None and (record.sha256, record.csize) == (entry.sha256, entry.size)

    def trusted(self, peer: str) -> bool:
        return self.access.believe(peer) and not self.reputation.ignored(peer, time.monotonic())

    def _on_news(self, origin: str, news: News) -> None:
        if self.host is None or origin == self.host.peer_id or self.cache is None:
            return
        if not self.trusted(origin):
            return
        now = time.time()
        self.cache.seen(origin, now)
        if news.gateway_port is not None:
            self._gateways[origin] = news.gateway_port
        if news.entries:
            self.cache.add(origin, news.repo, news.arch, news.entries, now, self.believe)
        digest = news.digest
        if digest is not None and self._stale(origin, news.repo, news.arch, digest):
            self.inventory.pull_soon(origin, news.repo, news.arch)

    def _stale(self, peer: str, repo: str, arch: str, digest: Digest) -> bool:
        """Whether ``peer``'s digest shows our view of it is out of date. Only against the
        same db: otherwise its set holds packages we cannot believe and never matches."""
        if self.cache is None or digest.db != self.inventory.order(repo, arch).digest:
            return False
        held = [e.sha256 for e in self.cache.peer_entries(peer, repo, arch)]
        return held_digest(held) != digest.held

    def _on_connect(self, peer: str) -> None:
        host = self.host
        if host is None or INVENTORY_PROTOCOL not in host.peer_protocols(peer):
            log.debug("swarm: peer %s does not speak pacswarm: not a member", peer)
            return  # an IPFS peer that is not pacswarm: not a member of the swarm
        if not self.access.believe(peer):
            return
        ips = host.peer_ips(peer)
        self.access.peer_joined(peer, ips)
        if peer not in self.members:
            log.info("swarm: peer %s joined (from %s)", peer, ", ".join(ips) or "no address")
        self.members.add(peer)
        for repo, arch in sorted(self._topics):
            self.inventory.pull_soon(peer, repo, arch)

    def _on_disconnect(self, peer: str) -> None:
        if peer in self.members:
            log.info("swarm: peer %s left", peer)
        self.members.discard(peer)
        self.access.peer_left(peer)

    async def _publish(self, topic_name: str, data: bytes) -> None:
        if self.host is not None:
            await self.host.pubsub.publish(topic_name, data)

    def set_gateway(self, peer: str, port: int | None) -> None:
        if port is not None:
            self._gateways[peer] = port

    def gateway_urls(self) -> list[str]:
        """Base URLs of the members' gateways, LAN peers first (for single blocks)."""
        host = self.host
        if host is None:
            return []
        urls: list[tuple[bool, str]] = []
        for peer in sorted(self.members):
            port, ips = self._gateways.get(peer), host.peer_ips(peer)
            if port and ips and self.trusted(peer):
                urls.append((not is_lan(ips, self._local), f"http://{_host(ips[0])}:{port}"))
        return [url for _, url in sorted(urls)]

    # -- peers as sources ------------------------------------------------------------------

    def offers(self, want: Want, peers: set[str] | None = None) -> list[PeerOffer]:
        """Connected, trusted peers that announced ``want``'s sha256, best first."""
        host, cache = self.host, self.cache
        if host is None or cache is None:
            return []
        connected = set(host.connected_peers())
        offers = []
        for holder in cache.holders(want.record.sha256):
            peer = holder.peer
            if peer not in connected or not self.trusted(peer):
                continue
            if peers is not None and peer not in peers:
                continue
            ips = host.peer_ips(peer)
            port = self._gateways.get(peer)
            url = f"http://{_host(ips[0])}:{port}" if ips and port else None
            offers.append(PeerOffer(peer, holder.cid, url, is_lan(ips, self._local), 0))
        return order_offers(offers, self.rng)[:MAX_PEER_SOURCES]

    def sources(self, want: Want, peers: set[str] | None = None) -> list[Source]:
        """The plan's peers: sources for ``want`` from the peers that announced it."""
        offers = self.offers(want, peers)
        if not offers or self.host is None:
            return []
        return peer_sources(
            offers,
            self.host,
            self._session(),
            self.reputation,
            self.peer_health,
            self.config.swarm.peer_first_byte,
        )

    # -- loops ---------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            now = time.monotonic()
            if self.cache is not None:
                with contextlib.suppress(Exception):
                    self.cache.expire(time.time())
            if self.host is not None:
                for peer in self.reputation.struck():
                    self.host.pubsub.set_score(peer, self.reputation.score(peer, now))

    async def _digests(self) -> None:
        """Every ``digest_interval``: a small digest per repo, so stale views are noticed."""
        while True:
            # digest_interval is the topic's, not each node's: with N members each sends
            # once per N intervals (jittered), so the topic carries one digest per interval
            # whatever the swarm's size (docs/protocol.md, "digests").
            spread = max(1, len(self.members) + 1)
            interval = self.config.swarm.digest_interval * spread
            await asyncio.sleep(interval * self.rng.uniform(0.5, 1.5))
            for repo, arch in sorted(self._topics):
                await self.gossip.send_digest(repo, arch)

    def digest(self, repo: str, arch: str) -> Digest | None:
        """What this node announces of a repo, in 85 bytes (peers compare their view)."""
        if self.own is None:
            return None
        order = self.inventory.order(repo, arch)
        held = [e.sha256 for e in self.own.announced(repo, arch, self.config.swarm.announce)]
        return Digest(db=order.digest, count=len(held), held=held_digest(held))

    def strike(self, peer: str, reason: str) -> None:
        """Count a verification failure against ``peer`` (used by audits)."""
        now = time.monotonic()
        if self.reputation.strike(peer, reason, now):
            log.warning("swarm: ignoring peer %s for a while: %s", peer, reason)
        if self.host is not None:
            self.host.pubsub.set_score(peer, self.reputation.score(peer, now))


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
