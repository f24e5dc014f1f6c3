"""The in-memory part of a *streamed* download: the cache disk is full, pacman still gets it.

When a package cannot be written to the cache filesystem (not enough space before the
download, or ``ENOSPC`` in the middle of it), the download goes on *streamed*: the bytes
already in the temp file stay readable from its open descriptor, and every byte after them
goes through a :class:`Spill`, a bounded window of the file held in memory. Bytes leave the
window once every reader has sent them; a full window makes the source wait for the slowest
reader (back-pressure), so memory stays bounded whatever the package's size.

The window itself does no I/O: the download decides when to append, trim and wait;
:func:`write_until_full` is the one write that tells a full disk from other errors.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import deque

#: A write failing with these means the disk is full: the download goes on streamed.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

#: Bytes of a streamed download held in memory at most, beyond what readers already sent.
#: A few seconds of a fast mirror: enough that a reader never starves while the source waits.
SPILL_LIMIT = 16 * 1024 * 1024


class Spill:
    """Bytes ``base..end`` of a file, in arrival order; nothing below ``base`` is kept.

    ``base`` starts where the temp file's bytes end (``kept``): below it a reader reads the
    file, from it on it reads here.
    """

    def __init__(self, kept: int, limit: int = SPILL_LIMIT) -> None:
        self.kept = kept  # bytes in the temp file; constant once streamed
        self.base = kept  # first byte still held
        self.end = kept  # one past the last byte appended
        self.limit = limit
        self.waiting = False  # the source waits for readers: not a stall of the source
        self._chunks: deque[tuple[int, bytes]] = deque()  # (offset, bytes), in order
        self._freed = asyncio.Event()
        self._released = False

    @property
    def held(self) -> int:
        """Bytes in memory now."""
        return self.end - self.base

    def full(self, sendable: int) -> bool:
        """The source must wait: the window is full of bytes below ``sendable`` (what readers
        may send now). Bytes past it (the held-back tail) do not count: readers wait for the
        verdict to send them, and the verdict waits for the source."""
        return not self._released and min(self.end, sendable) - self.base >= self.limit

    async def room(self, sendable: int) -> None:
        """Wait while :meth:`full` (back-pressure on the source)."""
        while self.full(sendable):
            self._freed.clear()
            self.waiting = True
            try:
                await self._freed.wait()
            finally:
                self.waiting = False

    def release(self) -> None:
        """The download is over: nobody waits for room any more."""
        self._released = True
        self._freed.set()

    def append(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append((self.end, chunk))
            self.end += len(chunk)

    def read(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``pos`` (``base <= pos < end``): one chunk's worth at most.

        Raises ValueError for bytes not held: a reader asking for them is a bug, not a
        client's fault, and must not be sent anything else.
        """
        if not self.base <= pos < self.end:
            raise ValueError(f"bytes at {pos} are not held (held: {self.base}..{self.end})")
        for offset, chunk in self._chunks:
            if offset + len(chunk) > pos:
                start = pos - offset
                return chunk[start : start + n]
        raise AssertionError("unreachable: the chunks cover base..end")

    def trim(self, upto: int) -> bool:
        """Forget the chunks wholly below ``upto`` (every reader is past them).

        True if memory was freed (a waiting source may go on).
        """
        freed = False
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= upto:
            offset, chunk = self._chunks.popleft()
            self.base = offset + len(chunk)
            freed = True
        if freed:
            self._freed.set()
        return freed

    def held_bytes(self) -> list[bytes]:
        """Every chunk held, in order (to feed a signature check that starts late)."""
        return [chunk for _, chunk in self._chunks]


def write_until_full(fd: int, chunk: bytes, offset: int) -> int:
    """Write ``chunk`` at ``offset``; how many bytes fit (fewer: the disk is full).

    A short write is continued (the next ``pwrite`` reports the ``ENOSPC``); any other
    error is raised.
    """
    view, done = memoryview(chunk), 0
    try:
        while done < len(chunk):
            done += os.pwrite(fd, view[done:], offset + done)
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
    return done


__all__ = ["NO_SPACE", "SPILL_LIMIT", "Spill", "write_until_full"]
