"""Shared, verified downloads: one upstream transfer per file, however many pacman clients.

A :class:`Download` writes the package to a temp file while hashing it. Readers (one per HTTP
request) follow the growing file and stream it to pacman as bytes arrive, starting at any
offset (pacman resumes with Range). The last :data:`HOLDBACK` bytes are released only once the
sha256 matches the db and the signature is trusted; if verification fails, readers are told to
cut their connection, so pacman never holds a complete bad file.

Mirrors are tried in health order; a mirror that errors, truncates or stalls is penalised and
the transfer continues from the next one with ``Range`` (:meth:`Downloader._pull`), watched by a
stall watchdog re-armed every :attr:`Config.stall_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from pacswarm.config import Config
from pacswarm.errors import (
    IntegrityError,
    SignatureUncheckable,
    UpstreamError,
    VerificationError,
)
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.sigstream import SignatureCheck
from pacswarm.store import Store
from pacswarm.upstream import MirrorFault, Upstream
from pacswarm.verify import verify_signature

log = logging.getLogger(__name__)

#: Bytes kept from pacman until verification passes. Any amount > 0 makes a failed file
#: incomplete on pacman's side; one read's worth keeps the release a single write.
HOLDBACK = 64 * 1024
#: Largest read from the temp file per write to the client.
READ_CHUNK = 256 * 1024
#: How often the stall watchdog looks at progress.
WATCHDOG_TICK = 0.25
#: Seconds a failed file refuses resumed (Range) requests: a day covers "retry tomorrow".
TAINT_MEMORY = 24 * 3600.0


class State(enum.Enum):
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"


class DownloadFailed(Exception):
    """Raised to readers: the file failed; cut the connection so pacman sees an error."""


class Download:
    """One in-flight package transfer and the readers following it."""

    def __init__(self, rp: RequestPath, record: PackageRecord, fd: int, temp: Path) -> None:
        self.rp = rp
        self.record = record
        self.size = record.csize
        self.temp = temp
        self.fd = fd
        self.written = 0
        self.state = State.RUNNING
        self.error = ""
        self.sources: list[str] = []
        self.signature: bytes = b""  # set once verified; served for the .sig that follows
        self.check: SignatureCheck | None = None  # gpg, fed as bytes arrive
        self._changed = asyncio.Event()

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def sendable(self) -> int:
        """How many bytes from the start readers may send now (the hold-back rule)."""
        if self.state is State.VERIFIED:
            return self.size
        return max(0, min(self.written, self.size - HOLDBACK))

    def open_reader(self) -> int:
        """A file descriptor for a new reader; valid after the temp file is renamed."""
        return os.open(self.temp, os.O_RDONLY)

    async def follow(self, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` as they become sendable. Raises :class:`DownloadFailed`."""
        fd = self.open_reader()
        pos = start
        try:
            while pos < end:
                if self.state is State.FAILED:
                    raise DownloadFailed(self.error)
                limit = min(self.sendable(), end)
                if pos < limit:
                    data = os.pread(fd, min(limit - pos, READ_CHUNK), pos)
                    if not data:
                        raise DownloadFailed("temp file shrank")
                    pos += len(data)
                    yield data
                    continue
                await self._changed.wait()
        finally:
            os.close(fd)


Committed = Callable[[RequestPath, Path], None]


class Downloader:
    """The registry of in-flight downloads, keyed by repo/arch/file."""

    def __init__(self, store: Store, upstream: Upstream, config: Config) -> None:
        self.store = store
        self.upstream = upstream
        self.config = config
        self.on_committed: list[Committed] = []
        self._active: dict[tuple[str, str, str], Download] = {}
        #: Files whose last transfer was cut for failing verification, with the time. A client
        #: resuming one of them holds bad bytes; see :meth:`resume_is_tainted`.
        self._tainted: dict[tuple[str, str, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def active(self, rp: RequestPath) -> Download | None:
        return self._active.get((rp.repo, rp.arch, rp.filename))

    def resume_is_tainted(self, rp: RequestPath) -> bool:
        """True if a Range request for ``rp`` would extend a partial file of bad bytes.

        pacman keeps the ``.part`` of a cut transfer and resumes it with Range. After a
        verification failure that prefix is wrong, and appending good bytes to it only yields
        another failure; refusing the resume with a 4xx makes pacman drop the ``.part``.
        """
        failed_at = self._tainted.get((rp.repo, rp.arch, rp.filename))
        return failed_at is not None and time.monotonic() - failed_at < TAINT_MEMORY

    def get_or_start(self, rp: RequestPath, record: PackageRecord) -> Download:
        """Join the running download of ``rp`` or start one. Never awaits (no races)."""
        key = (rp.repo, rp.arch, rp.filename)
        if (dl := self._active.get(key)) is not None:
            return dl
        fd, temp = self.store.new_temp(rp.filename)
        dl = Download(rp, record, fd, temp)
        self._active[key] = dl
        task = asyncio.create_task(self._run(dl), name=f"download {rp}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return dl

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the transfer ---------------------------------------------------------------------

    async def _start_check(self, dl: Download) -> bytes:
        """Get the signature (db, else mirror) and start gpg on the bytes as they come."""
        signature = dl.record.pgpsig
        if signature is None:
            sig_name = dl.rp.filename + ".sig"
            sig_rp = RequestPath(dl.rp.repo, dl.rp.arch, sig_name, FileKind.PACKAGE_SIG)
            signature = await self.upstream.fetch_small(sig_rp)
        if signature and dl.state is State.RUNNING:
            dl.check = SignatureCheck(self.config.gpgdir, signature, dl.temp)
            dl.check.advance(dl.written)
        return signature or b""

    async def _run(self, dl: Download) -> None:
        key = (dl.rp.repo, dl.rp.arch, dl.rp.filename)
        starting = asyncio.create_task(self._start_check(dl))
        try:
            sha = await self._transfer(dl)
            signature = await starting
            await self._verify(dl, sha, signature)
        except (UpstreamError, VerificationError, OSError) as e:
            self._fail(dl, key, str(e))
            return
        except asyncio.CancelledError:
            self._fail(dl, key, "node shutting down")
            raise
        finally:
            if not starting.done():
                starting.cancel()
        dl.signature = signature
        dl.state = State.VERIFIED
        dl.notify()  # release the held-back tail to every reader right away
        try:
            await asyncio.to_thread(os.fsync, dl.fd)
            os.close(dl.fd)
            self.store.commit_package(
                dl.rp, dl.temp, dl.record.sha256, dl.size, signature or b"", ",".join(dl.sources)
            )
        except OSError as e:
            log.error("verified %s but could not cache it: %s (check free space)", dl.rp, e)
            dl.temp.unlink(missing_ok=True)
            del self._active[key]
            return
        del self._active[key]  # no await since the rename: a new request now hits the cache
        log.info("cached %s (%d bytes, verified, from %s)", dl.rp, dl.size, ", ".join(dl.sources))
        for callback in self.on_committed:
            callback(dl.rp, self.store.cache_path(dl.rp))

    def _fail(self, dl: Download, key: tuple[str, str, str], reason: str) -> None:
        dl.state = State.FAILED
        dl.error = reason
        dl.notify()
        if dl.check is not None:
            dl.check.abort()
        self._active.pop(key, None)
        with contextlib.suppress(OSError):
            os.close(dl.fd)
        dl.temp.unlink(missing_ok=True)
        if dl.sources:  # bytes were sent to readers: their partial copies are suspect
            if len(self._tainted) >= 4096:
                self._tainted.pop(next(iter(self._tainted)))
            self._tainted[key] = time.monotonic()
        log.error("download of %s failed, not cached: %s", dl.rp, reason)

    async def _verify(self, dl: Download, sha: hashlib._Hash, signature: bytes) -> None:
        """The sha256 and signature decision; failure penalises every mirror that sent bytes."""
        digest = sha.hexdigest()
        try:
            if digest != dl.record.sha256:
                raise IntegrityError(
                    f"sha256 {digest} does not match the db's {dl.record.sha256} "
                    f"(sent by {', '.join(dl.sources)})"
                )
            if dl.check is None:
                verdict = await verify_signature(self.config.gpgdir, dl.temp, signature)
            else:
                dl.check.finish(dl.size)
                verdict = await dl.check.verdict()
            if verdict.local:
                # Our own check broke (gpg missing or hung): fail, but blame no mirror.
                raise SignatureUncheckable(f"could not check the signature: {verdict.reason}")
            if not verdict.ok:
                raise VerificationError(f"{verdict.reason} (sent by {', '.join(dl.sources)})")
        except SignatureUncheckable:
            raise
        except VerificationError as e:
            for mirror in dl.sources:
                self.upstream.failed(mirror, f"sent a bad {dl.rp.filename}: {e}")
            raise

    async def _transfer(self, dl: Download) -> hashlib._Hash:
        """Fill the temp file from mirrors in health order, resuming with Range on failure."""
        sha = hashlib.sha256()
        attempts: list[tuple[str, str]] = []
        status = 502
        for mirror in self.upstream.candidates():
            if dl.written >= dl.size:
                break
            try:
                clean = await self._pull_watched(dl, mirror, sha)
            except MirrorFault as e:
                attempts.append((mirror, str(e)))
                if e.penalise:
                    self.upstream.failed(mirror, str(e))
                if e.status == 404 and status == 502:
                    status = 404
                continue
            if clean:
                self.upstream.succeeded(mirror)
        if dl.written < dl.size:
            raise UpstreamError(str(dl.rp), attempts, status)
        return sha

    async def _pull_watched(self, dl: Download, mirror: str, sha: hashlib._Hash) -> bool:
        """:meth:`_pull` under a watchdog: too few bytes in a window means a stall."""
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(self._pull(dl, mirror, sha))
        window_start, window_bytes = loop.time(), dl.written
        need = self.config.min_speed * self.config.stall_timeout
        while True:
            done, _ = await asyncio.wait({task}, timeout=WATCHDOG_TICK)
            if done:
                return task.result()
            now = loop.time()
            if now - window_start >= self.config.stall_timeout:
                moved = dl.written - window_bytes
                if moved < max(need, 1):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, MirrorFault):
                        await task
                    raise MirrorFault(
                        f"stalled: {moved} bytes in {now - window_start:.1f} s "
                        f"at offset {dl.written} of {dl.size}"
                    )
                window_start, window_bytes = now, dl.written

    async def _pull(self, dl: Download, mirror: str, sha: hashlib._Hash) -> bool:
        """Copy from one mirror, starting at ``dl.written``, until the file is complete.

        Returns False if the mirror misbehaved but the bytes may still be right (it sent more
        than the db's size: cut off there, and let verification decide).
        """
        offset = dl.written
        async with self.upstream.open(mirror, dl.rp, offset=offset) as resp:
            if resp.status == 404:
                raise MirrorFault("404 not found", penalise=False, status=404)
            if resp.status not in (200, 206) or (offset and resp.status != 206):
                raise MirrorFault(f"HTTP {resp.status} for bytes {offset}-")
            if resp.status == 206 and not resp.headers.get("Content-Range", "").startswith(
                f"bytes {offset}-"
            ):
                raise MirrorFault(f"wrong Content-Range {resp.headers.get('Content-Range')!r}")
            if mirror not in dl.sources:
                dl.sources.append(mirror)
            async for chunk in resp.content.iter_any():
                remaining = dl.size - dl.written
                if len(chunk) > remaining:
                    # Endless-data attack or wrong file: never take more than the db's size.
                    self._append(dl, sha, chunk[:remaining])
                    self.upstream.failed(mirror, f"sent more than the {dl.size} bytes of {dl.rp}")
                    return False
                self._append(dl, sha, chunk)
                if dl.written == dl.size:
                    return True
        if dl.written < dl.size:
            raise MirrorFault(f"connection closed at byte {dl.written} of {dl.size}")
        return True

    @staticmethod
    def _append(dl: Download, sha: hashlib._Hash, chunk: bytes) -> None:
        os.pwrite(dl.fd, chunk, dl.written)
        sha.update(chunk)
        dl.written += len(chunk)
        if dl.check is not None:
            dl.check.advance(dl.written)
        dl.notify()
