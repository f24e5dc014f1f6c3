"""The data directory: set-up, committing verified packages, and recovery after a crash."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import FORMAT_VERSION, Store

ZSTD = RequestPath("core", "x86_64", "zstd-1.5.6-1-x86_64.pkg.tar.zst", FileKind.PACKAGE)
GLIBC = RequestPath("core", "x86_64", "glibc-2.39-1-x86_64.pkg.tar.zst", FileKind.PACKAGE)
SIG = b"\x88\x75signature"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    s.open()
    yield s
    s.close()


def reopen(store: Store) -> Store:
    """What a restart does: a new Store on the same directory."""
    store.close()
    again = Store(store.data_dir)
    again.open()
    return again


def download(store: Store, rp: RequestPath, content: bytes) -> Path:
    fd, temp = store.new_temp(rp.filename)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return temp


def commit(store: Store, rp: RequestPath, content: bytes) -> Path:
    temp = download(store, rp, content)
    digest = hashlib.sha256(content).hexdigest()
    return store.commit_package(rp, temp, digest, len(content), SIG, "https://mirror/x")


# -- set-up --------------------------------------------------------------------------------------


def test_initialise_creates_the_layout(tmp_path: Path) -> None:
    store = Store(tmp_path / "new")
    assert store.initialise() is True
    for name in ("cache", "dbs", "tmp"):
        assert (tmp_path / "new" / name).is_dir()
    info = json.loads((tmp_path / "new" / "node.json").read_text())
    assert info["format"] == FORMAT_VERSION
    assert isinstance(info["created"], int)


def test_initialise_is_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "node")
    assert store.initialise() is True
    node_json = tmp_path / "node" / "node.json"
    before = node_json.read_bytes()
    mtime = node_json.stat().st_mtime_ns
    assert store.initialise() is False
    assert Store(tmp_path / "node").initialise() is False
    assert node_json.read_bytes() == before
    assert node_json.stat().st_mtime_ns == mtime


def test_sql_before_open_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="open"):
        _ = Store(tmp_path).sql


# -- committing ----------------------------------------------------------------------------------


def test_committed_package_is_in_the_cache_with_its_signature(store: Store) -> None:
    path = commit(store, ZSTD, b"package bytes")
    assert path == store.data_dir / "cache" / "core" / "x86_64" / ZSTD.filename
    assert path.read_bytes() == b"package bytes"
    assert path.with_name(path.name + ".sig").read_bytes() == SIG
    assert list(store.tmp_dir.iterdir()) == []  # the temp file was moved, not copied
    [row] = store.cached()
    assert (row.repo, row.arch, row.filename) == ("core", "x86_64", ZSTD.filename)
    assert row.sha256 == hashlib.sha256(b"package bytes").hexdigest()
    assert row.size == len(b"package bytes")
    assert row.source == "https://mirror/x"


def test_committed_package_survives_recovery_and_restart(store: Store) -> None:
    path = commit(store, ZSTD, b"package bytes")
    store = reopen(store)
    try:
        assert store.recover() == 0
        assert path.read_bytes() == b"package bytes"
        assert path.with_name(path.name + ".sig").exists()
        assert [c.filename for c in store.cached()] == [ZSTD.filename]
    finally:
        store.close()


def test_cached_lists_packages_oldest_first(store: Store) -> None:
    commit(store, ZSTD, b"one")
    commit(store, GLIBC, b"two")
    assert [c.filename for c in store.cached()] == [ZSTD.filename, GLIBC.filename]


def test_remove_package_drops_file_signature_and_row(store: Store) -> None:
    path = commit(store, ZSTD, b"bytes")
    store.remove_package(ZSTD)
    assert not path.exists()
    assert not path.with_name(path.name + ".sig").exists()
    assert store.cached() == []


def test_cache_path_is_per_repo_and_arch(store: Store) -> None:
    other = RequestPath("extra", "aarch64", ZSTD.filename, FileKind.PACKAGE)
    assert store.cache_path(other) == store.data_dir / "cache" / "extra" / "aarch64" / ZSTD.filename
    assert store.cache_path(other) != store.cache_path(ZSTD)


def test_write_atomic_sets_mtime_and_leaves_no_temp(store: Store) -> None:
    dest = store.db_dir / "core" / "x86_64" / "core.db"
    store.write_atomic(dest, b"db v1", mtime=1_700_000_000)
    store.write_atomic(dest, b"db v2", mtime=1_700_000_100)
    assert dest.read_bytes() == b"db v2"
    assert dest.stat().st_mtime == 1_700_000_100
    assert [p.name for p in dest.parent.iterdir()] == ["core.db"]


# -- recovery ------------------------------------------------------------------------------------


def test_recover_removes_unfinished_downloads(store: Store) -> None:
    download(store, ZSTD, b"half a pack")
    download(store, GLIBC, b"")
    assert store.recover() == 2
    assert list(store.tmp_dir.iterdir()) == []


def test_recover_removes_a_cache_file_that_was_never_committed(store: Store) -> None:
    # Simulates a crash, or a file copied in by hand: no metadata row, so never verified here.
    stray = store.cache_path(ZSTD)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"unverified")
    stray.with_name(stray.name + ".sig").write_bytes(SIG)
    kept = commit(store, GLIBC, b"verified")
    assert store.recover() == 2
    assert not stray.exists()
    assert not stray.with_name(stray.name + ".sig").exists()
    assert kept.exists()


def test_recover_drops_a_row_whose_file_is_gone(store: Store) -> None:
    # A crash between the metadata row and the rename of the package leaves a row only.
    path = commit(store, ZSTD, b"bytes")
    path.unlink()
    store.recover()
    assert store.cached() == []
    assert not path.with_name(path.name + ".sig").exists()
    commit(store, ZSTD, b"bytes")  # the package can be cached again afterwards
    assert [c.filename for c in store.cached()] == [ZSTD.filename]


def test_recover_removes_a_signature_without_its_package(store: Store) -> None:
    # A crash right after the .sig was written, before the row.
    sig = store.cache_path(ZSTD).with_name(ZSTD.filename + ".sig")
    sig.parent.mkdir(parents=True)
    sig.write_bytes(SIG)
    assert store.recover() == 1
    assert not sig.exists()


def test_recover_removes_a_half_written_signature(store: Store) -> None:
    # write_atomic's own temp file (".NAME.XXXX") in the cache folder, left by a kill -9.
    commit(store, ZSTD, b"bytes")
    leftover = store.cache_path(ZSTD).with_name(f".{GLIBC.filename}.sig.abcd1234")
    leftover.write_bytes(b"\x88")
    store.recover()
    assert not leftover.exists()
    assert store.cache_path(ZSTD).exists()


def test_recover_on_a_clean_node_removes_nothing(store: Store) -> None:
    assert store.recover() == 0


# -- eviction support ------------------------------------------------------------------------------


def test_a_removal_stays_journalled_until_everyone_was_told(store: Store) -> None:
    """A crash after the store removed a package but before IPFS and the swarm heard of it
    leaves the journal row: the next start finishes the eviction (blocks, announcements)."""
    commit(store, ZSTD, b"bytes")
    store.remove_package(ZSTD)
    store = reopen(store)  # the crash: the node never called removal_done
    try:
        store.recover()
        assert store.pending_removals() == [ZSTD]
        assert store.cached() == []
        store.removal_done(ZSTD)
        assert store.pending_removals() == []
    finally:
        store.close()


def test_a_crash_between_the_row_and_the_files_leaves_no_served_file(store: Store) -> None:
    path = commit(store, ZSTD, b"bytes")
    # The transaction of remove_package committed, the unlinks never ran.
    with store.sql:
        store.sql.execute("BEGIN IMMEDIATE")
        store.sql.execute(
            "INSERT INTO evicting VALUES (?, ?, ?)", ("core", "x86_64", ZSTD.filename)
        )
        store.sql.execute("DELETE FROM packages")
    store = reopen(store)
    try:
        store.recover()
        assert not path.exists()
        assert not path.with_name(path.name + ".sig").exists()
        assert store.pending_removals() == [ZSTD]
    finally:
        store.close()


def test_served_time_and_sizes_feed_the_policy(store: Store) -> None:
    commit(store, ZSTD, b"12345")
    commit(store, GLIBC, b"123")
    store.mark_served(ZSTD, when=5.0)
    entries = {e.filename: e for e in store.eviction_entries()}
    assert entries[ZSTD.filename].last_served == 5.0
    assert entries[ZSTD.filename].size == 5
    assert entries[GLIBC.filename].last_served > 1_000_000  # never served: when cached
    assert store.cached_bytes() == 8


def test_a_data_dir_from_before_eviction_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    data = tmp_path / "old"
    Store(data).initialise()
    sql = sqlite3.connect(data / "pacswarm.sqlite")
    sql.execute(
        "CREATE TABLE packages (repo TEXT NOT NULL, arch TEXT NOT NULL, filename TEXT NOT NULL,"
        " sha256 TEXT NOT NULL, size INTEGER NOT NULL, source TEXT NOT NULL,"
        " added_at REAL NOT NULL, PRIMARY KEY (repo, arch, filename))"
    )
    sql.execute(
        "INSERT INTO packages VALUES ('core', 'x86_64', ?, 'ab', 3, 'm', 7.0)", (ZSTD.filename,)
    )
    sql.commit()
    sql.close()
    store = Store(data)
    store.open()
    try:
        assert [e.last_served for e in store.eviction_entries()] == [7.0]
        commit(store, GLIBC, b"new")
        store.mark_served(GLIBC, when=9.0)
        assert sorted(e.last_served for e in store.eviction_entries()) == [7.0, 9.0]
    finally:
        store.close()
