"""The node's files on disk: verified package cache, repo dbs, temp files, SQLite metadata.

Layout of the data directory::

    node.json                  created by ``pacswarm init`` (format version, creation time)
    mirrorlist                 the imported mirrorlist (``Server =`` lines, in order)
    pacswarm.sqlite            metadata of cached packages (WAL)
    dbs/<repo>/<arch>/<file>   repo dbs as last fetched; mtime = upstream Last-Modified
    cache/<repo>/<arch>/<file> verified packages and their .sig
    tmp/                       downloads in progress (same filesystem, so rename is atomic)

The invariant: a file is under ``cache/`` only if it passed verification. Downloads are written
to ``tmp/`` and renamed into place afterwards; the package file is renamed last, after its
signature and its metadata row, so a ``kill -9`` at any moment leaves either nothing or a
complete verified entry. :meth:`Store.recover` removes leftovers at start-up.

Removal (eviction, bit rot) is journalled: the ``evicting`` row is written first, in the same
transaction that drops the package's row, and cleared only once the node told every part
(IPFS blocks, announcements, folders) that the package left. A ``kill -9`` in between leaves
the row, and the node finishes the job at its next start (:meth:`Store.pending_removals`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pacswarm.evict import Entry
from pacswarm.requestpath import FileKind, RequestPath

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packages (
    repo TEXT NOT NULL,
    arch TEXT NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    source TEXT NOT NULL,
    added_at REAL NOT NULL,
    served_at REAL,
    PRIMARY KEY (repo, arch, filename)
);
CREATE TABLE IF NOT EXISTS evicting (
    repo TEXT NOT NULL,
    arch TEXT NOT NULL,
    filename TEXT NOT NULL,
    PRIMARY KEY (repo, arch, filename)
);
"""


@dataclass(frozen=True)
class CachedPackage:
    repo: str
    arch: str
    filename: str
    sha256: str
    size: int
    source: str


class Store:
    """Owns the data directory. Paths are only built from validated :class:`RequestPath`s."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cache_dir = data_dir / "cache"
        self.db_dir = data_dir / "dbs"
        self.tmp_dir = data_dir / "tmp"
        self._sql: sqlite3.Connection | None = None

    # -- set-up ---------------------------------------------------------------------------

    def initialise(self) -> bool:
        """Create the directory tree; True if this is a new node. Idempotent."""
        new = not (self.data_dir / "node.json").exists()
        for d in (self.data_dir, self.cache_dir, self.db_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        if new:
            info = {"format": FORMAT_VERSION, "created": int(time.time())}
            self.write_atomic(self.data_dir / "node.json", json.dumps(info).encode() + b"\n")
        return new

    def open(self) -> None:
        self.initialise()
        self._sql = sqlite3.connect(self.data_dir / "pacswarm.sqlite", isolation_level=None)
        self._sql.execute("PRAGMA journal_mode=WAL")
        self._sql.execute("PRAGMA synchronous=NORMAL")
        self._sql.executescript(_SCHEMA)
        columns = {row[1] for row in self._sql.execute("PRAGMA table_info(packages)")}
        if "served_at" not in columns:  # a data dir from before eviction existed
            self._sql.execute("ALTER TABLE packages ADD COLUMN served_at REAL")

    def close(self) -> None:
        if self._sql is not None:
            self._sql.close()
            self._sql = None

    @property
    def sql(self) -> sqlite3.Connection:
        if self._sql is None:
            raise RuntimeError("Store.open() was not called")
        return self._sql

    def recover(self) -> int:
        """Undo what a crash left behind; returns how many files were removed.

        Temp files are unverified by definition. A cache file with no metadata row was never
        committed; a row with no file was interrupted between commit steps. Both are dropped.
        """
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        query = "SELECT repo, arch, filename FROM packages"
        rows = {(r, a, f) for r, a, f in self.sql.execute(query)}
        on_disk: set[tuple[str, str, str]] = set()
        for path in self.cache_dir.glob("*/*/*"):
            repo, arch, name = path.parts[-3:]
            if name.endswith(".sig"):
                if (repo, arch, name.removesuffix(".sig")) in rows:
                    continue
            else:
                on_disk.add((repo, arch, name))
                if (repo, arch, name) in rows:
                    continue
            path.unlink(missing_ok=True)
            removed += 1
        for repo, arch, name in rows - on_disk:
            self.sql.execute(
                "DELETE FROM packages WHERE repo=? AND arch=? AND filename=?", (repo, arch, name)
            )
            (self.cache_dir / repo / arch / f"{name}.sig").unlink(missing_ok=True)
        if removed:
            log.warning("recovery: removed %d unverified or incomplete file(s)", removed)
        return removed

    # -- paths ----------------------------------------------------------------------------

    def cache_path(self, rp: RequestPath) -> Path:
        return self.cache_dir / rp.repo / rp.arch / rp.filename

    def db_path(self, rp: RequestPath) -> Path:
        return self.db_dir / rp.repo / rp.arch / rp.filename

    def new_temp(self, hint: str) -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(prefix=f"{hint[:60]}.", suffix=".part", dir=self.tmp_dir)
        return fd, Path(name)

    # -- writes ---------------------------------------------------------------------------

    def write_atomic(self, dest: Path, data: bytes, mtime: float | None = None) -> None:
        """Write a small file so that readers see the old or the new content, never half."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:60]}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def stage_package(self, rp: RequestPath, temp: Path, signature: bytes) -> None:
        """The disk-bound half of a commit: the bytes and the ``.sig`` reach the disk.

        Two fsyncs, no SQL: the download runs it on a worker thread, so the event loop goes on
        serving pacman's next request meanwhile. :meth:`commit_package` (``staged=True``)
        finishes the commit.
        """
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        dest = self.cache_path(rp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.write_atomic(dest.with_name(dest.name + ".sig"), signature)

    def commit_package(
        self,
        rp: RequestPath,
        temp: Path,
        sha256: str,
        size: int,
        signature: bytes,
        source: str,
        *,
        staged: bool = False,
    ) -> Path:
        """Move a *verified* download into the cache (signature, row, then package).

        ``staged``: :meth:`stage_package` already synced the file and wrote the ``.sig``.
        """
        if not staged:
            self.stage_package(rp, temp, signature)
        dest = self.cache_path(rp)
        self.sql.execute(
            "INSERT OR REPLACE INTO packages"
            " (repo, arch, filename, sha256, size, source, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rp.repo, rp.arch, rp.filename, sha256, size, source, time.time()),
        )
        os.replace(temp, dest)
        return dest

    def remove_package(self, rp: RequestPath) -> None:
        """Drop a cached package (bit rot, eviction), journalled so a crash cannot split it.

        The journal row and the metadata row change in one transaction (the commit point),
        then the files go. Until :meth:`removal_done`, :meth:`pending_removals` lists it.
        """
        key = (rp.repo, rp.arch, rp.filename)
        with self.sql:
            self.sql.execute("BEGIN IMMEDIATE")
            self.sql.execute("INSERT OR IGNORE INTO evicting VALUES (?, ?, ?)", key)
            self.sql.execute("DELETE FROM packages WHERE repo=? AND arch=? AND filename=?", key)
        dest = self.cache_path(rp)
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + ".sig").unlink(missing_ok=True)

    def removal_done(self, rp: RequestPath) -> None:
        """Everyone was told that ``rp`` left the cache: clear its journal row."""
        self.sql.execute(
            "DELETE FROM evicting WHERE repo=? AND arch=? AND filename=?",
            (rp.repo, rp.arch, rp.filename),
        )

    def pending_removals(self) -> list[RequestPath]:
        """Removals begun but not announced to the rest of the node (crash, offline gc)."""
        rows = self.sql.execute("SELECT repo, arch, filename FROM evicting ORDER BY rowid")
        return [RequestPath(r, a, f, FileKind.PACKAGE) for r, a, f in rows]

    def mark_served(self, rp: RequestPath, when: float | None = None) -> None:
        """pacman (or a peer) got this cached package: it is the last to go by the cap."""
        self.sql.execute(
            "UPDATE packages SET served_at=? WHERE repo=? AND arch=? AND filename=?",
            (time.time() if when is None else when, rp.repo, rp.arch, rp.filename),
        )

    def eviction_entries(self) -> list[Entry]:
        """Every cached package with its size and when it was last served (or cached)."""
        rows = self.sql.execute(
            "SELECT repo, arch, filename, size, COALESCE(served_at, added_at) FROM packages"
        )
        return [Entry(r, a, f, size, when) for r, a, f, size, when in rows]

    def cached_bytes(self) -> int:
        """The size of the package cache (the figure ``cache_max_size`` caps)."""
        row = self.sql.execute("SELECT COALESCE(SUM(size), 0) FROM packages").fetchone()
        return int(row[0])

    def has_sha256(self, sha256: str) -> bool:
        """Whether a verified package with this sha256 is cached (under any name)."""
        row = self.sql.execute("SELECT 1 FROM packages WHERE sha256=? LIMIT 1", (sha256,))
        return row.fetchone() is not None

    def cached(self) -> list[CachedPackage]:
        return [
            CachedPackage(*row)
            for row in self.sql.execute(
                "SELECT repo, arch, filename, sha256, size, source FROM packages ORDER BY added_at"
            )
        ]
