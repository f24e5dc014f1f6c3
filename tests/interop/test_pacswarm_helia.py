"""Helia (IPFS in JavaScript, written by others) fetches what pacswarm verified."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacswarm.ipfs.unixfs import import_bytes
from tests.integration.conftest import NodeFactory
from tests.integration.test_ipfs_node import _cache
from tests.support.helia import HeliaPeer, helia_available, unavailable_reason
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo

pytestmark = [
    pytest.mark.skipif(not helia_available(), reason=unavailable_reason()),
    pytest.mark.timeout(120),
]


def test_helia_fetches_a_package_from_the_pacswarm_gateway(
    tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    bigpkg = test_repo.packages["bigpkg"]
    root = _cache(node, bigpkg)
    out = tmp_path / "from-helia"
    with HeliaPeer(log_path=tmp_path / "helia.log") as helia:
        size = helia.cat_gateway(str(root), node.gateway_url, out, timeout=60)
    assert size == bigpkg.size
    assert out.read_bytes() == bigpkg.path.read_bytes()


def test_helia_computes_the_cids_pacswarm_serves(tmp_path: Path, test_repo: TestRepo) -> None:
    with HeliaPeer(log_path=tmp_path / "helia.log") as helia:
        for pkg in test_repo.packages.values():
            assert helia.add(pkg.path) == str(import_bytes(pkg.path.read_bytes()).root)
