"""Package verification: sha256 against the db, OpenPGP signature against the pacman keyring.

The trust decision is pure (:func:`decide`, from gpg's machine-readable status lines) so it can
be tested in milliseconds; running gpg is the only I/O. gpg is used rather than an in-process
OpenPGP library because only gpg evaluates keyring validity (the Arch master keys' web of trust)
exactly as pacman (through gpgme) does: pacman accepts a signature only at full or ultimate
validity, and so do we.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: gpg must answer well within pacman's 10 s patience; a 300 MB package takes ~1 s.
GPG_TIMEOUT = 60.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    fingerprint: str = ""
    #: The check itself failed here (gpg missing, timed out): not the sender's fault.
    local: bool = False

    def __str__(self) -> str:
        return self.reason


def decide(status_output: str) -> Verdict:
    """pacman's decision from ``gpg --status-fd`` output.

    gpg exits 0 even for a good signature by a key of unknown trust, so the exit code is not
    enough: pacman (gpgme) requires a valid signature *and* full or ultimate key validity.
    """
    seen: dict[str, list[str]] = {}
    for line in status_output.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        keyword, *args = line[len("[GNUPG:] ") :].split()
        seen.setdefault(keyword, args)
    fpr = (seen.get("VALIDSIG") or [""])[0]
    if "BADSIG" in seen:
        return Verdict(False, "signature is invalid (the file was modified or corrupted)")
    if "NO_PUBKEY" in seen or "ERRSIG" in seen:
        key = (seen.get("NO_PUBKEY") or seen.get("ERRSIG") or ["?"])[0]
        return Verdict(False, f"signature is from unknown key {key} (not in the pacman keyring)")
    if "REVKEYSIG" in seen:
        return Verdict(False, "signature is from a revoked key", fpr)
    if "EXPKEYSIG" in seen:
        return Verdict(False, "signature is from an expired key", fpr)
    if "EXPSIG" in seen:
        return Verdict(False, "signature has expired", fpr)
    if "VALIDSIG" not in seen:
        return Verdict(False, "no valid signature found")
    if "TRUST_ULTIMATE" in seen or "TRUST_FULLY" in seen:
        return Verdict(True, f"valid signature by {fpr}, fully trusted", fpr)
    if "TRUST_MARGINAL" in seen:
        return Verdict(False, f"signature by {fpr} is of marginal trust", fpr)
    if "TRUST_NEVER" in seen:
        return Verdict(False, f"signature by {fpr} is from a key marked never trusted", fpr)
    return Verdict(False, f"signature by {fpr} is of unknown trust", fpr)


def gpg_verify_argv(gpgdir: Path, signature: str, data: str) -> list[str]:
    """``gpg --verify`` with machine-readable status on stdout, as pacman's gpgme runs it."""
    extra: list[str] = []
    if not os.access(gpgdir / "trustdb.gpg", os.W_OK):
        # Running unprivileged on root's keyring: gpg would try to rebuild a due trustdb,
        # fail, and reject every signature. Use the trust values pacman (root) last computed.
        extra = ["--no-auto-check-trustdb", "--no-permission-warning"]
    return [
        "gpg",
        "--homedir",
        str(gpgdir),
        "--batch",
        "--no-tty",
        "--quiet",
        *extra,
        "--status-fd",
        "1",
        "--verify",
        signature,
        data,
    ]


async def verify_signature(gpgdir: Path, file: Path, signature: bytes) -> Verdict:
    """Check a detached signature of ``file`` against the keyring in ``gpgdir``."""
    if not signature:
        return Verdict(False, "no signature available (neither %PGPSIG% in the db nor a .sig)")
    try:
        # "-" makes gpg read the detached signature from stdin: no temp file to clean up.
        proc = await asyncio.create_subprocess_exec(
            *gpg_verify_argv(gpgdir, "-", str(file)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        return Verdict(False, "gpg is not installed; install gnupg", local=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(signature), GPG_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Verdict(False, f"gpg did not answer within {GPG_TIMEOUT:.0f} s", local=True)
    return verdict_from_gpg(out, err)


def verdict_from_gpg(stdout: bytes, stderr: bytes) -> Verdict:
    """:func:`decide` on gpg's status lines, with gpg's own last words when it had no answer."""
    verdict = decide(stdout.decode("utf-8", "replace"))
    if not verdict.ok and "no valid signature" in verdict.reason:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        if detail:
            return Verdict(False, f"{verdict.reason}: {detail[-1]}")
    return verdict


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def verify_package(
    gpgdir: Path, file: Path, expected_sha256: str, expected_size: int, signature: bytes | None
) -> Verdict:
    """The whole ``pacman-key -v`` + checksum decision for a file on disk (used by the CLI)."""
    size = file.stat().st_size
    if size != expected_size:
        return Verdict(False, f"size is {size} bytes, the db says {expected_size}")
    digest = await asyncio.to_thread(sha256_file, file)
    if digest != expected_sha256:
        return Verdict(False, f"sha256 {digest} does not match the db's {expected_sha256}")
    return await verify_signature(gpgdir, file, signature or b"")
