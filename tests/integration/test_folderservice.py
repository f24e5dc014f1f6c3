"""RepoFolders (src/pacswarm/ipns/folderservice.py) on a real PackageBlockstore.

Packages are real files imported by the blockstore as the node does (the signed test repo's
packages, dbs and .sig files, or many small files for the bursts); the published tree is read
back from the blockstore alone, walking basic directories and HAMT shards from the root, as a
peer fetching ``/ipns/<name>/core/os/x86_64/<file>`` would.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfs import import_bytes
from pacswarm.ipfs.unixfsdir import DirectoryError
from pacswarm.ipns.folderservice import RepoFolders
from tests.support.testrepo import TestRepo

TIMEOUT = 30.0


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (the project's tests use asyncio.run)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 4 * TIMEOUT))

    return wrapper


class Env:
    """A package cache folder and the blockstore over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"
        self.cache.mkdir(exist_ok=True)
        self.store = PackageBlockstore(root / "blocks.sqlite", lambda key: self.cache / key)

    def reopen(self) -> None:
        self.store.close()
        self.store = PackageBlockstore(self.root / "blocks.sqlite", lambda key: self.cache / key)

    def package(self, repo: str, filename: str, data: bytes) -> tuple[CID, int]:
        key = f"{repo}/x86_64/{filename}"
        path = self.cache / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.store.add_package(key, path), len(data)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.store.close()


def listing(store: PackageBlockstore, cid: CID) -> dict[str, tuple[CID, int]]:
    """name -> (cid, Tsize) of a basic directory or a whole HAMT (flattened)."""
    block = store.get(cid)
    assert block is not None, f"directory block {cid} missing"
    node = decode_node(block)
    assert node.data is not None
    if node.data[:2] == b"\x08\x01":
        return {link.name: (link.cid, link.tsize) for link in node.links}
    assert node.data[:2] == b"\x08\x05", "neither a directory nor a HAMT shard"
    out: dict[str, tuple[CID, int]] = {}
    for link in node.links:
        if len(link.name) > 2:
            out[link.name[2:]] = (link.cid, link.tsize)
        else:
            out.update(listing(store, link.cid))
    return out


def folder(store: PackageBlockstore, root: CID, repo: str) -> dict[str, tuple[CID, int]]:
    repo_dir = listing(store, root)[repo][0]
    return listing(store, listing(store, listing(store, repo_dir)["os"][0])["x86_64"][0])


def cat(store: PackageBlockstore, cid: CID) -> bytes:
    return b"".join(b for c, b in store.dag_blocks(cid) if c.codec == RAW)


def kubo_tsize(data: bytes) -> int:
    result = import_bytes(data)
    return len(data) + sum(len(inner.block) for inner in result.inner)


async def wait_for(condition: object, what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)
    assert condition(), what  # type: ignore[operator]


def add_test_repo(env: Env, folders: RepoFolders, test_repo: TestRepo) -> dict[str, bytes]:
    """Import the signed test repo as the node would; what the folder must then hold."""
    expect: dict[str, bytes] = {}
    for pkg in test_repo.packages.values():
        if pkg.repo != "core":
            continue
        cid, size = env.package("core", pkg.filename, pkg.path.read_bytes())
        sig = pkg.sig_path.read_bytes()
        folders.package_added("core", "x86_64", pkg.filename, cid, size, sig)
        expect[pkg.filename] = pkg.path.read_bytes()
        expect[pkg.filename + ".sig"] = sig
    dbs = {n: (test_repo.repo_dir("core") / n).read_bytes() for n in ("core.db", "core.files")}
    folders.db_updated("core", "x86_64", dbs)
    return expect | dbs


@run
async def test_the_folder_holds_the_repo_byte_for_byte(env: Env, test_repo: TestRepo) -> None:
    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    roots: list[CID] = []
    folders.on_root.append(roots.append)
    await folders.start()
    try:
        expect = add_test_repo(env, folders, test_repo)
        await wait_for(lambda: roots, "a root after the events")
        root = await folders.flush()
        assert root is not None and root == roots[-1] and root.codec == DAG_PB
        core = folder(env.store, root, "core")
        assert set(core) == set(expect)
        for name, data in expect.items():
            cid, tsize = core[name]
            assert cat(env.store, cid) == data, name
            assert tsize == kubo_tsize(data), f"{name}: link Tsize is not kubo's"
        assert any(len(d) > 256 * 1024 for d in expect.values())  # a multi-chunk package too
    finally:
        await folders.stop()


@run
async def test_a_burst_of_500_packages_is_a_handful_of_builds(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pacswarm.ipns.folderservice")
    folders = RepoFolders(env.store, quiet=0.2, max_delay=1.0)
    await folders.start()
    try:
        names = [f"pkg{i:03d}-1.0-1-x86_64.pkg.tar.zst" for i in range(500)]
        added = [env.package("extra", n, f"package {n}".encode()) for n in names]
        for i, (name, (cid, size)) in enumerate(zip(names, added, strict=True)):
            folders.package_added("extra", "x86_64", name, cid, size, b"sig of " + name.encode())
            if i % 25 == 24:
                await asyncio.sleep(0.01)  # a burst as verifications finish, not one call
        root = folders.root

        def complete() -> bool:
            return (
                folders.root is not None and len(folder(env.store, folders.root, "extra")) == 1000
            )

        await wait_for(complete, "every package and .sig linked")
        assert root is None or root != folders.root  # the burst was not built event by event
        assert 1 <= folders.builds <= 10, f"{folders.builds} builds for 500 events"
        assert any("changes -> root" in r.getMessage() for r in caplog.records)
        assert len(env.store.keys("@folder/")) <= 2  # two generations kept, no more
        assert len(env.store.keys("@sig/")) == 500
    finally:
        await folders.stop()


@run
async def test_steady_events_still_build_after_max_delay(env: Env) -> None:
    """Events that never pause for ``quiet`` do not postpone the folder for ever."""
    folders = RepoFolders(env.store, quiet=0.5, max_delay=0.3 + 0.5)
    await folders.start()
    try:
        i = 0
        while folders.root is None:
            cid, size = env.package("core", f"p{i}.pkg.tar.zst", f"p{i}".encode())
            folders.package_added("core", "x86_64", f"p{i}.pkg.tar.zst", cid, size, None)
            i += 1
            await asyncio.sleep(0.05)  # ten times faster than ``quiet``
            assert i < TIMEOUT / 0.05, "no build while events kept coming"
        assert folders.builds >= 1
    finally:
        await folders.stop()


@run
async def test_a_removed_package_and_its_sig_leave_the_folder(env: Env) -> None:
    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    await folders.start()
    try:
        keep = env.package("core", "keep.pkg.tar.zst", b"kept")
        gone = env.package("core", "gone.pkg.tar.zst", b"evicted")
        folders.package_added("core", "x86_64", "keep.pkg.tar.zst", *keep, b"keep sig")
        folders.package_added("core", "x86_64", "gone.pkg.tar.zst", *gone, b"gone sig")
        before = await folders.flush()
        assert before is not None
        assert set(folder(env.store, before, "core")) == {
            "keep.pkg.tar.zst",
            "keep.pkg.tar.zst.sig",
            "gone.pkg.tar.zst",
            "gone.pkg.tar.zst.sig",
        }
        folders.package_removed("core", "x86_64", "gone.pkg.tar.zst")
        after = await folders.flush()
        assert after is not None and after != before
        assert set(folder(env.store, after, "core")) == {"keep.pkg.tar.zst", "keep.pkg.tar.zst.sig"}
        # The previous root is still whole (a peer may be walking it): its .sig copy stays...
        assert cat(env.store, folder(env.store, before, "core")["gone.pkg.tar.zst.sig"][0])
        folders.package_added("core", "x86_64", "new.pkg.tar.zst", *keep, None)
        newest = await folders.flush()
        # ...until no kept generation links it.
        assert "@sig/core/x86_64/gone.pkg.tar.zst.sig" not in env.store.keys("@sig/")
        assert env.store.keys("@sig/") == ["@sig/core/x86_64/keep.pkg.tar.zst.sig"]
        assert env.store.root_of("@folder/1") is None  # the oldest generation went
        assert not env.store.has(before)
        assert newest is not None and env.store.has(after) and env.store.has(newest)
    finally:
        await folders.stop()


@run
async def test_a_db_refresh_replaces_the_db_and_old_copies_go(env: Env) -> None:
    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    await folders.start()
    try:
        old = {"core.db": b"old db", "core.db.sig": b"old sig"}
        folders.db_updated("core", "x86_64", old)
        first = await folders.flush()
        assert first is not None
        new_db = b"new db " * 100_000  # several chunks
        folders.db_updated("core", "x86_64", {"core.db": new_db})
        second = await folders.flush()
        assert second is not None
        core = folder(env.store, second, "core")
        assert set(core) == {"core.db"}  # the .sig not held any more is unlinked
        assert cat(env.store, core["core.db"][0]) == new_db
        assert core["core.db"][1] == kubo_tsize(new_db)
        assert len(env.store.keys("@db/")) == 3  # the first generation's db and sig are kept
        folders.db_updated("core", "x86_64", {"core.db": new_db + b"!"})
        await folders.flush()
        assert len(env.store.keys("@db/")) == 2  # the two kept generations' dbs
    finally:
        await folders.stop()


@run
async def test_a_restart_with_the_same_events_keeps_the_root(env: Env) -> None:
    def replay(folders: RepoFolders, order: range) -> None:
        folders.db_updated("core", "x86_64", {"core.db": b"db", "core.files": b"files"})
        for i in order:
            name = f"p{i}-1-1-any.pkg.tar.zst"
            cid, size = env.package("core", name, f"package {i}".encode() * (i + 1))
            folders.package_added("core", "x86_64", name, cid, size, f"sig {i}".encode())

    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    await folders.start()
    replay(folders, range(40))
    before = await folders.flush()
    generation = folders.generation
    await folders.stop()
    env.reopen()

    again = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    roots: list[CID] = []
    again.on_root.append(roots.append)
    replay(again, range(39, -1, -1))  # the lead replays before start, in any order
    await again.start()
    try:
        assert again.root == before  # the stored root, before any build
        assert await again.flush() == before
        assert again.generation == generation  # nothing new stored
        assert roots == []  # nothing new to publish
        assert set(folder(env.store, before, "core")) >= {"core.db", "p0-1-1-any.pkg.tar.zst.sig"}
    finally:
        await again.stop()


@run
async def test_a_dropped_repo_leaves_the_root(env: Env) -> None:
    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    await folders.start()
    try:
        folders.db_updated("core", "x86_64", {"core.db": b"core"})
        folders.db_updated("gone", "x86_64", {"gone.db": b"gone"})
        root = await folders.flush()
        assert root is not None and set(listing(env.store, root)) == {"core", "gone"}
        folders.repo_dropped("gone", "x86_64")
        root = await folders.flush()
        assert root is not None and set(listing(env.store, root)) == {"core"}
    finally:
        await folders.stop()


@run
async def test_bad_names_are_refused_and_a_vanished_package_is_left_out(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    await folders.start()
    try:
        cid, size = env.package("core", "ok.pkg.tar.zst", b"ok")
        with pytest.raises(DirectoryError):
            folders.package_added("core", "x86_64", "a/b.pkg.tar.zst", cid, size, None)
        with pytest.raises(DirectoryError):
            folders.db_updated("..", "x86_64", {"x.db": b""})
        gone_cid, gone_size = env.package("core", "gone.pkg.tar.zst", b"gone" * 100_000)
        env.store.remove_package("core/x86_64/gone.pkg.tar.zst")  # evicted before the build
        folders.package_added("core", "x86_64", "gone.pkg.tar.zst", gone_cid, gone_size, None)
        folders.package_added("core", "x86_64", "ok.pkg.tar.zst", cid, size, None)
        root = await folders.flush()
        assert root is not None
        assert set(folder(env.store, root, "core")) == {"ok.pkg.tar.zst"}
        assert any("gone.pkg.tar.zst left out" in r.getMessage() for r in caplog.records)
    finally:
        await folders.stop()


@run
async def test_a_failed_build_loses_nothing_and_is_retried(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer holding the database (past SQLite's 5 s busy wait) fails the build;
    once it lets go, the retry links everything the failed build had taken."""
    folders = RepoFolders(env.store, quiet=0.05, max_delay=0.2)
    await folders.start()
    try:
        pkg = env.package("core", "p.pkg.tar.zst", b"p")
        blocker = sqlite3.connect(env.root / "blocks.sqlite", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            folders.package_added("core", "x86_64", "p.pkg.tar.zst", *pkg, b"p sig")

            def failed() -> bool:
                return any("failed (retrying later)" in r.getMessage() for r in caplog.records)

            await wait_for(failed, "a failed build")
            assert folders.root is None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(lambda: folders.root is not None, "the retried build")
        assert folders.root is not None
        core = folder(env.store, folders.root, "core")
        assert set(core) == {"p.pkg.tar.zst", "p.pkg.tar.zst.sig"}
        assert cat(env.store, core["p.pkg.tar.zst.sig"][0]) == b"p sig"
    finally:
        await folders.stop()


@run
async def test_stop_drops_a_pending_build(env: Env) -> None:
    """Pending events are dropped on stop (the next start replays them), not built later."""
    folders = RepoFolders(env.store, quiet=0.1, max_delay=0.2)
    await folders.start()
    cid, size = env.package("core", "x.pkg.tar.zst", b"x")
    folders.package_added("core", "x86_64", "x.pkg.tar.zst", cid, size, None)
    await folders.stop()
    await asyncio.sleep(0.5)  # past max_delay: a timer left running would have built
    assert folders.root is None and folders.builds == 0
    await folders.start()  # a start after a stop builds nothing from the dropped events
    try:
        await asyncio.sleep(0.5)
        assert folders.builds == 0
        assert env.store.keys("@folder/") == []
        y = env.package("core", "y.pkg.tar.zst", b"y")
        folders.package_added("core", "x86_64", "y.pkg.tar.zst", *y, None)
        root = await folders.flush()
        assert root is not None and set(folder(env.store, root, "core")) == {"y.pkg.tar.zst"}
    finally:
        await folders.stop()
