"""``/status`` of a node that just served pacman, as a real headless chromium renders it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacswarm.config import load_config
from pacswarm.status import human_bytes
from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.browser import chromium, render
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import TestRepo

ARTIFACTS = Path(os.environ.get("PACSWARM_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))


def _bytes_row(dom: str, source: str) -> int:
    """The plain byte count of the page's "Bytes served" row for ``source`` (total column)."""
    row = re.search(rf"<td>{source}</td><td>[^<]*</td><td>[^<]*</td><td>(\d+)</td>", dom)
    assert row is not None, f"no {source} row in the page:\n{dom}"
    return int(row.group(1))


def _served(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> PacswarmNode:
    """A node that fetched libgreet from the mirror for one pacman and served it from its
    cache to a second one."""
    node = make_node([mirror.url_template])
    for name in ("first", "second"):
        pacman = make_pacman([node.url_template], name=name)
        assert pacman.run("-Sy").returncode == 0
        result = pacman.run("-S", "libgreet")
        assert result.returncode == 0, result.stdout + node.log()
        node.wait_cached(test_repo.packages["libgreet"].filename)
    return node


def _expected(test_repo: TestRepo, node: PacswarmNode, mirror: MirrorServer) -> tuple[int, int]:
    """Bytes from the mirror (libgreet, once, and the repo dbs each -Sy fetched whole) and
    from the cache (libgreet to the second pacman, and its .sig, which each pacman asks for
    too: the first one's comes from the cache or, if asked before the commit, from the
    download's signature)."""
    pkg = test_repo.packages["libgreet"]
    status, _, body = node.get("/status.json")
    assert status == 200
    from_cache = json.loads(body)["traffic"]["total"]["cache"]
    sig = pkg.sig_path.stat().st_size
    assert from_cache in (pkg.size + sig, pkg.size + 2 * sig), (from_cache, pkg.size, sig)
    dbs = mirror.db_bytes_sent()
    assert dbs > 0  # the first -Sy fetched core.db whole
    return pkg.size + dbs, from_cache


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make deps)")
def test_status_page_renders_the_figures_of_a_node_that_served_pacman(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    node = _served(test_repo, mirror, make_node, make_pacman)
    size, from_cache = _expected(test_repo, node, mirror)

    dom, shot = render(node.base_url + "/status", tmp_path / "browser")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "status-page.png")
    assert shot.read_bytes().startswith(b"\x89PNG"), "no screenshot of the status page"

    assert "<h1>pacswarm status</h1>" in dom, dom
    # One download from the mirror, one answer (package and .sig) from the cache.
    assert _bytes_row(dom, "mirror") == size
    assert _bytes_row(dom, "cache") == from_cache
    assert _bytes_row(dom, "peer") == 0
    saved = f"{from_cache / (from_cache + size) * 100:.0f}%"
    assert f"<td>saved</td><td>{saved}</td><td>{saved}</td>" in dom, dom
    # The cache holds the package, against the default cap resolved for this filesystem.
    config = load_config(node.config)
    cap = human_bytes(config.cache_max_size.resolve(shutil.disk_usage(node.data_dir).total))
    assert re.search(rf"<td>[\d.]+ KiB</td><td>1</td><td>{re.escape(cap)}</td>", dom), dom
    assert mirror.url_template in dom and "<td>ok</td>" in dom
    assert "<td>core/x86_64</td>" in dom
    # The chart drew this hour's bytes from both sources (the browser parsed the SVG).
    assert 'class="bar-mirror"' in dom and 'class="bar-cache"' in dom

    # The JSON twin says the same.
    status, _, body = node.get("/status.json")
    assert status == 200
    model = json.loads(body)
    assert model["traffic"]["total"] == {"cache": from_cache, "peer": 0, "mirror": size}
    assert model["cache"]["packages"] == 1

    # `pacswarm status` prints the same figures in the terminal.
    out = _status_command(node)
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^  mirror .* {size}$", out.stdout, re.M), out.stdout
    assert re.search(rf"^  cache .* {from_cache}$", out.stdout, re.M), out.stdout
    assert re.search(rf"^  saved +{saved} +{saved}", out.stdout, re.M), out.stdout
    assert f"in 1 packages (cap: {cap})" in out.stdout
    assert f"  {mirror.url_template}: ok" in out.stdout
    # Who gave what: the mirror, by its URL, gave every byte not from the cache.
    assert model["givers"] == {"peers": {}, "mirrors": {mirror.url_template: size}}
    assert f"  {mirror.url_template}: " in out.stdout and f"({size})" in out.stdout
    assert "  core/x86_64: " in out.stdout
    raw = _status_command(node, "--json")
    assert json.loads(raw.stdout)["traffic"]["total"] == model["traffic"]["total"]


def _status_command(node: PacswarmNode, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacswarm", "status", "--listen", f"127.0.0.1:{node.port}", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_command_without_a_node_says_what_to_do(tmp_path: Path) -> None:
    node = PacswarmNode(tmp_path / "absent", [], tmp_path)  # never started: nobody listens
    out = _status_command(node)
    assert out.returncode == 2
    assert "no pacswarm node answers at http://127.0.0.1:" in out.stderr
    assert "pacswarm serve" in out.stderr and not out.stdout


def test_index_links_to_the_status_page(mirror: MirrorServer, make_node: NodeFactory) -> None:
    node = make_node([mirror.url_template])
    status, headers, body = node.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<a href="/status">' in body
    assert f"Server = {node.url_template}".encode() in body


def test_traffic_figures_survive_a_restart(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    node = _served(test_repo, mirror, make_node, make_pacman)
    size, from_cache = _expected(test_repo, node, mirror)
    node.stop()
    node.start()
    status, _, body = node.get("/status.json")
    assert status == 200
    assert json.loads(body)["traffic"]["total"] == {"cache": from_cache, "peer": 0, "mirror": size}


def test_a_download_in_flight_shows_its_progress(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    pkg = test_repo.packages["largepkg"]
    node = make_node([mirror.url_template])
    assert node.get(f"/{pkg.repo}/os/x86_64/{pkg.repo}.db")[0] == 200
    mirror.set_fault("throttle", pkg.filename, rate=max(pkg.size // 8, 64 * 1024))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fetch = pool.submit(node.get, f"/{pkg.repo}/os/x86_64/{pkg.filename}", None, 120)
        seen = _poll_download(node, pkg.filename)
        assert seen["sources"] == [mirror.url_template]
        assert 0 < seen["written"] < seen["size"] == pkg.size
        out = _status_command(node)
        assert "downloads in flight: 1" in out.stdout, out.stdout + out.stderr
        assert f"  {pkg.filename}: " in out.stdout
        assert fetch.result(timeout=120)[0] == 200
    node.wait_cached(pkg.filename)  # the last byte goes out just before the commit
    assert json.loads(node.get("/status.json")[2])["downloads"] == []


def _poll_download(node: PacswarmNode, filename: str, timeout: float = 60) -> dict[str, object]:
    """The download of ``filename`` as /status.json shows it, once some bytes came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in json.loads(node.get("/status.json")[2])["downloads"]:
            if d["filename"] == filename and d["written"] > 0:
                return d
        time.sleep(0.05)
    raise AssertionError(f"no download of {filename} in flight within {timeout} s\n{node.log()}")
