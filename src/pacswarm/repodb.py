"""Repo databases (``core.db``, ``core.files``): capped, streamed parsing of tars of ``desc``.

pacman's db is a tar (gzip by default; zstd, xz, bzip2 or uncompressed are possible) holding
one folder per package with a ``desc`` file made of ``%FIELD%`` blocks (``.files`` dbs add a
``files`` list per folder). We keep only what the proxy needs to verify a download.

A db comes from a mirror we do not trust, so it is read as a *stream* under caps, never whole:

* every compression is decompressed incrementally, and the total is capped
  (:attr:`Limits.uncompressed`): a 1 KB bzip2 or gzip bomb stops at the cap, not in RAM;
* the tar is walked with ``tarfile`` in stream mode (``"r|"``) and only directories and plain
  regular files are accepted: a sparse member (a 94-byte gzip can claim 2 GiB of holes), links,
  devices, and oversized pax or long-name headers make the db invalid before any data is read;
* each member's size is capped (a ``desc`` at :attr:`Limits.desc`), and so is their number;
* members dated after ``not_after`` (the caller's clock plus a small skew) make the db invalid:
  a db from the future would otherwise become the rollback floor.

Every problem is a :class:`~pacswarm.errors.RepoDbError` whose message says what was wrong.
The functions here do no I/O of their own beyond reading the stream they are given; callers run
them in a worker thread (they are CPU-bound: ~1 s for Arch's 15,000-entry extra.db).
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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from pacswarm.errors import RepoDbError

_SHA256 = re.compile(r"[0-9a-f]{64}")
MiB = 1024 * 1024

#: Caps, chosen with margin over Arch's real dbs (2026): extra.db holds ~15,000 packages
#: (~30,000 members, ~45 MB as a plain tar), extra.files ~45,000 members and ~60 MB.
#: A .db index larger than this once decompressed is refused (everything we keep from it is
#: in memory, so this also bounds the index's size).
MAX_UNCOMPRESSED = 128 * MiB
#: .files dbs are only checked, not kept in memory: 8x today's extra.files.
MAX_FILES_UNCOMPRESSED = 512 * MiB
#: Members per db: twice extra.files' ~45,000. The loop over members is what costs CPU.
MAX_MEMBERS = 100_000
#: A ``desc`` is ~1-2 KiB (the largest real ones, with long depends lists, ~10 KiB).
MAX_DESC = 64 * 1024
#: Any other member of a .db (old dbs had ``depends``), and a .files ``files`` list (the
#: biggest real ones, packages with ~100,000 files, are a few MiB).
MAX_MEMBER = 32 * MiB
#: pax extended headers and GNU long names are read whole by tarfile: keep them small.
MAX_HEADER = 64 * 1024

_MEMBER_TYPES = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.AREGTYPE)
_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_READ = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """How much of a db we are willing to read (see the module docstring for the values)."""

    uncompressed: int = MAX_UNCOMPRESSED
    members: int = MAX_MEMBERS
    desc: int = MAX_DESC
    member: int = MAX_MEMBER


def db_limits() -> Limits:
    """The caps for a ``.db`` index (read at call time, so tests can shrink the constants)."""
    return Limits(MAX_UNCOMPRESSED, MAX_MEMBERS, MAX_DESC, MAX_MEMBER)


def files_limits() -> Limits:
    return Limits(MAX_FILES_UNCOMPRESSED, MAX_MEMBERS, MAX_DESC, MAX_MEMBER)


@dataclass(frozen=True)
class PackageRecord:
    """What the db says about one package file: the facts a download is checked against."""

    filename: str
    name: str
    version: str
    csize: int  # size of the package file, bytes
    sha256: str  # hex, lowercase
    pgpsig: bytes | None  # detached signature from %PGPSIG%, if the db carries one
    arch: str = ""


@dataclass(frozen=True)
class RepoDb:
    """A parsed db: its records by file name and the newest entry time (rollback guard)."""

    records: dict[str, PackageRecord]
    newest_mtime: int  # newest member mtime in the tar: when the repo was last changed

    def get(self, filename: str) -> PackageRecord | None:
        return self.records.get(filename)


@dataclass(frozen=True)
class FilesDbSummary:
    """What checking a ``.files`` db found: it is a tar of package folders within the caps."""

    members: int
    packages: int  # folders with a desc
    newest_mtime: int


# -- the capped, decompressing stream ------------------------------------------------------------

_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError)


class _CappedReader:
    """Decompressed bytes of a db, read piece by piece; more than ``cap`` is an error."""

    def __init__(self, inner: BinaryIO, cap: int) -> None:
        self.inner = inner
        self.cap = cap
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        want = _READ if size is None or size < 0 else size
        try:
            data = self.inner.read(min(want, self.cap - self.total + 1))
        except _DECOMPRESS_ERRORS as e:
            raise RepoDbError(f"repo db is corrupt (decompression failed: {e})") from None
        self.total += len(data)
        if self.total > self.cap:
            raise RepoDbError(
                f"repo db decompresses to more than {self.cap // MiB} MiB; refusing it"
                " (a decompression bomb, not a repo)"
            )
        return data


def _decompressing(raw: BinaryIO) -> BinaryIO:
    """A stream of the decompressed db, compression detected by magic bytes like bsdtar."""
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        # read_across_frames: a db may be several zstd frames (bsdtar reads them all).
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw  # uncompressed tar (repo-add --nocompress) or garbage; tarfile will tell


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that refuses, before reading their data, the headers a db never needs.

    tarfile would expand a sparse member to its claimed size and read a pax header of any
    size into memory; repo-add writes neither.
    """

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise RepoDbError(f"repo db holds a sparse member ({self.name!r}); refusing it")
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER:
            raise RepoDbError(
                f"repo db has a {self.size}-byte extended header (at most {MAX_HEADER})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]

    def _refuse_sparse(self, *args: object) -> None:
        raise RepoDbError(f"repo db holds a sparse member ({self.name!r}); refusing it")

    _proc_gnusparse_00 = _refuse_sparse
    _proc_gnusparse_01 = _refuse_sparse
    _proc_gnusparse_10 = _refuse_sparse


def _check_member(member: tarfile.TarInfo, limits: Limits, not_after: float | None) -> None:
    if member.type not in _MEMBER_TYPES or member.sparse is not None:
        raise RepoDbError(
            f"repo db member {member.name!r} is not a plain file or folder (type {member.type!r})"
        )
    cap = limits.desc if member.name.endswith("/desc") else limits.member
    if member.size > cap:
        raise RepoDbError(f"repo db member {member.name!r} is {member.size} bytes (at most {cap})")
    if not_after is not None and member.mtime > not_after:
        raise RepoDbError(
            f"repo db member {member.name!r} is dated {int(member.mtime)}, in the future "
            f"(after {int(not_after)}); if this machine's clock is wrong, fix it"
        )


def _walk(
    raw: BinaryIO, limits: Limits, not_after: float | None
) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Each member of the db (checked), with the open tar to read it from, in stream order."""
    stream = _CappedReader(_decompressing(raw), limits.uncompressed)
    count = 0
    try:
        with tarfile.open(
            fileobj=stream,  # type: ignore[arg-type]
            mode="r|",
            tarinfo=_StrictTarInfo,
        ) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # stream mode would keep every TarInfo: 100,000 of them
                count += 1
                if count > limits.members:
                    raise RepoDbError(f"repo db has more than {limits.members} members")
                _check_member(member, limits, not_after)
                yield member, tar
    except (tarfile.TarError, EOFError) as e:
        raise RepoDbError(f"repo db is not a valid tar archive ({e})") from None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    if f is None:
        return ""
    try:
        return f.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError) as e:
        raise RepoDbError(f"repo db is not a valid tar archive ({e})") from None


# -- desc parsing (pure) -------------------------------------------------------------------------


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
            sig = None
    return PackageRecord(
        filename=filename,
        name=(fields.get("NAME") or [""])[0],
        version=(fields.get("VERSION") or [""])[0],
        csize=csize,
        sha256=sha256,
        pgpsig=sig,
        arch=(fields.get("ARCH") or [""])[0],
    )


# -- whole dbs -----------------------------------------------------------------------------------


def read_repo_db(
    raw: BinaryIO, limits: Limits | None = None, not_after: float | None = None
) -> RepoDb:
    """Parse a db from a seekable stream of its (compressed) bytes, under ``limits``.

    Raises :class:`RepoDbError` if it is not a pacman db or breaks a limit.
    """
    records: dict[str, PackageRecord] = {}
    newest = 0
    members = 0
    for member, tar in _walk(raw, limits or db_limits(), not_after):
        members += 1
        if not member.isfile() or not member.name.endswith("/desc"):
            continue
        record = record_from_desc(parse_desc(_read_member(tar, member)))
        if record is not None:
            records[record.filename] = record
        newest = max(newest, int(member.mtime))
    if members and not records:
        # An empty repo is a valid tar of zero members; anything else without desc is junk.
        raise RepoDbError("repo db holds no package entries (not a pacman repo db?)")
    return RepoDb(records=records, newest_mtime=newest)


def check_files_db(
    raw: BinaryIO, limits: Limits | None = None, not_after: float | None = None
) -> FilesDbSummary:
    """Check that a ``.files`` db is a tar of package folders within the caps (not parsed).

    pacman reads it with ``pacman -F``; a bomb here would hit pacman's libarchive, and junk
    would replace a good copy, so it gets the same stream checks as the index.
    """
    limits = limits or files_limits()
    members = packages = newest = 0
    for member, _tar in _walk(raw, limits, not_after):
        members += 1
        if member.isfile() and member.name.endswith("/desc"):
            packages += 1
            newest = max(newest, int(member.mtime))
    if members and not packages:
        raise RepoDbError("files db holds no package entries (not a pacman files db?)")
    return FilesDbSummary(members, packages, newest)


def parse_repo_db(data: bytes, *, not_after: float | None = None) -> RepoDb:
    """Parse a whole db held in memory (small dbs, tests)."""
    return read_repo_db(io.BytesIO(data), not_after=not_after)


def parse_repo_db_file(path: Path, not_after: float | None = None) -> RepoDb:
    """Parse the db at ``path`` as a stream: memory is bounded by the index, not the file."""
    with path.open("rb") as f:
        return read_repo_db(f, db_limits(), not_after)


def check_files_db_file(path: Path, not_after: float | None = None) -> FilesDbSummary:
    with path.open("rb") as f:
        return check_files_db(f, files_limits(), not_after)
