"""A node's repo folders as a mirror, found by its IPNS name (issue 8, end to end).

Real nodes (tests/support/cluster.py) on 127.0.0.1: b installs packages through its own
proxy, so its folder links them; a plain pacman whose only Server line is
``http://<b's gateway>/ipns/<b's name>/$repo/os/$arch`` then syncs and installs from that
folder while the upstream mirror refuses every package. Node a, b's swarm peer, resolves
b's name (IPNS over pubsub or the DHT) and lists b's folder through its own gateway, with
b's directory blocks fetched from b.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipns.record import ipns_name, name_multihash
from tests.support.cluster import Cluster, SwarmNode, refuse_packages
from tests.support.mirror import MirrorServer
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo

pytest.importorskip("pacswarm.ipns.folderservice")
pytestmark = pytest.mark.timeout(300)

#: Bounded waits: generous, they only end a broken test.
PUBLISH_TIMEOUT = 60.0


def name_of(node: SwarmNode) -> str:
    pair = load_or_create_identity(node.data_dir / "ipfs" / "identity.key")
    return ipns_name(name_multihash(pair.public_key))


def get(url: str, timeout: float = 15.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_listing(url: str, wanted: list[str], timeout: float = PUBLISH_TIMEOUT) -> str:
    """Until the directory listing at ``url`` names every file in ``wanted``."""
    deadline = time.monotonic() + timeout
    last = (0, b"")
    while time.monotonic() < deadline:
        last = get(url)
        page = last[1].decode(errors="replace")
        if last[0] == 200 and all(name in page for name in wanted):
            return page
        time.sleep(0.5)
    raise AssertionError(f"{url} never listed {wanted}: HTTP {last[0]} {last[1][:500]!r}")


def test_pacman_installs_from_another_nodes_ipns_folder(
    tmp_path: Path, test_repo: TestRepo, mirror: MirrorServer, cluster: Cluster
) -> None:
    b = cluster.add("b")
    a = cluster.add("a", bootstrap=[b])
    b.install("hello")
    hello, libgreet = test_repo.packages["hello"], test_repo.packages["libgreet"]
    name = name_of(b)
    folder = f"{b.gateway_url}/ipns/{name}/core/os/x86_64/"
    wait_listing(folder, [hello.filename, f"{hello.filename}.sig", libgreet.filename, "core.db"])
    refuse_packages(mirror)  # from here on only b's folder has the packages

    pacman = PacmanEnv(
        tmp_path / "plain-pacman",
        [f"{b.gateway_url}/ipns/{name}/$repo/os/$arch"],
        test_repo.make_pacman_gpgdir(tmp_path / "plain-gnupg"),
        repos=("core",),
    )
    try:
        sync = pacman.run("-Sy")
        assert sync.returncode == 0, sync.stdout
        result = pacman.run("-S", "hello")
        assert result.returncode == 0, result.stdout
    finally:
        pacman.close()
    for pkg in (hello, libgreet):
        assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()

    # A peer resolves b's name and lists b's folder through its own gateway.
    page = wait_listing(f"{a.gateway_url}/ipns/{name}/core/os/x86_64/", [hello.filename])
    assert re.search(r"core\.db", page), page[:500]
    status, record = get(f"{a.gateway_url}/ipns/{name}?format=ipns-record")
    assert status == 200 and len(record) > 100, (status, record[:200])
