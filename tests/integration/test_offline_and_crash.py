"""Upstream gone, node killed: what was verified keeps being served, nothing partial ever is."""

from __future__ import annotations

import signal
import time
import urllib.request

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import TestRepo


def test_upstream_unreachable_serves_cached_dbs_and_packages(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    node = make_node([mirror.url_template])
    first = make_pacman([node.url_template], name="first")
    assert first.run("-Sy").returncode == 0
    assert first.run("-S", "extratool").returncode == 0
    mirror.stop()

    # A fresh pacman, mirror gone: the dbs and the packages come from pacswarm's copies.
    second = make_pacman([node.url_template], name="second")
    sync = second.run("-Sy")
    assert sync.returncode == 0, sync.stdout
    install = second.run("-S", "extratool")
    assert install.returncode == 0, install.stdout + node.log()
    assert "offline: serving the last good copy" in node.log()

    # Also across a restart of the node, still offline.
    node.stop()
    node.start()
    third = make_pacman([node.url_template], name="third")
    assert third.run("-Sy").returncode == 0
    assert third.run("-S", "extratool").returncode == 0


def test_kill_9_mid_download_leaves_no_partial_file(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    bigpkg = test_repo.packages["bigpkg"]
    path = f"/core/os/x86_64/{bigpkg.filename}"
    # The mirror sends 3 MiB then stalls: the download is mid-way when the node dies.
    mirror.set_fault("stall", bigpkg.filename, after_bytes=3 << 20)
    # No verify window: the client must be receiving bytes while the download is mid-way.
    node = make_node([mirror.url_template], extra_config="verify_window = 0\n")
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    client = urllib.request.urlopen(node.base_url + path, timeout=30)
    client.read(1 << 20)
    deadline = time.monotonic() + 10
    tmp = node.data_dir / "tmp"
    while not any(p.stat().st_size >= 3 << 20 for p in tmp.iterdir()):
        assert time.monotonic() < deadline, "download never reached 3 MiB"
        time.sleep(0.05)
    node.kill9()
    client.close()
    assert list(tmp.iterdir())  # the partial download is on disk after the crash...

    mirror.clear_faults()
    node.start()
    assert not list(tmp.iterdir())  # ...and gone once the node restarts
    assert not node.cached_files()
    status, _, body = node.get(path)
    assert status == 200 and body == bigpkg.path.read_bytes()


def test_kill_9_after_caching_keeps_a_complete_verified_file(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    hello = test_repo.packages["hello"]
    node = make_node([mirror.url_template])
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    assert node.get(f"/core/os/x86_64/{hello.filename}")[2] == hello.path.read_bytes()
    cached = node.data_dir / "cache/core/x86_64" / hello.filename
    deadline = time.monotonic() + 5
    while not cached.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    node.kill9()
    mirror.stop()
    node.start()
    status, _, body = node.get(f"/core/os/x86_64/{hello.filename}")
    assert status == 200 and body == hello.path.read_bytes()


def test_sigterm_stops_the_node_cleanly(mirror: MirrorServer, make_node: NodeFactory) -> None:
    node: PacswarmNode = make_node([mirror.url_template])
    assert node.stop(signal.SIGTERM) == 0


def test_sigterm_during_a_download_stops_promptly(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    bigpkg = test_repo.packages["bigpkg"]
    mirror.set_fault("slow", bigpkg.filename, after_bytes=1 << 20)
    node = make_node([mirror.url_template], extra_config="verify_window = 0\n")
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    client = urllib.request.urlopen(f"{node.base_url}/core/os/x86_64/{bigpkg.filename}", timeout=30)
    client.read(64 * 1024)
    started = time.monotonic()
    assert node.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    client.close()
    node.start()
    assert not list((node.data_dir / "tmp").iterdir())
    assert not node.cached_files()
