"""Signature checks that run *while* a package downloads, on the other core.

Checking a detached signature means hashing the whole file; done after the download, that
doubled the time pacman waits for the held-back tail (about 0.8 s for 300 MB). Instead gpg is
started as soon as the signature is known, reading the package on stdin, and a worker thread
feeds it the temp file with ``sendfile`` as the bytes arrive: no copy through Python, and gpg
hashes in parallel with the transfer. Its verdict is ready moments after the last byte.

The asyncio side only calls :meth:`SignatureCheck.advance` (cheap, thread-safe) and awaits
:meth:`SignatureCheck.verdict`; the thread never touches asyncio objects except through
``call_soon_threadsafe``.

A *streamed* download (the cache disk is full, :mod:`pacswarm.fetch.spill`) keeps only its
first bytes in the file: :meth:`SignatureCheck.spill_from` says where the file ends, and the
bytes after it are handed over with :meth:`SignatureCheck.push` and written to gpg from
memory. The signature itself reaches gpg through a pipe, not a file: it must be checkable
when the disk has no byte left.

Bounds. A signature that :func:`~pacswarm.verify.signature_problem` refuses never reaches gpg
(the verdict is ready at once, the sender's fault). What gpg is then asked to do costs
milliseconds beyond hashing, so a gpg that stops reading its input for
:data:`GPG_STALL_TIMEOUT`, or has no verdict :data:`GPG_FINISH_TIMEOUT` after the last byte
arrived, is stuck *here* (a wedged gpg-agent, a keyring lock, a broken install): it is killed
and the verdict is ``local``, so no mirror is blamed for it. There is no bound from the start
of the check: it lasts as long as the download, which has its own stall watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from pacswarm.verify import (
    Verdict,
    gpg_env,
    gpg_verify_argv,
    signature_problem,
    stuck_reason,
    verdict_from_gpg,
)

#: fcntl.F_SETPIPE_SZ (Linux; spelled out where the fcntl module lacks the name).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

#: After the last byte, gpg has at most the pipe's 1 MiB left to hash (milliseconds) and the
#: signatures to check. pacman gives up on a transfer 10 s without a byte and pacswarm holds
#: the tail back until the verdict, so gpg must answer well inside that: a clear "gpg is
#: stuck" beats pacman's "Operation too slow".
GPG_FINISH_TIMEOUT = 8.0

#: gpg not taking a single byte of a full pipe for this long, mid-download, is stuck. Generous:
#: before its first read gpg may be rebuilding a due trustdb (seconds on Arch's keyring).
GPG_STALL_TIMEOUT = 20.0


class SignatureCheck:
    """One ``gpg --verify SIG -`` fed from a growing file."""

    def __init__(
        self,
        gpgdir: Path,
        signature: bytes,
        data: Path,
        *,
        finish_timeout: float = GPG_FINISH_TIMEOUT,
        stall_timeout: float = GPG_STALL_TIMEOUT,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[Verdict] = self._loop.create_future()
        self._data = data
        self._cond = threading.Condition()
        self._available = 0
        self._final: int | None = None
        self._finish_by: float | None = None
        self._aborted = False
        self._finish_timeout = finish_timeout
        self._stall_timeout = stall_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._file_end: int | None = None  # streamed: the file holds bytes 0.._file_end
        self._memory: deque[bytes] = deque()  # streamed: the bytes after it, in order
        problem = signature_problem(signature)
        if problem is not None:
            self._future.set_result(Verdict(False, problem))  # gpg never sees it
            return
        # At most MAX_SIGNATURE_BYTES (16 KiB) < a pipe's 64 KiB: the write never blocks.
        sig_read, sig_write = os.pipe()
        try:
            try:
                os.write(sig_write, signature)
            finally:
                os.close(sig_write)  # gpg reads the signature to its end
            self._proc = subprocess.Popen(
                gpg_verify_argv(gpgdir, f"/dev/fd/{sig_read}", "-"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=gpg_env(),
                pass_fds=(sig_read,),
            )
        finally:
            os.close(sig_read)  # gpg has its own copy
        self._thread = threading.Thread(target=self._run, name=f"gpg {data.name}", daemon=True)
        self._thread.start()

    def advance(self, available: int) -> None:
        """``available`` bytes of the file are written and may be fed to gpg."""
        with self._cond:
            self._available = available
            self._cond.notify()

    def spill_from(self, offset: int) -> None:
        """The file ends at ``offset``: every byte after it comes through :meth:`push`."""
        with self._cond:
            self._file_end = self._available = offset
            self._cond.notify()

    def push(self, chunk: bytes) -> None:
        """The next bytes after :meth:`spill_from`'s offset (or after the last push)."""
        with self._cond:
            self._memory.append(chunk)
            self._available += len(chunk)
            self._cond.notify()

    def finish(self, size: int) -> None:
        """The file is complete at ``size`` bytes: gpg gets EOF after them, and its deadline."""
        with self._cond:
            self._available = self._final = size
            self._finish_by = time.monotonic() + self._finish_timeout
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()

    async def verdict(self) -> Verdict:
        return await self._future

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            verdict = self._feed() or self._decide()
        except Exception as e:  # any failure is a rejection, never a crash
            verdict = Verdict(False, f"signature check failed: {e}", local=True)
        finally:
            self._reap()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody awaits us
            self._loop.call_soon_threadsafe(self._resolve, verdict)

    def _resolve(self, verdict: Verdict) -> None:
        if not self._future.done():
            self._future.set_result(verdict)

    def _reap(self) -> None:
        """gpg is gone when the thread ends, whatever happened (no zombie, no stray CPU)."""
        assert self._proc is not None
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()  # not read: a child of a killed gpg may still hold the other end

    def _wait_budget(self) -> float:
        """How long gpg may now take to accept bytes or answer: the stall or the deadline."""
        with self._cond:
            finish_by = self._finish_by
        if finish_by is None:
            return self._stall_timeout
        return max(0.0, min(self._stall_timeout, finish_by - time.monotonic()))

    def _stuck(self) -> Verdict:
        with self._cond:
            finished = self._finish_by is not None
        seconds = self._finish_timeout if finished else self._stall_timeout
        return Verdict(False, stuck_reason(seconds), local=True)

    def _feed(self) -> Verdict | None:
        """Feed gpg the file as it grows (then memory); a verdict only if feeding ended it."""
        assert self._proc is not None and self._proc.stdin is not None
        pipe = self._proc.stdin.fileno()
        with contextlib.suppress(OSError):  # fewer wake-ups of gpg per MiB; optional
            fcntl.fcntl(pipe, F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(pipe, False)  # a full pipe must not block us past the deadline
        writable = select.poll()
        writable.register(pipe, select.POLLOUT)
        src: int | None = None  # opened when a byte of the file is due: streamed may have none
        pos = 0
        try:
            while True:
                with self._cond:
                    while not self._aborted and pos >= self._available and self._final is None:
                        self._cond.wait()
                    if self._aborted:
                        return Verdict(False, "signature check aborted", local=True)
                    target, final, file_end = self._available, self._final, self._file_end
                    in_file = target if file_end is None else min(target, file_end)
                    memory = [] if pos < in_file else list(self._memory)
                    if memory:
                        self._memory.clear()
                    if final is not None and pos >= in_file and not memory and pos < final:
                        raise OSError("streamed package bytes missing before its end")
                while pos < in_file:
                    if src is None:
                        src = os.open(self._data, os.O_RDONLY)
                    try:
                        sent = os.sendfile(pipe, src, pos, in_file - pos)
                    except BlockingIOError:
                        if not writable.poll(self._wait_budget() * 1000):
                            return self._stuck()
                        continue
                    if sent == 0:
                        raise OSError("package file shorter than its download")
                    pos += sent
                for chunk in memory:
                    if not self._write_all(pipe, writable, chunk):
                        return self._stuck()
                    pos += len(chunk)
                if final is not None and pos >= final:
                    return None
        except BrokenPipeError:
            return None  # gpg stopped reading (it already knows the answer): read its verdict
        finally:
            if src is not None:
                os.close(src)
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            self._proc.stdin = None  # communicate() must not flush the closed pipe

    def _write_all(self, pipe: int, writable: select.poll, data: bytes) -> bool:
        """Write ``data`` to gpg's non-blocking stdin; False if gpg took nothing in time."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(pipe, view) :]
            except BlockingIOError:
                if not writable.poll(self._wait_budget() * 1000):
                    return False
        return True

    def _decide(self) -> Verdict:
        """gpg's verdict on what it was fed, within the deadline that :meth:`finish` set."""
        assert self._proc is not None
        with self._cond:
            if self._aborted:
                return Verdict(False, "signature check aborted", local=True)
        try:
            out, err = self._proc.communicate(timeout=self._wait_budget())
        except subprocess.TimeoutExpired:
            return self._stuck()  # _reap kills it
        return verdict_from_gpg(out, err)
