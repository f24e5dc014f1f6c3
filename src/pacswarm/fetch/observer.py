"""The one interface through which the download path reports what it does (to the metrics).

Why an interface and not counters inside the pipeline: the fetch code stays about fetching,
the metrics stay in :mod:`pacswarm.metrics`, and a downloader built without a node (tools,
the pipeline's unit tests) reports to nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class DownloadObserver(Protocol):
    """Who counts what the downloads do (the node's metrics); called on the event loop."""

    def received(self, source: str, size: int, peer_id: str | None) -> None:
        """``size`` bytes arrived from the source named ``source`` (run by ``peer_id``, if a
        swarm peer)."""

    def first_byte(self, seconds: float) -> None:
        """A download's first byte came ``seconds`` after it started."""

    def finished(self, seconds: float, ok: bool) -> None:
        """A download ended after ``seconds``: cached (``ok``) or failed."""

    def verification_failed(self, reason: str, sources: Sequence[str]) -> None:
        """Bytes (``"sha256"``) or a signature (``"signature"``) were refused."""


class Unobserved:
    """The observer of a downloader nobody watches (tools, tests of the pipeline)."""

    def received(self, source: str, size: int, peer_id: str | None) -> None:
        pass

    def first_byte(self, seconds: float) -> None:
        pass

    def finished(self, seconds: float, ok: bool) -> None:
        pass

    def verification_failed(self, reason: str, sources: Sequence[str]) -> None:
        pass


__all__ = ["DownloadObserver", "Unobserved"]
