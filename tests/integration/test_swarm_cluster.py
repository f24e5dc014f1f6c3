"""The swarm, end to end: 3 to 5 real pacswarm nodes, each with its own pacman, on 127.0.0.1.

The promises under test (issue 7): a package one node downloaded is served to the others by
peers, so the mirror sends it once for the whole cluster; a lying, flooding or stalling peer
can neither get a bad byte to pacman nor make pacman fail; peers killed mid-transfer are
replaced at the same offset; announcements reach late joiners and survive restarts; a
private swarm neither serves nor believes outsiders.

"The mirror refuses every package and .sig" is the mirror dropping the connection on those
files while it still serves the dbs: whatever pacman then gets came from peers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.cluster import (
    Cluster,
    SwarmNode,
    downloads,
    known_holders,
    refuse_packages,
    tail,
    wait_known,
    wait_log,
    wait_offered,
)
from tests.support.hostile import HostileNode
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo

if TYPE_CHECKING:
    from tests.support.netns import Lan

pytest.importorskip("pacswarm.swarm.service")

#: What the tests install: with dependencies, every package of the test repo.
INSTALL = ("extratool", "bigpkg", "largepkg")
ALL = ("extratool", "hello", "libgreet", "bigpkg", "largepkg")
MIB = 1 << 20
#: Growth of an honest node's peak RSS allowed under attack: several times what its normal
#: work (20 MiB packages, gossip) adds, far below what unbounded queues or caches would take.
RSS_GROWTH_KB = 400 * 1024
#: Seconds to let gossip that must be ignored arrive before checking it was (heartbeat ~1 s).
SETTLE = 5.0
#: How a node's log says a peer source failed it (the lead's wording may be any of these).
FAILED = re.compile(
    r"stall|first byte|fail|strike|ignored|bad|timed? ?out|too slow|silent", re.IGNORECASE
)


@pytest.fixture
def hostiles(tmp_path: Path) -> Iterator[list[HostileNode]]:
    """Hostile nodes a test starts; every one stopped at teardown."""
    started: list[HostileNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def _shas(test_repo: TestRepo, names: tuple[str, ...] = ALL) -> list[str]:
    return [test_repo.packages[n].sha256 for n in names]


def _db_flags(mirror: MirrorServer) -> list[str]:
    flags = []
    for repo in ("core", "extra"):
        flags += ["--db", f"{repo}:x86_64:{mirror.root / repo / 'os/x86_64' / f'{repo}.db'}"]
    return flags


def _hostile(
    tmp_path: Path, name: str, mirror: MirrorServer, peers: list[SwarmNode], *args: str
) -> HostileNode:
    boot = [flag for peer in peers for flag in ("--bootstrap", peer.addr)]
    return HostileNode(tmp_path / name, [*boot, *_db_flags(mirror), *args]).start()


def _assert_has_real_packages(node: SwarmNode, test_repo: TestRepo, names=ALL) -> None:
    for name in names:
        pkg = test_repo.packages[name]
        got = node.pacman.cachedir / pkg.filename
        assert got.read_bytes() == pkg.path.read_bytes(), f"{node.name}: {name} differs"


def _failures(node: SwarmNode, peer: HostileNode) -> list[str]:
    """Log lines saying ``peer`` failed this node: named by peer ID or by its gateway URL."""
    names = [peer.peer_id, f"127.0.0.1:{peer.gateway_port}"]
    lines = node.log().splitlines()
    return [line for line in lines if any(n in line for n in names) and FAILED.search(line)]


def test_peers_serve_the_cluster_and_the_mirror_sends_each_package_once(
    test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    a = cluster.add("a")
    b, c = cluster.add("b"), cluster.add("c")  # both bootstrap to a
    a.install(*INSTALL)
    refuse_packages(mirror)
    # a imports and announces once its downloads are over (they come first on its machine).
    wait_offered(a, [test_repo.packages[name].filename for name in ALL])
    # b: a fresh node's first `pacman -Sy` and install in one run: it learns what a holds
    # from the inventory pull its new dbs start, before its downloads plan their sources.
    b.install(*INSTALL)
    # c: synced first; announcements match no package before that, so it believes them now.
    c.sync()
    wait_known(c, _shas(test_repo), holder=a.peer_id)
    c.install(*INSTALL, sync=False)
    for node in (a, b, c):
        _assert_has_real_packages(node, test_repo)
        assert node.pacman.installed_file("usr/bin/extratool-pacswarm").exists()
    for name in ALL:
        filename = test_repo.packages[name].filename
        assert downloads(mirror, filename) == 1, (name, mirror.statuses(filename))


def test_a_hostile_peer_cannot_make_pacman_fail_and_ends_up_ignored(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    cluster: Cluster,
    hostiles: list[HostileNode],
) -> None:
    """Three liars announce every package with a wrong CID (a consistent garbage DAG, a CAR
    of wrong blocks, random bytes); the first also announces sha256s in no db, publishes
    garbage and floods, and sends gossipsub frames that are no RPC."""
    # Audits at one a second and two strikes: the liar is found quickly, whether or not a
    # download happens to pick it first.
    honest = {"swarm": {"strikes": 2}, "audit": {"per_hour": 3600.0}}
    a = cluster.add("a", tables=honest)
    b = cluster.add("b", tables=honest)
    a.install(*INSTALL)
    b.sync()
    baseline = {n.name: n.peak_rss_kb() for n in (a, b)}
    liar = _hostile(
        tmp_path, "liar", mirror, [a, b],
        "--announce", "lies", "--bogus", "200", "--gateway", "consistent",
        "--garbage-rate", "500", "--flood-rate", "2000", "--malformed-rpc", "--repeat", "1",
    )  # fmt: skip
    hostiles.append(liar)
    for gateway in ("wrong-blocks", "random"):  # the same lies, served as other garbage
        hostiles.append(_hostile(tmp_path, gateway, mirror, [a, b], "--gateway", gateway))
    refuse_packages(mirror)
    wait_known(b, _shas(test_repo), holder=a.peer_id)
    c = cluster.add("c", bootstrap=[a, b], tables=honest)
    wait_known(c, _shas(test_repo), holder=a.peer_id, timeout=90)

    b.install(*INSTALL)
    c.install(*INSTALL)
    for node in (b, c):
        _assert_has_real_packages(node, test_repo)
    for name in ALL:
        assert downloads(mirror, test_repo.packages[name].filename) == 1, name

    # The liar's content failed verification, was counted against it, and it is ignored.
    wait_log(b, rf"{liar.peer_id}.*ignor|ignor.*{liar.peer_id}", timeout=120)
    assert any(_failures(n, liar) for n in (a, b, c)), cluster.logs()
    # Memory stayed bounded while it flooded (its queues and the pending set are bounded).
    for node in (a, b):
        grown = node.peak_rss_kb() - baseline[node.name]
        assert grown < RSS_GROWTH_KB, f"{node.name} grew by {grown} KiB under the flood"
    assert all(h.proc is not None and h.proc.poll() is None for h in hostiles), liar.log()


def test_a_peer_killed_mid_transfer_is_replaced_at_the_same_offset(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    cluster: Cluster,
    hostiles: list[HostileNode],
) -> None:
    """The peer holds the real package and serves it slowly; SIGKILL once bytes flowed."""
    pkg = test_repo.packages["largepkg"]
    b = cluster.add("b")
    b.sync()
    peer = _hostile(
        tmp_path, "slowpeer", mirror, [b],
        "--announce", "real", "--packages", str(mirror.root), "--gateway", "slow",
    )  # fmt: skip
    hostiles.append(peer)
    wait_known(b, [pkg.sha256], holder=peer.peer_id)
    proc = b.start_pacman("-S", "largepkg")
    try:
        wait_log_text(peer, r"sent \d{7,} bytes", timeout=60)  # at least a MiB went out
        peer.kill9()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + tail(b.log())
    assert (b.pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    # The mirror was asked for the rest only, from where the dead peer stopped.
    ranges = [r[2].get("Range", "") for r in mirror.requests_for("/" + pkg.filename)]
    assert ranges and all(re.fullmatch(r"bytes=[1-9]\d*-", r) for r in ranges), ranges


def test_a_stalling_peer_is_replaced(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    cluster: Cluster,
    hostiles: list[HostileNode],
) -> None:
    pkg = test_repo.packages["bigpkg"]
    b = cluster.add("b")
    b.sync()
    staller = _hostile(
        tmp_path, "staller", mirror, [b],
        "--announce", "real", "--packages", str(mirror.root), "--gateway", "stall",
    )  # fmt: skip
    hostiles.append(staller)
    wait_known(b, [pkg.sha256], holder=staller.peer_id)
    b.install("bigpkg", sync=False)
    assert (b.pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert downloads(mirror, pkg.filename) == 1
    # It was asked first (peers come before mirrors) and its silence was noticed.
    assert _failures(b, staller), tail(b.log())


def test_a_late_joiner_learns_the_inventory_and_fetches_from_peers(
    test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    a = cluster.add("a")
    b = cluster.add("b")
    a.install(*INSTALL)
    wait_known(b, _shas(test_repo), holder=a.peer_id)
    refuse_packages(mirror)
    late = cluster.add("late", bootstrap=[a, b])  # after every announcement was sent
    late.sync()
    wait_known(late, _shas(test_repo), holder=a.peer_id, timeout=90)  # "within a minute"
    late.install(*INSTALL, sync=False)
    _assert_has_real_packages(late, test_repo)
    for name in ALL:
        assert downloads(mirror, test_repo.packages[name].filename) == 1, name


def test_a_restarted_node_remembers_announcements(
    test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    a = cluster.add("a")
    b = cluster.add("b")
    a.install(*INSTALL)
    wait_known(b, _shas(test_repo), holder=a.peer_id)
    b.stop()
    a.stop()
    # b comes back alone: no bootstrap, no peer running. Whatever it knows, it remembered.
    b.bootstrap = []
    b.start()
    for sha in _shas(test_repo):
        assert a.peer_id in known_holders(b, sha), (sha, tail(b.log()))
    # a comes back (same ports, same identity) and dials b: b fetches from it at once.
    refuse_packages(mirror)
    a.bootstrap = [b.addr]
    a.start()
    b.install(*INSTALL)
    _assert_has_real_packages(b, test_repo)
    for name in ALL:
        assert downloads(mirror, test_repo.packages[name].filename) == 1, name


def test_a_private_swarm_neither_serves_nor_believes_outsiders(
    tmp_path: Path, test_repo: TestRepo
) -> None:
    """a and b allow {a, b, e}; e allows anyone and relays; d is an outsider on the same LAN.

    Four machines (network namespaces on a bridge), so that a's refusal is a's doing: on
    127.0.0.1 every client is "this machine" and would be served.
    """
    netns = pytest.importorskip("tests.support.netns")
    with netns.lan(n=4) as hosts:
        lan_mirror = MirrorServer(test_repo.copy_tree(tmp_path / "lan-mirror"), hosts.host_ip)
        lan_mirror.start()
        cluster = Cluster(tmp_path / "lan", [lan_mirror.url_template], test_repo.make_pacman_gpgdir)
        cluster.base.mkdir()
        try:
            _private_swarm(cluster, hosts, test_repo, lan_mirror)
        finally:
            try:
                cluster.stop()
            finally:
                lan_mirror.stop()


def _private_swarm(cluster: Cluster, hosts: Lan, test_repo: TestRepo, mirror: MirrorServer) -> None:
    private = {"swarm": {"allowlist": [cluster.identity(n) for n in ("a", "b", "e")]}}
    a = cluster.add("a", bootstrap=[], tables=private, lan=hosts[0])
    b = cluster.add("b", bootstrap=[a], tables=private, lan=hosts[1])
    e = cluster.add("e", bootstrap=[a], lan=hosts[2])
    d = cluster.add("d", bootstrap=[e], lan=hosts[3])
    hello = _shas(test_repo, ("hello", "libgreet"))
    bigpkg = test_repo.packages["bigpkg"]
    a.install("hello")
    d.install("bigpkg")
    wait_known(e, [bigpkg.sha256], holder=d.peer_id, timeout=90)  # d's news is on the topic
    wait_known(b, hello, holder=a.peer_id, timeout=90)
    refuse_packages(mirror)
    time.sleep(SETTLE)  # what a and b should ignore has had time to arrive

    # Not believed: neither a nor b lists d, so b cannot get bigpkg (only d has it).
    for node in (a, b):
        assert d.peer_id not in known_holders(node, bigpkg.sha256), node.name
    b.sync()
    assert b.pacman.run("-S", "bigpkg").returncode != 0
    # Not served: d cannot fetch hello, which only a holds; b, inside, can.
    d.sync()
    refused = d.pacman.run("-S", "hello")
    assert refused.returncode != 0, refused.stdout + tail(d.log())
    b.install("hello", sync=False)
    _assert_has_real_packages(b, test_repo, ("hello", "libgreet"))
    assert downloads(mirror, test_repo.packages["hello"].filename) == 1
    assert downloads(mirror, bigpkg.filename) == 1


def test_nodes_on_a_lan_find_each_other_by_mdns(tmp_path: Path, test_repo: TestRepo) -> None:
    """Three machines (network namespaces on a bridge), no bootstrap at all: mDNS, as at home."""
    netns = pytest.importorskip("tests.support.netns")
    with netns.lan(n=3) as hosts:
        lan_mirror = MirrorServer(test_repo.copy_tree(tmp_path / "lan-mirror"), hosts.host_ip)
        lan_mirror.start()
        cluster = Cluster(tmp_path / "lan", [lan_mirror.url_template], test_repo.make_pacman_gpgdir)
        cluster.base.mkdir()
        try:
            a, b, c = (cluster.add(n, bootstrap=[], lan=hosts[i]) for i, n in enumerate("abc"))
            a.install(*INSTALL)
            refuse_packages(lan_mirror)
            for node in (b, c):
                wait_known(node, _shas(test_repo), holder=a.peer_id, timeout=90)
            b.install(*INSTALL)
            c.install(*INSTALL)
            for node in (b, c):
                _assert_has_real_packages(node, test_repo)
            for name in ALL:
                assert downloads(lan_mirror, test_repo.packages[name].filename) == 1, name
        finally:
            try:
                cluster.stop()
            finally:
                lan_mirror.stop()


def wait_log_text(node: HostileNode, pattern: str, timeout: float) -> None:
    """Until the hostile node's log has a line matching ``pattern``."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, node.log()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} from the hostile node:\n{tail(node.log())}")
        time.sleep(0.05)
