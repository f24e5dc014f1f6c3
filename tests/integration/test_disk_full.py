"""A full cache disk: pacman still gets its package, nothing half-written stays, and the node
caches again by itself once space returns (issue 9).

The node's data dir is a small tmpfs mounted by the test (we are root in the test VM); the
disk fills for real, before the download or in the middle of it (a ballast file written until
``ENOSPC``). A commit that fails is a real read-only bind mount of the cache directory.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.dbedit import strip_pgpsig
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo

MiB = 1024 * 1024
#: Streamed without caching: the one line the node logs for it (download.py).
STREAMED = "to pacman without caching it"

Mount = Callable[..., Path]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def mount() -> Iterator[Mount]:
    """``mount(path, *options)``: a tmpfs (or bind mount) at ``path``, unmounted at teardown.

    Listed before ``make_node`` in a test's arguments, so the node stops before the umount.
    """
    mounted: list[Path] = []

    def make(path: Path, *argv: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = _run("mount", *argv, str(path))
        if done.returncode != 0:
            pytest.skip(f"cannot mount here (root with CAP_SYS_ADMIN needed): {done.stderr}")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))


def _fill(path: Path) -> None:
    """Write ``path`` until the filesystem has no byte left (``ENOSPC``)."""
    block = bytes(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


def _leftovers(node: PacswarmNode, filename: str) -> list[Path]:
    """Anything of ``filename`` the node kept: temp files, or cache files (package, .sig)."""
    temps = list((node.data_dir / "tmp").iterdir())
    return temps + [p for p in node.cached_files() if p.name.startswith(filename)]


def _wait_for(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def _installs_again_and_is_cached(
    pacman: PacmanEnv, node: PacswarmNode, test_repo: TestRepo, name: str
) -> None:
    """Space is back: the next install goes through the node's cache (nothing sticky)."""
    pkg = test_repo.packages[name]
    for path in pacman.cachedir.iterdir():  # pacman must ask the node again
        path.unlink()
    again = pacman.run("-S", name)
    assert again.returncode == 0, again.stdout + node.log()
    cached = node.wait_cached(pkg.filename)
    assert cached.read_bytes() == pkg.path.read_bytes()


def test_no_room_before_the_download_installs_streamed_then_caches_once_space_returns(
    mount: Mount,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    tmp_path: Path,
) -> None:
    """A disk with less room than the package (and the node's reserve): pacman installs it,
    streamed through without caching, and once the disk grows the next install is cached."""
    data = mount(tmp_path / "node", "-t", "tmpfs", "-o", "size=24m", "tmpfs")
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    pkg = test_repo.packages["bigpkg"]

    result = pacman.run("-S", "bigpkg")

    assert result.returncode == 0, result.stdout + node.log()
    assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert pacman.installed_file("usr/share/bigpkg/blob.bin").exists()
    streamed = [line for line in node.log().splitlines() if STREAMED in line]
    assert len(streamed) == 1 and pkg.filename in streamed[0], node.log()
    assert "cache full" in streamed[0] and str(data) in streamed[0]
    assert _leftovers(node, pkg.filename) == []

    assert _run("mount", "-o", "remount,size=256m", str(data)).returncode == 0
    _installs_again_and_is_cached(pacman, node, test_repo, "bigpkg")


def test_a_package_larger_than_the_memory_window_streams_checked_against_the_mirrors_sig(
    mount: Mount,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    tmp_path: Path,
) -> None:
    """No %PGPSIG% in the db: the signature is the mirror's .sig, known only after the first
    bytes; every byte still reaches gpg (held until it came), and a package larger than the
    node's 16 MiB memory window passes through it to pacman whole."""
    strip_pgpsig(mirror.root / "extra/os/x86_64", "extra")
    mount(tmp_path / "node", "-t", "tmpfs", "-o", "size=24m", "tmpfs")
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    pkg = test_repo.packages["largepkg"]
    assert pkg.repo == "extra" and pkg.size > 16 * MiB

    result = pacman.run("-S", "largepkg")

    assert result.returncode == 0, result.stdout + node.log()
    assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert any(STREAMED in line and pkg.filename in line for line in node.log().splitlines())
    assert _leftovers(node, pkg.filename) == []


def test_the_disk_filling_mid_transfer_still_installs_and_leaves_nothing_half_written(
    mount: Mount,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    tmp_path: Path,
) -> None:
    """The package flows (a throttled mirror) when a ballast fills the disk: the node goes
    on streaming from its temp file and memory, pacman installs the verified package, the
    temp file is gone, and after the ballast is removed the next install is cached."""
    data = mount(tmp_path / "node", "-t", "tmpfs", "-o", "size=128m", "tmpfs")
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    pkg = test_repo.packages["bigpkg"]
    mirror.set_fault("throttle", pkg.filename, rate=MiB)  # about 6 s for the package

    def flowing() -> bool:
        return any(p.stat().st_size >= MiB for p in (data / "tmp").iterdir())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        install = pool.submit(pacman.run, "-S", "bigpkg")
        _wait_for(flowing, "a MiB of the package in the node's temp file")
        _fill(data / "ballast")
        result = install.result()

    assert result.returncode == 0, result.stdout + node.log()
    assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert pacman.installed_file("usr/share/bigpkg/blob.bin").exists()
    assert any(STREAMED in line and pkg.filename in line for line in node.log().splitlines())
    assert _leftovers(node, pkg.filename) == []

    (data / "ballast").unlink()
    mirror.clear_faults()
    _installs_again_and_is_cached(pacman, node, test_repo, "bigpkg")


def test_a_full_disk_still_serves_what_the_cache_holds(
    mount: Mount,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    tmp_path: Path,
) -> None:
    """Noting that a cached package was served (SQLite) fails on a full disk: pacman must
    still get the package, not a 500."""
    data = mount(tmp_path / "node", "-t", "tmpfs", "-o", "size=128m", "tmpfs")
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    assert pacman.run("-S", "hello").returncode == 0
    node.wait_cached(test_repo.packages["hello"].filename)
    for path in pacman.cachedir.iterdir():
        path.unlink()
    _fill(data / "ballast")

    result = pacman.run("-S", "hello")

    assert result.returncode == 0, result.stdout + node.log()
    assert mirror.hits(test_repo.packages["hello"].filename) == 1  # the cache served it


def test_a_commit_that_fails_midway_leaves_no_trace_and_pacman_gets_its_file(
    mount: Mount,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    tmp_path: Path,
) -> None:
    """The commit writes the .sig and the row, then its rename fails (the cache folder is
    another mount: EXDEV): pacman still gets the verified file, and neither the temp file nor
    the .sig nor the row (the status page's cache size) of the uncached package stays."""
    folder = tmp_path / "node" / "cache" / "core" / "x86_64"
    mount(folder, "--bind", str(folder))
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    pkg = test_repo.packages["bigpkg"]

    result = pacman.run("-S", "bigpkg")

    assert result.returncode == 0, result.stdout + node.log()
    assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert f"{pkg.filename} but could not cache it" in node.log()
    assert _leftovers(node, pkg.filename) == []
    status, _, body = node.get("/status.json")
    assert status == 200
    cache = json.loads(body)["cache"]
    assert (cache["bytes"], cache["packages"]) == (0, 0)


def test_a_bad_mirror_never_gets_bad_bytes_installed_while_streaming(
    mount: Mount,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
    tmp_path: Path,
) -> None:
    """Streamed, the bytes are not kept for a second look: the running sha256 and the
    signature still decide, and the held-back tail keeps a bad file from pacman."""
    mount(tmp_path / "node", "-t", "tmpfs", "-o", "size=24m", "tmpfs")
    pkg = test_repo.packages["bigpkg"]
    served = mirror.root / "core/os/x86_64" / pkg.filename
    bad = bytearray(served.read_bytes())
    bad[len(bad) // 2] ^= 0xFF  # same size, wrong bytes
    served.write_bytes(bytes(bad))
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0

    result = pacman.run("-S", "bigpkg")

    assert result.returncode != 0, result.stdout
    assert not pacman.installed_file("usr/share/bigpkg/blob.bin").exists()
    assert not (pacman.cachedir / pkg.filename).exists()
    assert STREAMED in node.log()
    assert "does not match the db's" in node.log()
    assert _leftovers(node, pkg.filename) == []
