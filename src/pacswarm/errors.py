"""Every error pacswarm raises on purpose, and what the user should do about it.

    PacswarmError
    ├── ConfigError          a config key or flag is wrong; the message names the key
    ├── MirrorlistError      a mirrorlist line cannot be used; the message names file and line
    ├── RepoDbError          a repo database could not be parsed (corrupt or not a db)
    ├── UpstreamError        no mirror could deliver a file (every mirror tried is listed)
    ├── VerificationError    a package failed sha256 or signature checks (never cached)
    │   ├── IntegrityError   the bytes are wrong: size or sha256 differ from the db
    │   │   └── BadBytes     (fetch.admit) another source may have the right bytes
    │   ├── BadSignature     (fetch.admit) the db's bytes, but no trusted signature: final
    │   └── SignatureUncheckable  gpg could not run here; the sender is not blamed
    ├── NoSpaceError         a package would not fit on the cache filesystem
    ├── IpnsRecordError      (ipns.record) an IPNS record that must not be built or believed
    └── IpnsPublishError     (ipns.publisher) publishing is off, or nothing to publish yet

Errors carry the context (path, mirror, key) so a log line alone tells what went wrong.
"""

from __future__ import annotations


class PacswarmError(Exception):
    """Base of every error pacswarm raises deliberately."""


class ConfigError(PacswarmError):
    """A configuration key, flag or file is invalid. Raised before anything starts."""


class MirrorlistError(PacswarmError):
    """The mirrorlist names no usable mirror, or a line is malformed."""


class RepoDbError(PacswarmError):
    """A repo database (``core.db``) is not a readable tar of ``desc`` files.

    Raised for a corrupt download; the previous good copy stays in use.
    """


class UpstreamError(PacswarmError):
    """Every mirror failed for one file. ``attempts`` lists ``(mirror, reason)`` pairs."""

    def __init__(self, path: str, attempts: list[tuple[str, str]], status: int = 502) -> None:
        self.path = path
        self.attempts = attempts
        self.status = status
        tried = "; ".join(f"{m}: {r}" for m, r in attempts) or "no mirror configured"
        super().__init__(f"no mirror could deliver {path} ({tried})")


class VerificationError(PacswarmError):
    """A package's signature is missing, invalid or not trusted by the pacman keyring.

    The file is discarded, never cached; the mirrors that sent it are penalised.
    """


class IntegrityError(VerificationError):
    """The package bytes do not match the db: wrong size or wrong sha256."""


class SignatureUncheckable(VerificationError):
    """The signature could not be checked on this machine (gpg missing, hung or crashed).

    The package is still refused (never served unverified), but no mirror is penalised:
    fix the local gpg (``pacman-key --init``, install gnupg) and try again.
    """


class NoSpaceError(PacswarmError):
    """A package cannot be downloaded into the cache: it would not fit on its filesystem.

    Raised to downloads nobody waits for (audits, seeding); for pacman the package is
    streamed without being cached instead. Free some space and try again.
    """
