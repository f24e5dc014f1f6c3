"""Broken and lying mirrors: pacman, with pacswarm as its only Server, still succeeds.

The promise under test: a bad source never costs the user a failed ``pacman -S`` while an
honest source exists, and pacman never receives a bad byte. Inside the verify window a bad
source is replaced without pacman noticing; a download that outlives the window and then
fails costs one failed run, after which pacswarm has the verified file.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.dbedit import strip_pgpsig_everywhere
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import TestRepo

MIB = 1 << 20


def _corrupt(path: Path, offset: int) -> None:
    """Flip one byte: same size, other sha256, as a bad disk or a tampering mirror makes."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _penalised(node: PacswarmNode, mirror: MirrorServer) -> bool:
    """The node logged this mirror's failure (not just its name in the start-up line)."""
    return f"mirror {mirror.url_template} failed" in node.log()


def _cached(node: PacswarmNode, repo: str, filename: str) -> Path:
    return node.data_dir / "cache" / repo / "x86_64" / filename


@pytest.mark.parametrize("fault", ["down", "500", "refuse", "stall", "truncate"])
def test_pacman_succeeds_through_second_mirror(
    fault: str,
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    if fault == "down":
        mirror.stop()
    else:
        mirror.set_fault(fault, "*.pkg.tar.zst", after_bytes=MIB)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "bigpkg", "extratool")
    assert result.returncode == 0, result.stdout + node.log()
    bigpkg = test_repo.packages["bigpkg"]
    assert (pacman.cachedir / bigpkg.filename).read_bytes() == bigpkg.path.read_bytes()
    assert pacman.installed_file("usr/bin/hello-pacswarm").exists()
    if fault in ("stall", "truncate"):
        # The download continued from the second mirror where the first one stopped.
        resumed = mirror2.requests_for(bigpkg.filename)
        assert [r[2].get("Range") for r in resumed] == [f"bytes={MIB}-"]
    assert _penalised(node, mirror), node.log()


@pytest.mark.parametrize("name", ["hello", "largepkg"])
@pytest.mark.parametrize("attack", ["corrupt", "bad-signature", "truncate-then-corrupt"])
def test_first_run_succeeds_when_the_first_mirror_lies(
    attack: str,
    name: str,
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    pkg = test_repo.packages[name]
    bad_copy = mirror.root / pkg.repo / "os/x86_64" / pkg.filename
    if attack == "corrupt":
        _corrupt(bad_copy, pkg.size // 2)
    elif attack == "bad-signature":
        # Dbs without %PGPSIG% (pacman 6.1+ repo-add): the .sig file is the signature, and
        # mirror 1's is made by a key the keyring does not know.
        strip_pgpsig_everywhere(mirror.root, mirror2.root)
        test_repo.resign(mirror.root, name, key="rogue", update_db=False)
    else:
        # Mirror 1's bytes are bad in the part it sends before it cuts the connection; the
        # download continues on mirror 2, and the file made of both fails the sha256.
        _corrupt(bad_copy, pkg.size // 4)
        mirror.set_fault("truncate", pkg.filename, after_bytes=pkg.size // 2)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", name)
    assert result.returncode == 0, result.stdout + node.log()
    assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert node.wait_cached(pkg.filename).read_bytes() == pkg.path.read_bytes()
    cached_sig = _cached(node, pkg.repo, pkg.filename + ".sig")
    assert cached_sig.read_bytes() == pkg.sig_path.read_bytes()
    assert _penalised(node, mirror), node.log()
    assert not pacman.part_files()


def test_every_source_corrupt_fails_cleanly(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    pkg = test_repo.packages["bigpkg"]
    for m in (mirror, mirror2):
        _corrupt(m.root / "core/os/x86_64" / pkg.filename, 3 * MIB)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    failed = pacman.run("-S", "bigpkg")
    assert failed.returncode != 0, failed.stdout
    assert pacman.run("-Q", "bigpkg").returncode != 0
    assert not [p for p in node.cached_files() if pkg.filename in p.name]
    assert not list((node.data_dir / "tmp").iterdir())
    assert _penalised(node, mirror) and _penalised(node, mirror2), node.log()
    # Inside the verify window pacman got nothing: no bad bytes kept in a .part.
    assert not pacman.part_files()


@pytest.mark.parametrize("where", ["tail", "middle"])
def test_a_download_that_outlives_the_window(
    where: str,
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """Past the window bytes stream (progress); a failure then costs pacman its first run.

    pacswarm fetches the file from the next source anyway. pacman resumes its ``.part`` on
    the next run: if those bytes are a prefix of the verified file (the bad byte was in the
    held-back tail) the resume is served; if not, pacman is told to start over (416), drops
    the ``.part``, and the run after that succeeds.
    """
    pkg = test_repo.packages["largepkg"]
    offset = pkg.size - 1000 if where == "tail" else pkg.size // 2
    _corrupt(mirror.root / "extra/os/x86_64" / pkg.filename, offset)
    mirror.set_fault("throttle", pkg.filename)  # 20 MiB at 4 MiB/s: outlives the window
    node = make_node(
        [mirror.url_template, mirror2.url_template], extra_config="verify_window = 0.5\n"
    )
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    first = pacman.run("-S", "largepkg")
    assert first.returncode != 0, first.stdout
    assert pacman.part_files(), "pacman should hold the streamed part"
    assert "does not match the db" in node.log()
    second = pacman.run("-S", "largepkg")
    if where == "tail":
        assert second.returncode == 0, second.stdout + node.log()
        assert "is a prefix of the good one" in node.log()
    else:
        assert second.returncode != 0 and "416" in second.stdout, second.stdout
        assert not pacman.part_files()
        third = pacman.run("-S", "largepkg")
        assert third.returncode == 0, third.stdout + node.log()
    assert (pacman.cachedir / pkg.filename).read_bytes() == pkg.path.read_bytes()
    assert mirror2.hits(pkg.filename) == 1  # fetched once, after the failure, and cached


def test_endless_data_is_cut_at_the_db_size(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    mirror.set_fault("endless", "bigpkg-*.pkg.tar.zst")
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "bigpkg")
    assert result.returncode == 0, result.stdout + node.log()
    bigpkg = test_repo.packages["bigpkg"]
    cached = node.data_dir / "cache/core/x86_64" / bigpkg.filename
    assert cached.stat().st_size == bigpkg.size
    assert "sent more than" in node.log()


def test_slow_mirror_is_abandoned_for_a_fast_one(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    mirror.set_fault("slow", "bigpkg-*.pkg.tar.zst")
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "bigpkg", timeout=60)
    assert result.returncode == 0, result.stdout + node.log()
    assert "stalled" in node.log()
    assert mirror2.hits(test_repo.packages["bigpkg"].filename) == 1


def test_two_clients_cut_by_one_failed_attempt_are_each_judged_on_resume(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """Two machines share one download that outlives the window and fails: both hold a bad
    ``.part``. The first one's resume must not wipe the record of the second's: that one
    would be served the rest as an ordinary resume and pacman would hold a complete bad
    file ("invalid or corrupted package") instead of being told to start over."""
    pkg = test_repo.packages["largepkg"]
    _corrupt(mirror.root / "extra/os/x86_64" / pkg.filename, pkg.size // 2)
    mirror.set_fault("throttle", pkg.filename)
    node = make_node(
        [mirror.url_template, mirror2.url_template], extra_config="verify_window = 0.5\n"
    )
    first, second = make_pacman([node.url_template]), make_pacman([node.url_template], name="b")
    assert first.run("-Sy").returncode == 0 and second.run("-Sy").returncode == 0
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda p: p.run("-S", "largepkg"), [first, second]))
    assert all(r.returncode != 0 for r in runs), [r.stdout for r in runs]
    assert first.part_files() and second.part_files()
    assert "416" in first.run("-S", "largepkg").stdout
    resumed = second.run("-S", "largepkg")
    assert "416" in resumed.stdout, resumed.stdout + node.log()
    assert "corrupted" not in resumed.stdout
    final = second.run("-S", "largepkg")
    assert final.returncode == 0, final.stdout + node.log()


def test_a_bad_signature_on_every_mirror_caches_nothing(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """Each mirror's ``.sig`` is tried on the bytes in turn; none trusted, nothing admitted."""
    pkg = test_repo.packages["hello"]
    strip_pgpsig_everywhere(mirror.root, mirror2.root)
    for m in (mirror, mirror2):
        test_repo.resign(m.root, "hello", key="rogue", update_db=False)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    failed = pacman.run("-S", "hello")
    assert failed.returncode != 0, failed.stdout
    assert pacman.run("-Q", "hello").returncode != 0
    assert "no trusted signature" in node.log(), node.log()
    assert not [p for p in node.cached_files() if pkg.filename in p.name]
    assert _penalised(node, mirror) and _penalised(node, mirror2), node.log()


def test_a_mirror_without_range_support_still_completes_a_cut_download(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """Mirror 1 cuts the file; mirror 2 answers the Range with 200 and the whole file. Its
    bytes must not be appended at the offset (a wrong file); the install still succeeds."""
    bigpkg = test_repo.packages["bigpkg"]
    mirror.set_fault("truncate", bigpkg.filename, after_bytes=MIB)
    mirror2.set_fault("no-range", bigpkg.filename)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "bigpkg")
    assert result.returncode == 0, result.stdout + node.log()
    assert (pacman.cachedir / bigpkg.filename).read_bytes() == bigpkg.path.read_bytes()
    assert "no Range support" in node.log(), node.log()
