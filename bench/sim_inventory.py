"""Simulation of the swarm's inventory protocol at 10 to 10,000 nodes (in-process, no sockets).

What is modelled, and how simply:

* **Arch numbers.** ``extra`` has 15,000 packages and ~500 updates a day. Package popularity
  follows a Zipf-like law (p_i = min(1, a / i^0.9), scaled so a node holds ~700 packages of
  extra, a typical desktop). Each node upgrades once a day, so it publishes one News batch a
  day holding the updated packages it has (~23 entries, 500 * 700 / 15,000).
* **Gossipsub.** A random 6-regular mesh (D = 6) plus 4 further connections per node for
  gossip. A node forwards a message it sees for the first time to its mesh peers, except
  the ones it got it from and those whose IDONTWANT (sent on first receipt, as py-libp2p
  does for every message) has reached it. Each link has a latency (lognormal, median 30 ms,
  1-500 ms: a LAN and WAN mix), each hop 2 ms of validation, 20 Mbit/s uplinks; each data
  transmission is lost with probability 1% (a full 32-RPC queue). Lost copies are repaired
  by IHAVE/IWANT: at each 1 s heartbeat (random phase per node) a node gossips the ids of
  messages from its last 3 heartbeats to its non-mesh peers, which ask for what they lack.
  Each data RPC costs the encoded message plus 400 B (signature, key, peer record, framing);
  IHAVE, IWANT and IDONTWANT 60 B each. Not modelled: peer scoring, churn during a
  propagation, mesh maintenance (GRAFT/PRUNE), NAT, per-topic rate limits (reported instead
  as the topic's message rate, which the limit must exceed).
* **Sizes** come from pacswarm's own encoder (:mod:`pacswarm.swarm.protocol`), row size
  from the real :class:`~pacswarm.swarm.announcements.AnnouncementCache` on disk.
* **Per day and node:** news = N batches a day, each reaching every node; digests = one per
  node every ``digest_interval`` (30 s), or, the proposed rule, spaced so the whole topic
  carries at most one digest a second; pulls = a restart a day with a pull from 3 peers
  (and answering 3), plus a pull per message a node never received (digest mismatch).
* **Memory:** rows in the announcement cache = (N - 1) * 700, capped at ``cache_entries``
  (200,000); "coverage" = the chance that a package a node wants (by popularity) is held by
  at least one peer whose inventory it still tracks.

    .venv/bin/python bench/sim_inventory.py [--quick] [--nodes 10,100,1000,10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pacswarm.ipfs.cid import CID, DAG_PB
from pacswarm.swarm.announcements import AnnouncementCache
from pacswarm.swarm.protocol import (
    DbItem,
    Digest,
    Entry,
    InventoryRequest,
    News,
    db_digest,
    encode_inventory,
    encode_news,
    encode_request,
    held_digest,
)

DB_SIZE = 15_000
UPDATES_PER_DAY = 500
HELD = 700
MESH_D = 6
LAZY = 4
LOSS = 0.01  # a transmission lost (full queue); a 10% run shows the repair path
HEARTBEAT = 1.0
GOSSIP_WINDOW = 3
HOP_MS = 2.0
UPLINK = 20e6 / 8  # bytes/s
RPC_OVERHEAD = 400
CONTROL = 60
DIGEST_INTERVAL = 30.0
CACHE_ENTRIES = 200_000
PULL_PEERS = 3
RESTARTS_PER_DAY = 1
DAY = 86_400


@dataclass
class Spread:
    """One message's propagation: when each node got it and the bytes each node moved."""

    times: list[float]
    bytes_per_node: float
    missed: int


def popularity(rng: random.Random) -> list[float]:
    """p_i for the db's packages, Zipf-like, summing to HELD (bisection on the scale)."""
    ranks = [(i + 1) ** -0.9 for i in range(DB_SIZE)]
    lo, hi = 0.0, float(DB_SIZE)
    for _ in range(60):
        a = (lo + hi) / 2
        if sum(min(1.0, a * r) for r in ranks) < HELD:
            lo = a
        else:
            hi = a
    p = [min(1.0, lo * r) for r in ranks]
    rng.shuffle(p)
    return p


def regular_graph(n: int, d: int, rng: random.Random) -> list[set[int]]:
    """A random d-regular-ish graph (configuration model, bad pairs dropped)."""
    adj: list[set[int]] = [set() for _ in range(n)]
    if n <= d:
        return [set(range(n)) - {i} for i in range(n)]
    stubs = [i for i in range(n) for _ in range(d)]
    rng.shuffle(stubs)
    for a, b in zip(stubs[::2], stubs[1::2], strict=False):
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    return adj


class Network:
    """Mesh and gossip links with fixed per-link latencies (seconds)."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.n = n
        self.mesh = regular_graph(n, MESH_D, rng)
        lazy = regular_graph(n, LAZY, rng)
        self.lazy = [sorted(lazy[i] - self.mesh[i]) for i in range(n)]
        self.rng = rng
        self._lat: dict[tuple[int, int], float] = {}
        self.phase = [rng.random() * HEARTBEAT for _ in range(n)]

    def latency(self, a: int, b: int) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in self._lat:
            ms = math.exp(self.rng.gauss(math.log(30.0), 0.8))
            self._lat[key] = min(500.0, max(1.0, ms)) / 1000
        return self._lat[key]


def spread(net: Network, origin: int, size: int, rng: random.Random, loss: float) -> Spread:
    """Event-driven propagation of one message of ``size`` bytes from ``origin``."""
    n = net.n
    got = [math.inf] * n
    sent_bytes = [0.0] * n
    wire = size + RPC_OVERHEAD
    tx = wire / UPLINK
    events: list[tuple[float, int, int, str]] = [(0.0, origin, -1, "data")]
    asked: dict[int, float] = {}  # node -> when it last sent IWANT (re-asked after 1 s)
    while events:
        t, node, src, kind = heapq.heappop(events)
        if kind == "ihave":
            if got[node] <= t or t - asked.get(node, -math.inf) < HEARTBEAT:
                continue
            asked[node] = t  # IWANT back, then the message
            sent_bytes[node] += CONTROL
            back = 2 * net.latency(node, src) + tx
            sent_bytes[src] += wire
            heapq.heappush(events, (t + back, node, src, "data"))
            continue
        if src >= 0 and kind == "data" and rng.random() < loss:
            continue
        if got[node] <= t:
            continue
        got[node] = t
        _forward(net, node, src, t, got, sent_bytes, wire, tx, events)
    missed = sum(1 for x in got if x == math.inf)
    # Everything sent is received by someone: per-node in+out is twice the sent total.
    return Spread(sorted(got), 2 * sum(sent_bytes) / n, missed)


def _forward(
    net: Network,
    node: int,
    src: int,
    t: float,
    got: list[float],
    sent_bytes: list[float],
    wire: int,
    tx: float,
    events: list[tuple[float, int, int, str]],
) -> None:
    """First receipt at ``t``: IDONTWANT to the mesh, push to mesh peers, IHAVE at heartbeats."""
    start = t + HOP_MS / 1000
    sent_bytes[node] += CONTROL * max(0, len(net.mesh[node]) - 1)  # IDONTWANT
    queued = 0
    for peer in net.mesh[node]:
        if peer == src or got[peer] + net.latency(peer, node) <= start:
            continue  # it sent us the message, or its IDONTWANT arrived first
        queued += 1
        sent_bytes[node] += wire
        heapq.heappush(events, (start + queued * tx + net.latency(node, peer), peer, node, "data"))
    first = t + (net.phase[node] - t) % HEARTBEAT
    for k in range(GOSSIP_WINDOW):
        beat = first + k * HEARTBEAT
        for peer in net.lazy[node]:
            sent_bytes[node] += CONTROL
            heapq.heappush(events, (beat + net.latency(node, peer), peer, node, "ihave"))


def arch_name(i: int) -> str:
    """A file name as long as Arch's (47 characters on average in extra)."""
    return f"python-package{i % 99999:05d}-1.2.{i % 97}-{i % 5 + 1}-x86_64.pkg.tar.zst"


def sample_entries(count: int, rng: random.Random) -> tuple[Entry, ...]:
    """Realistic entries: Arch-like file names (~45 chars), dag-pb CIDs, MB sizes."""
    out = []
    for _ in range(count):
        i = rng.randrange(10**9)
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        name = arch_name(i)
        out.append(Entry(sha, str(CID.of(sha.encode(), DAG_PB)), rng.randrange(10**4, 10**8), name))
    return tuple(out)


def message_sizes(rng: random.Random) -> dict[str, int]:
    """Wire sizes from pacswarm's encoder for the messages the day is made of."""
    per_day = round(UPDATES_PER_DAY * HELD / DB_SIZE)
    db = [
        DbItem(arch_name(i), hashlib.sha256(b"%d" % i).hexdigest(), rng.randrange(10**4, 10**8))
        for i in range(DB_SIZE)
    ]
    ours = db_digest(db)
    held = {item.sha256: str(CID.of(item.sha256.encode(), DAG_PB)) for item in rng.sample(db, HELD)}
    digest = Digest(ours, HELD, held_digest(held))
    return {
        "news_entries": per_day,
        "news": len(
            encode_news(News("extra", "x86_64", sample_entries(per_day, rng), 4080, digest))
        ),
        "digest": len(encode_news(News("extra", "x86_64", (), 4080, digest))),
        "request": len(encode_request(InventoryRequest("extra", "x86_64", ours))),
        "inventory": len(encode_inventory("extra", "x86_64", db, held, ours, 4080)),
        "inventory_list": len(encode_inventory("extra", "x86_64", db, held, "00" * 32, 4080)),
    }


def row_bytes(rng: random.Random, rows: int = 20_000) -> float:
    """Bytes per announcement row of the real SQLite cache (file size / rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.sqlite"
        cache = AnnouncementCache(path, max_entries=rows, peer_expiry=DAY)
        entries = sample_entries(rows // 20, rng)
        for p in range(20):
            peer = "12D3KooW" + hashlib.sha256(b"%d" % p).hexdigest()[:44]
            cache.add(peer, "extra", "x86_64", entries, float(p), lambda *_: True)
        cache.close()
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    return size / rows


@dataclass
class Row:
    nodes: int
    t50: float
    t99: float
    lossy_t99: float  # with 10% of transmissions lost (repaired by IHAVE/IWANT)
    missed: float  # fraction of nodes never reached (at 1% loss)
    news: float
    digest30: float
    digest_shared: float
    pulls: float
    topic_rate: float
    rows: int
    memory: float
    coverage: float


def _quantile(spreads: list[Spread], q: float) -> float:
    n = len(spreads[0].times)
    return statistics.fmean(s.times[min(n - 1, math.ceil(q * n) - 1)] for s in spreads)


def simulate(n: int, runs: int, sizes: dict[str, int], row_size: float, p: list[float]) -> Row:
    """One swarm of ``n`` nodes: propagation measured, the day's bytes derived from it."""
    rng = random.Random(n)
    net = Network(n, rng)
    spreads = [spread(net, rng.randrange(n), sizes["news"], rng, LOSS) for _ in range(runs)]
    lossy = [spread(net, rng.randrange(n), sizes["news"], rng, 0.10) for _ in range(runs)]
    news_per_msg = statistics.fmean(s.bytes_per_node for s in spreads)
    missed = statistics.fmean(s.missed for s in spreads) / n
    digest_per_msg = spread(net, 0, sizes["digest"], rng, LOSS).bytes_per_node
    digests_30 = n * DAY / DIGEST_INTERVAL  # every node every 30 s
    digests_shared = DAY / DIGEST_INTERVAL  # the topic as a whole: one per 30 s
    pull = sizes["request"] + sizes["inventory"] + 2 * RPC_OVERHEAD
    pulls = 2 * PULL_PEERS * RESTARTS_PER_DAY * pull + n * missed * pull
    tracked = min(n - 1, CACHE_ENTRIES // HELD)
    rows = min((n - 1) * HELD, CACHE_ENTRIES)
    coverage = sum(pi * (1 - (1 - pi) ** tracked) for pi in p) / sum(p)
    return Row(
        nodes=n,
        t50=_quantile(spreads, 0.5),
        t99=_quantile(spreads, 0.99),
        lossy_t99=_quantile(lossy, 0.99),
        missed=missed,
        news=n * news_per_msg,
        digest30=digests_30 * digest_per_msg,
        digest_shared=digests_shared * digest_per_msg,
        pulls=pulls,
        topic_rate=(n + digests_30) / DAY,
        rows=rows,
        memory=rows * row_size,
        coverage=coverage,
    )


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def report(rows: list[Row], sizes: dict[str, int], row_size: float) -> str:
    lines = [
        f"message sizes (pacswarm encoder): news of {sizes['news_entries']} entries "
        f"{sizes['news']} B, digest-only news {sizes['digest']} B, inventory request "
        f"{sizes['request']} B, inventory of {HELD} held in a {DB_SIZE:,}-package db: "
        f"bitfield {sizes['inventory']:,} B, explicit list {sizes['inventory_list']:,} B; "
        f"announcement-cache row {row_size:.0f} B on disk",
        "",
        "time until a new package is known (s, mean over messages):",
        "",
        "| nodes | t50 | t99 | t99 at 10% loss | never reached |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.nodes:,} | {r.t50:.2f} | {r.t99:.2f} | {r.lossy_t99:.2f} | {r.missed:.2%} |"
        )
    lines += [
        "",
        "per node and day (in + out, with ~400 B of gossipsub overhead per RPC):",
        "",
        "| nodes | news | digests, each node 30 s | digests, topic 1/30 s | pulls | total* "
        "| topic msgs/s | cache rows | cache on disk | coverage |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        total = r.news + r.digest_shared + r.pulls
        lines.append(
            f"| {r.nodes:,} | {human(r.news)} | {human(r.digest30)} | {human(r.digest_shared)} "
            f"| {human(r.pulls)} | {human(total)} | {r.topic_rate:.1f} | {r.rows:,} "
            f"| {human(r.memory)} | {r.coverage:.1%} |"
        )
    lines += [
        "",
        "total* = news + digests at one per 30 s topic-wide + pulls; topic msgs/s = news plus"
        " digests at 30 s each (what the per-topic rate limit must allow)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: 10, 100, 1,000 nodes")
    parser.add_argument("--nodes", default=None, help="comma-separated node counts")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    counts = [10, 100, 1000] if args.quick else [10, 100, 1000, 10_000]
    if args.nodes:
        counts = [int(x) for x in args.nodes.split(",")]
    rng = random.Random(args.seed)
    started = time.monotonic()
    sizes = message_sizes(rng)
    row_size = row_bytes(rng)
    p = popularity(rng)
    runs = 2 if args.quick else 8
    rows = [simulate(n, runs if n < 10_000 else runs // 2, sizes, row_size, p) for n in counts]
    print(report(rows, sizes, row_size))
    took = time.monotonic() - started
    print(f"\n(simulated in {took:.0f} s, seed {args.seed}, {runs} messages per size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
