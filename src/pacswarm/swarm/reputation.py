"""Strikes against peers whose bytes failed verification, and the ban that follows.

A peer is trusted no more than a mirror, and admission (sha256, signature) keeps its lies out
of the cache whatever it does. What this adds is memory: a peer that keeps sending bad bytes
should stop costing us transfers. Each verification failure is a strike; after ``strikes`` of
them the peer is ignored for ``ban`` seconds (not asked as a source; the strikes start again
from zero when the ban ends, so a peer fixed by its owner comes back). ``score`` is what the
gossipsub router gets as the application-specific score: 0 for a peer never struck, negative
once struck, more so while banned, so its announcements stop being forwarded preferentially.

Pure: the caller passes ``now`` (``time.monotonic()`` in the node, any number in tests). A lock
makes it safe to read from the trio thread (gossipsub) while the asyncio side strikes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Peers remembered at most; the least recently struck (and not banned) are forgotten first.
#: Strikes come only from peers we fetched from, so this is a bound, not a working size.
MAX_PEERS = 10_000
#: Score of a banned peer, on top of minus its strikes: clearly below any honest peer's 0.
BANNED_SCORE = -100.0


@dataclass
class _Record:
    total: int = 0  # strikes ever (the score)
    pending: int = 0  # strikes since the last ban ended (toward the next ban)
    banned_until: float = float("-inf")
    last_reason: str = ""


class Reputation:
    """Strikes per peer ID; ``strike`` says when a peer crossed into being ignored."""

    def __init__(self, strikes: int, ban: float) -> None:
        if strikes < 1:
            raise ValueError(f"strikes must be at least 1, not {strikes}")
        self.strikes = strikes
        self.ban = ban
        self._peers: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def strike(self, peer_id: str, reason: str, now: float) -> bool:
        """Count one verification failure of ``peer_id``; True if it is now ignored."""
        with self._lock:
            record = self._peers.pop(peer_id, None) or _Record()
            self._peers[peer_id] = record  # most recently struck last
            record.total += 1
            record.last_reason = reason
            if record.banned_until <= now:
                record.pending += 1
                if record.pending >= self.strikes:
                    record.pending = 0
                    record.banned_until = now + self.ban
                    log.warning(
                        "peer %s ignored for %g s after %d bad transfers (last: %s)",
                        peer_id, self.ban, self.strikes, reason,
                    )  # fmt: skip
            self._trim(now)
            return record.banned_until > now

    def ignored(self, peer_id: str, now: float) -> bool:
        """Whether ``peer_id`` is serving a ban now (not to be asked as a source)."""
        with self._lock:
            record = self._peers.get(peer_id)
            return record is not None and record.banned_until > now

    def score(self, peer_id: str, now: float) -> float:
        """Application-specific gossipsub score: 0 if never struck, < 0 once struck."""
        with self._lock:
            record = self._peers.get(peer_id)
            if record is None:
                return 0.0
            banned = BANNED_SCORE if record.banned_until > now else 0.0
            return banned - float(record.total)

    def struck(self) -> dict[str, int]:
        """Strikes ever counted, per peer still remembered (for metrics and logs)."""
        with self._lock:
            return {peer: record.total for peer, record in self._peers.items()}

    def _trim(self, now: float) -> None:
        """Forget the least recently struck unbanned peers beyond :data:`MAX_PEERS`."""
        if len(self._peers) <= MAX_PEERS:
            return
        for peer in list(self._peers):
            if len(self._peers) <= MAX_PEERS:
                return
            if self._peers[peer].banned_until <= now:
                del self._peers[peer]
