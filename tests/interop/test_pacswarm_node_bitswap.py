"""kubo and Helia (IPFS written by others) fetch what a running pacswarm node verified,
over libp2p Bitswap, straight from the node pacman talks to."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.integration.test_ipfs_node import _wait_for_root
from tests.support import helia, kubo
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import TestRepo

pytestmark = pytest.mark.timeout(180)


#: IPFS peers that are not pacswarm nodes of the swarm are served only on request.
PUBLIC = "[swarm]\nserve_public = true\n"


def _installed_node(
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    extra_config: str = PUBLIC,
) -> PacswarmNode:
    """A node through which pacman installed bigpkg: the package is verified and cached."""
    node = make_node([mirror.url_template], extra_config=extra_config)
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "bigpkg")
    assert result.returncode == 0, result.stdout
    return node


@pytest.mark.skipif(not kubo.kubo_available(), reason=kubo.unavailable_reason())
def test_kubo_fetches_an_installed_package_from_the_node(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    node = _installed_node(test_repo, mirror, make_node, make_pacman)
    bigpkg = test_repo.packages["bigpkg"]
    root = _wait_for_root(node, bigpkg)
    out = tmp_path / "from-kubo"
    with kubo.KuboPeer(tmp_path / "kubo-repo") as peer:
        peer.connect(node.p2p_addrs[0])
        assert peer.get(str(root), out, timeout=90) == bigpkg.size
    assert out.read_bytes() == bigpkg.path.read_bytes()


@pytest.mark.skipif(not helia.helia_available(), reason=helia.unavailable_reason())
def test_helia_fetches_an_installed_package_from_the_node(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    node = _installed_node(test_repo, mirror, make_node, make_pacman)
    bigpkg = test_repo.packages["bigpkg"]
    root = _wait_for_root(node, bigpkg)
    out = tmp_path / "from-helia"
    with helia.HeliaPeer(log_path=tmp_path / "helia.log") as peer:
        peer.dial(node.p2p_addrs[0])
        assert peer.cat(str(root), out, timeout=90) == bigpkg.size
    assert out.read_bytes() == bigpkg.path.read_bytes()


@pytest.mark.skipif(not helia.helia_available(), reason=helia.unavailable_reason())
def test_by_default_an_ipfs_peer_outside_the_swarm_gets_nothing(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """Any host can compute a package's CID offline: without ``serve_public`` a stranger
    (here Helia, which does not speak pacswarm's inventory protocol) cannot probe for it."""
    node = _installed_node(test_repo, mirror, make_node, make_pacman, extra_config="")
    bigpkg = test_repo.packages["bigpkg"]
    root = _wait_for_root(node, bigpkg)
    out = tmp_path / "from-helia"
    with helia.HeliaPeer(log_path=tmp_path / "helia.log") as peer:
        peer.dial(node.p2p_addrs[0])
        with pytest.raises(helia.HeliaError):
            peer.cat(str(root), out, timeout=15)
    assert not out.exists() or out.stat().st_size == 0


def test_identity_is_created_once_and_kept(
    tmp_path: Path, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    def pacswarm_id(data_dir: Path) -> str:
        return subprocess.run(
            [sys.executable, "-m", "pacswarm", "id", "--data-dir", str(data_dir),
             "--mirrorlist", "/nonexistent"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip

    data_dir = tmp_path / "node"
    first = pacswarm_id(data_dir)
    key = data_dir / "ipfs" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    peer_id = first.splitlines()[0].removeprefix("peer ID: ")
    assert peer_id.startswith("12D3KooW")
    node = make_node([mirror.url_template], name="node")
    assert all(a.endswith(f"/p2p/{peer_id}") for a in node.p2p_addrs)
    node.stop()
    node.start()
    assert all(a.endswith(f"/p2p/{peer_id}") for a in node.p2p_addrs)
    # With the node's own addresses now recorded, `id` prints those.
    assert node.p2p_addrs[0] in pacswarm_id(data_dir)
