"""What a pacman request path names: pure parsing and validation, no I/O.

pacman asks for ``/$repo/os/$arch/<file>``. Everything else, and every name that could
escape a directory (``..``, ``/`` after decoding, NUL, leading dots), is rejected here, before
any path is joined.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# Arch package file names use letters, digits and @._+:- (epochs add ':'). No '/', no '%'.
_NAME = re.compile(r"[A-Za-z0-9@_+:][A-Za-z0-9@._+:~-]{0,254}")
_REPO_OR_ARCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,63}")
_PACKAGE_SUFFIX = re.compile(r"\.pkg\.tar(\.(gz|xz|zst|bz2|lz4|lrz|lzo|Z))?$")


class FileKind(enum.Enum):
    DB = "db"  # core.db, core.files, core.db.tar.gz ... and their .sig: always from upstream
    PACKAGE = "package"  # foo-1.0-1-x86_64.pkg.tar.zst: verified, cached, shared
    PACKAGE_SIG = "package-sig"  # foo-...pkg.tar.zst.sig
    OTHER = "other"  # lastupdate, anything else: passed through, never cached


@dataclass(frozen=True)
class RequestPath:
    repo: str
    arch: str
    filename: str
    kind: FileKind

    @property
    def package_filename(self) -> str:
        """For a PACKAGE_SIG, the package it signs; else the file itself."""
        if self.kind is FileKind.PACKAGE_SIG:
            return self.filename.removesuffix(".sig")
        return self.filename

    def __str__(self) -> str:
        return f"/{self.repo}/os/{self.arch}/{self.filename}"


class BadPath(ValueError):
    """The path is not a pacman repository path (answered with 400 or 404)."""


def classify(repo: str, filename: str) -> FileKind:
    if filename.startswith((f"{repo}.db", f"{repo}.files")):
        return FileKind.DB
    if filename.endswith(".sig") and _PACKAGE_SUFFIX.search(filename.removesuffix(".sig")):
        return FileKind.PACKAGE_SIG
    if _PACKAGE_SUFFIX.search(filename):
        return FileKind.PACKAGE
    return FileKind.OTHER


def parse_request_path(repo: str, os_part: str, arch: str, filename: str) -> RequestPath:
    """Validate the already-decoded path segments of ``/$repo/os/$arch/<file>``."""
    if os_part != "os":
        raise BadPath("expected /$repo/os/$arch/<file>")
    if not _REPO_OR_ARCH.fullmatch(repo) or ".." in repo:
        raise BadPath(f"invalid repository name {repo!r}")
    if not _REPO_OR_ARCH.fullmatch(arch) or ".." in arch:
        raise BadPath(f"invalid architecture {arch!r}")
    if not _NAME.fullmatch(filename) or ".." in filename:
        raise BadPath(f"invalid file name {filename!r}")
    return RequestPath(repo, arch, filename, classify(repo, filename))
