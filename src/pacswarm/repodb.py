"""Repo databases (``core.db``, ``core.files``): capped, streamed parsing of tars of ``desc``.

pacman's db is a tar (gzip by default; zstd, xz, bzip2 or uncompressed are possible) holding
one folder per package with a ``desc`` file made of ``%FIELD%`` blocks (``.files`` dbs add a
``files`` list per folder). We keep only what the proxy needs to verify a download.

A db comes from a mirror we do not trust, so it is read as a *stream* under caps, never whole:

* every compression is decompressed incrementally, and the total is capped
  (:attr:`Limits.uncompressed`): a 1 KB bzip2 or gzip bomb stops at the cap, not in RAM;
* the tar is walked by a small reader of our own, header by header, keeping nothing per
  member; only folders and plain files are accepted: a sparse member (a 94-byte gzip can claim
  2 GiB of holes), links, devices, and oversized pax or long-name headers make the db invalid
  before any of their data is read (``tarfile`` would expand a sparse member, and read any pax
  header whole);
* each member's size is capped (a ``desc`` at :attr:`Limits.desc`), and so is their number;
* members dated after ``not_after`` (the caller's clock plus a small skew) make the db invalid:
  a db from the future would otherwise become the rollback floor.

Every problem is a :class:`~pacswarm.errors.RepoDbError` whose message says what was wrong.
The functions here do no I/O of their own beyond reading the stream they are given; callers run
them in a worker thread (they are CPU-bound: ~0.5-1 s for a 15,000-entry extra.db here).
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import io
import lzma
import re
import struct
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
#: A %PGPSIG% is ~200-800 base64 characters (ed25519 to RSA 4096); longer ones are not kept
#: (the package's .sig is used instead), so no entry holds much memory.
MAX_PGPSIG = 8 * 1024
#: pax extended headers and GNU long names are read whole: keep them small.
MAX_HEADER = 64 * 1024
#: Memory an xz decoder may use: its dictionary fills as it decompresses, so a header claiming
#: a 1.5 GiB dictionary would hold up to the uncompressed cap in RAM. ``xz -9`` needs 65 MiB.
XZ_MEMLIMIT = 96 * MiB

_MEMBER_TYPES = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.AREGTYPE)
#: Headers that describe the next member (pax, GNU long names); read whole, so capped.
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


class _XzReader:
    """Like ``lzma.LZMAFile`` (concatenated streams too), with a memory limit it lacks."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.dec = lzma.LZMADecompressor(memlimit=XZ_MEMLIMIT)
        self.pending = b""
        self.streams = 1

    def read(self, size: int) -> bytes:
        while True:
            if self.dec.eof:
                self.pending = self.dec.unused_data or self.raw.read(_READ)
                if not self.pending.strip(b"\0"):  # the end, or stream padding before it
                    return b""
                self.dec = lzma.LZMADecompressor(memlimit=XZ_MEMLIMIT)
                self.streams += 1
            if self.dec.needs_input and not self.pending:
                self.pending = self.raw.read(_READ)
                if not self.pending:
                    raise EOFError("xz data ends before the end of its stream")
            data = self.dec.decompress(self.pending, size)
            self.pending = b""
            if data:
                return data


def _decompressing(raw: BinaryIO) -> BinaryIO:
    """A stream of the decompressed db, compression detected by magic bytes like bsdtar."""
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        # read_across_frames: a db may be several zstd frames (bsdtar reads them all). The
        # window (memory that fills as it decompresses) stays at libzstd's 128 MiB limit.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader  # type: ignore[return-value]
    if magic == b"\xfd7zXZ\x00":
        return _XzReader(raw)  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw  # uncompressed tar (repo-add --nocompress) or garbage; tarfile will tell


@dataclass(frozen=True)
class _Member:
    """One tar member as the walk sees it (after pax and GNU long-name headers)."""

    name: str
    is_dir: bool
    size: int
    mtime: int


class _Blocks:
    """Exact-size reads from the capped stream (a decompressor may return less than asked)."""

    def __init__(self, stream: _CappedReader) -> None:
        self.stream = stream
        self.offset = 0  # bytes handed out so far
        self._buf = b""
        self._pos = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        while len(self._buf) - self._pos < size:
            piece = self.stream.read(max(_READ, size - (len(self._buf) - self._pos)))
            if not piece:
                break
            self._buf = self._buf[self._pos :] + piece
            self._pos = 0
        data = self._buf[self._pos : self._pos + size]
        self._pos += len(data)
        self.offset += len(data)
        return data

    def read_exact(self, size: int) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise RepoDbError(f"repo db is not a valid tar archive (truncated at {self.offset})")
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            size -= len(self.read_exact(min(size, _READ)))


def _pad(size: int) -> int:
    return -size % 512


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        if field[0] & 0x40:
            raise RepoDbError("repo db is not a valid tar archive (negative number in a header)")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise RepoDbError("repo db is not a valid tar archive (bad number in a header)") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _checksum_ok(block: bytes) -> bool:
    """The header checksum: the sum of its bytes with the checksum field read as spaces
    (unsigned, as everyone writes it; signed, as some old tars did)."""
    stored = _number(block[148:156])
    if stored == sum(block) - sum(block[148:156]) + 8 * 32:
        return True
    return stored == sum(struct.unpack("148b8x356b", block)) + 8 * 32


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a pax extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] not in (b"\0", b""):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise RepoDbError("repo db is not a valid tar archive (bad pax header)") from None
        if space < 0 or length <= space - pos:
            raise RepoDbError("repo db is not a valid tar archive (bad pax header)")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    if any(key.startswith("GNU.sparse") for key in records):
        raise RepoDbError("repo db holds a sparse member; refusing it")
    return records


def _member(block: bytes, long_name: str | None, pax: dict[str, str]) -> _Member:
    """The member a header describes, or RepoDbError if it is not a plain file or folder."""
    kind = block[156:157]
    name = _text(block[0:100])
    if block[257:263] == b"ustar\0" and block[345] != 0:
        name = f"{_text(block[345:500])}/{name}"
    name = pax.get("path") or long_name or name
    if kind == tarfile.GNUTYPE_SPARSE:
        raise RepoDbError(f"repo db holds a sparse member ({name!r}); refusing it")
    if kind not in _MEMBER_TYPES:
        raise RepoDbError(f"repo db member {name!r} is not a plain file or folder (type {kind!r})")
    try:
        size = int(pax["size"]) if "size" in pax else _number(block[124:136])
        mtime = int(float(pax["mtime"])) if "mtime" in pax else _number(block[136:148])
    except (ValueError, OverflowError):
        raise RepoDbError(f"repo db member {name!r} has a bad pax size or mtime") from None
    is_dir = kind == tarfile.DIRTYPE or name.endswith("/")
    return _Member(name.rstrip("/") if is_dir else name, is_dir, size, mtime)


def _check_member(member: _Member, limits: Limits, not_after: float | None) -> None:
    cap = limits.desc if member.name.endswith("/desc") else limits.member
    if member.size > cap or member.size < 0:
        raise RepoDbError(f"repo db member {member.name!r} is {member.size} bytes (at most {cap})")
    if not_after is not None and member.mtime > not_after:
        raise RepoDbError(
            f"repo db member {member.name!r} is dated {member.mtime}, in the future "
            f"(after {int(not_after)}); if this machine's clock is wrong, fix it"
        )


def _walk(
    raw: BinaryIO, limits: Limits, not_after: float | None, want: str | None
) -> Iterator[tuple[_Member, bytes | None]]:
    """Each member of the db (checked), with its data if its name ends with ``want``.

    A small tar reader of our own instead of ``tarfile``: it refuses what a db never holds
    before reading any of it, keeps nothing per member, and is ~3x faster on 45,000 members.
    """
    blocks = _Blocks(_CappedReader(_decompressing(raw), limits.uncompressed))
    count = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        block = blocks.read(512)
        if not block and count == 0 and blocks.offset == 0:
            raise RepoDbError("repo db is empty (not a tar archive)")
        if not block or block.count(0) == 512:
            return  # end of archive (bsdtar, like tarfile, takes a missing end as the end)
        if len(block) < 512 or not _checksum_ok(block):
            raise RepoDbError(
                f"repo db is not a valid tar archive (bad header at byte {blocks.offset - 512})"
            )
        count += 1
        if count > limits.members:
            raise RepoDbError(f"repo db has more than {limits.members} members")
        kind = block[156:157]
        if kind in _HEADER_TYPES:
            size = _number(block[124:136])
            if size > MAX_HEADER:
                raise RepoDbError(
                    f"repo db has a {size}-byte extended header (at most {MAX_HEADER})"
                )
            data = blocks.read_exact(size)
            blocks.skip(_pad(size))
            if kind == tarfile.XHDTYPE:
                pax = _pax_records(data)
            elif kind == tarfile.GNUTYPE_LONGNAME:
                long_name = _text(data)
            continue  # global pax headers and long link names change nothing we read
        member = _member(block, long_name, pax)
        long_name, pax = None, {}
        _check_member(member, limits, not_after)
        data = None
        if want is not None and not member.is_dir and member.name.endswith(want):
            data = blocks.read_exact(member.size)
        else:
            blocks.skip(member.size)
        blocks.skip(_pad(member.size))
        yield member, data


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
    if not _SHA256.fullmatch(sha256) or csize < 0 or "/" in filename or len(filename) > 255:
        return None  # (pacswarm never serves a longer name: see requestpath)
    sig: bytes | None = None
    if fields.get("PGPSIG") and sum(map(len, fields["PGPSIG"])) <= MAX_PGPSIG:
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
    for member, data in _walk(raw, limits or db_limits(), not_after, "/desc"):
        members += 1
        if data is None:
            continue
        record = record_from_desc(parse_desc(data.decode("utf-8", errors="replace")))
        if record is not None:
            records[record.filename] = record
        newest = max(newest, member.mtime)
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
    for member, _ in _walk(raw, limits, not_after, None):
        members += 1
        if not member.is_dir and member.name.endswith("/desc"):
            packages += 1
            newest = max(newest, member.mtime)
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
