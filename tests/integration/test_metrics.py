"""``/metrics`` of a real node, scraped with Prometheus' own parser around real pacman runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.cluster import Cluster, refuse_packages, wait_known
from tests.support.dbedit import strip_pgpsig_everywhere
from tests.support.hostile import HostileNode
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import TestRepo

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(node: PacswarmNode) -> Samples:
    """Every sample of ``/metrics``, by name and labels (the parser refuses a bad exposition)."""
    status, headers, body = node.get("/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def _scrape_until(node: PacswarmNode, name: str, timeout: float = 30) -> Samples:
    """A scrape in which counter ``name`` has moved (gossip comes on the swarm's schedule)."""
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(node)
        if value(got, name) >= 1 or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_figures_move_when_pacman_installs(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    node = make_node([mirror.url_template])
    pkg = test_repo.packages["libgreet"]
    before = scrape(node)
    assert value(before, "pacswarm_cache_packages") == 0
    assert value(before, "pacswarm_peers") == 0

    first = make_pacman([node.url_template], name="first")
    assert first.run("-Sy").returncode == 0
    result = first.run("-S", "libgreet")
    assert result.returncode == 0, result.stdout + node.log()
    node.wait_cached(pkg.filename)
    after = scrape(node)

    # The package came from the mirror, once, whole, and is now cached and counted.
    assert value(after, "pacswarm_bytes_total", source="mirror", kind="package") == pkg.size
    assert value(after, "pacswarm_cache_misses_total", kind="package") == 1
    assert value(after, "pacswarm_requests_total", kind="package") >= 1
    assert value(after, "pacswarm_requests_total", kind="db") >= 1
    assert value(after, "pacswarm_download_seconds_count", outcome="verified") == 1
    assert value(after, "pacswarm_first_byte_seconds_count") == 1
    assert value(after, "pacswarm_cache_packages") == 1
    assert value(after, "pacswarm_cache_bytes") == pkg.size
    assert value(after, "pacswarm_cache_hits_total", kind="package") == 0
    # The db bytes the mirror sent whole are counted as the mirror's, byte for byte.
    assert value(after, "pacswarm_bytes_total", source="mirror", kind="db") == (
        mirror.db_bytes_sent()
    )

    # A second machine gets it from the cache: a hit, bytes from the cache, no new download.
    second = make_pacman([node.url_template], name="second")
    assert second.run("-Sy").returncode == 0
    assert second.run("-S", "libgreet").returncode == 0
    again = scrape(node)
    assert value(again, "pacswarm_cache_hits_total", kind="package") == 1
    assert value(again, "pacswarm_bytes_total", source="cache", kind="package") == pkg.size
    assert value(again, "pacswarm_bytes_total", source="mirror", kind="package") == pkg.size
    assert value(again, "pacswarm_download_seconds_count", outcome="verified") == 1


def test_a_lying_mirror_is_counted_as_a_verification_failure(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    pkg = test_repo.packages["bigpkg"]
    _corrupt(mirror.root / pkg.repo / "os/x86_64" / pkg.filename, pkg.size // 2)
    node = make_node([mirror.url_template, mirror2.url_template])
    assert (
        value(
            scrape(node), "pacswarm_verification_failures_total", reason="sha256", source="mirror"
        )
        == 0
    )
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "bigpkg")
    assert result.returncode == 0, result.stdout + node.log()
    node.wait_cached(pkg.filename)
    after = scrape(node)
    assert (
        value(after, "pacswarm_verification_failures_total", reason="sha256", source="mirror") == 1
    )
    # Both mirrors sent the whole file: the bad copy and the good one.
    assert value(after, "pacswarm_bytes_total", source="mirror", kind="package") == 2 * pkg.size


def test_bytes_from_a_peer_and_the_swarm_figures(
    test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    """b gets libgreet from a (the mirror refuses packages): counted as peer bytes, and b
    reports its peer, the gossip it received and the announcements it holds."""
    pkg = test_repo.packages["libgreet"]
    # Digests every second or so: gossip reaches b whichever way it learnt of a's package.
    fast = {"swarm": {"digest_interval": 1.0}}
    a = cluster.add("a", tables=fast)
    b = cluster.add("b", tables=fast)  # bootstraps to a
    a.install("libgreet")
    refuse_packages(mirror)
    b.sync()
    wait_known(b, [pkg.sha256], holder=a.peer_id)
    b.install("libgreet", sync=False)
    b.wait_cached(pkg.filename)
    got = _scrape_until(b, "pacswarm_gossip_messages_total")
    assert value(got, "pacswarm_bytes_total", source="peer", kind="package") == pkg.size
    assert value(got, "pacswarm_bytes_total", source="mirror", kind="package") == 0
    assert value(got, "pacswarm_peers") == 1
    assert value(got, "pacswarm_announcement_entries") >= 1
    assert value(got, "pacswarm_gossip_messages_total") >= 1
    assert value(got, "pacswarm_gossip_dropped_total") == 0
    assert got[("pacswarm_strikes", frozenset())] == 0
    # The status JSON names the peer by its ID, and what it gave us.
    status, _, body = b.get("/status.json")
    assert status == 200
    model = json.loads(body)
    assert model["peers"] == [{"id": a.peer_id, "strikes": 0, "gave": pkg.size}]
    assert model["givers"]["peers"] == {a.peer_id: pkg.size}
    assert model["traffic"]["total"]["peer"] == pkg.size
    # The mirror still sent the dbs (never from peers): they count as its bytes.
    assert value(got, "pacswarm_bytes_total", source="mirror", kind="db") > 0


def test_a_signature_no_key_trusts_is_counted_and_nothing_cached(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    # The db carries no %PGPSIG%: the mirror's .sig is the signature, and a stranger made it.
    strip_pgpsig_everywhere(mirror.root)
    test_repo.resign(mirror.root, "libgreet", key="rogue", update_db=False)
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    assert pacman.run("-S", "libgreet").returncode != 0
    got = scrape(node)
    assert (
        value(got, "pacswarm_verification_failures_total", reason="signature", source="mirror") >= 1
    )
    assert value(got, "pacswarm_verification_failures_total", reason="sha256", source="mirror") == 0
    assert value(got, "pacswarm_download_seconds_count", outcome="failed") >= 1
    assert value(got, "pacswarm_download_seconds_count", outcome="verified") == 0
    assert value(got, "pacswarm_cache_packages") == 0


def test_gossip_garbage_is_counted_as_dropped(
    tmp_path: Path, mirror: MirrorServer, cluster: Cluster
) -> None:
    """A peer that publishes random bytes on the repos' topics: every message is dropped."""
    a = cluster.add("a")
    a.sync()  # a joins the repos' topics once it holds their dbs
    dbs = []
    for repo in ("core", "extra"):
        dbs += ["--db", f"{repo}:x86_64:{mirror.root / repo / 'os/x86_64' / f'{repo}.db'}"]
    boot = ["--bootstrap", a.addr]
    hostile = HostileNode(tmp_path / "garbage", [*boot, *dbs, "--garbage-rate", "20"]).start()
    try:
        got = _scrape_until(a, "pacswarm_gossip_dropped_total", timeout=60)
    finally:
        hostile.stop()
    dropped = value(got, "pacswarm_gossip_dropped_total")
    assert dropped >= 1, a.log()
    assert value(got, "pacswarm_gossip_messages_total") >= dropped
