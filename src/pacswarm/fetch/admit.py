"""Admission: the one door into the cache, the same for bytes from any source.

A complete download is admitted only if its sha256 equals the db's ``%SHA256SUM%`` and a
signature for it is trusted by the pacman keyring with pacman's rules (:mod:`pacswarm.verify`).
Then it is committed (:meth:`Store.commit_package`: signature, row, rename) and the node's
``committed`` event fires. Nothing enters ``cache/`` any other way.

Where the signature comes from, as pacman decides (libalpm uses the db's signature when the
db carries one): the db's ``%PGPSIG%``, final if present; else the mirrors' ``.sig`` files,
first mirror first. A mirror whose ``.sig`` fails is penalised and the next mirror's is tried
on the same bytes: a bad ``.sig`` costs a gpg run, not a download.

Two different failures, two different remedies (the download acts on them):

* :class:`BadBytes`: the sha256 differs. The sources that sent the bytes lied or broke;
  another source may have the right bytes.
* :class:`BadSignature`: the bytes are the db's, but no signature is trusted. No other source
  can change that (the db names these bytes); the download fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pacswarm.errors import (
    IntegrityError,
    SignatureUncheckable,
    UpstreamError,
    VerificationError,
)
from pacswarm.events import Committed, NodeEvents
from pacswarm.fastcheck import Hash, InProcessCheck
from pacswarm.fastverify import Decline, FastPath, FastPlan
from pacswarm.fetch.mirrors import MAX_SIGNATURE, check_status, each_mirror, read_body
from pacswarm.fetch.source import Want
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.sigstream import SignatureCheck
from pacswarm.store import Store
from pacswarm.upstream import MirrorFault, Upstream
from pacswarm.verify import Verdict, verify_signature

log = logging.getLogger(__name__)

#: Seconds one mirror has to deliver a ``.sig``. The read timeout catches a mirror that
#: stops; this one catches a mirror that trickles (a byte per second is never a stall).
#: A ``.sig`` is at most 16 KiB: 4 s at the 4 KiB/s ``min_speed``. The package's tail waits
#: for the verdict and pacman gives up 10 s after its last byte: the next mirror's ``.sig``
#: must still come in time.
SIGNATURE_DEADLINE = 5.0


class BadBytes(IntegrityError):
    """The downloaded bytes are not the db's: refetch them from another source."""


class BadSignature(VerificationError):
    """The bytes are the db's but no signature for them is trusted: final for this file."""


class StreamingCheck(Protocol):
    """A signature check fed with a file's bytes as they arrive (see sigstream.py)."""

    def advance(self, available: int) -> None: ...
    def spill_from(self, offset: int) -> None: ...  # streamed: the file ends at ``offset``
    def push(self, chunk: bytes) -> None: ...  # streamed: the bytes after it
    def finish(self, size: int) -> None: ...
    def abort(self) -> None: ...
    async def verdict(self) -> Verdict: ...


class Verifier(Protocol):
    """Who decides whether a signature is trusted: gpg on the pacman keyring, in the node."""

    async def prepare(self, signature: bytes) -> FastPlan | None:
        """Before the bytes: a plan to decide ``signature`` in-process, or None (gpg)."""
        ...

    def start(
        self, signature: bytes, data: Path, running: Callable[[], Hash], plan: FastPlan | None
    ) -> StreamingCheck:
        """Begin checking ``signature`` over ``data`` while it is still being written;
        ``running`` is the download's SHA-256 over the bytes written so far."""
        ...

    async def verify(self, data: Path, signature: bytes) -> Verdict:
        """Check ``signature`` over the complete file ``data``."""
        ...

    def confirm(self, verdict: Verdict) -> None:
        """gpg accepted ``verdict``'s signature (the fast path learns confirmed subkeys)."""
        ...


class GpgVerifier:
    """pacman's decision: gpg with the pacman keyring (pacswarm.verify, pacswarm.sigstream),
    and, with ``fast``, the usual signatures decided in-process (pacswarm.fastcheck), which
    may only accept: anything it is not sure of still goes to gpg."""

    def __init__(self, gpgdir: Path, fast: FastPath | None = None) -> None:
        self.gpgdir = gpgdir
        self.fast = fast

    async def prepare(self, signature: bytes) -> FastPlan | None:
        if self.fast is None:
            return None
        # A thread: a stale trust cache is rebuilt from gpg (tens of ms) inside plan().
        plan = await asyncio.to_thread(self.fast.plan, signature)
        if isinstance(plan, Decline):
            log.debug("gpg decides this signature: %s", plan.reason)
            return None
        return plan

    def start(
        self, signature: bytes, data: Path, running: Callable[[], Hash], plan: FastPlan | None
    ) -> StreamingCheck:
        if plan is None or self.fast is None:
            return SignatureCheck(self.gpgdir, signature, data)
        return InProcessCheck(plan, running, data, lambda: self.verify(data, signature))

    async def verify(self, data: Path, signature: bytes) -> Verdict:
        return await verify_signature(self.gpgdir, data, signature)

    def confirm(self, verdict: Verdict) -> None:
        if self.fast is not None and verdict.ok:
            self.fast.confirm(verdict)


@dataclass(frozen=True)
class Signed:
    """A detached signature and who provided it (``None``: the repo db's ``%PGPSIG%``)."""

    signature: bytes
    provider: str | None


def sig_path(rp: RequestPath) -> RequestPath:
    return RequestPath(rp.repo, rp.arch, rp.filename + ".sig", FileKind.PACKAGE_SIG)


class Admission:
    def __init__(
        self, store: Store, upstream: Upstream, verifier: Verifier, events: NodeEvents
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.verifier = verifier
        self.events = events
        #: Called with (who decided: "in-process" or "gpg", accepted) for every verdict.
        self.on_checked: Callable[[str, bool], None] | None = None

    # -- signatures ------------------------------------------------------------------------

    async def first_signature(self, want: Want) -> Signed | None:
        """The signature to check first: the db's, else the first mirror's ``.sig``."""
        if want.record.pgpsig is not None:
            return Signed(want.record.pgpsig, None)
        try:
            return await each_mirror(
                self.upstream, str(sig_path(want.rp)), lambda m: self._fetch_sig(want, m)
            )
        except UpstreamError as e:
            log.warning("%s", e)
            return None

    async def _fetch_sig(self, want: Want, mirror: str) -> Signed:
        """One mirror's ``.sig``, whole, within :data:`SIGNATURE_DEADLINE`."""
        try:
            async with asyncio.timeout(SIGNATURE_DEADLINE):
                async with self.upstream.open(mirror, sig_path(want.rp)) as resp:
                    check_status(resp, 200)
                    return Signed(await read_body(resp, MAX_SIGNATURE), mirror)
        except TimeoutError:
            raise MirrorFault(
                f"{want.rp.filename}.sig not complete after {SIGNATURE_DEADLINE:.0f} s"
            ) from None

    # -- the decision ------------------------------------------------------------------

    async def decide(
        self,
        want: Want,
        digest: str,
        file: Path | None,
        first: Signed | None,
        check: StreamingCheck | None,
        sources: list[str],
    ) -> Signed:
        """The signature that admits ``file``, or raise why it cannot enter the cache.

        ``check``, if given, is the streaming gpg run already fed with ``first`` and the
        file's bytes; it is consumed here. ``file`` is None when the bytes were not kept (a
        download streamed because the disk is full): only ``check`` can decide then.
        """
        who = ", ".join(sources) or "no source"
        if digest != want.record.sha256:
            if check is not None:
                check.abort()
            raise BadBytes(
                f"{want.rp.filename}: sha256 {digest} does not match the db's "
                f"{want.record.sha256} (sent by {who})"
            )
        if first is None:
            raise BadSignature(
                f"{want.rp.filename}: no signature available (neither %PGPSIG% in the db "
                "nor a .sig on any mirror)"
            )
        verdict = await self._verdict(want, file, first, check)
        if verdict.ok:
            return first
        if first.provider is None:  # the db's own signature: pacman would use it too
            raise BadSignature(f"{want.rp.filename}: {verdict.reason} (the db's %PGPSIG%)")
        self.upstream.failed(first.provider, f"bad {want.rp.filename}.sig: {verdict.reason}")
        if file is None:
            raise BadSignature(
                f"{want.rp.filename}: {verdict.reason} ({first.provider}'s .sig); the bytes "
                "were streamed without caching (disk full), so no other .sig can be checked"
            )

        async def other_mirror(mirror: str) -> Signed:
            """The next mirror's ``.sig``, checked on the same bytes; a bad one is its fault."""
            if mirror == first.provider:
                raise MirrorFault("its .sig was checked first", penalise=False)
            other = await self._fetch_sig(want, mirror)
            checked = await self._verdict(want, file, other, None)
            if not checked.ok:
                raise MirrorFault(f"bad {want.rp.filename}.sig: {checked.reason}")
            return other

        try:
            return await each_mirror(self.upstream, str(sig_path(want.rp)), other_mirror)
        except UpstreamError as e:
            raise BadSignature(
                f"{want.rp.filename}: no trusted signature ({first.provider}: "
                f"{verdict.reason}; {e})"
            ) from None

    async def _verdict(
        self, want: Want, file: Path | None, signed: Signed, check: StreamingCheck | None
    ) -> Verdict:
        if check is not None:
            check.finish(want.size)
            verdict = await check.verdict()
        elif file is None:
            raise SignatureUncheckable("the bytes were not kept (disk full): nothing to check")
        else:
            verdict = await self.verifier.verify(file, signed.signature)
        if verdict.local:
            # Our own check broke (gpg missing or hung): refuse, but blame no source.
            raise SignatureUncheckable(f"could not check the signature: {verdict.reason}")
        if verdict.ok and verdict.path == "gpg":
            self.verifier.confirm(verdict)
        if self.on_checked is not None:
            self.on_checked(verdict.path, verdict.ok)
        return verdict

    # -- the commit --------------------------------------------------------------------

    def commit(
        self, want: Want, temp: Path, signed: Signed, sources: list[str], *, staged: bool = False
    ) -> Path:
        """Move the admitted file into the cache and tell the node. Raises OSError.

        ``staged``: :meth:`Store.stage_package` already ran (on a worker thread).
        """
        dest = self.store.commit_package(
            want.rp,
            temp,
            want.record.sha256,
            want.size,
            signed.signature,
            ",".join(sources),
            staged=staged,
        )
        log.info("cached %s (%d bytes, verified, from %s)", want.rp, want.size, ", ".join(sources))
        self.events.committed.emit(
            Committed(want.rp, dest, want.record, signed.signature, tuple(sources))
        )
        return dest


__all__ = ["Admission", "BadBytes", "BadSignature", "Signed"]
