"""The real pacman, through a real pacswarm node, against real signed mirrors on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import hashlib
import urllib.request

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sync_and_install_with_dependencies(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template], parallel_downloads=5)

    sync = pacman.run("-Sy")
    assert sync.returncode == 0, sync.stdout
    install = pacman.run("-S", "extratool", "bigpkg")
    assert install.returncode == 0, install.stdout + node.log()

    # Dependencies came along, and what pacman installed is exactly the mirror's package.
    assert pacman.installed_file("usr/bin/hello-pacswarm").exists()
    assert pacman.installed_file("usr/share/libgreet").exists()
    for name in ("extratool", "hello", "libgreet", "bigpkg"):
        pkg = test_repo.packages[name]
        downloaded = pacman.cachedir / pkg.filename
        assert downloaded.read_bytes() == pkg.path.read_bytes(), name
        assert (node.data_dir / "cache" / pkg.repo / "x86_64" / pkg.filename).is_file()

    # A second -Sy: pacswarm asks the mirror conditionally, the mirror says 304, and pacman
    # keeps its db (it only downloads when the server sends a newer one).
    before = len(mirror.requests)
    again = pacman.run("-Sy")
    assert again.returncode == 0, again.stdout
    assert '"GET /core/os/x86_64/core.db HTTP/1.1" 304' in node.log()
    db_requests = [r for r in mirror.requests[before:] if r[1].endswith("core.db")]
    assert db_requests and all("If-Modified-Since" in r[2] for r in db_requests)


def test_second_client_is_served_from_cache(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    node = make_node([mirror.url_template])
    first = make_pacman([node.url_template], name="first")
    assert first.run("-Sy").returncode == 0
    assert first.run("-S", "bigpkg").returncode == 0
    second = make_pacman([node.url_template], name="second")
    assert second.run("-Sy").returncode == 0
    result = second.run("-S", "bigpkg")
    assert result.returncode == 0, result.stdout
    assert mirror.hits(test_repo.packages["bigpkg"].filename) == 1


def test_eight_clients_share_one_upstream_download(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    pkg = test_repo.packages["bigpkg"]
    status, _, _ = node.get("/core/os/x86_64/core.db")
    assert status == 200
    path = f"/core/os/x86_64/{pkg.filename}"

    def fetch(_: int) -> bytes:
        with urllib.request.urlopen(node.base_url + path, timeout=60) as resp:
            return resp.read()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(fetch, range(8)))
    assert all(_sha(b) == pkg.sha256 for b in bodies)
    assert mirror.hits(pkg.filename) == 1


def test_range_request_resumes_inside_and_after_download(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    pkg = test_repo.packages["bigpkg"]
    data = pkg.path.read_bytes()
    path = f"/core/os/x86_64/{pkg.filename}"
    # Uncached: the Range is served from the shared download as it arrives.
    status, headers, body = node.get(path, {"Range": "bytes=1000000-"})
    assert status == 206
    assert body == data[1000000:]
    assert headers["Content-Range"] == f"bytes 1000000-{len(data) - 1}/{len(data)}"
    # Cached (once the commit is done: the last byte goes out just before it).
    node.wait_cached(pkg.filename)
    status, _, body = node.get(path, {"Range": "bytes=5-9"})
    assert (status, body) == (206, data[5:10])
    status, _, _ = node.get(path, {"Range": f"bytes={len(data) + 10}-"})
    assert status == 416
