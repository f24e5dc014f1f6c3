"""Blocks of cached packages, served without a second copy of their bytes.

A package of 1 GB is 4,000 raw leaves of 256 KiB plus a few dozen small dag-pb nodes. Copying
the leaves into a block database would double the disk use of the cache, so a leaf is only a
row ``(cid, key, offset, length)``: a byte range of the verified file in the package cache.
Inner nodes are tiny and are kept as blobs.

Files on disk can rot or be replaced behind our back, so *every* block read is hashed and
compared with its CID. A mismatch is reported (``on_corrupt(key)``, so the node can drop the
package from its cache) and all blocks of that package are forgotten: we never serve a block
that does not match its name, and we stop advertising what we no longer have.

The files are found through ``locate(key)`` at read time rather than by a stored path, so the
cache may move its files without telling the blockstore.

Other DAGs (a repo folder's directories, a ``.sig``, a repo db) have no cache file behind them:
:meth:`PackageBlockstore.put_blocks` keeps their blocks, raw ones included, as blobs referenced
by a key of their own. Those keys start with ``@`` (``@folder/3``, ``@sig/core/x86_64/a.sig``),
a character no repo name has, so they never reach ``on_corrupt``, whose callers map a key back
to a cache file: a corrupt blob of such a key is only logged and dropped (it reads as missing).

Thread safety: one SQLite connection shared under a lock (the asyncio side and the trio libp2p
thread both read). Queries are tiny; file reads and hashing run outside the lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfs import import_bytes, import_stream

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packages (
    key TEXT PRIMARY KEY,
    root BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leaves (
    cid BLOB NOT NULL,
    key TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (cid, key)
);
CREATE INDEX IF NOT EXISTS leaves_key ON leaves (key);
CREATE TABLE IF NOT EXISTS inner_blocks (
    cid BLOB PRIMARY KEY,
    block BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS inner_refs (
    cid BLOB NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (cid, key)
);
CREATE INDEX IF NOT EXISTS inner_refs_key ON inner_refs (key);
"""


class BlockstoreError(Exception):
    """A block could not be served as asked."""


class BlockCorruptError(BlockstoreError):
    """A stored block no longer matches its CID (bit rot, or the file changed on disk)."""

    def __init__(self, cid: CID, key: str) -> None:
        super().__init__(f"block {cid} of {key} does not match its CID")
        self.cid = cid
        self.key = key


class BlockReadError(BlockstoreError):
    """A package file exists but cannot be read (I/O error, permissions): nothing dropped."""

    def __init__(self, cid: CID, key: str, error: OSError) -> None:
        super().__init__(f"block {cid} of {key} cannot be read: {error}")
        self.cid = cid
        self.key = key


class MissingBlockError(BlockstoreError, LookupError):
    """A block a DAG links to is not (or no longer) in the store."""

    def __init__(self, cid: CID) -> None:
        super().__init__(f"block {cid} is not in the blockstore")
        self.cid = cid


#: First character of keys that name no cache file (folders, copies of signatures and dbs).
COPY_PREFIX = "@"


def is_copy_key(key: str) -> bool:
    """True for a key whose blocks are all blobs (put_blocks), not ranges of a cache file."""
    return key.startswith(COPY_PREFIX)


def _norm(cid: CID) -> bytes:
    """Storage key of a CID: v0 and v1 of the same dag-pb block are the same block."""
    return CID(1, cid.codec, cid.digest).to_bytes()


class PackageBlockstore:
    """Blocks of packages: raw leaves as file ranges, inner nodes as blobs, in SQLite."""

    def __init__(
        self,
        db_path: Path,
        locate: Callable[[str], Path],
        on_corrupt: Callable[[str], None] | None = None,
    ) -> None:
        """``on_corrupt(key)`` runs on whichever thread found the damage (often a worker
        thread of the gateway), so it must be thread-safe: e.g. hand over to the event loop
        with ``loop.call_soon_threadsafe``."""
        self._locate = locate
        self._on_corrupt = on_corrupt
        self._lock = threading.RLock()
        self._sql = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._sql.execute("PRAGMA journal_mode=WAL")
            self._sql.execute("PRAGMA synchronous=NORMAL")
            self._sql.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._sql.close()

    # -- writes ---------------------------------------------------------------------------

    def add_package(self, key: str, path: Path) -> CID:
        """Import a verified package file (read once) and index its blocks. Idempotent.

        A key already present is not re-read: the cache only replaces a package after
        removing it (eviction, or ``on_corrupt``), which also removes its blocks here.
        """
        existing = self.root_of(key)
        if existing is not None:
            return existing
        with open(path, "rb") as f:
            result = import_stream(f)
        leaves = [(_norm(lf.cid), key, lf.offset, lf.length) for lf in result.leaves]
        inner = [(_norm(n.cid), n.block) for n in result.inner]
        with self._lock:
            self._sql.execute("BEGIN IMMEDIATE")
            try:
                self._sql.executemany("INSERT OR IGNORE INTO leaves VALUES (?, ?, ?, ?)", leaves)
                self._sql.executemany("INSERT OR IGNORE INTO inner_blocks VALUES (?, ?)", inner)
                self._sql.executemany(
                    "INSERT OR IGNORE INTO inner_refs VALUES (?, ?)", [(c, key) for c, _ in inner]
                )
                self._sql.execute(
                    "INSERT OR REPLACE INTO packages VALUES (?, ?, ?)",
                    (key, result.root.to_bytes(), result.size),
                )
                self._sql.execute("COMMIT")
            except BaseException:
                self._sql.execute("ROLLBACK")
                raise
        return result.root

    def remove_package(self, key: str) -> None:
        """Forget a key's blocks; blocks another key also references survive."""
        with self._lock:
            self._sql.execute("BEGIN IMMEDIATE")
            try:
                self._drop_refs(key)
                self._sql.execute("DELETE FROM packages WHERE key=?", (key,))
                self._sql.execute("COMMIT")
            except BaseException:
                self._sql.execute("ROLLBACK")
                raise

    def _drop_refs(self, key: str, keep: frozenset[bytes] = frozenset()) -> None:
        """Inside a transaction: drop ``key``'s leaves and blob refs, then the blobs no key
        references any more. ``keep``: blobs the key is about to reference again."""
        refs = [r[0] for r in self._sql.execute("SELECT cid FROM inner_refs WHERE key=?", (key,))]
        self._sql.execute("DELETE FROM inner_refs WHERE key=?", (key,))
        self._sql.executemany(
            "DELETE FROM inner_blocks WHERE cid=? AND NOT EXISTS "
            "(SELECT 1 FROM inner_refs r WHERE r.cid = inner_blocks.cid)",
            [(c,) for c in refs if c not in keep],
        )
        self._sql.execute("DELETE FROM leaves WHERE key=?", (key,))

    def put_blocks(
        self, key: str, root: CID, size: int, blocks: Iterable[tuple[CID, bytes]]
    ) -> None:
        """Store whole blocks (raw or dag-pb) as blobs under ``key``, which then names ``root``.

        For DAGs with no cache file behind them (a folder's directories, a copied ``.sig``).
        Every block is checked against its CID first: one mismatch and nothing is written.
        Replacing a key drops its old references in the same transaction, so a reader sees
        the old DAG or the new one, never a mix. Blocks are shared and refcounted by key.
        """
        rows: dict[bytes, bytes] = {}
        for cid, data in blocks:
            if cid.codec not in (RAW, DAG_PB):
                raise BlockstoreError(f"{key}: block {cid} is neither raw nor dag-pb")
            if not cid.verify(data):
                raise BlockstoreError(f"{key}: block {cid} does not match its CID; nothing stored")
            rows[_norm(cid)] = bytes(data)
        with self._lock:
            self._sql.execute("BEGIN IMMEDIATE")
            try:
                self._drop_refs(key, keep=frozenset(rows))
                # REPLACE, not IGNORE: the bytes are verified, and it repairs a rotten blob.
                self._sql.executemany(
                    "INSERT OR REPLACE INTO inner_blocks VALUES (?, ?)", rows.items()
                )
                self._sql.executemany(
                    "INSERT OR IGNORE INTO inner_refs VALUES (?, ?)", [(c, key) for c in rows]
                )
                self._sql.execute(
                    "INSERT OR REPLACE INTO packages VALUES (?, ?, ?)", (key, root.to_bytes(), size)
                )
                self._sql.execute("COMMIT")
            except BaseException:
                self._sql.execute("ROLLBACK")
                raise

    def add_copy(self, key: str, data: bytes) -> CID:
        """Import ``data`` as kubo would (``ipfs add --cid-version=1``) and keep a copy of all
        its blocks under ``key``: for the small files we keep no cache file of (a ``.sig``,
        a repo db of tens of MB). Returns the file's root CID."""
        result = import_bytes(data)
        view = memoryview(data)
        blocks = [(lf.cid, view[lf.offset : lf.offset + lf.length]) for lf in result.leaves]
        blocks.extend((n.cid, n.block) for n in result.inner)
        self.put_blocks(key, result.root, result.size, blocks)
        return result.root

    # -- reads ----------------------------------------------------------------------------

    def root_of(self, key: str) -> CID | None:
        with self._lock:
            row = self._sql.execute("SELECT root FROM packages WHERE key=?", (key,)).fetchone()
        return None if row is None else CID.from_bytes(row[0])[0]

    def keys(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._sql.execute("SELECT key FROM packages ORDER BY key")]

    def has(self, cid: CID) -> bool:
        return self.block_size(cid) is not None

    def block_size(self, cid: CID) -> int | None:
        """Size of a block from the index alone (no read, no check): for HEAD answers."""
        if cid.codec not in (DAG_PB, RAW):
            return None
        with self._lock:
            row = self._sql.execute(
                "SELECT length(block) FROM inner_blocks WHERE cid=?", (_norm(cid),)
            ).fetchone()
            if row is None and cid.codec == RAW:
                row = self._sql.execute(
                    "SELECT length FROM leaves WHERE cid=? LIMIT 1", (_norm(cid),)
                ).fetchone()
        return None if row is None else int(row[0])

    def get(self, cid: CID) -> bytes | None:
        """The block named ``cid``, checked against it; None if we do not have it.

        Raises :class:`BlockCorruptError` if the stored bytes do not match (after reporting
        the package through ``on_corrupt`` and forgetting its blocks).
        """
        if cid.codec == DAG_PB:
            return self._get_inner(cid)
        if cid.codec == RAW:
            block = self._get_inner(cid)  # a copied file's leaf (put_blocks)
            return block if block is not None else self._get_leaf(cid)
        return None

    def _get_inner(self, cid: CID) -> bytes | None:
        """A blob (inner node of a package, or any block put_blocks stored), verified."""
        with self._lock:
            row = self._sql.execute(
                "SELECT block FROM inner_blocks WHERE cid=?", (_norm(cid),)
            ).fetchone()
            keys = (
                []
                if row is None
                else [
                    r[0]
                    for r in self._sql.execute(
                        "SELECT key FROM inner_refs WHERE cid=?", (_norm(cid),)
                    )
                ]
            )
        if row is None:
            return None
        block = bytes(row[0])
        if cid.verify(block):
            return block
        packages = [k for k in keys if not is_copy_key(k)]
        self._drop_corrupt_blob(cid, [k for k in keys if is_copy_key(k)])
        for key in packages:
            self._corrupt(key)
        if packages:
            raise BlockCorruptError(cid, packages[0])
        return None

    def _drop_corrupt_blob(self, cid: CID, keys: list[str]) -> None:
        """A rotten blob of copies (no cache file to drop): log it and forget the bytes, so it
        reads as missing until a new put_blocks of the key stores it again."""
        if keys:
            log.error("blockstore: block %s of %s failed verification; dropped", cid, keys)
        with self._lock:
            self._sql.execute("DELETE FROM inner_blocks WHERE cid=?", (_norm(cid),))

    def _get_leaf(self, cid: CID) -> bytes | None:
        """Read the leaf from the first package file that still exists."""
        with self._lock:
            rows = self._sql.execute(
                "SELECT key, offset, length FROM leaves WHERE cid=?", (_norm(cid),)
            ).fetchall()
        for key, offset, length in rows:
            try:
                block = _pread(self._locate(key), offset, length)
            except (FileNotFoundError, NotADirectoryError):
                log.warning("blockstore: %s is gone from the cache; dropping its blocks", key)
                self.remove_package(key)
                continue
            except OSError as e:  # EIO, EACCES...: not ours to judge; the caller fails
                raise BlockReadError(cid, key, e) from e
            if len(block) == length and cid.verify(block):
                return block
            self._corrupt(key)
            raise BlockCorruptError(cid, key)
        return None

    def _corrupt(self, key: str) -> None:
        log.error("blockstore: %s failed verification; dropping it", key)
        if self._on_corrupt is not None:
            try:
                self._on_corrupt(key)
            except Exception:
                log.exception("blockstore: on_corrupt(%s) failed", key)
        self.remove_package(key)

    def dag_blocks(self, root: CID) -> Iterator[tuple[CID, bytes]]:
        """Every block of the DAG under ``root``, verified, in DFS pre-order.

        Root first, then each link's subtree left to right: the order of a trustless
        gateway's ``order=dfs`` CAR, and of the file's bytes in the leaves. A block that
        occurs twice is yielded twice (the caller decides about duplicates).
        Raises :class:`MissingBlockError` or :class:`BlockCorruptError` mid-walk.
        """
        stack = [root]
        while stack:
            cid = stack.pop()
            block = self.get(cid)
            if block is None:
                raise MissingBlockError(cid)
            yield cid, block
            if cid.codec == DAG_PB:
                stack.extend(reversed([link.cid for link in decode_node(block).links]))


def _pread(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer if the file shrank)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts: list[bytes] = []
        got = 0
        while got < length:
            chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)
