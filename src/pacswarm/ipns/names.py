"""What the gateway needs from IPNS: a name resolved to a CID, its record and its TTL.

The gateway (``/ipns/{name}/...``) only consumes this protocol; the resolver
(``ipns/resolver.py``: the node's own record, pubsub, the DHT) implements it. Keeping the
interface here, apart from both, lets either side be tested without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pacswarm.ipfs.cid import CID


@dataclass(frozen=True)
class Resolved:
    """A validated IPNS record, as the gateway uses it."""

    value: CID  # the record's /ipfs/<cid> value
    record: bytes  # the record's wire bytes (for ?format=ipns-record)
    ttl: float  # seconds: Cache-Control max-age for /ipns/ responses


class NameResolver(Protocol):
    async def resolve(self, name: str) -> Resolved | None:
        """The current record of ``name`` (a ``k51...`` IPNS name), or None if none is found.

        May raise ``asyncio.TimeoutError`` when the lookup ran out of time (the gateway says
        504 rather than 404: the name may well exist)."""
        ...
