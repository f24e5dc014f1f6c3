"""A package file never leaves pacswarm unverified, even when its db copy lags pacman's."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess

from tests.integration.conftest import NodeFactory
from tests.support import gpg
from tests.support.dbedit import set_csize
from tests.support.mirror import MirrorServer
from tests.support.testrepo import DB_MTIME, TestRepo


def _remove_from_db(repo_dir: os.PathLike[str], repo: str, name: str, mtime: int) -> None:
    db = f"{repo_dir}/{repo}.db.tar.gz"
    subprocess.run(
        ["repo-remove", "--quiet", db, name], check=True, capture_output=True, env=gpg.gpg_env()
    )
    for kind in ("db", "files"):
        target = f"{repo_dir}/{repo}.{kind}"
        os.unlink(target)
        shutil.copy2(f"{repo_dir}/{repo}.{kind}.tar.gz", target)
        os.utime(target, (mtime, mtime))


def test_a_package_newer_than_the_held_db_is_verified_after_a_refresh(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    """pacman got a newer db elsewhere: pacswarm refreshes its own, then verifies."""
    hello = test_repo.packages["hello"]
    repo_dir = mirror.root / "core/os/x86_64"
    newer = repo_dir.parent / "core.db.newer"
    shutil.copy2(repo_dir / "core.db", newer)
    _remove_from_db(repo_dir, "core", "hello", DB_MTIME - 600)
    node = make_node([mirror.url_template])
    assert node.get("/core/os/x86_64/core.db")[0] == 200  # a db without hello
    shutil.copy2(newer, repo_dir / "core.db")
    os.utime(repo_dir / "core.db", (DB_MTIME + 600, DB_MTIME + 600))
    status, _, body = node.get(f"/core/os/x86_64/{hello.filename}")
    assert (status, body) == (200, hello.path.read_bytes())
    assert node.wait_cached(hello.filename).read_bytes() == hello.path.read_bytes()


def test_a_tampered_package_no_db_lists_never_reaches_the_client(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    hello = test_repo.packages["hello"]
    repo_dir = mirror.root / "core/os/x86_64"
    _remove_from_db(repo_dir, "core", "hello", DB_MTIME)
    data = bytearray(hello.path.read_bytes())
    data[200] ^= 0xFF
    (repo_dir / hello.filename).write_bytes(bytes(data))
    node = make_node([mirror.url_template])
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    status, _, body = node.get(f"/core/os/x86_64/{hello.filename}")
    assert status == 404, body
    assert bytes(data) not in body
    assert mirror.hits(hello.filename) == 0
    assert "not in the core db pacswarm holds" in node.log()


def test_a_db_size_larger_than_the_free_disk_is_never_written_nor_completed(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    """A db entry claiming a petabyte: streamed, not written (the disk could not hold it);
    the mirror's real file ends long before, so the client's transfer fails incomplete."""
    hello = test_repo.packages["hello"]
    set_csize(mirror.root / "core/os/x86_64", "core", hello.filename, 1 << 50)
    node = make_node([mirror.url_template])
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:
        conn.request("GET", f"/core/os/x86_64/{hello.filename}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.length == 1 << 50
        received = 0
        with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
            while chunk := resp.read1(1 << 16):
                received += len(chunk)
        assert received <= hello.path.stat().st_size  # cut: what the mirror had, at most
    finally:
        conn.close()
    assert "without caching it" in node.log()
    assert not list((node.data_dir / "tmp").iterdir())
    assert node.get("/")[0] == 200


def test_requests_for_unlisted_packages_refresh_the_db_at_most_once_a_minute(
    mirror: MirrorServer, make_node: NodeFactory
) -> None:
    """Each unlisted name may mean pacswarm's db is behind; a stream of them (a newer pacman
    db, a scanner) must not turn into one db download per request on the mirrors."""
    node = make_node([mirror.url_template])
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    before = mirror.hits("core.db")
    for n in range(5):
        status, _, _ = node.get(f"/core/os/x86_64/nothere{n}-1.0-1-x86_64.pkg.tar.zst")
        assert status == 404
    assert mirror.hits("core.db") - before == 1  # one refresh, then the answer from memory
