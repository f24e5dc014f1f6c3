"""Broken mirrors and bad packages: pacman still gets good packages, never bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.dbedit import strip_pgpsig
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo

MIB = 1 << 20


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
    assert mirror.url_template in node.log()  # the failing mirror is named in the log


def _corrupt(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_package_fails_cleanly_then_good_mirror_serves_it(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    bigpkg = test_repo.packages["bigpkg"]
    _corrupt(mirror.root / "core/os/x86_64" / bigpkg.filename, 3 * MIB)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    failed = pacman.run("-S", "bigpkg")
    assert failed.returncode != 0, failed.stdout
    assert pacman.run("-Q", "bigpkg").returncode != 0  # nothing installed
    assert not [p for p in node.cached_files() if bigpkg.filename in p.name]
    assert "does not match the db" in node.log()

    # pacman kept the bytes it got as a .part and resumes it with Range: pacswarm refuses
    # (416), because that prefix came from the bad transfer, and pacman drops the .part.
    resume = pacman.run("-S", "bigpkg")
    assert resume.returncode != 0 and "416" in resume.stdout, resume.stdout
    assert not list(pacman.cachedir.glob("*.part"))
    retry = pacman.run("-S", "bigpkg")
    assert retry.returncode == 0, retry.stdout + node.log()
    assert (pacman.cachedir / bigpkg.filename).read_bytes() == bigpkg.path.read_bytes()


def test_bad_signature_fails_cleanly_then_good_mirror_serves_it(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    # Dbs without %PGPSIG% (as pacman 6.1+ repo-add makes them): the .sig file is the
    # signature, and mirror 1's is made by a key the keyring does not trust.
    for m in (mirror, mirror2):
        for repo in ("core", "extra"):
            strip_pgpsig(m.root / repo / "os/x86_64", repo)
    hello = test_repo.packages["hello"]
    test_repo.resign(mirror.root, "hello", key="rogue", update_db=False)
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    failed = pacman.run("-S", "hello")
    assert failed.returncode != 0, failed.stdout
    assert pacman.run("-Q", "hello").returncode != 0
    assert not [p for p in node.cached_files() if hello.filename in p.name]
    assert "unknown key" in node.log() or "unknown trust" in node.log()

    ok = pacman.run("-S", "hello")
    if ok.returncode != 0:  # pacman resumed its cut .part: refused with 416, .part dropped
        assert "416" in ok.stdout, ok.stdout + node.log()
        ok = pacman.run("-S", "hello")
    assert ok.returncode == 0, ok.stdout + node.log()
    assert pacman.installed_file("usr/bin/hello-pacswarm").exists()
    # What pacswarm cached is the good signature, from the good mirror.
    cached_sig = node.data_dir / "cache/core/x86_64" / (hello.filename + ".sig")
    assert cached_sig.read_bytes() == hello.sig_path.read_bytes()


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
