"""Repo dbs: conditional fetches, no rollback, freeze warnings; files outside dbs pass through."""

from __future__ import annotations

import os
import urllib.request

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo


def test_db_last_modified_and_304_are_passed_to_pacman(
    mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    status, headers, body = node.get("/core/os/x86_64/core.db")
    assert status == 200
    assert body == (mirror.root / "core/os/x86_64/core.db").read_bytes()
    last_modified = headers["Last-Modified"]
    status, _, _ = node.get("/core/os/x86_64/core.db", {"If-Modified-Since": last_modified})
    assert status == 304
    asked = mirror.requests_for("/core/os/x86_64/core.db")[-1]
    assert asked[2].get("If-Modified-Since") == last_modified


def test_older_db_from_a_stale_mirror_never_replaces_the_newer_one(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    # Mirror 1 has a newer core.db (repo-add ran again); mirror 2 still has the old one.
    test_repo.resign(mirror.root, "hello", key="packager", update_db=True)
    newer = (mirror.root / "core/os/x86_64/core.db").read_bytes()
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    assert (pacman.dbpath / "sync/core.db").read_bytes() == newer

    mirror.stop()  # now only the stale mirror answers, and its file looks freshly synced
    for name in ("core.db", "core.db.tar.gz"):
        os.utime(mirror2.root / "core/os/x86_64" / name)
    again = pacman.run("-Syy")
    assert again.returncode == 0, again.stdout
    assert (pacman.dbpath / "sync/core.db").read_bytes() == newer
    assert "rollback refused" in node.log(), node.log()


def test_frozen_db_is_reported(mirror: MirrorServer, make_node: NodeFactory) -> None:
    # The test repo was built a moment ago; a 1-second limit makes it "old".
    node = make_node([mirror.url_template], extra_config="db_freeze_after = 1.0\n")
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    assert "may be frozen" in node.log()


def test_files_outside_any_db_pass_through_but_packages_never(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    repo_dir = mirror.root / "core/os/x86_64"
    (repo_dir / "lastupdate").write_text("1790000000\n")
    stray = test_repo.packages["hello"].path.read_bytes()
    (repo_dir / "stray-1.0-1-x86_64.pkg.tar.zst").write_bytes(stray)
    node = make_node([mirror.url_template])
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    assert node.get("/core/os/x86_64/lastupdate")[2] == b"1790000000\n"
    # A package no db lists cannot be verified: refused (pacman moves on), never relayed.
    status, _, body = node.get("/core/os/x86_64/stray-1.0-1-x86_64.pkg.tar.zst")
    assert status == 404 and b"cannot be verified" in body
    assert mirror.hits("stray-1.0-1-x86_64.pkg.tar.zst") == 0
    assert not node.cached_files()


def test_head_answers_without_downloading(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    bigpkg = test_repo.packages["bigpkg"]
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    req = urllib.request.Request(
        node.base_url + f"/core/os/x86_64/{bigpkg.filename}", method="HEAD"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == bigpkg.size
        assert resp.read() == b""
    # A download would have made its temp file before the answer went out, and moves it into
    # the cache when done: neither place holds the package (tmp first, so a commit between
    # the two looks cannot hide it).
    assert not [p for p in (node.data_dir / "tmp").iterdir() if bigpkg.filename in p.name]
    assert not [p for p in node.cached_files() if bigpkg.filename in p.name]
    assert mirror.hits(bigpkg.filename) == 0
