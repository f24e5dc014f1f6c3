"""Repo databases (``core.db``): parsing the tarball of ``desc`` files into an index.

Pure: takes bytes, returns records. pacman's db is a tar (gzip by default; zstd, xz, bzip2 or
uncompressed are possible) holding one folder per package with a ``desc`` file made of
``%FIELD%`` blocks. We keep only what the proxy needs to verify a download.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import io
import lzma
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import zstandard

from pacswarm.errors import RepoDbError

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: A db larger than this once decompressed is refused (a decompression bomb, not a repo):
#: Arch's biggest, extra.files, is ~60 MB uncompressed; extra.db ~10 MB.
MAX_UNCOMPRESSED = 1 << 30


@dataclass(frozen=True)
class PackageRecord:
    """What the db says about one package file: the facts a download is checked against."""

    filename: str
    name: str
    version: str
    csize: int  # size of the package file, bytes
    sha256: str  # hex, lowercase
    #: detached signature from %PGPSIG%, if the db carries one; b"" if it is not base64
    pgpsig: bytes | None
    arch: str = ""


@dataclass(frozen=True)
class RepoDb:
    """A parsed db: its records by file name and the newest entry time (rollback guard)."""

    records: dict[str, PackageRecord]
    newest_mtime: int  # newest member mtime in the tar: when the repo was last changed

    def get(self, filename: str) -> PackageRecord | None:
        return self.records.get(filename)


def _decompress(data: bytes) -> bytes:
    """Undo whatever compression the db uses, detected by magic bytes like bsdtar does."""
    try:
        if data[:2] == b"\x1f\x8b":
            return gzip.decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            # read_across_frames: a db may be several zstd frames (bsdtar reads them all).
            reader = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(data), read_across_frames=True
            )
            out = reader.read(MAX_UNCOMPRESSED + 1)
            if len(out) > MAX_UNCOMPRESSED:
                raise RepoDbError("repo db decompresses to more than 1 GiB; refusing it")
            return out
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(data)
        if data[:3] == b"BZh":
            return bz2.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError, ValueError) as e:
        raise RepoDbError(f"repo db is corrupt (decompression failed: {e})") from None
    return data  # uncompressed tar (repo-add --nocompress) or garbage; tarfile will tell


def parse_desc(text: str) -> dict[str, list[str]]:
    """``%NAME%\\nvalue\\n\\n`` blocks -> {"NAME": ["value", ...]}."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%") and len(line) > 2:
            current = fields.setdefault(line[1:-1], [])
        elif not line:
            current = None
        elif current is not None:
            current.append(line)
    return fields


def record_from_desc(fields: dict[str, list[str]]) -> PackageRecord | None:
    """Build a record, or None for an entry without the fields a download needs."""
    try:
        filename = fields["FILENAME"][0]
        sha256 = fields["SHA256SUM"][0].lower()
        csize = int(fields["CSIZE"][0])
    except (KeyError, IndexError, ValueError):
        return None
    if not _SHA256.fullmatch(sha256) or csize < 0 or "/" in filename:
        return None
    sig: bytes | None = None
    if fields.get("PGPSIG"):
        try:
            sig = base64.b64decode("".join(fields["PGPSIG"]), validate=True)
        except (binascii.Error, ValueError):
            # Present but unreadable: pacman refuses the package ("missing required
            # signature") and never falls back to the .sig, so neither may we.
            sig = b""
    return PackageRecord(
        filename=filename,
        name=(fields.get("NAME") or [""])[0],
        version=(fields.get("VERSION") or [""])[0],
        csize=csize,
        sha256=sha256,
        pgpsig=sig,
        arch=(fields.get("ARCH") or [""])[0],
    )


def _iter_desc(tar: tarfile.TarFile) -> Iterator[tuple[str, int]]:
    for member in tar:
        if member.isfile() and member.name.endswith("/desc"):
            f = tar.extractfile(member)
            if f is not None:
                yield f.read().decode("utf-8", errors="replace"), int(member.mtime)


def parse_repo_db(data: bytes) -> RepoDb:
    """Parse a whole db file. Raises :class:`RepoDbError` if it is not a pacman db."""
    raw = _decompress(data)
    if len(raw) > MAX_UNCOMPRESSED:
        raise RepoDbError("repo db decompresses to more than 1 GiB; refusing it")
    records: dict[str, PackageRecord] = {}
    newest = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for text, mtime in _iter_desc(tar):
                record = record_from_desc(parse_desc(text))
                if record is not None:
                    records[record.filename] = record
                newest = max(newest, mtime)
    except (tarfile.TarError, EOFError) as e:
        raise RepoDbError(f"repo db is not a valid tar archive ({e})") from None
    if not records and raw[:512].strip(b"\0"):
        # An empty repo is a valid tar of zero members; anything else without desc is junk.
        raise RepoDbError("repo db holds no package entries (not a pacman repo db?)")
    return RepoDb(records=records, newest_mtime=newest)
