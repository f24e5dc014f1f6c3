"""Signature checks that run *while* a package downloads, on the other core.

Checking a detached signature means hashing the whole file; done after the download, that
doubled the time pacman waits for the held-back tail (about 0.8 s for 300 MB). Instead gpg is
started as soon as the signature is known, reading the package on stdin, and a worker thread
feeds it the temp file with ``sendfile`` as the bytes arrive: no copy through Python, and gpg
hashes in parallel with the transfer. Its verdict is ready moments after the last byte.

The asyncio side only calls :meth:`SignatureCheck.advance` (cheap, thread-safe) and awaits
:meth:`SignatureCheck.verdict`; the thread never touches asyncio objects except through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import tempfile
import threading
from pathlib import Path

from pacswarm.verify import GPG_TIMEOUT, Verdict, gpg_verify_argv, verdict_from_gpg

#: fcntl.F_SETPIPE_SZ (Linux; spelled out where the fcntl module lacks the name).
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class SignatureCheck:
    """One ``gpg --verify SIG -`` fed from a growing file."""

    def __init__(self, gpgdir: Path, signature: bytes, data: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[Verdict] = self._loop.create_future()
        self._data = data
        self._cond = threading.Condition()
        self._available = 0
        self._final: int | None = None
        self._aborted = False
        fd, sig_name = tempfile.mkstemp(prefix=".sig-", dir=data.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(signature)
        self._sig = Path(sig_name)
        try:
            self._proc = subprocess.Popen(
                gpg_verify_argv(gpgdir, sig_name, "-"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError:
            self._sig.unlink(missing_ok=True)
            raise
        self._thread = threading.Thread(target=self._run, name=f"gpg {data.name}", daemon=True)
        self._thread.start()

    def advance(self, available: int) -> None:
        """``available`` bytes of the file are written and may be fed to gpg."""
        with self._cond:
            self._available = available
            self._cond.notify()

    def finish(self, size: int) -> None:
        """The file is complete at ``size`` bytes: gpg gets EOF after them."""
        with self._cond:
            self._available = self._final = size
            self._cond.notify()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify()
        with contextlib.suppress(OSError):
            self._proc.kill()

    async def verdict(self) -> Verdict:
        return await self._future

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            verdict = self._feed_then_decide()
        except Exception as e:  # any failure is a rejection, never a crash
            verdict = Verdict(False, f"signature check failed: {e}", local=True)
        finally:
            self._sig.unlink(missing_ok=True)
        self._loop.call_soon_threadsafe(self._resolve, verdict)

    def _resolve(self, verdict: Verdict) -> None:
        if not self._future.done():
            self._future.set_result(verdict)

    def _feed_then_decide(self) -> Verdict:
        assert self._proc.stdin is not None
        pipe = self._proc.stdin.fileno()
        with contextlib.suppress(OSError):  # fewer wake-ups of gpg per MiB; optional
            fcntl.fcntl(pipe, F_SETPIPE_SZ, 1 << 20)
        src = os.open(self._data, os.O_RDONLY)
        pos = 0
        try:
            while True:
                with self._cond:
                    while not self._aborted and pos >= self._available and self._final is None:
                        self._cond.wait()
                    if self._aborted:
                        return Verdict(False, "signature check aborted", local=True)
                    target, final = self._available, self._final
                while pos < target:
                    sent = os.sendfile(pipe, src, pos, target - pos)
                    if sent == 0:
                        raise OSError("package file shorter than its download")
                    pos += sent
                if final is not None and pos >= final:
                    break
        except BrokenPipeError:
            pass  # gpg stopped reading (it already knows the answer): read its verdict
        finally:
            os.close(src)
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            self._proc.stdin = None  # communicate() must not flush the closed pipe
        try:
            out, err = self._proc.communicate(timeout=GPG_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return Verdict(False, f"gpg did not answer within {GPG_TIMEOUT:.0f} s", local=True)
        return verdict_from_gpg(out, err)
