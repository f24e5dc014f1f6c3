"""Package verification: sha256 against the db, OpenPGP signature against the pacman keyring.

The trust decision is pure (:func:`decide`, from gpg's machine-readable status lines) so it can
be tested in milliseconds; running gpg is the only I/O. gpg is used rather than an in-process
OpenPGP library because only gpg evaluates keyring validity (the Arch master keys' web of trust)
exactly as pacman (through gpgme) does.

pacman's rule (lib/libalpm/signing.c, 6.0, ``_alpm_check_pgp_helper``): *every* signature in
the file must be good and made by a key of full or ultimate validity; a file with none fails.
gpg reports each signature as a group of status lines opened by ``NEWSIG``; :func:`decide`
judges each group on its own and refuses the file if any group fails, so a rogue signature
cannot borrow the ``TRUST_FULLY`` line of the packager's signature next to it.

Before gpg sees a signature, :func:`signature_problem` bounds what it is asked to do: at most
:data:`MAX_SIGNATURE_BYTES` of plain signature packets, nothing gpg would have to unpack.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: Bound on a whole-file ``gpg --verify`` (used when the signature arrives after the file, and
#: by the CLI): hashing 300 MB takes ~1 s, and the signature itself is bounded by
#: :func:`signature_problem`, so gpg that needs longer is stuck here (a lock, a dead agent).
GPG_TIMEOUT = 60.0

#: pacman's own limit for a downloaded ``.sig`` (dload.c, 16 KiB). Arch signatures are 120
#: (ed25519) to ~570 (RSA 4096) bytes each, so this still allows dozens of signatures in one
#: file; and every signature pacman could fetch as a ``.sig``, pacswarm checks too. A db's
#: %PGPSIG% gets the same cap: pacman has none there, but no real one comes near it.
MAX_SIGNATURE_BYTES = 16 * 1024

#: OpenPGP packet tags (RFC 4880 4.3) named in refusals.
_PACKET_NAMES = {
    1: "an encrypted session key",
    2: "a signature",
    4: "a one-pass signature",
    6: "a public key",
    8: "a compressed data packet",
    10: "a marker packet",
    11: "a literal data packet",
}
_SIGNATURE_TAG = 2

#: gpg's (untranslated; we run it with LC_ALL=C) note for a key disabled in the keyring:
#: ``pacman-key --populate`` disables every key listed in archlinux-revoked. gpg's status
#: lines say nothing about it, but gpgme reports ``key->disabled`` and pacman refuses.
DISABLED_NOTE = "Note: This key has been disabled."


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    fingerprint: str = ""
    #: The check itself failed here (gpg missing, stuck): not the sender's fault.
    local: bool = False
    #: The signing key's fingerprint from gpg's ``VALIDSIG`` (a subkey's own, if a subkey
    #: signed), set on an accepted verdict: what the fast path's trust cache confirms.
    signer: str | None = None
    #: Who decided: ``"gpg"``, or ``"in-process"`` (the fast path, which only accepts).
    path: str = "gpg"

    def __str__(self) -> str:
        return self.reason


def signature_problem(signature: bytes) -> str | None:
    """Why ``signature`` is refused before gpg runs, or ``None`` if gpg may check it.

    gpg's cost must be bounded by the signature's size, and it is only for a sequence of
    plain signature packets (each costs gpg one key lookup and one hash comparison: 136 of
    them, the most 16 KiB holds, take gpg 0.16 s). Anything else costs without bound: a
    bzip2 packet of 1 KB unpacks into 10,000 signatures (6.6 s of gpg if they are good ones,
    230 s of pacman -U), one of 7 KB into 100,000 (555 s of gpg). Arch's signatures (makepkg,
    repo-add) are binary signature packets only, so nothing real is refused. The one place we
    knowingly differ from pacman: it accepts a good signature wrapped in a compressed packet
    (or armored), which no Arch mirror serves. All of these are the sender's fault.
    """
    if not signature:
        return (
            "no signature to check (an empty .sig, or a %PGPSIG% in the db that is empty or "
            "not base64: pacman refuses those too)"
        )
    if len(signature) > MAX_SIGNATURE_BYTES:
        return (
            f"signature is {len(signature)} bytes, more than the {MAX_SIGNATURE_BYTES} "
            "pacman accepts for a .sig (a real one is under 1 KiB): refused unchecked"
        )
    pos, count = 0, 0
    while pos < len(signature):
        count += 1
        header = _packet_header(signature, pos)
        if header is None:
            return f"signature is not binary OpenPGP: packet {count} has no valid header"
        tag, start, length = header
        if tag != _SIGNATURE_TAG:
            what = _PACKET_NAMES.get(tag, f"a packet of type {tag}")
            return f"signature packet {count} is {what}, not a signature: refused unchecked"
        if start + length > len(signature):
            return f"signature is truncated: packet {count} runs past the end"
        pos = start + length
    return None


def _packet_header(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, body start, body length) of the OpenPGP packet at ``pos`` (RFC 4880 4.2).

    ``None`` for what no signature packet uses: not a packet, an indeterminate (old format
    type 3) or partial (new format 224-254) body length.
    """
    first = data[pos]
    if not first & 0x80:
        return None
    rest = data[pos + 1 : pos + 6]
    if first & 0x40:  # new format: tag in 6 bits, one, two or five length octets
        tag = first & 0x3F
        if not rest:
            return None
        if rest[0] < 192:
            return tag, pos + 2, rest[0]
        if rest[0] < 224 and len(rest) >= 2:
            return tag, pos + 3, ((rest[0] - 192) << 8) + rest[1] + 192
        if rest[0] == 255 and len(rest) >= 5:
            return tag, pos + 6, int.from_bytes(rest[1:5], "big")
        return None
    tag, kind = (first >> 2) & 0x0F, first & 0x03  # old format: 1, 2 or 4 length octets
    if kind == 3:
        return None
    width = 1 << kind
    if len(rest) < width:
        return None
    return tag, pos + 1 + width, int.from_bytes(rest[:width], "big")


@dataclass
class _Signature:
    """What gpg's status lines say about one signature of the file (one ``NEWSIG`` group)."""

    outcome: str = ""  # GOODSIG, BADSIG, EXPSIG, EXPKEYSIG, REVKEYSIG or ERRSIG
    key: str = ""  # the long key id gpg names in the outcome line
    error_code: str = ""  # ERRSIG's reason: 9 = no public key, 4 = unsupported algorithm
    no_pubkey: bool = False
    fpr: str = ""  # from VALIDSIG: gpg checked the signature against the data
    validity: str = "unknown"  # from TRUST_*: full, marginal, never or unknown


_OUTCOMES = frozenset({"GOODSIG", "BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG"})
#: gpgme's validity from gpg's trust line; ultimate counts as full for pacman. No trust line
#: (gpg writes none for an expired key) or TRUST_UNDEFINED is gpgme's UNKNOWN.
_VALIDITY = {
    "TRUST_ULTIMATE": "full",
    "TRUST_FULLY": "full",
    "TRUST_MARGINAL": "marginal",
    "TRUST_NEVER": "never",
    "TRUST_UNDEFINED": "unknown",
}


def _parse_status(status_output: str) -> tuple[list[_Signature], bool]:
    """gpg's status lines as one record per signature, and whether gpg met non-signature data.

    A group starts at ``NEWSIG``; a second outcome line in one group also starts a new one,
    so a gpg that omitted ``NEWSIG`` cannot make two signatures share a trust line.
    """
    signatures: list[_Signature] = []
    nodata = False
    current: _Signature | None = None
    for line in status_output.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue  # gpg's human-readable text, never part of the decision
        keyword, *args = line[len("[GNUPG:] ") :].split()
        if keyword in ("NODATA", "UNEXPECTED"):
            nodata = True
        if keyword == "NEWSIG" or (keyword in _OUTCOMES and (current is None or current.outcome)):
            current = _Signature()
            signatures.append(current)
        if current is None:
            continue
        if keyword in _OUTCOMES:
            current.outcome, current.key = keyword, (args or ["?"])[0]
            if keyword == "ERRSIG" and len(args) >= 6:
                current.error_code = args[5]
        elif keyword == "NO_PUBKEY":
            current.no_pubkey = True
        elif keyword == "VALIDSIG" and args:
            current.fpr = args[0]
        elif keyword in _VALIDITY:
            current.validity = _VALIDITY[keyword]
    return signatures, nodata


def _refusal(sig: _Signature) -> str | None:
    """Why pacman refuses this one signature, or ``None`` if it passes (gpgme's mapping)."""
    who = sig.fpr or sig.key
    if sig.outcome == "BADSIG":
        return "signature is invalid (the file was modified or corrupted)"
    if sig.outcome == "ERRSIG" and (sig.no_pubkey or sig.error_code == "9"):
        return f"signature is from unknown key {sig.key} (not in the pacman keyring)"
    if sig.outcome == "ERRSIG":
        return f"signature by key {sig.key} cannot be checked (gpg error {sig.error_code or '?'})"
    if sig.outcome == "REVKEYSIG":
        return f"signature by {who} is from a revoked key"
    if sig.outcome == "EXPKEYSIG":
        # gpgme: KEY_EXPIRED with no trust line, so validity UNKNOWN; pacman says "unknown
        # trust". (It would pass an expired key at full validity, which gpg never reports.)
        return f"signature by {who} is from an expired key (pacman: unknown trust)"
    if sig.outcome == "EXPSIG":
        return f"signature by {who} has expired"
    if sig.outcome != "GOODSIG" or not sig.fpr:
        return "no valid signature found (gpg stopped before its verdict)"
    if sig.validity == "marginal":
        return f"signature by {who} is of marginal trust"
    if sig.validity == "never":
        return f"signature by {who} is from a key marked never trusted"
    if sig.validity != "full":
        return f"signature by {who} is of unknown trust"
    return None


def decide(status_output: str, notes: str = "") -> Verdict:
    """pacman's decision from the whole ``gpg --status-fd`` output of one ``--verify``.

    gpg exits 0 even for a good signature by a key of unknown trust, so the exit code is not
    used: every signature must be good *and* at full or ultimate validity (pacman via gpgme).
    ``notes`` is gpg's stderr, read only for :data:`DISABLED_NOTE`.
    """
    signatures, nodata = _parse_status(status_output)
    if nodata:
        # gpgme turns NODATA into an error for the whole check ("GPGME error: No data").
        return Verdict(False, "no valid signature found: the signature data is not OpenPGP")
    if not signatures:
        return Verdict(False, "no valid signature found")
    for n, sig in enumerate(signatures, 1):
        reason = _refusal(sig)
        if reason is not None:
            where = f"signature {n} of {len(signatures)}: " if len(signatures) > 1 else ""
            return Verdict(False, where + reason, sig.fpr)
    fprs = [sig.fpr for sig in signatures]
    if DISABLED_NOTE in notes:
        return Verdict(
            False,
            "signature is from a key disabled in the pacman keyring (pacman-key disables "
            "revoked keys)",
            fprs[0],
        )
    if len(fprs) == 1:
        return Verdict(
            True, f"valid signature by {fprs[0]}, fully trusted", fprs[0], signer=fprs[0]
        )
    return Verdict(
        True,
        f"{len(fprs)} valid signatures by {', '.join(fprs)}, all fully trusted",
        fprs[0],
        signer=fprs[0],
    )


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


def gpg_env() -> dict[str, str]:
    """Our environment with gpg's messages untranslated, so :data:`DISABLED_NOTE` matches."""
    return {**os.environ, "LC_ALL": "C", "LANGUAGE": ""}


async def verify_signature(
    gpgdir: Path, file: Path, signature: bytes, *, timeout: float = GPG_TIMEOUT
) -> Verdict:
    """Check a detached signature of ``file`` against the keyring in ``gpgdir``.

    A gpg that has not answered after ``timeout`` is killed and the verdict is *local*: with
    the signature bounded by :func:`signature_problem`, a crafted one cannot keep gpg busy
    that long, so a stuck gpg is this machine's problem (a lock, a wedged agent).
    """
    problem = signature_problem(signature)
    if problem is not None:
        return Verdict(False, problem)
    try:
        # "-" makes gpg read the detached signature from stdin: no temp file to clean up.
        proc = await asyncio.create_subprocess_exec(
            *gpg_verify_argv(gpgdir, "-", str(file)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=gpg_env(),
        )
    except FileNotFoundError:
        return Verdict(False, "gpg is not installed; install gnupg", local=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(signature), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Verdict(False, stuck_reason(timeout), local=True)
    return verdict_from_gpg(out, err)


def stuck_reason(seconds: float) -> str:
    """The refusal for a gpg we killed: what happened and what the user can check."""
    return (
        f"gpg did not answer within {seconds:g} s and was killed "
        "(check for a stuck gpg-agent or a locked keyring: gpgconf --kill all)"
    )


def verdict_from_gpg(stdout: bytes, stderr: bytes) -> Verdict:
    """:func:`decide` on gpg's status lines, with gpg's own last words when it had no answer."""
    notes = stderr.decode("utf-8", "replace")
    verdict = decide(stdout.decode("utf-8", "replace"), notes)
    if not verdict.ok and "no valid signature" in verdict.reason:
        detail = notes.strip().splitlines()
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
