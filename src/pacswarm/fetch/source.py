"""The ``Source`` capability: anything that can deliver a package file's bytes from an offset.

A download never knows where its bytes come from. It asks its plan (:mod:`.plan`) for sources
in order and, for each, "can you deliver this file from offset N?" and then "stream it from
N". Whatever a source sends is admitted the same way (:mod:`.admit`): sha256 against the db,
signature against the keyring. A source that errors, stalls, truncates or lies is told so
(:meth:`Source.failed`) and the download continues at the same offset on the next one.

Implementations: :class:`CacheSource` (our own verified files), :class:`MirrorSource` (one
upstream mirror), the peers' gateway source in :mod:`.peers` and the Bitswap source in
:mod:`pacswarm.swarm.sources`. A new kind of source is one new class; the download, the proxy
and verification do not change.

A source may set ``first_byte_within``: seconds it has to send its first byte before the
download gives up on it and asks the next source at the same offset (peers: pacman gives up
on a transfer after 10 s without data, so a silent peer must cost ~2 s, not a stall timeout).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import RequestPath

log = logging.getLogger(__name__)

#: Largest read a local source hands over at once.
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Want:
    """What a download must deliver: the package file the repo db describes."""

    rp: RequestPath
    record: PackageRecord

    @property
    def size(self) -> int:
        return self.record.csize

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rp.repo, self.rp.arch, self.rp.filename)

    def __str__(self) -> str:
        return str(self.rp)


class SourceFault(Exception):
    """One source failed one transfer; the download moves on to the next source.

    ``penalise`` is False when the source did nothing wrong (a mirror that has not synced the
    file yet answers 404); ``status`` is what the user sees if every source fails this way.
    """

    def __init__(self, reason: str, *, penalise: bool = True, status: int = 502) -> None:
        super().__init__(reason)
        self.penalise = penalise
        self.status = status


class Source(Protocol):
    """A place package bytes can come from (cache, mirror, peer)."""

    #: Seconds this source may take to send its first byte from the offset asked, or None
    #: for no such deadline (cache, mirrors: only the stall watchdog applies to them).
    first_byte_within: float | None
    #: The swarm peer behind this source (its libp2p peer ID), None for the cache and
    #: mirrors: the status page says which peer gave us what, however its address changed.
    peer_id: str | None

    @property
    def name(self) -> str:
        """How logs and the user name this source (a mirror URL, ``peer http://...``)."""
        ...

    def can_deliver(self, want: Want, offset: int) -> bool:
        """Whether asking this source for ``want`` from ``offset`` is worth a try now."""
        ...

    def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
        """The file's bytes from ``offset`` on, in order. Raises :class:`SourceFault`.

        May send more than the file (the download cuts it off at the db's size and blames the
        source) or less (a truncation: the download continues elsewhere).
        """
        ...

    def failed(self, reason: str, *, bad_content: bool = False) -> None:
        """This source misbehaved (error, stall, bad bytes): penalise it for a while.

        ``bad_content``: it sent bytes of a file that failed verification (the sha256), the
        one fault an honest source never makes; peers count it as a strike.
        """
        ...

    def succeeded(self) -> None:
        """A transfer from this source went well."""
        ...


class CacheSource:
    """The node's own cache: already verified files, re-admitted when used as a source.

    The proxy answers cache hits with ``sendfile`` without a download; this source serves
    downloads that are planned while a copy is (or just became) cached, e.g. a peer audit
    or a race with a commit. A cached file that fails admission is bit rot: ``on_bad`` drops
    it (from the cache and IPFS).
    """

    name = "cache"
    first_byte_within: float | None = None
    peer_id: str | None = None

    def __init__(self, cache_path: CachePath, on_bad: BadCopy) -> None:
        self._cache_path = cache_path
        self._on_bad = on_bad
        self._last: RequestPath | None = None

    def can_deliver(self, want: Want, offset: int) -> bool:
        try:
            return self._cache_path(want.rp).stat().st_size == want.size
        except OSError:
            return False

    async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
        self._last = want.rp
        try:
            fd = os.open(self._cache_path(want.rp), os.O_RDONLY)
        except OSError as e:
            raise SourceFault(f"cached copy unreadable: {e}") from None
        try:
            pos = offset
            while pos < want.size:
                data = os.pread(fd, min(READ_CHUNK, want.size - pos), pos)
                if not data:
                    raise SourceFault(f"cached copy shorter than {want.size} bytes")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    def failed(self, reason: str, *, bad_content: bool = False) -> None:
        if self._last is not None:
            log.error("cached copy of %s is bad (%s): dropping it", self._last, reason)
            self._on_bad(self._last)

    def succeeded(self) -> None:
        pass


class CachePath(Protocol):
    def __call__(self, rp: RequestPath) -> os.PathLike[str]: ...


class BadCopy(Protocol):
    def __call__(self, rp: RequestPath) -> None: ...
