"""Who announced what: the announcement cache and this node's own announced set (SQLite).

:class:`AnnouncementCache` maps sha256 -> CID -> peers with last-seen times. It is bounded
(``max_entries`` rows, the oldest dropped first), forgets peers not seen for ``peer_expiry``,
and survives restarts (SQLite in WAL mode). Entries the ``believe`` callback rejects (no
package of the current db has that sha256, size and filename) are kept *pending*, bounded in
number and age, because a db refresh may make them valid: :meth:`AnnouncementCache.recheck`
moves them in. A hostile peer can therefore fill at most its share of the pending table and
rows for packages that really exist; it cannot grow the database without bound.

:class:`OwnSet` is what this node verified itself and why; the privacy setting
(``[swarm] announce``) decides which of it is announced.

Every query is served by an index; at 200,000 rows each call takes well under a millisecond
except the bulk ones (add, replace_peer, recheck, expire), which work in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pacswarm.swarm.protocol import Entry

Believe = Callable[[str, str, Entry], bool]  # (repo, arch, entry) matches the current db?

WHY = ("verified", "seeded", "audited")
#: Reasons that reveal nothing about what this machine installed (announced in "seeded" mode).
_PRIVATE_OK = ("seeded", "audited")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ann (
    peer TEXT NOT NULL, repo TEXT NOT NULL, arch TEXT NOT NULL, sha256 TEXT NOT NULL,
    cid TEXT NOT NULL, size INTEGER NOT NULL, filename TEXT NOT NULL, last_seen REAL NOT NULL,
    PRIMARY KEY (peer, repo, arch, sha256));
CREATE INDEX IF NOT EXISTS ann_sha ON ann (sha256);
CREATE INDEX IF NOT EXISTS ann_age ON ann (last_seen);
CREATE TABLE IF NOT EXISTS ann_peer (peer TEXT PRIMARY KEY, last_seen REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ann_peer_age ON ann_peer (last_seen);
CREATE TABLE IF NOT EXISTS ann_pending (
    peer TEXT NOT NULL, repo TEXT NOT NULL, arch TEXT NOT NULL, sha256 TEXT NOT NULL,
    cid TEXT NOT NULL, size INTEGER NOT NULL, filename TEXT NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (peer, repo, arch, sha256));
CREATE INDEX IF NOT EXISTS ann_pending_age ON ann_pending (received);
CREATE TABLE IF NOT EXISTS own (
    repo TEXT NOT NULL, arch TEXT NOT NULL, filename TEXT NOT NULL, sha256 TEXT NOT NULL,
    cid TEXT NOT NULL, size INTEGER NOT NULL, why TEXT NOT NULL, added REAL NOT NULL,
    PRIMARY KEY (repo, arch, filename));
CREATE INDEX IF NOT EXISTS own_sha ON own (repo, arch, sha256);
"""


@dataclass(frozen=True)
class Holder:
    """A peer that announced a package: the CID it announced and when it was last seen."""

    peer: str
    cid: str
    size: int
    last_seen: float


def _connect(path: Path) -> sqlite3.Connection:
    """One connection per object, usable from the asyncio loop and the trio thread (locked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable enough for a cache
    db.executescript(_SCHEMA)
    return db


class AnnouncementCache:
    """sha256 -> CID -> peers, bounded, expiring, persistent. Thread-safe (one lock)."""

    def __init__(
        self,
        path: Path,
        max_entries: int,
        peer_expiry: float,
        *,
        pending_max: int = 20_000,
        pending_ttl: float = 900.0,
    ) -> None:
        self._db = _connect(path)
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.peer_expiry = peer_expiry
        self.pending_max = pending_max
        #: One peer may hold at most this many pending rows, so a flood from one peer
        #: cannot push out what honest peers announced just before a db refresh.
        self.pending_per_peer = max(1, pending_max // 8)
        self.pending_ttl = pending_ttl
        self._bounds = (
            ("ann", "last_seen", max_entries),
            ("ann_peer", "last_seen", max_entries),
            ("ann_pending", "received", pending_max),
        )

    def add(
        self,
        peer: str,
        repo: str,
        arch: str,
        entries: Iterable[Entry],
        now: float,
        believe: Believe,
    ) -> int:
        """Record ``peer``'s announcements; returns how many were believed (the rest pend)."""
        return self._record(peer, repo, arch, entries, now, believe, replace=False)

    def replace_peer(
        self,
        peer: str,
        repo: str,
        arch: str,
        entries: Iterable[Entry],
        now: float,
        believe: Believe,
    ) -> int:
        """A whole inventory of ``peer`` for repo/arch: what it no longer lists is dropped."""
        return self._record(peer, repo, arch, entries, now, believe, replace=True)

    def _record(
        self,
        peer: str,
        repo: str,
        arch: str,
        entries: Iterable[Entry],
        now: float,
        believe: Believe,
        *,
        replace: bool,
    ) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if replace:
                for table in ("ann", "ann_pending"):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE peer = ? AND repo = ? AND arch = ?",
                        (peer, repo, arch),
                    )
            believed = self._store(peer, repo, arch, entries, now, believe)
            self._touch(peer, now)
            self._trim()
        return believed

    def _store(
        self,
        peer: str,
        repo: str,
        arch: str,
        entries: Iterable[Entry],
        now: float,
        believe: Believe,
    ) -> int:
        good, pending = [], []
        for e in entries:
            row = (peer, repo, arch, e.sha256, e.cid, e.size, e.filename, now)
            (good if believe(repo, arch, e) else pending).append(row)
        self._db.executemany("INSERT OR REPLACE INTO ann VALUES (?,?,?,?,?,?,?,?)", good)
        if pending:
            self._db.executemany(
                "INSERT OR REPLACE INTO ann_pending VALUES (?,?,?,?,?,?,?,?)", pending
            )
            self._trim_pending_of(peer)
        return len(good)

    def _touch(self, peer: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO ann_peer VALUES (?, ?) ON CONFLICT (peer) DO UPDATE"
            " SET last_seen = max(last_seen, excluded.last_seen)",
            (peer, now),
        )

    def _trim(self, tables: tuple[str, ...] = ("ann", "ann_peer", "ann_pending")) -> None:
        """Drop the oldest rows past ``max_entries`` and the oldest pending past ``pending_max``.

        The peers table is bounded by ``max_entries`` as well: gossip origins are signed but
        a hostile node can mint peer IDs for free.
        """
        for table, age, limit in self._bounds:
            if table not in tables:
                continue
            (count,) = self._db.execute(f"SELECT count(*) FROM {table}").fetchone()
            if count > limit:
                self._db.execute(
                    f"DELETE FROM {table} WHERE rowid IN"
                    f" (SELECT rowid FROM {table} ORDER BY {age} LIMIT ?)",
                    (count - limit,),
                )

    def _trim_pending_of(self, peer: str) -> None:
        (count,) = self._db.execute(
            "SELECT count(*) FROM ann_pending WHERE peer = ?", (peer,)
        ).fetchone()
        if count > self.pending_per_peer:
            self._db.execute(
                "DELETE FROM ann_pending WHERE rowid IN (SELECT rowid FROM ann_pending"
                " WHERE peer = ? ORDER BY received LIMIT ?)",
                (peer, count - self.pending_per_peer),
            )

    def recheck(self, believe: Believe, now: float) -> int:
        """After a db refresh: believe what now matches, drop what is too old. Returns moved."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM ann_pending WHERE received < ?", (now - self.pending_ttl,)
            )
            rows = self._db.execute("SELECT rowid, * FROM ann_pending").fetchall()
            moved = [r for r in rows if believe(r[2], r[3], Entry(r[4], r[5], r[6], r[7]))]
            self._db.executemany(
                "INSERT OR REPLACE INTO ann VALUES (?,?,?,?,?,?,?,?)", [r[1:] for r in moved]
            )
            self._db.executemany("DELETE FROM ann_pending WHERE rowid = ?", [r[:1] for r in moved])
            self._trim()
        return len(moved)

    def holders(self, sha256: str) -> list[Holder]:
        """Peers that announced ``sha256``, the most recently seen first (one row per peer)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT a.peer, a.cid, a.size, max(a.last_seen, coalesce(p.last_seen, 0)) AS t"
                " FROM ann a LEFT JOIN ann_peer p ON p.peer = a.peer"
                " WHERE a.sha256 = ? ORDER BY t DESC, a.last_seen DESC",
                (sha256,),
            ).fetchall()
        out: dict[str, Holder] = {}
        for peer, cid, size, seen in rows:
            out.setdefault(peer, Holder(peer, cid, size, seen))
        return list(out.values())

    def holder_counts(self) -> dict[str, int]:
        """How many peers announced each sha256, in one query (seeding ranks 15,000)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, count(DISTINCT peer) FROM ann GROUP BY sha256"
            ).fetchall()
        return dict(rows)

    def peer_entries(self, peer: str, repo: str, arch: str) -> list[Entry]:
        """What ``peer`` announced for repo/arch and we believed (for digests and audits)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, cid, size, filename FROM ann"
                " WHERE peer = ? AND repo = ? AND arch = ? ORDER BY sha256",
                (peer, repo, arch),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def peers(self) -> list[str]:
        """Peers with at least one believed announcement, the most recently seen first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.peer FROM ann_peer p WHERE EXISTS"
                " (SELECT 1 FROM ann a WHERE a.peer = p.peer) ORDER BY p.last_seen DESC"
            ).fetchall()
        return [peer for (peer,) in rows]

    def seen(self, peer: str, now: float) -> None:
        """``peer`` is alive (connected, or a message from it): its entries stay fresh."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._touch(peer, now)
            self._trim(("ann_peer",))

    def forget(self, peer: str, sha256: str | None = None) -> None:
        """Drop ``peer``'s announcements (of one package, or all), believed and pending."""
        if sha256 is None:
            statements = [
                (f"DELETE FROM {t} WHERE peer = ?", (peer,)) for t in ("ann", "ann_pending")
            ]
        else:  # by the sha256 index: a peer may hold every package of the db
            statements = [
                (
                    "DELETE FROM ann INDEXED BY ann_sha WHERE sha256 = ? AND peer = ?",
                    (sha256, peer),
                ),
                ("DELETE FROM ann_pending WHERE peer = ? AND sha256 = ?", (peer, sha256)),
            ]
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for sql, args in statements:
                self._db.execute(sql, args)

    def expire(self, now: float) -> int:
        """Drop peers not seen for ``peer_expiry`` (with their rows) and stale pending rows.

        Pending rows of gone peers need no extra step: they last ``pending_ttl`` at most.
        """
        cutoff = now - self.peer_expiry
        with self._lock, self._db:
            self._db.execute("BEGIN")
            # A row is stale when neither it nor its peer was seen since the cutoff (the
            # peer's row may be gone already: the peers table is bounded too).
            n = self._db.execute(
                "DELETE FROM ann WHERE last_seen < ?1 AND NOT EXISTS (SELECT 1 FROM ann_peer p"
                " WHERE p.peer = ann.peer AND p.last_seen >= ?1)",
                (cutoff,),
            ).rowcount
            self._db.execute("DELETE FROM ann_peer WHERE last_seen < ?", (cutoff,))
            self._db.execute(
                "DELETE FROM ann_pending WHERE received < ?", (now - self.pending_ttl,)
            )
        return n

    def pending(self) -> int:
        """How many announcements wait for a db refresh (bounded by ``pending_max``)."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM ann_pending").fetchone()[0]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM ann").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OwnSet:
    """What this node verified itself, and why; shares the SQLite file with the cache if asked."""

    def __init__(self, path: Path) -> None:
        self._db = _connect(path)
        self._lock = threading.Lock()

    def add(self, repo: str, arch: str, entry: Entry, why: str, now: float | None = None) -> None:
        """Record a verified package. A "seeded"/"audited" reason is never downgraded to
        "verified": the package was fetched for the swarm's sake, so announcing it reveals
        nothing about what this machine installed."""
        if why not in WHY:
            raise ValueError(f"why must be one of {WHY}, not {why!r}")
        added = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO own VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (repo, arch, filename)"
                " DO UPDATE SET sha256 = excluded.sha256, cid = excluded.cid,"
                " size = excluded.size, added = excluded.added,"
                " why = CASE WHEN excluded.why = 'verified' AND own.sha256 = excluded.sha256"
                " THEN own.why ELSE excluded.why END",
                (repo, arch, entry.filename, entry.sha256, entry.cid, entry.size, why, added),
            )

    def remove(self, repo: str, arch: str, filename: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "DELETE FROM own WHERE repo = ? AND arch = ? AND filename = ?",
                (repo, arch, filename),
            )

    def announced(self, repo: str, arch: str, mode: str) -> list[Entry]:
        """What to announce for repo/arch: everything ("all") or only seeded/audited ("seeded")."""
        sql = "SELECT sha256, cid, size, filename FROM own WHERE repo = ? AND arch = ?"
        with self._lock:
            rows = self._db.execute(sql + _mode_clause(mode) + " ORDER BY sha256", (repo, arch))
            return [Entry(*row) for row in rows.fetchall()]

    def announcable(self, repo: str, arch: str, sha256: str, mode: str) -> bool:
        sql = "SELECT 1 FROM own WHERE repo = ? AND arch = ? AND sha256 = ?"
        with self._lock:
            rows = self._db.execute(sql + _mode_clause(mode) + " LIMIT 1", (repo, arch, sha256))
            return rows.fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM own").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _mode_clause(mode: str) -> str:
    if mode == "all":
        return ""
    if mode == "seeded":
        return " AND why IN ('seeded', 'audited')"
    raise ValueError(f"announce mode must be 'all' or 'seeded', not {mode!r}")
