"""The in-process signature check of a download: the streaming check of :mod:`.sigstream`'s
shape, decided from the download's own running hash instead of a gpg reading the file again.

Why: gpg costs ~5 CPU s/GB (it hashes every byte once more) plus 5-10 ms per package to
start; the download already hashes every byte with SHA-256 for the db's ``%SHA256SUM%``, and
a v4 signature over SHA-256 is that same hash with the signature's trailer appended
(:mod:`pacswarm.openpgp`). So for the usual package signature (:class:`FastPlan`: one v4
RSA/Ed25519 signature by a key the keyring fully trusts) the decision costs a hash copy and
one public-key operation. A SHA-512 signature needs a second hash: :class:`FileHasher`
follows the temp file on a worker thread (from the page cache), caught up from its start
when the ``.sig`` arrives after the first bytes.

Trust stays pacman's: this check only ever *accepts*. When the in-process math does not
verify, gpg decides on the complete file and its verdict is final (and the admission tells
the fast path of every gpg accept, which lets it trust a subkey from then on:
:meth:`FastPath.confirm`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pacswarm.fastverify import FastPlan
from pacswarm.verify import Verdict

#: Bytes read from the temp file per SHA-512 update (hashlib releases the GIL for it).
HASH_READ = 1 << 20

#: hashlib's hash objects (``hashlib._Hash`` is not public).
Hash = Any


class FileHasher:
    """A hash of a growing file, computed on a worker thread as :meth:`advance` says."""

    def __init__(self, name: str, data: Path) -> None:
        self._hash = hashlib.new(name)
        self._data = data
        self._cond = threading.Condition()
        self._available = 0
        self._final: int | None = None
        self._file_end: int | None = None  # streamed (disk full): the file ends here
        self._memory: collections.deque[bytes] = collections.deque()
        self._aborted = False
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"{name} {data.name}", daemon=True)
        self._thread.start()

    def advance(self, available: int) -> None:
        with self._cond:
            self._available = available
            self._cond.notify()

    def spill_from(self, offset: int) -> None:
        """The file ends at ``offset``: every byte after it comes through :meth:`push`."""
        with self._cond:
            self._file_end = self._available = offset
            self._cond.notify()

    def push(self, chunk: bytes) -> None:
        with self._cond:
            self._memory.append(chunk)
            self._available += len(chunk)
            self._cond.notify()

    def finish(self, size: int) -> None:
        with self._cond:
            self._available = self._final = size
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()

    async def result(self) -> Hash:
        """The hash over the whole file, once :meth:`finish` was called and it is read."""
        await self._done
        if self._error is not None:
            raise self._error
        return self._hash

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as e:  # reported to the awaiting side, never a crash
            self._error = e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody awaits us
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    def _follow(self) -> None:
        fd: int | None = None  # opened on the first byte read from it (streamed: maybe none)
        pos = 0
        try:
            while True:
                with self._cond:
                    while not self._aborted and pos >= self._available and self._final is None:
                        self._cond.wait()
                    if self._aborted:
                        raise OSError("hash aborted")
                    target, final, file_end = self._available, self._final, self._file_end
                while pos < target:
                    end = target if file_end is None else file_end
                    if pos < end and fd is None:
                        fd = os.open(self._data, os.O_RDONLY)
                    piece = self._next(fd, pos, end)
                    self._hash.update(piece)
                    pos += len(piece)
                if final is not None and pos >= final:
                    return
        finally:
            if fd is not None:
                os.close(fd)

    def _next(self, fd: int | None, pos: int, file_end: int) -> bytes:
        """The bytes at ``pos``: from the file up to ``file_end``, then the pushed ones."""
        if fd is not None and pos < file_end:
            piece = os.pread(fd, min(HASH_READ, file_end - pos), pos)
            if not piece:
                raise OSError("package file shorter than its download")
            return piece
        with self._cond:
            return self._memory.popleft()


class InProcessCheck:
    """A :class:`~pacswarm.fetch.admit.StreamingCheck` decided by a :class:`FastPlan`.

    ``running`` gives the download's SHA-256 over exactly the bytes written (read at the
    verdict, when the file is complete); ``gpg`` checks the complete file when the plan
    does not accept.
    """

    def __init__(
        self,
        plan: FastPlan,
        running: Callable[[], Hash],
        data: Path,
        gpg: Callable[[], Awaitable[Verdict]],
    ) -> None:
        self.plan = plan
        self._running = running
        self._gpg = gpg
        self._size: int | None = None
        self._streamed = False
        self._hasher = None if plan.hash_name == "sha256" else FileHasher(plan.hash_name, data)

    def advance(self, available: int) -> None:
        if self._hasher is not None:
            self._hasher.advance(available)

    def spill_from(self, offset: int) -> None:
        self._streamed = True
        if self._hasher is not None:
            self._hasher.spill_from(offset)

    def push(self, chunk: bytes) -> None:
        if self._hasher is not None:
            self._hasher.push(chunk)

    def finish(self, size: int) -> None:
        self._size = size
        if self._hasher is not None:
            self._hasher.finish(size)

    def abort(self) -> None:
        if self._hasher is not None:
            self._hasher.abort()

    async def verdict(self) -> Verdict:
        hashed = self._running() if self._hasher is None else await self._hasher.result()
        if self.plan.accepts(hashed):
            return dataclasses.replace(self.plan.verdict(), path="in-process")
        if self._streamed:
            # Disk full: the bytes were streamed to pacman, not kept, so gpg cannot read
            # them again. A well-formed signature by a trusted key whose math fails over
            # these bytes is one gpg refuses too: refused, and the sender is blamed.
            return Verdict(False, f"signature by {self.plan.key} does not match the package")
        return await self._gpg()  # not sure here: gpg decides, and its verdict is final


__all__ = ["FileHasher", "InProcessCheck"]
