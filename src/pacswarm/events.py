"""The node's events: what happened to the cache, for whoever needs to know.

The fetch pipeline emits one ``committed`` event per package that entered the cache, and the
node emits ``evicted`` when one leaves it. The IPFS side (and later the swarm and the repo
folders) subscribe; the pipeline does not know who listens. A subscriber that raises is
logged and does not stop the others: the package is in the cache whatever they do with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import RequestPath

log = logging.getLogger(__name__)

T = TypeVar("T")


class Event(Generic[T]):
    """A list of callbacks called in subscription order, synchronously, on the event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: list[Callable[[T], None]] = []

    def subscribe(self, callback: Callable[[T], None]) -> None:
        self._subscribers.append(callback)

    def emit(self, value: T) -> None:
        for callback in list(self._subscribers):
            try:
                callback(value)
            except Exception:
                log.exception("%s subscriber %r failed", self.name, callback)


@dataclass(frozen=True)
class Committed:
    """A package passed admission and is now in the cache at ``path``."""

    rp: RequestPath
    path: Path
    record: PackageRecord
    signature: bytes
    sources: tuple[str, ...]


@dataclass
class NodeEvents:
    committed: Event[Committed] = field(default_factory=lambda: Event("committed"))
    evicted: Event[RequestPath] = field(default_factory=lambda: Event("evicted"))
