"""The in-process signature path: accept what gpg surely would, hand the rest to gpg.

For the common Arch case -- one v4 signature, SHA-256 or SHA-512, RSA or Ed25519, by a fully
trusted packager key -- the signed digest comes from a copy of the running hash pacswarm
already computes for ``%SHA256SUM%`` (:mod:`pacswarm.openpgp`), so the package is not read a
second time and no gpg process starts. Trust stays pacman's: the fast path may only ACCEPT;
every other outcome, including "the math did not verify", goes to gpg, whose verdict is final.

The rules (issue 10; pacman's ``_alpm_check_pgp_helper`` through gpgme): exactly one binary v4
signature packet of type 0x00 (binary document); hash SHA-256 or SHA-512; RSA or Ed25519; one
hashed creation time; no critical subpacket but creation time, issuer and issuer fingerprint;
no signature expiration at all; the issuer in the trust cache (:mod:`pacswarm.trust`: primary,
or a signing subkey gpg accepted once under this keyring), valid ``f``/``u``, not disabled,
not expired now, created no later than the signature; left 16 bits and the math verify.

Usage (the lead wires it into the download)::

    plan = fast.plan(signature)            # before the bytes: cheap, cached trust
    if isinstance(plan, FastPlan):         # keep a running hashlib.new(plan.hash_name)
        if plan.accepts(running_hash): ... # accepted, final
    ... otherwise gpg decides; on gpg's acceptance call fast.confirm(verdict)

A SHA-512 signature needs a second running hash; if the ``.sig`` comes after the first bytes,
:func:`catch_up` starts it from the temp file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pacswarm import openpgp
from pacswarm.openpgp import Signature, Unsupported, Verifier
from pacswarm.trust import TrustCache
from pacswarm.verify import MAX_SIGNATURE_BYTES, Verdict

_ALLOWED_CRITICAL = frozenset(
    {openpgp.SUB_CREATION_TIME, openpgp.SUB_ISSUER, openpgp.SUB_ISSUER_FPR}
)
_ALGO_NAMES = {openpgp.ALGO_RSA: "RSA", openpgp.ALGO_EDDSA: "Ed25519"}


@dataclass(frozen=True)
class Decline:
    """Why gpg decides this signature (shown by ``pacswarm verify``, counted in metrics)."""

    reason: str


@dataclass(frozen=True)
class FastPlan:
    """A signature the fast path can decide once it has a hash over the file's bytes."""

    hash_name: str  # "sha256" or "sha512": which running hash accepts() needs
    key: str  # the signing key's fingerprint
    algo: str  # "RSA" or "Ed25519", for messages
    _signature: Signature = field(repr=False)
    _verifier: Verifier = field(repr=False)
    _valid_until: float | None = field(repr=False)
    _clock: Callable[[], float] = field(repr=False)

    def accepts(self, hashed: hashlib._Hash) -> bool:
        """True: the signature verifies over the bytes ``hashed`` saw (final). False: gpg
        decides. ``hashed`` is copied, never updated: the caller's digest is unchanged."""
        try:
            if hashed.name != self.hash_name:
                return False
            if self._valid_until is not None and self._clock() >= self._valid_until:
                return False  # the key expired while the file downloaded
            return self._verifier.verify(self._signature, self._signature.digest(hashed))
        except Exception:  # not sure: gpg decides
            return False

    @property
    def description(self) -> str:
        """``RSA/SHA-256, key FPR``: what ``pacswarm verify`` names as the deciding check."""
        return f"{self.algo}/{self.hash_name.upper().replace('SHA', 'SHA-')}, key {self.key}"

    def verdict(self) -> Verdict:
        """The accepted :class:`Verdict` after :meth:`accepts` said True, shaped like gpg's
        (``fingerprint`` and ``signer`` set), so callers log and commit it the same way."""
        return Verdict(
            True,
            f"valid signature by {self.key}, fully trusted (verified in-process, "
            f"{self.description.split(', key')[0]})",
            self.key,
            signer=self.key,
        )


def catch_up(hash_name: str, file: Path, length: int) -> hashlib._Hash:
    """A running hash over the first ``length`` bytes of ``file``: for a signature whose hash
    is not the download's sha256 (SHA-512) and that arrived after the first bytes, start the
    second hash from the temp file, then keep updating it with the bytes that follow."""
    running = hashlib.new(hash_name)
    with file.open("rb") as f:
        left = length
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{file} is shorter than the {length} bytes written")
            running.update(chunk)
            left -= len(chunk)
    return running


class FastPath:
    """Plans in-process checks against a trust cache of ``gpgdir`` (see the module doc)."""

    def __init__(self, gpgdir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._trust = TrustCache(gpgdir, clock)

    @property
    def enabled(self) -> bool:
        """False while gpg.conf (or gpg's trustdb) makes the listing no guide to gpg."""
        return self._trust.current() is None

    def plan(self, signature: bytes) -> FastPlan | Decline:
        """Before the bytes: can this ``.sig`` be decided in-process? Cheap (cached trust).

        Never raises: a fault here (a gpg that cannot list the keyring, a bug) is a Decline,
        so the signature still gets gpg's verdict and the download is not disturbed.
        """
        try:
            return self._plan(signature)
        except Exception as e:  # any doubt is gpg's to settle
            return Decline(f"fast path failed: {e!r}")

    def _plan(self, signature: bytes) -> FastPlan | Decline:
        if len(signature) > MAX_SIGNATURE_BYTES:
            return Decline("signature larger than pacman accepts")
        try:
            sig = openpgp.parse_detached(signature)
        except Unsupported as e:
            return Decline(str(e))
        problem = _signature_problem(sig)
        if problem is not None:
            return Decline(problem)
        off = self._trust.current()
        if off is not None:
            return Decline(f"fast path off: {off}")
        (created,) = sig.subpackets(openpgp.SUB_CREATION_TIME)
        signed_at = int.from_bytes(created.body, "big")
        if signed_at > self._clock():
            return Decline("signature made in the future")
        fpr = self._issuer(sig)
        if isinstance(fpr, Decline):
            return fpr
        trusted = self._trust.trusted(fpr, signed_at)
        if isinstance(trusted, str):
            return Decline(trusted)
        if trusted.verifier.key.algo != sig.pubkey_algo:
            return Decline("signature algorithm differs from the key's")
        assert sig.hash_name is not None
        return FastPlan(
            hash_name=sig.hash_name,
            key=fpr,
            algo=_ALGO_NAMES[sig.pubkey_algo],
            _signature=sig,
            _verifier=trusted.verifier,
            _valid_until=trusted.valid_until,
            _clock=self._clock,
        )

    def confirm(self, verdict: Verdict) -> None:
        """gpg accepted (``verdict.ok``, ``verdict.signer`` set): trust that signing subkey
        in-process from now on, under the current keyring state."""
        if verdict.ok and verdict.signer:
            self._trust.confirm(verdict.signer)

    def _issuer(self, sig: Signature) -> str | Decline:
        """The signer's fingerprint: issuer fingerprint and key id must agree if both given."""
        fprs = {p.body[1:].hex().upper() for p in sig.subpackets(openpgp.SUB_ISSUER_FPR)}
        ids = {p.body.hex().upper() for p in sig.subpackets(openpgp.SUB_ISSUER)}
        if len(fprs) > 1 or len(ids) > 1:
            return Decline("more than one issuer named")
        if fprs and ids and next(iter(fprs))[-16:] != next(iter(ids)):
            return Decline("issuer fingerprint and key id disagree")
        issuer = next(iter(fprs or ids), None)
        if issuer is None:
            return Decline("no issuer")
        fpr = self._trust.find(issuer)
        return fpr if fpr is not None else Decline(f"key {issuer} not in the trust cache")


def _signature_problem(sig: Signature) -> str | None:
    """The packet-level rules: what a plain Arch signature is, and nothing else."""
    if sig.sig_type != 0x00:
        return f"signature type 0x{sig.sig_type:02x} (not a binary document signature)"
    if sig.hash_name is None:
        return f"hash algorithm {sig.hash_algo} (only SHA-256 and SHA-512 in-process)"
    created = [p for p in sig.hashed if p.type == openpgp.SUB_CREATION_TIME]
    if len(created) != 1 or len(created[0].body) != 4:
        return "not exactly one hashed creation time"
    if any(p.type == openpgp.SUB_CREATION_TIME for p in sig.unhashed):
        return "unhashed creation time"
    if sig.subpackets(openpgp.SUB_EXPIRATION_TIME):
        return "signature has an expiration time"
    for p in (*sig.hashed, *sig.unhashed):
        if p.critical and p.type not in _ALLOWED_CRITICAL:
            return f"critical subpacket {p.type}"
    for p in sig.subpackets(openpgp.SUB_ISSUER_FPR):
        if len(p.body) != 21 or p.body[0] != 4:
            return "issuer fingerprint not a v4 fingerprint"
    for p in sig.subpackets(openpgp.SUB_ISSUER):
        if len(p.body) != 8:
            return "malformed issuer key id"
    return None


__all__ = ["Decline", "FastPath", "FastPlan", "catch_up"]
