"""Eviction end to end: a real node between the real pacman and a real mirror (issue 9).

What a user notices: old versions leave the cache (pacman's newest by vercmp stay), the cache
stays under ``cache_max_size`` after installs, a package bigger than the whole cap still
reaches pacman whole and is then not kept, an evicted package is gone from the node's IPFS
blocks, its announcements and its IPNS folder too, an eviction cut short by ``kill -9`` is
finished at the next start, and ``pacswarm gc --dry-run`` changes nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pacswarm.ipfs.identity import load_or_create_identity
from pacswarm.ipfs.unixfs import import_stream
from pacswarm.ipns.record import ipns_name, name_multihash
from tests.support import versions
from tests.support.cluster import own_announced
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo

pytestmark = pytest.mark.timeout(300)

#: Bounded waits; they only end a broken test.
WAIT = 60.0
#: A short verify window makes the debounced eviction (window + 2 s) come quickly.
FAST = "verify_window = 1.0\n"
PKG_BYTES = 96 * 1024


def wait_until(condition: Callable[[], bool], what: str, node: PacswarmNode) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {WAIT} s; node log:\n{node.log()[-4000:]}")


def cached_names(node: PacswarmNode) -> set[str]:
    return {p.name for p in node.cached_files() if not p.name.endswith(".sig")}


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def folder_page(node: PacswarmNode) -> str:
    pair = load_or_create_identity(node.data_dir / "ipfs" / "identity.key")
    name = ipns_name(name_multihash(pair.public_key))
    status, body = http_get(f"{node.gateway_url}/ipns/{name}/core/os/x86_64/")
    return body.decode(errors="replace") if status == 200 else ""


def cid_of(path: Path) -> str:
    with open(path, "rb") as f:
        return str(import_stream(f).root)


def install(pacman: PacmanEnv, *names: str) -> None:
    result = pacman.run("-Sy", *names)
    assert result.returncode == 0, result.stdout


def test_versions_beyond_keep_versions_go_with_their_blocks_announcements_and_link(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: Callable[..., PacswarmNode],
    make_pacman: Callable[..., PacmanEnv],
) -> None:
    # String order would keep 1.9 over 1.10; ignoring the epoch would drop 1:0.1 first.
    built = versions.build("evictme", ["1.9-1", "1.10-1", "1:0.1-1"], PKG_BYTES, tmp_path / "b")
    node = make_node([mirror.url_template], extra_config=f"keep_versions = 2\n{FAST}")
    pacman = make_pacman([node.url_template])
    oldest = built[0]
    for step, pkg in enumerate(built[:2], 1):
        versions.publish(test_repo, mirror.root, "core", pkg, step)
        install(pacman, "evictme")
        node.wait_cached(pkg.filename)
    cid = cid_of(oldest.path)
    wait_until(lambda: oldest.filename in folder_page(node), "the folder never linked 1.9", node)
    wait_until(lambda: oldest.filename in own_announced(node), "1.9 was never announced", node)
    assert http_get(f"{node.gateway_url}/ipfs/{cid}?format=raw")[0] == 200

    versions.publish(test_repo, mirror.root, "core", built[2], 3)
    install(pacman, "evictme")
    node.wait_cached(built[2].filename)
    wait_until(lambda: oldest.filename not in cached_names(node), "1.9-1 was not evicted", node)
    assert {b.filename for b in built[1:]} <= cached_names(node)
    assert "older version" in node.log()
    # Gone everywhere the node offered it: blocks, announcements, the IPNS folder.
    wait_until(lambda: oldest.filename not in folder_page(node), "the folder still links 1.9", node)
    assert built[2].filename in folder_page(node)
    assert oldest.filename not in own_announced(node)
    assert built[1].filename in own_announced(node)
    assert http_get(f"{node.gateway_url}/ipfs/{cid}?format=raw")[0] != 200
    assert not (node.data_dir / "cache" / "core" / "x86_64" / f"{oldest.filename}.sig").exists()


def test_the_cap_holds_and_the_least_recently_served_goes(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: Callable[..., PacswarmNode],
    make_pacman: Callable[..., PacmanEnv],
) -> None:
    pkgs = [versions.build(n, ["1.0-1"], PKG_BYTES, tmp_path / n)[0] for n in ("pa", "pb", "pc")]
    for step, pkg in enumerate(pkgs, 1):
        versions.publish(test_repo, mirror.root, "core", pkg, step)
    sizes = {p.filename: p.path.stat().st_size for p in pkgs}
    cap = sum(sizes.values()) - 1  # two fit, three do not
    node = make_node([mirror.url_template], extra_config=f"cache_max_size = {cap}\n{FAST}")
    first = make_pacman([node.url_template], name="first")
    install(first, "pa")
    install(first, "pb")
    node.wait_cached(pkgs[1].filename)
    time.sleep(0.05)
    # Another machine installs pa again from the node's cache: pa is now the warm one.
    install(make_pacman([node.url_template], name="second"), "pa")
    install(first, "pc")
    node.wait_cached(pkgs[2].filename)
    wait_until(lambda: pkgs[1].filename not in cached_names(node), "pb was not evicted", node)
    assert cached_names(node) == {pkgs[0].filename, pkgs[2].filename}
    on_disk = sum(p.stat().st_size for p in node.cached_files() if not p.name.endswith(".sig"))
    assert on_disk <= cap
    assert "least recently served" in node.log()


def test_a_package_bigger_than_the_cap_reaches_pacman_whole_and_is_not_kept(
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: Callable[..., PacswarmNode],
    make_pacman: Callable[..., PacmanEnv],
) -> None:
    big = test_repo.packages["bigpkg"]  # 6 MiB, the cap 1 MiB
    node = make_node([mirror.url_template], extra_config='cache_max_size = "1 MiB"\n')
    pacman = make_pacman([node.url_template])
    install(pacman, "bigpkg")
    assert (pacman.cachedir / big.filename).read_bytes() == big.path.read_bytes()
    assert pacman.installed_file("usr/share/bigpkg/blob.bin").stat().st_size > 1 << 20
    wait_until(lambda: big.filename not in cached_names(node), "bigpkg was kept", node)
    assert "bigger than the cap" in node.log()
    assert cached_names(node) == set()


def gc(node: PacswarmNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacswarm", "gc", "--config", str(node.config),
         "--listen", f"127.0.0.1:{node.port}", "--data-dir", str(node.data_dir), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_gc_dry_run_changes_nothing_and_the_node_applies_new_rules_at_start(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: Callable[..., PacswarmNode],
    make_pacman: Callable[..., PacmanEnv],
) -> None:
    node = make_node([mirror.url_template])
    install(make_pacman([node.url_template]), "hello")
    hello, libgreet = test_repo.packages["hello"], test_repo.packages["libgreet"]
    node.wait_cached(hello.filename)
    wait_until(lambda: libgreet.filename in own_announced(node), "never announced", node)
    node.stop()
    # The user lowers the cap: only one of the two fits; the one served longer ago goes.
    cap = max(hello.size, libgreet.size) + 10
    node.config.write_text(node.config.read_text() + f"cache_max_size = {cap}\n")
    before = {p: p.read_bytes() for p in node.data_dir.rglob("*") if p.is_file()}

    dry = gc(node, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    goes = [
        p for p in (hello, libgreet) if f"would evict /core/os/x86_64/{p.filename}" in dry.stdout
    ]
    assert len(goes) == 1, dry.stdout
    stays = libgreet if goes[0] is hello else hello
    assert f"would free {goes[0].size / 1024:.1f} KiB in 1 package(s)" in dry.stdout, dry.stdout
    # Not a byte changed in the data dir: cache, metadata (no journal row), blocks.
    assert {p: p.read_bytes() for p in node.data_dir.rglob("*") if p.is_file()} == before

    node.start()  # the node applies the new cap at start, through its one eviction path
    wait_until(lambda: goes[0].filename not in own_announced(node), "still announced", node)
    assert cached_names(node) == {stays.filename}
    running = gc(node)  # asked of the running node over POST /api/gc: nothing left to free
    assert running.returncode == 0, running.stderr
    assert "working on" not in running.stdout
    assert "freed 0 B in 0 package(s)" in running.stdout, running.stdout
    # A web page cannot drive it: without the command header the node refuses.
    plain = urllib.request.Request(f"{node.base_url}/api/gc", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(plain, timeout=15)
    assert refused.value.code == 403


def test_an_eviction_cut_short_is_finished_at_the_next_start(
    tmp_path: Path,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: Callable[..., PacswarmNode],
    make_pacman: Callable[..., PacmanEnv],
) -> None:
    """``pacswarm gc`` on a stopped node removes from the store only, exactly the state a
    ``kill -9`` leaves right after an eviction's commit point: the next start must drop the
    package's blocks, announcements and folder link too."""
    node = make_node([mirror.url_template])
    install(make_pacman([node.url_template]), "hello")
    hello, libgreet = test_repo.packages["hello"], test_repo.packages["libgreet"]
    node.wait_cached(hello.filename)
    wait_until(lambda: libgreet.filename in folder_page(node), "libgreet never linked", node)
    wait_until(lambda: libgreet.filename in own_announced(node), "never announced", node)
    assert node.get(f"/core/os/x86_64/{hello.filename}")[0] == 200  # hello is the warm one
    node.kill9()
    cap = max(hello.size, libgreet.size) + 10
    node.config.write_text(node.config.read_text() + f"cache_max_size = {cap}\n")
    offline = gc(node)
    assert offline.returncode == 0, offline.stderr
    assert "working on" in offline.stdout and libgreet.filename in offline.stdout
    assert libgreet.filename in own_announced(node)  # not told yet: the node is down

    node.start()
    wait_until(lambda: libgreet.filename not in own_announced(node), "still announced", node)
    wait_until(
        lambda: libgreet.filename not in (page := folder_page(node)) and hello.filename in page,
        "the folder still links libgreet (or lost hello)",
        node,
    )
    assert cached_names(node) == {hello.filename}
    cid = cid_of(libgreet.path)
    assert http_get(f"{node.gateway_url}/ipfs/{cid}?format=raw")[0] != 200
    assert "finishing the eviction" in node.log()
