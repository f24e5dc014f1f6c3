"""Audits: now and then, download one package a peer announced, from that peer, and verify it.

An announcement is a claim ("I hold sha256 X as CID Y"); normal downloads only test the
claims of the packages pacman happens to ask for. Audits test the others, at a low random
rate (``[audit] per_hour``), so a peer that announces what it cannot serve is found out
before anyone depends on it. The download itself is the lead's ``audit`` callback (the
normal admission, restricted to that one peer): this module only decides *when* and *what*.

The choice (:func:`pick_audit`) is pure. It picks a peer first, then one of its entries, so a
peer announcing 15,000 packages is audited as often as one announcing ten; peers never
audited come first, then the ones audited longest ago (randomised, so no peer can predict
its turn). Audits run one at a time, with exponential spacing (a Poisson process at
``per_hour``), and a failing callback is logged and survived.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from pacswarm.config_tables import AuditConfig
from pacswarm.swarm.protocol import Entry

log = logging.getLogger(__name__)

#: (peer, repo, arch, entry): one announcement that can be audited.
Candidate = tuple[str, str, str, Entry]

#: Results kept for the status page; older ones are dropped.
RECENT_RESULTS = 32
#: Peers whose counters are kept; the least recently audited are forgotten first, so peer
#: churn (or a flood of peer IDs) cannot grow the record without bound.
MAX_PEERS = 4096

PASSED = "passed"
FAILED = "failed"
ERROR = "error"


@dataclass(frozen=True)
class PeerAudits:
    """What audits found about one peer (status page)."""

    passed: int = 0
    failed: int = 0
    #: Audits that could not decide (the callback raised: a timeout, a refused connection).
    errors: int = 0
    #: Wall-clock time of the last audit attempt.
    last: float = 0.0


@dataclass(frozen=True)
class AuditResult:
    """One audit, as the status page lists it."""

    peer: str
    repo: str
    arch: str
    filename: str
    sha256: str
    outcome: str  # PASSED | FAILED | ERROR
    at: float


def pick_audit(
    candidates: Sequence[Candidate],
    max_size: int,
    rng: random.Random,
    last_audited: Mapping[str, float] | None = None,
) -> Candidate | None:
    """One announcement to audit, or None when no peer announced anything small enough.

    Peers not in ``last_audited`` (never audited) are picked first, at random among them.
    Otherwise the pick is random among the older half of the peers by last audit time: a
    peer's turn comes within a few audits of becoming the oldest, yet no peer can tell when
    exactly. The entry is then random among that peer's announcements up to ``max_size``.
    """
    by_peer: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if 0 < cand[3].size <= max_size:
            by_peer.setdefault(cand[0], []).append(cand)
    if not by_peer:
        return None
    seen = last_audited or {}
    peers = sorted(by_peer)  # a stable order, so a seeded rng gives the same pick
    never = [p for p in peers if p not in seen]
    if never:
        pool = never
    else:
        oldest_first = sorted(peers, key=lambda p: (seen[p], p))
        pool = oldest_first[: math.ceil(len(oldest_first) / 2)]
    return rng.choice(by_peer[rng.choice(pool)])


class Auditor:
    """Runs audits at ``config.per_hour``, one at a time, and remembers what they found.

    ``pick`` returns the next announcement to audit (the lead wires it to
    ``pick_audit(announced(), config.max_size, rng, auditor.last_audited())``); ``audit``
    downloads it from that peer and returns True if it verified, False if it did not (the
    lead strikes the peer on False). An exception from ``audit`` is no verdict about the
    peer: it is logged, counted as an error, and the loop goes on.
    """

    def __init__(
        self,
        pick: Callable[[], Candidate | None],
        audit: Callable[[str, str, str, Entry], Awaitable[bool]],
        config: AuditConfig,
        rng: random.Random,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pick = pick
        self._audit = audit
        self._config = config
        self._rng = rng
        self._clock = clock
        # Held for the whole of an audit: a manual once() next to run() waits its turn.
        self._lock = asyncio.Lock()
        self._peers: dict[str, PeerAudits] = {}
        self._recent: deque[AuditResult] = deque(maxlen=RECENT_RESULTS)

    def next_delay(self) -> float:
        """Seconds until the next audit: exponential, mean ``3600 / per_hour``."""
        return self._rng.expovariate(self._config.per_hour / 3600.0)

    async def run(self) -> None:
        """Audit forever at ``config.per_hour``; returns at once if it is 0 (audits off).

        Cancel the task to stop it: an audit in flight is cancelled with it.
        """
        if self._config.per_hour <= 0:
            log.info("audits are off ([audit] per_hour = 0)")
            return
        while True:
            await asyncio.sleep(self.next_delay())
            await self.once()

    async def once(self) -> bool | None:
        """Audit one announcement now: True good, False bad, None nothing to audit or error."""
        async with self._lock:
            try:
                cand = self._pick()
            except Exception:
                log.exception("could not choose an announcement to audit")
                return None
            if cand is None:
                return None
            peer, repo, arch, entry = cand
            try:
                good = bool(await self._audit(peer, repo, arch, entry))
            except Exception as e:
                log.warning(
                    "audit of %s (%s/%s) from peer %s could not finish: %s",
                    entry.filename,
                    repo,
                    arch,
                    peer,
                    e,
                    exc_info=not isinstance(e, OSError | asyncio.TimeoutError),
                )
                self._record(cand, ERROR)
                return None
            self._record(cand, PASSED if good else FAILED)
            if not good:
                log.warning(
                    "audit: peer %s served a bad %s (%s/%s)", peer, entry.filename, repo, arch
                )
            return good

    def _record(self, cand: Candidate, outcome: str) -> None:
        peer, repo, arch, entry = cand
        now = self._clock()
        old = self._peers.pop(peer, PeerAudits())
        self._peers[peer] = replace(
            old,
            passed=old.passed + (outcome == PASSED),
            failed=old.failed + (outcome == FAILED),
            errors=old.errors + (outcome == ERROR),
            last=now,
        )
        # Insertion order is audit order (popped and re-added above): the first is the oldest.
        while len(self._peers) > MAX_PEERS:
            del self._peers[next(iter(self._peers))]
        self._recent.append(
            AuditResult(peer, repo, arch, entry.filename, entry.sha256, outcome, now)
        )

    def last_audited(self) -> dict[str, float]:
        """Peer -> time of its last audit attempt (what :func:`pick_audit` spreads by)."""
        return {peer: rec.last for peer, rec in self._peers.items()}

    def peers(self) -> dict[str, PeerAudits]:
        """Per-peer counters of passed, failed and undecided audits (status page)."""
        return dict(self._peers)

    def recent(self) -> list[AuditResult]:
        """The last few audits, newest last (status page)."""
        return list(self._recent)


__all__ = ["AuditResult", "Auditor", "Candidate", "PeerAudits", "pick_audit"]
