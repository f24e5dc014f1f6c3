"""Privacy, audits and seeding between real nodes: what a node announces, and why.

``[swarm] announce = "seeded"`` keeps what this machine installed to itself: peers learn
only what it seeded from upstream or audited from a peer. Audits and seeding are the seed's
steps 2 and 3: both go through the node's one download path and admission, so what they
announce is verified.
"""

from __future__ import annotations

import time

import pytest

from tests.support.cluster import Cluster, SwarmNode, downloads, known_holders, wait_known
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo

pytestmark = pytest.mark.timeout(420)


def _wait_holder(node: SwarmNode, sha256s: list[str], peer: str, timeout: float = 120) -> str:
    """Until ``node`` lists ``peer`` as holder of one of ``sha256s``; returns that sha256."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sha in sha256s:
            if peer in known_holders(node, sha):
                return sha
        time.sleep(0.5)
    raise AssertionError(f"{node.name} never learned that {peer} holds any of {sha256s}")


def test_a_private_node_announces_only_what_it_seeded_or_audited(
    test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    pkgs = test_repo.packages
    a = cluster.add("a", tables={"swarm": {"digest_interval": 2.0}})
    a.install("hello")  # and libgreet: a announces both (announce = "all")
    b = cluster.add(
        "b",
        tables={
            "swarm": {"announce": "seeded", "digest_interval": 2.0},
            "audit": {"per_hour": 3600.0},
            "seed": {"random_packages": 1, "interval": 2.0},
        },
    )
    b.install("bigpkg")  # what b's user installed: never announced by b
    c = cluster.add("c", bootstrap=[a, b], tables={"swarm": {"digest_interval": 2.0}})
    c.sync()
    # Audited: b fetched a's hello from a alone, verified it, and now offers it.
    wait_known(c, [pkgs["hello"].sha256], holder=b.peer_id, timeout=120)
    # Seeded: b downloaded from upstream a package nobody held, verified it, announced it.
    seeded = _wait_holder(c, [pkgs["extratool"].sha256, pkgs["largepkg"].sha256], b.peer_id)
    name = next(n for n in ("extratool", "largepkg") if pkgs[n].sha256 == seeded)
    assert downloads(mirror, pkgs[name].filename) == 1  # from the mirror, once
    assert (b.data_dir / "cache" / "extra" / "x86_64" / pkgs[name].filename).exists()
    # c now holds b's whole announced inventory (digests every 2 s make c pull it): bigpkg,
    # which b's pacman installed, is not in it; nor does a (b's other neighbour) know it.
    time.sleep(6)
    assert b.peer_id not in known_holders(c, pkgs["bigpkg"].sha256)
    assert b.peer_id not in known_holders(a, pkgs["bigpkg"].sha256)
    assert (b.data_dir / "cache" / "core" / "x86_64" / pkgs["bigpkg"].filename).exists()
    assert b.log_lines("audit of", "passed")
