"""Shared downloads: one transfer per file however many pacman clients, from any sources.

A :class:`Download` fills a temp file from the sources of its plan (cache, peers, mirrors) in
order. A source that errors, stalls or truncates is penalised and the next one continues at
the same offset (``Range``), watched by a stall watchdog re-armed every ``stall_timeout``; a
source with a ``first_byte_within`` (peers) that sends no byte in that time is replaced the
same way, long before pacman's 10 s rule would cut the transfer.
When the file is complete it goes through admission (:mod:`.admit`). Bytes that fail the
sha256 are thrown away, their sources penalised and left out, and the download starts again
from the next source: a new *attempt* (``generation``).

Readers (one per HTTP request) follow the temp file and stream it to pacman:

* the *verify window*: for ``verify_window`` seconds after pacman's request a reader sends
  nothing that is not verified. A bad source replaced inside the window costs pacman nothing
  but time: it never sees a bad byte and its request succeeds;
* past the window, bytes stream as they arrive except the last :data:`HOLDBACK`, released
  only once the file is admitted, so pacman never holds a complete bad file and its progress
  bar moves on big packages. A reader that sent unverified bytes of an attempt that then
  fails is cut (pacman sees a failed transfer); what it sent is recorded (:mod:`.resume`) to
  judge pacman's resume on its next run, while the download carries on and caches the file.

A download runs *streamed* (nothing cached, :mod:`.spill`) when the cache disk is full
before it starts (pacman's requests only: ``stream_if_full``) or mid-transfer (``ENOSPC``).
Verification is the same (sha256, the signature fed from memory, hold-back) but the verify
window is skipped: the bytes cannot wait in memory for it, and the hold-back alone keeps a
bad file incomplete on pacman's side. It leaves the registry (a new request starts its own)
and stops when its last reader leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import logging
import math
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacswarm.config import Config
from pacswarm.errors import (
    NoSpaceError,
    SignatureUncheckable,
    UpstreamError,
    VerificationError,
)
from pacswarm.fastverify import FastPlan
from pacswarm.fetch.admit import Admission, BadBytes, Signed, StreamingCheck
from pacswarm.fetch.mirrors import final_status
from pacswarm.fetch.observer import DownloadObserver, Unobserved
from pacswarm.fetch.plan import Scope, SourcePlan
from pacswarm.fetch.resume import Cut, CutTransfers, digest_range
from pacswarm.fetch.source import Source, SourceFault, Want
from pacswarm.fetch.spill import Spill, write_until_full
from pacswarm.requestpath import RequestPath
from pacswarm.store import Store

log = logging.getLogger(__name__)

#: Bytes kept from pacman until admission passes. Any amount > 0 makes a failed file
#: incomplete on pacman's side; one read's worth keeps the release a single write.
HOLDBACK = 64 * 1024
#: Largest read from the temp file per write to the client.
READ_CHUNK = 256 * 1024
#: Largest span a :meth:`Download.spans` reader hands to one ``sendfile``: between two it looks
#: at the download's state again (a failed attempt cuts it), and a slow client holds no more.
SPAN_MAX = 4 * 1024 * 1024
#: Readers and gpg are woken for new bytes once this many arrived, or once :data:`WAKE_AFTER`
#: seconds passed since the last wake-up: not per socket read (a wake-up costs a loop step per
#: reader and a thread switch for gpg), yet a trickling source still shows its progress.
WAKE_BYTES = 1024 * 1024
WAKE_AFTER = 0.002
#: How often the stall watchdog looks at progress.
WATCHDOG_TICK = 0.25
#: Free space kept on the cache filesystem beyond a download's size (the db, SQLite, logs).
DISK_RESERVE = 64 * 1024 * 1024


#: :meth:`Downloader.quiet`: how long no download must have run, and the longest wait.
QUIET_FOR = 0.5
QUIET_AT_MOST = 10.0
#: How many signatures of verified, uncached packages are kept for pacman's .sig request.
UNCACHED_SIGS = 64


@dataclass(frozen=True)
class FileSpan:
    """``length`` bytes at ``offset`` of the open file ``fd``, to send with ``sendfile``.

    The fd belongs to the reader that yielded it and stays open until it is asked for more.
    """

    fd: int
    offset: int
    length: int


class State(enum.Enum):
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"


class DownloadFailed(Exception):
    """Raised to readers: cut the connection so pacman sees a failed transfer."""


@dataclass(eq=False)
class _Reader:
    start: int
    pos: int
    generation: int
    sent_unverified: bool = False


class Download:
    """One in-flight package transfer and the readers following it."""

    def __init__(
        self,
        want: Want,
        fd: int | None,
        temp: Path,
        extra: Sequence[Source],
        scope: Scope = Scope.ALL,
    ) -> None:
        self.want = want
        self.size = want.size
        self.extra = tuple(extra)
        self.scope = scope
        self.fd = fd  # open until the task ended and the last reader left (readers pread it)
        self.path = temp  # the temp file; the cached file once committed
        self.spill: Spill | None = None  # streamed (disk full): the bytes after the file's
        self.sig_known = False  # the first signature is known: streamed bytes may be dropped
        self.ended = False  # the task is over: the last reader closes ``fd``
        self.abandoned = False  # streamed and every reader left: stopped
        self.task: asyncio.Task[None] | None = None
        self.generation = 0
        self.written = 0
        self.sha = hashlib.sha256()
        self.state = State.RUNNING
        self.error = ""
        self.sources: list[str] = []  # sources that sent bytes of the current attempt
        self.signature: bytes = b""  # set once admitted; served for the .sig that follows
        self.check: StreamingCheck | None = None  # gpg, fed as bytes arrive
        self.first: Signed | None = None  # the signature checked first, once known
        self.sig_plan: FastPlan | None = None  # to decide it in-process, if it can be
        self.readers: set[_Reader] = set()
        self.recording = False  # the cut records are being taken: readers send nothing
        self.done: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self.started = asyncio.get_running_loop().time()
        self.got_first_byte = False
        self._changed = asyncio.Event()
        self._woken_at = -math.inf  # when readers and gpg last heard of new bytes
        self._woken_bytes = 0  # dl.written they last heard of
        self._wake_timer: asyncio.TimerHandle | None = None

    @property
    def rp(self) -> RequestPath:
        return self.want.rp

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def progressed(self) -> None:
        """New bytes are in the file: wake readers and gpg now, or in :data:`WAKE_AFTER`.

        At once when :data:`WAKE_BYTES` piled up, the file is complete, or the last wake-up
        is older than :data:`WAKE_AFTER` (so the first bytes go out without delay).
        """
        now = asyncio.get_running_loop().time()
        if (
            self.written - self._woken_bytes >= WAKE_BYTES
            or self.written >= self.size
            or now - self._woken_at >= WAKE_AFTER
        ):
            self._wake(now)
        elif self._wake_timer is None:
            delay = self._woken_at + WAKE_AFTER - now
            self._wake_timer = asyncio.get_running_loop().call_later(delay, self._wake_later)

    def _wake_later(self) -> None:
        self._wake_timer = None
        if self.written != self._woken_bytes:  # (a new attempt starts again from 0)
            self._wake(asyncio.get_running_loop().time())

    def _wake(self, now: float) -> None:
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        self._woken_at, self._woken_bytes = now, self.written
        if self.check is not None and self.spill is None:  # streamed: it gets push()
            self.check.advance(self.written)
        self.notify()

    def sendable(self, window_ends: float, now: float) -> int:
        """How many bytes from the start a reader may send now (window, then hold-back).

        Streamed, there is no window (the module's docstring says why).
        """
        if self.state is State.VERIFIED:
            return self.size
        if self.recording or (now < window_ends and self.spill is None):
            return 0
        return max(0, min(self.written, self.size - HOLDBACK))

    def _piece(self, pos: int, n: int) -> FileSpan | bytes:
        """Up to ``n`` bytes at ``pos``: memory past a streamed file's end, else a span of the
        file on an fd of its own (``os.dup``: a new attempt closing the download's fd, and
        the number reused for the next file, can never redirect a ``sendfile`` in flight)."""
        if self.spill is not None:
            if pos >= self.spill.kept:
                return self.spill.read(pos, min(n, READ_CHUNK))
            n = min(n, self.spill.kept - pos)
        if self.fd is None:
            raise DownloadFailed(self.error or "download file gone")
        return FileSpan(os.dup(self.fd), pos, n)

    def trim(self) -> None:
        """Streamed: drop the bytes every reader sent (and gpg got), making room for more."""
        if self.spill is None or not self.sig_known:
            return  # a signature arriving late is checked on every byte: keep them
        self.spill.trim(min((r.pos for r in self.readers), default=self.spill.end))

    def end(self) -> None:
        """The task is over; the file closes now or when its last reader leaves."""
        self.ended = True
        if self.spill is not None:
            self.spill.release()
        if not self.readers:
            self._close()

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _left(self) -> None:
        """A reader left: the last one closes the file, or stops a streamed download."""
        self.trim()
        if self.readers:
            return
        if self.ended:
            self._close()
        elif self.spill is not None and self.task is not None and self.state is State.RUNNING:
            self.abandoned = True
            self.task.cancel()

    async def follow(self, start: int, end: int, window_ends: float) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` as they become sendable, read into memory: :meth:`spans` for
        a caller that cannot ``sendfile``. Raises :class:`DownloadFailed`."""
        pieces = self.spans(start, end, window_ends, span_max=READ_CHUNK)
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                if isinstance(piece, bytes):
                    yield piece
                    continue
                data = os.pread(piece.fd, piece.length, piece.offset)
                if len(data) != piece.length:
                    raise DownloadFailed("download file shrank")
                yield data

    async def spans(
        self, start: int, end: int, window_ends: float, *, span_max: int = SPAN_MAX
    ) -> AsyncIterator[FileSpan | bytes]:
        """Bytes ``start..end`` as they become sendable: spans of the file for ``sendfile``
        (each on an fd that stays open until the next piece is asked for), or ``bytes`` for
        what a streamed download holds only in memory. Raises :class:`DownloadFailed`.

        A range that stops short of the end gets nothing before verification: the hold-back
        keeps only the file's tail, so such a response would otherwise complete with bytes
        nobody checked (pacman never asks for one; a browser or a script might). Streamed,
        such a range cannot be served at all: its bytes are not kept until the verdict.
        """
        if end < self.size:
            window_ends = math.inf
        loop = asyncio.get_running_loop()
        reader = _Reader(start, start, self.generation)
        self.readers.add(reader)
        lent: int | None = None  # the fd of the span last yielded
        try:
            if self.fd is None and self.ended and self.spill is None:
                with contextlib.suppress(FileNotFoundError):  # cached: read the file (the
                    self.fd = os.open(self.path, os.O_RDONLY)  # last reader closes it)
            while reader.pos < end:
                if lent is not None:
                    os.close(lent)
                    lent = None
                if self.state is State.FAILED:
                    raise DownloadFailed(self.error)
                if self.spill is not None and end < self.size and self.state is State.RUNNING:
                    raise DownloadFailed("the cache is full: a part of a file not kept is unsent")
                if reader.generation != self.generation:
                    if reader.sent_unverified:
                        raise DownloadFailed("the bytes sent so far failed verification")
                    reader.generation = self.generation  # nothing sent: follow the new attempt
                now = loop.time()
                limit = min(self.sendable(window_ends, now), end)
                if reader.pos < limit:
                    piece = self._piece(reader.pos, min(limit - reader.pos, span_max))
                    if isinstance(piece, FileSpan):
                        lent = piece.fd
                    if self.state is not State.VERIFIED:
                        reader.sent_unverified = True
                    reader.pos += piece.length if isinstance(piece, FileSpan) else len(piece)
                    self.trim()
                    yield piece
                    continue
                changed = self._changed.wait()
                timeout = window_ends - now if now < window_ends < math.inf else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed, timeout)
        finally:
            if lent is not None:
                os.close(lent)
            self.readers.discard(reader)
            self._left()


class Downloader:
    """The registry of in-flight downloads, keyed by repo/arch/file."""

    def __init__(
        self,
        store: Store,
        plan: SourcePlan,
        admission: Admission,
        config: Config,
        observer: DownloadObserver | None = None,
    ) -> None:
        self.observer: DownloadObserver = observer or Unobserved()
        self.store = store
        self.plan = plan
        self.admission = admission
        self.config = config
        self.cuts = CutTransfers()
        self._active: dict[tuple[str, str, str], Download] = {}
        self._streaming: set[Download] = set()  # streamed: out of the registry, still running
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_busy = 0.0  # loop time a download last ended
        #: Signatures of packages sent to pacman verified but not cached (disk full, a failed
        #: commit): pacman asks for the .sig right after the package. The latest few.
        self._uncached_sigs: dict[tuple[str, str, str], bytes] = {}

    def running(self) -> list[Download]:
        """The downloads in flight (the status page shows their progress)."""
        return [*self._active.values(), *self._streaming]

    def active(self, rp: RequestPath) -> Download | None:
        return self._active.get((rp.repo, rp.arch, rp.filename))

    def signature_of(self, rp: RequestPath) -> bytes | None:
        """The verified signature of a running or just uncached download of ``rp``."""
        key = (rp.repo, rp.arch, rp.filename)
        dl = self._active.get(key)
        if dl is not None and dl.signature:
            return dl.signature
        return self._uncached_sigs.get(key)

    async def quiet(self, quiet_for: float = QUIET_FOR, at_most: float = QUIET_AT_MOST) -> None:
        """Return once no download has run for ``quiet_for`` s (or after ``at_most`` s).

        What can wait (the IPFS import of a package just cached) waits here, so that on a
        small machine it does not take CPU from the downloads pacman is waiting for; a burst
        of misses (``pacman -Syu``) runs first, its imports right after.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + at_most
        while (now := loop.time()) < give_up:
            if self._tasks:
                wait = quiet_for
            elif (wait := self._last_busy + quiet_for - now) <= 0:
                return
            await asyncio.sleep(min(wait, give_up - now))

    def get_or_start(
        self,
        want: Want,
        extra: Sequence[Source] = (),
        scope: Scope = Scope.ALL,
        *,
        stream_if_full: bool = False,
    ) -> Download:
        """Join the running download of ``want`` or start one. Never awaits (no races).

        When the file cannot fit on the cache filesystem: with ``stream_if_full`` (pacman is
        waiting for the bytes) the download runs streamed, nothing cached; without it (an
        audit, seeding: nobody waits) raises :class:`NoSpaceError`.
        """
        if (dl := self._active.get(want.key)) is not None:
            if scope is Scope.ALL:
                dl.scope = Scope.ALL  # pacman must not depend on an audit's single peer
            return dl
        # The downloads running will fill their files too: their bytes to come are taken.
        coming = sum(d.size - d.written for d in self._active.values())
        free = shutil.disk_usage(self.store.tmp_dir).free - coming
        if want.size + DISK_RESERVE > free and stream_if_full:
            dl = Download(want, None, self.store.tmp_dir / f"{want.rp.filename}.unkept", extra)
            self._go_streamed(dl, 0)
            self._start(dl)
            return dl
        if want.size + DISK_RESERVE > free:
            raise NoSpaceError(
                f"{want.rp.filename} is {want.size} bytes, the db says; only {max(free, 0)} "
                f"bytes are free in {self.store.tmp_dir} (after the {len(self._active)} "
                "downloads running): free some space (or check the db's %CSIZE%)"
            )
        fd, temp = self.store.new_temp(want.rp.filename)
        dl = Download(want, fd, temp, extra, scope)
        self._active[want.key] = dl
        self._start(dl)
        return dl

    def _start(self, dl: Download) -> None:
        dl.task = asyncio.create_task(self._run(dl), name=f"download {dl.want}")
        self._tasks.add(dl.task)
        dl.task.add_done_callback(self._tasks.discard)

    def _unregister(self, dl: Download) -> None:
        """``dl`` no longer answers new requests (another download may have its key now)."""
        if self._active.get(dl.want.key) is dl:
            del self._active[dl.want.key]

    def _go_streamed(self, dl: Download, kept: int) -> None:
        """The disk is full: ``kept`` bytes are in the file, the rest only passes through."""
        dl.spill = Spill(kept)
        self._unregister(dl)  # a new request must not join: our early bytes may be gone
        self._streaming.add(dl)
        if dl.check is not None:
            dl.check.spill_from(kept)
        try:
            free = str(shutil.disk_usage(self.store.tmp_dir).free)
        except OSError:
            free = "?"
        log.warning(
            "cache full (%s bytes free in %s): streaming %s to pacman without caching it; "
            "free space or lower cache_max_size",
            free,
            self.store.tmp_dir,
            dl.rp,
        )

    async def fetch(
        self, want: Want, extra: Sequence[Source] = (), scope: Scope = Scope.ALL
    ) -> Path:
        """Download ``want`` into the cache (or join its download); the cached path.

        Raises :class:`DownloadFailed` when no source delivered an admissible file.
        """
        dl = self.get_or_start(want, extra, scope)
        return await asyncio.shield(dl.done)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the download task -----------------------------------------------------------------

    async def _run(self, dl: Download) -> None:
        try:
            await self._run_attempts(dl)
        finally:
            self._streaming.discard(dl)
            self._last_busy = asyncio.get_running_loop().time()
            dl.end()

    async def _run_attempts(self, dl: Download) -> None:
        sig_task = asyncio.create_task(self._first_signature(dl))
        try:
            if dl.scope is Scope.ALL:
                await self.plan.ready(dl.want)
            signed = await self._until_admitted(dl, sig_task)
        except (UpstreamError, VerificationError, OSError) as e:
            if isinstance(e, VerificationError):
                self._count_refusal(dl, e)
            await self._fail(dl, str(e))
            return
        except asyncio.CancelledError:
            why = (
                "every reader left a download not cached" if dl.abandoned else "node shutting down"
            )
            await asyncio.shield(self._fail(dl, why))
            raise
        except Exception as e:  # a bug: fail loudly; a dead task would hang every reader
            log.exception("download of %s broke", dl.rp)
            await self._fail(dl, f"internal error: {type(e).__name__}: {e}")
            return
        finally:
            if not sig_task.done():
                sig_task.cancel()
        await self._commit(dl, signed)

    def _count_refusal(self, dl: Download, e: VerificationError) -> None:
        """A signature refused: the db's or a mirror's ``.sig``; our own gpg failing blames none."""
        if isinstance(e, SignatureUncheckable):
            self.observer.verification_failed("uncheckable", [])
            return
        provider = dl.first.provider if dl.first is not None else None
        self.observer.verification_failed("signature", [provider or "db"])

    async def _first_signature(self, dl: Download) -> Signed | None:
        """Get the first signature while the bytes come, and start gpg on them."""
        try:
            signed = await self.admission.first_signature(dl.want)
            if signed is not None:
                dl.sig_plan = await self.admission.verifier.prepare(signed.signature)
            dl.first = signed
            if signed is not None and dl.state is State.RUNNING:
                self._start_check(dl, signed)
            return signed
        finally:
            dl.sig_known = True
            dl.trim()

    def _start_check(self, dl: Download, signed: Signed) -> None:
        dl.check = self.admission.verifier.start(
            signed.signature, dl.path, lambda: dl.sha, dl.sig_plan
        )
        if dl.spill is None:
            dl.check.advance(dl.written)
            return
        dl.check.spill_from(dl.spill.kept)  # nothing was dropped before the signature came
        for chunk in dl.spill.held_bytes():
            dl.check.push(chunk)

    async def _until_admitted(self, dl: Download, sig_task: asyncio.Task[Signed | None]) -> Signed:
        """Attempts until one is admitted: transfer, admit; bad bytes mean a new attempt.

        A source that sent a bad file is not asked again for it, and is told it sent bad
        content. When bytes from several sources made the bad file (one truncated, the next
        continued), nobody can tell which lied: all are penalised (not told "bad content"),
        and from then on each attempt takes its bytes from a single
        source (*solo*: a source that fails mid-file is not continued by the next one, the
        next one starts over), so the liar is found. Attempts are bounded by the sources.
        """
        attempts: list[tuple[str, str]] = []
        refused: set[str] = set()
        solo = False
        budget: int | None = None
        while True:
            scope = dl.scope
            planned = self.plan.sources(dl.want, dl.extra, scope)
            sources = [s for s in planned if s.name not in refused]
            budget = len(sources) + 1 if budget is None else budget - 1
            if budget <= 0:
                raise UpstreamError(str(dl.rp), attempts)
            try:
                await self._transfer(dl, sources, attempts, solo)
            except UpstreamError:
                if dl.scope is scope:
                    raise
                budget = None  # pacman joined an audit: go on with every source, same offset
                continue
            first = await sig_task
            check, dl.check = dl.check, None
            try:
                kept = dl.path if dl.spill is None else None
                signed = await self.admission.decide(
                    dl.want, dl.sha.hexdigest(), kept, first, check, dl.sources
                )
            except BadBytes as e:
                self.observer.verification_failed("sha256", dl.sources)
                # Only a file from one source proves that source lied (a strike, for a peer):
                # a liar that truncates must not get the honest source that continued struck.
                alone = len(dl.sources) == 1
                for name in dl.sources:
                    source = self._source_named(sources, name)
                    source.failed(f"sent a bad {dl.rp.filename}", bad_content=alone)
                if len(dl.sources) == 1:
                    refused.update(dl.sources)
                else:
                    solo = True
                attempts.append((", ".join(dl.sources), "bytes failed the sha256"))
                log.warning("%s; trying the next source", e)
                await self._new_attempt(dl)
                continue
            for name in dl.sources:
                self._source_named(sources, name).succeeded()
            return signed

    @staticmethod
    def _source_named(sources: list[Source], name: str) -> Source:
        return next(s for s in sources if s.name == name)

    async def _new_attempt(self, dl: Download) -> None:
        """Throw the bytes away (recording what cut readers got) and start afresh."""
        if dl.check is not None:
            dl.check.abort()
            dl.check = None
        await self._record_cuts(dl)
        old_fd, old_path = dl.fd, dl.path
        if dl.spill is None:
            dl.fd, dl.path = self.store.new_temp(dl.rp.filename)
        else:  # still streamed: the disk is still full, this attempt keeps nothing
            dl.fd, dl.spill = None, Spill(0)
        dl.generation += 1
        dl.written = 0
        dl.sha = hashlib.sha256()
        dl.sources = []
        if old_fd is not None:
            os.close(old_fd)
        old_path.unlink(missing_ok=True)
        if dl.first is not None:
            self._start_check(dl, dl.first)
        dl.notify()

    async def _record_cuts(self, dl: Download) -> None:
        """For each reader that sent unverified bytes, what it sent (they are cut next).

        Only readers of the current attempt: one still stuck on an older attempt (a slow
        client) sent that attempt's bytes, recorded when it ended, not this file's.
        Streamed, the bytes sent are gone: no digest, so pacman's resume of them is refused.
        """
        dl.recording = True  # until the caller's next step swaps or fails the file
        sent = [r for r in dl.readers if r.sent_unverified and r.pos > r.start]
        try:
            for reader in [r for r in sent if r.generation == dl.generation]:
                digest = ""
                if dl.spill is None:
                    digest = await asyncio.to_thread(
                        digest_range, dl.path, reader.start, reader.pos
                    )
                self.cuts.add(dl.want.key, Cut(reader.start, reader.pos, digest))
        finally:
            dl.recording = False

    async def _commit(self, dl: Download, signed: Signed) -> None:
        dl.signature = signed.signature
        dl.state = State.VERIFIED
        dl.notify()  # release the held-back tail to every reader right away
        if dl.spill is not None:
            log.info("sent %s to pacman verified; not cached (the cache disk was full)", dl.rp)
            self._not_cached(dl, f"{dl.rp.filename} was streamed, not cached: the disk is full")
            return
        try:
            # The fsyncs off the loop: pacman's next request is served meanwhile.
            await asyncio.to_thread(self.store.stage_package, dl.rp, dl.path, signed.signature)
            dest = self.admission.commit(dl.want, dl.path, signed, dl.sources, staged=True)
        except (OSError, sqlite3.Error) as e:
            log.error("verified %s but could not cache it: %s (check free space)", dl.rp, e)
            # Readers go on from the open file (dl.fd): pacman still gets its verified file.
            self._not_cached(dl, f"could not cache {dl.rp.filename}: {e}")
            self._undo_commit(dl, e)
            return
        dl.path = dest  # same loop step as the rename
        self._unregister(dl)  # a new request now hits the cache
        dl.done.set_result(dest)
        self.observer.finished(asyncio.get_running_loop().time() - dl.started, True)

    def _undo_commit(self, dl: Download, error: OSError | sqlite3.Error) -> None:
        """A commit that failed midway (it writes the .sig, then the row, then renames) must
        leave no .sig or row of a package the cache does not hold."""
        cached = self.store.cache_path(dl.rp)
        if cached.exists():
            return  # an older copy stays (the rename is the last step)
        if isinstance(error, sqlite3.Error):  # no row was written (asking again would block)
            cached.with_name(cached.name + ".sig").unlink(missing_ok=True)
            return
        try:
            self.store.remove_package(dl.rp)
            self.store.removal_done(dl.rp)  # never announced: nobody to tell
        except (OSError, sqlite3.Error) as e:
            log.warning("%s: the failed commit leaves a stale entry until restart: %s", dl.rp, e)

    def _not_cached(self, dl: Download, reason: str) -> None:
        """A verified download that is not cached: readers finish from the open file, which
        is unlinked now (nothing unverified or half-written stays on disk)."""
        dl.error = reason
        dl.path.unlink(missing_ok=True)
        if dl.signature:
            self._uncached_sigs.pop(dl.want.key, None)
            self._uncached_sigs[dl.want.key] = dl.signature
            while len(self._uncached_sigs) > UNCACHED_SIGS:
                del self._uncached_sigs[next(iter(self._uncached_sigs))]
        self._unregister(dl)
        dl.done.set_exception(DownloadFailed(reason))
        dl.done.exception()  # retrieved: a fetch() nobody awaits must not warn
        self.observer.finished(asyncio.get_running_loop().time() - dl.started, True)

    async def _fail(self, dl: Download, reason: str) -> None:
        dl.error = reason
        if dl.check is not None:
            dl.check.abort()
        await self._record_cuts(dl)
        dl.state = State.FAILED
        dl.notify()
        self._unregister(dl)
        dl.path.unlink(missing_ok=True)
        log.error("download of %s failed, not cached: %s", dl.rp, reason)
        self.observer.finished(asyncio.get_running_loop().time() - dl.started, False)
        if not dl.done.done():
            dl.done.set_exception(DownloadFailed(reason))
            dl.done.exception()

    # -- filling the file from sources -----------------------------------------------------

    async def _transfer(
        self, dl: Download, sources: list[Source], attempts: list[tuple[str, str]], solo: bool
    ) -> None:
        """Fill the temp file from ``sources`` in order, each continuing at the offset
        (or, ``solo``, each starting over where the previous one failed)."""
        not_found = 0
        tried = 0
        for source in sources:
            if dl.written >= dl.size:
                return
            if not source.can_deliver(dl.want, dl.written):
                continue
            tried += 1
            try:
                await self._pull_watched(dl, source)
            except SourceFault as e:
                attempts.append((source.name, str(e)))
                if e.penalise:
                    source.failed(str(e))
                if e.status == 404:
                    not_found += 1
                log.warning("%s from %s: %s", dl.rp.filename, source.name, e)
                if solo and dl.written:
                    await self._new_attempt(dl)
        if dl.written < dl.size:
            raise UpstreamError(str(dl.rp), attempts, final_status(tried, not_found))

    async def _pull_watched(self, dl: Download, source: Source) -> None:
        """:meth:`_pull` under a watchdog: too few bytes in a window means a stall, and no
        byte within the source's ``first_byte_within`` (if it has one) means a silent one."""
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(self._pull(dl, source))
        started = window_start = loop.time()
        offset = window_bytes = dl.written
        need = self.config.min_speed * self.config.stall_timeout
        first_byte = source.first_byte_within
        try:
            while True:
                tick = WATCHDOG_TICK
                if first_byte is not None and dl.written == offset:
                    tick = max(0.0, min(tick, started + first_byte - loop.time()))
                done, _ = await asyncio.wait({task}, timeout=tick)
                if done:
                    return task.result()
                now = loop.time()
                if dl.spill is not None and dl.spill.waiting:  # for readers: not a stall
                    window_start, window_bytes = now, dl.written
                    continue
                if first_byte is not None and dl.written == offset and now - started >= first_byte:
                    raise SourceFault(
                        f"sent no byte within {first_byte:g} s (from offset {offset} of {dl.size})"
                    )
                if now - window_start >= self.config.stall_timeout:
                    moved = dl.written - window_bytes
                    if moved < max(need, 1):
                        raise SourceFault(
                            f"stalled: {moved} bytes in {now - window_start:.1f} s "
                            f"at offset {dl.written} of {dl.size}"
                        )
                    window_start, window_bytes = now, dl.written
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, SourceFault):
                    await task

    async def _pull(self, dl: Download, source: Source) -> None:
        """Copy from one source, starting at ``dl.written``, until the file is complete."""
        stream = _as_faults(source.stream(dl.want, dl.written))
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                if chunk and source.name not in dl.sources:
                    dl.sources.append(source.name)
                if chunk and not dl.got_first_byte:
                    dl.got_first_byte = True
                    self.observer.first_byte(asyncio.get_running_loop().time() - dl.started)
                remaining = dl.size - dl.written
                self.observer.received(source.name, min(len(chunk), remaining), source.peer_id)
                if len(chunk) > remaining:
                    # Endless data or the wrong file: never take more than the db's size.
                    self._append(dl, chunk[:remaining])
                    source.failed(f"sent more than the {dl.size} bytes of {dl.rp}")
                    return
                self._append(dl, chunk)
                if dl.written == dl.size:
                    return
                if dl.spill is not None:  # the slowest reader sets the pace
                    await dl.spill.room(dl.size - HOLDBACK)
        if dl.written < dl.size:
            raise SourceFault(f"connection closed at byte {dl.written} of {dl.size}")

    def _append(self, dl: Download, chunk: bytes) -> None:
        rest = chunk if dl.spill is not None else self._write(dl, chunk)
        if rest:  # streamed
            assert dl.spill is not None
            dl.spill.append(rest)
            if dl.check is not None:
                dl.check.push(rest)
        dl.sha.update(chunk)
        dl.written += len(chunk)
        dl.progressed()  # readers and gpg: batched, not per chunk

    def _write(self, dl: Download, chunk: bytes) -> bytes:
        """Write ``chunk`` to the temp file; what did not fit (then the download is streamed)."""
        assert dl.fd is not None
        done = write_until_full(dl.fd, chunk, dl.written)
        if done == len(chunk):
            return b""
        if not dl.readers:  # an audit, seeding: nobody waits for the bytes, nobody trims them
            raise OSError(errno.ENOSPC, f"no space left in {self.store.tmp_dir}")
        self._go_streamed(dl, dl.written + done)
        return chunk[done:]


async def _as_faults(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A source's stream whose every error is that source's fault (:class:`SourceFault`).

    Not only network errors: a source that breaks in a way nobody foresaw (a parser's
    ``ValueError`` on a hostile header) must cost its turn, not the download.
    """
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                yield chunk
    except SourceFault:
        raise
    except Exception as e:
        raise SourceFault(f"{type(e).__name__}: {e}") from None


__all__ = ["HOLDBACK", "Download", "DownloadFailed", "Downloader", "FileSpan"]
