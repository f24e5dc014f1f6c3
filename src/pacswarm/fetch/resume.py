"""Judging pacman's resumed downloads: is the ``.part`` it holds a prefix of the good file?

pacman keeps the bytes of a cut transfer as ``<file>.part`` and, on its next attempt, asks
for the rest with ``Range: bytes=N-``. When pacswarm cut a transfer that had already sent
unverified bytes (the download outlived the verify window and then failed), it records what
that transfer sent: offsets and the sha256 of those bytes. Once a verified copy exists, a
resume at N is answered with the rest of the file only if the recorded bytes equal the
verified file's; otherwise pacman is told to start over (416), because appending good bytes to
a bad prefix can only fail again.

A resume of a file with no record is an ordinary resume (pacman's prefix came from elsewhere,
or from a transfer that was cut after verification): it is served as asked.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

#: Files remembered, and cut transfers per file: enough for days of pacman runs, bounded
#: against a client that cuts transfers on purpose.
MAX_FILES = 4096
MAX_CUTS_PER_FILE = 8

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Cut:
    """A transfer cut before verification: bytes ``start..end`` of the file, and their hash."""

    start: int
    end: int
    sha256: str


def digest_range(path: Path, start: int, end: int) -> str:
    """sha256 of bytes ``start..end`` of ``path`` (blocking: run it in a thread)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos < end:
            data = os.pread(fd, min(1 << 20, end - pos), pos)
            if not data:
                break
            h.update(data)
            pos += len(data)
    finally:
        os.close(fd)
    return h.hexdigest()


def chain_to(cuts: list[Cut], offset: int) -> list[Cut] | None:
    """The cuts that made a ``.part`` of ``offset`` bytes, first first; None if unknown. Pure.

    pacman's ``.part`` grows by one cut transfer per attempt: 0..a, then a..b (a resume), ...
    """
    chain: list[Cut] = []
    end = offset
    while end > 0:
        step = next((c for c in reversed(cuts) if c.end == end and c.start < end), None)
        if step is None:
            return None
        chain.append(step)
        end = step.start
    return list(reversed(chain))


class CutTransfers:
    """What cut transfers sent, per file, to judge pacman's resumes of them."""

    def __init__(self) -> None:
        self._cuts: OrderedDict[Key, list[Cut]] = OrderedDict()

    def add(self, key: Key, cut: Cut) -> None:
        cuts = self._cuts.setdefault(key, [])
        self._cuts.move_to_end(key)
        cuts.append(cut)
        del cuts[:-MAX_CUTS_PER_FILE]
        while len(self._cuts) > MAX_FILES:
            self._cuts.popitem(last=False)

    def known(self, key: Key) -> bool:
        return key in self._cuts

    def settled(self, key: Key, offset: int) -> None:
        """A resume at ``offset`` was judged: drop the cuts that made it, not the others.

        Several clients can be cut by one failed attempt (one download, many machines):
        each one's ``.part`` is judged on its own resume. A resume no record explains drops
        them all, as before: stale records must not refuse later ordinary resumes.
        """
        cuts = self._cuts.get(key)
        if cuts is None:
            return
        chain = chain_to(cuts, offset)
        for cut in chain or cuts[:]:
            cuts.remove(cut)
        if not cuts:
            del self._cuts[key]

    def judge(self, key: Key, offset: int, verified: Path) -> bool | None:
        """True: the ``.part`` of ``offset`` bytes is a prefix of ``verified``; False: it is
        not (or cannot be known to be); None: no record, an ordinary resume. Blocking."""
        cuts = self._cuts.get(key)
        if not cuts:
            return None
        chain = chain_to(cuts, offset)
        if chain is None:
            return False
        return all(digest_range(verified, c.start, c.end) == c.sha256 for c in chain)
