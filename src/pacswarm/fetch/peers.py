"""Peers as sources: a package fetched by CID from a peer's Trustless Gateway.

A peer is trusted no more than a mirror. The CID usually comes from the peer's own
announcement, so a CAR that matches its CIDs proves only that the peer sent what it named;
the bytes enter the cache through the same admission as a mirror's (sha256 against the db,
signature against the keyring). This module only moves bytes: the CAR is checked block by
block as it streams and the file's bytes are handed to the download in order
(:func:`pacswarm.ipfs.gatewayclient.iter_file`: to continue a download at offset N, the
subtrees of the DAG that end before N are not fetched at all).

A peer that sends bytes failing verification (blocks that do not match their CIDs, a DAG
that breaks the bounds, or a file that fails the db's sha256) gets a strike in the swarm's
reputation (:class:`Strikes`, :mod:`pacswarm.swarm.reputation`); an honest peer never does
that, while a timeout or a refused connection only penalises it for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp

from pacswarm.config import Config
from pacswarm.fetch.source import SourceFault, Want
from pacswarm.health import MirrorHealth
from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.gatewayclient import GatewayFetchError, iter_file

log = logging.getLogger(__name__)


class PeerHealth(MirrorHealth):
    """Penalties of peers, by source name; peers come and go, so entries are made on use."""

    def __init__(self, penalty: float) -> None:
        super().__init__([], penalty)

    def failed(self, url: str, reason: str, now: float) -> None:
        self.track(url)
        super().failed(url, reason, now)

    def penalised(self, name: str, now: float) -> bool:
        state = self._states.get(name)
        return state is not None and state.penalised_until > now


class Strikes(Protocol):
    """Where verification failures of a peer are counted (the swarm's Reputation)."""

    def strike(self, peer_id: str, reason: str, now: float) -> bool: ...


#: Prefixes of :class:`GatewayFetchError` reasons that only a lying peer causes: its bytes
#: did not match the CIDs (or the CAR/DAG was malformed or broke the size bounds).
_LIES = ("bad DAG", "bad CAR", "block ", "got block", "unexpected block", "CAR roots", "CAR larger")
#: ... unless the CAR merely stopped early: a peer that died mid-transfer is not a liar.
_CUT = ("ends inside a frame", "ended before", "empty CAR stream")


def is_lie(reason: str) -> bool:
    """Whether a gateway fetch failed because the peer's bytes were wrong (not cut, slow)."""
    return reason.startswith(_LIES) and not any(cut in reason for cut in _CUT)


def strike(reputation: Strikes | None, peer_id: str | None, reason: str) -> None:
    """Count a verification failure against ``peer_id`` (if the source knows who it is)."""
    if reputation is not None and peer_id:
        reputation.strike(peer_id, reason, time.monotonic())  # it logs a ban


class GatewaySource:
    """One peer's Trustless Gateway, for one root CID (from that peer's announcement).

    ``peer_id`` and ``reputation``: whom a verification failure strikes (without them, as
    for a gateway named by hand, it is only penalised). ``first_byte_within``: see
    :class:`~pacswarm.fetch.source.Source`.
    """

    def __init__(
        self,
        base_url: str,
        root: CID,
        session: aiohttp.ClientSession,
        health: PeerHealth,
        *,
        peer_id: str | None = None,
        reputation: Strikes | None = None,
        first_byte_within: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = root
        self.session = session
        self.health = health
        self.peer_id = peer_id
        self.reputation = reputation
        self.first_byte_within = first_byte_within

    @property
    def name(self) -> str:
        return f"peer {self.base_url}"

    def can_deliver(self, want: Want, offset: int) -> bool:
        return offset < want.size

    async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
        pieces = iter_file(
            self.session, self.base_url, self.root, offset=offset, max_size=want.size
        )
        try:
            async for piece in pieces:
                yield piece
        except GatewayFetchError as e:
            if is_lie(e.reason):
                strike(self.reputation, self.peer_id, e.reason)
            raise SourceFault(e.reason) from None
        finally:
            await pieces.aclose()

    def failed(self, reason: str, *, bad_content: bool = False) -> None:
        log.warning("%s failed: %s (skipped for a while)", self.name, reason)
        self.health.failed(self.name, reason, time.monotonic())
        if bad_content:
            strike(self.reputation, self.peer_id, reason)

    def succeeded(self) -> None:
        self.health.succeeded(self.name, time.monotonic())


def peer_session(config: Config) -> aiohttp.ClientSession:
    """The HTTP session for peers' gateways: short connects, reads bounded like mirrors'."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=config.connect_timeout, sock_read=config.stall_timeout
    )
    return aiohttp.ClientSession(timeout=timeout, read_bufsize=1 << 20)
