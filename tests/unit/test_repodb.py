"""Repo db parsing: every compression pacman accepts, and what a broken db does."""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import lzma
import tarfile
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from pacswarm import repodb
from pacswarm.errors import RepoDbError
from pacswarm.repodb import parse_desc, parse_repo_db
from tests.support import bigdb

SIG = b"\x88\x75\x04\x00\x16\x08\x00\x1d\x16\x21\x04fake-signature-bytes"


def desc(
    name: str,
    version: str,
    *,
    arch: str = "x86_64",
    csize: int | str | None = 1234,
    sha256: str | None = None,
    pgpsig: str | None = None,
    filename: str | None = None,
    omit: tuple[str, ...] = (),
) -> str:
    filename = filename or f"{name}-{version}-{arch}.pkg.tar.zst"
    if sha256 is None:
        sha256 = hashlib.sha256(filename.encode()).hexdigest()
    fields = {
        "FILENAME": filename,
        "NAME": name,
        "BASE": name,
        "VERSION": version,
        "DESC": f"The {name} package",
        "CSIZE": csize,
        "ISIZE": 99999,
        "SHA256SUM": sha256,
        "PGPSIG": pgpsig,
        "URL": f"https://{name}.example.org/",
        "LICENSE": "GPL",
        "ARCH": arch,
        "BUILDDATE": 1700000000,
        "PACKAGER": "Some One <some@one.example>",
    }
    blocks = [f"%{k}%\n{v}\n" for k, v in fields.items() if v is not None and k not in omit]
    blocks.append("%DEPENDS%\nglibc\nzlib\n")
    return "\n".join(blocks) + "\n"


def make_tar(members: list[tuple[str, str]], mtimes: list[int] | None = None) -> bytes:
    """An uncompressed tar with a directory and a ``desc`` per package, like repo-add writes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, (folder, text) in enumerate(members):
            mtime = mtimes[i] if mtimes else 1_700_000_000
            d = tarfile.TarInfo(folder)
            d.type = tarfile.DIRTYPE
            d.mtime = mtime
            tar.addfile(d)
            data = text.encode()
            info = tarfile.TarInfo(f"{folder}/desc")
            info.size = len(data)
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zstd_one_shot(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def zstd_streamed(data: bytes) -> bytes:
    # As `bsdtar | zstd` writes it: no content size in the frame header.
    cobj = zstandard.ZstdCompressor().compressobj()
    return cobj.compress(data) + cobj.flush()


COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda b: b,
    "gzip": gzip.compress,
    "zstd": zstd_one_shot,
    "zstd-streamed": zstd_streamed,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}

TWO_PACKAGES = [
    ("zstd-1.5.6-1", desc("zstd", "1.5.6-1", csize=561234, pgpsig=base64.b64encode(SIG).decode())),
    ("python-1:3.12.3-1", desc("python", "1:3.12.3-1", csize=12_000_000)),
]


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_every_compression_gives_the_same_records(compression: str) -> None:
    db = parse_repo_db(COMPRESSIONS[compression](make_tar(TWO_PACKAGES)))
    assert sorted(db.records) == [
        "python-1:3.12.3-1-x86_64.pkg.tar.zst",
        "zstd-1.5.6-1-x86_64.pkg.tar.zst",
    ]
    zstd = db.get("zstd-1.5.6-1-x86_64.pkg.tar.zst")
    assert zstd is not None
    assert zstd.name == "zstd"
    assert zstd.version == "1.5.6-1"
    assert zstd.csize == 561234
    assert zstd.sha256 == hashlib.sha256(b"zstd-1.5.6-1-x86_64.pkg.tar.zst").hexdigest()
    assert zstd.pgpsig == SIG
    assert zstd.arch == "x86_64"
    python = db.get("python-1:3.12.3-1-x86_64.pkg.tar.zst")
    assert python is not None
    assert python.version == "1:3.12.3-1"
    assert python.pgpsig is None


def test_large_zstd_db_is_read_completely() -> None:
    # Bigger than any internal buffer of the zstd reader, so a short read would lose entries.
    members = [(f"pkg{i}-1.0-1", desc(f"pkg{i}", "1.0-1")) for i in range(3000)]
    db = parse_repo_db(zstd_streamed(make_tar(members)))
    assert len(db.records) == 3000


def test_multi_frame_zstd_db_is_read_completely() -> None:
    # zstd files may hold several frames (pzstd, `cat a.zst b.zst`); libarchive, and so
    # pacman, reads them all.
    raw = make_tar(TWO_PACKAGES)
    data = zstd_one_shot(raw[:2048]) + zstd_one_shot(raw[2048:])
    assert len(parse_repo_db(data).records) == 2


def test_newest_mtime_is_the_newest_entry() -> None:
    db = parse_repo_db(gzip.compress(make_tar(TWO_PACKAGES, mtimes=[1_700_000_500, 1_700_000_900])))
    assert db.newest_mtime == 1_700_000_900


def test_uppercase_sha256_is_normalised() -> None:
    digest = "AB" * 32
    db = parse_repo_db(make_tar([("a-1-1", desc("a", "1-1", sha256=digest))]))
    assert db.records["a-1-1-x86_64.pkg.tar.zst"].sha256 == "ab" * 32


@pytest.mark.parametrize(
    "broken",
    [
        {"omit": ("SHA256SUM",)},
        {"sha256": "d41d8cd98f00b204e9800998ecf8427e"},  # an md5, not a sha256
        {"sha256": "z" * 64},
        {"omit": ("CSIZE",)},
        {"csize": "big"},
        {"csize": -1},
        {"omit": ("FILENAME",)},
        {"filename": "../../etc/passwd"},
    ],
)
def test_entries_without_usable_checksum_size_or_name_are_skipped(
    broken: dict[str, Any],
) -> None:
    db = parse_repo_db(make_tar([("bad-1-1", desc("bad", "1-1", **broken)), TWO_PACKAGES[0]]))
    assert list(db.records) == ["zstd-1.5.6-1-x86_64.pkg.tar.zst"]


def test_invalid_base64_signature_is_an_empty_signature_not_a_missing_one() -> None:
    # pacman refuses such a package ("missing required signature") instead of using the .sig
    db = parse_repo_db(make_tar([("a-1-1", desc("a", "1-1", pgpsig="not base64 !!"))]))
    assert db.records["a-1-1-x86_64.pkg.tar.zst"].pgpsig == b""


def test_files_db_with_file_lists_parses_like_the_db() -> None:
    raw = make_tar(TWO_PACKAGES)
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=buf, mode="w") as out:
        for member in src:
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
            if member.isdir():
                data = b"%FILES%\nusr/\nusr/bin/\nusr/bin/tool\n"
                files = tarfile.TarInfo(f"{member.name}/files")
                files.size = len(data)
                out.addfile(files, io.BytesIO(data))
    db = parse_repo_db(gzip.compress(buf.getvalue()))
    assert len(db.records) == 2


# -- broken or empty dbs -------------------------------------------------------------------------


def empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    return buf.getvalue()


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd", "xz"])
def test_an_empty_repo_is_an_empty_db(compression: str) -> None:
    db = parse_repo_db(COMPRESSIONS[compression](empty_tar()))
    assert db.records == {}
    assert db.newest_mtime == 0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<html><body>404 Not Found</body></html>\n" * 20, id="html-error-page"),
        pytest.param(b"\x1f\x8b" + b"\x00garbage" * 100, id="gzip-magic-garbage"),
        pytest.param(gzip.compress(make_tar(TWO_PACKAGES))[:-40], id="truncated-gzip"),
        pytest.param(b"\x28\xb5\x2f\xfd" + b"\xffgarbage" * 100, id="zstd-magic-garbage"),
        pytest.param(zstd_one_shot(make_tar(TWO_PACKAGES))[:-30], id="truncated-zstd"),
        pytest.param(b"\xfd7zXZ\x00" + b"garbage" * 100, id="xz-magic-garbage"),
        pytest.param(b"BZh9" + b"garbage" * 100, id="bzip2-magic-garbage"),
        pytest.param(make_tar(TWO_PACKAGES)[:700], id="truncated-tar"),
        pytest.param(b"x", id="one-byte"),
    ],
)
def test_corrupt_data_is_a_repo_db_error(data: bytes) -> None:
    with pytest.raises(RepoDbError):
        parse_repo_db(data)


def test_a_tar_without_desc_files_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"<html>mirror maintenance</html>"
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(RepoDbError, match="no package entries"):
        parse_repo_db(gzip.compress(buf.getvalue()))


def test_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repodb, "MAX_UNCOMPRESSED", 4096)
    big = make_tar([(f"p{i}-1-1", desc(f"p{i}", "1-1")) for i in range(20)])
    for compress in (gzip.compress, zstd_streamed):
        with pytest.raises(RepoDbError, match="more than"):
            parse_repo_db(compress(big))


# -- helpers ------------------------------------------------------------------------------------


def test_parse_desc_reads_multi_line_fields() -> None:
    fields = parse_desc("%NAME%\nzstd\n\n%DEPENDS%\nglibc\nzlib\nxz\n\n%EMPTY%\n\n")
    assert fields["NAME"] == ["zstd"]
    assert fields["DEPENDS"] == ["glibc", "zlib", "xz"]
    assert fields["EMPTY"] == []


# -- hostile dbs: streamed under caps ------------------------------------------------------------


def tar_with(*infos: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_a_sparse_member_is_refused_before_its_holes_are_read() -> None:
    db = bigdb.sparse_bomb(1_700_000_000, claimed=64 << 30)
    assert len(db) < 200
    with pytest.raises(RepoDbError, match="sparse"):
        parse_repo_db(db)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, b"7"])
def test_only_plain_files_and_folders_are_accepted(kind: bytes) -> None:
    odd = tarfile.TarInfo("zstd-1.5.6-1/desc")
    odd.type = kind
    odd.linkname = "/etc/shadow"
    with pytest.raises(RepoDbError, match="not a plain file or folder"):
        parse_repo_db(
            tar_with((tarfile.TarInfo("a-1-1/desc"), desc("a", "1-1").encode()), (odd, None))
        )


def test_a_huge_pax_header_is_refused() -> None:
    info = tarfile.TarInfo("a-1-1/desc")
    info.pax_headers = {"comment": "x" * (repodb.MAX_HEADER + 1)}
    with pytest.raises(RepoDbError, match="extended header"):
        parse_repo_db(tar_with((info, desc("a", "1-1").encode())))


def test_a_desc_bigger_than_the_cap_is_refused() -> None:
    big = desc("a", "1-1") + "%NOTES%\n" + "x" * repodb.MAX_DESC + "\n"
    with pytest.raises(RepoDbError, match="at most"):
        parse_repo_db(make_tar([("a-1-1", big)]))


def test_too_many_members_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repodb, "MAX_MEMBERS", 10)
    members = [(f"p{i}-1-1", desc(f"p{i}", "1-1")) for i in range(6)]  # 12 members
    with pytest.raises(RepoDbError, match="more than 10 members"):
        parse_repo_db(gzip.compress(make_tar(members)))


@pytest.mark.parametrize("compression", ["gzip", "zstd-streamed", "xz", "bzip2"])
def test_every_compression_is_capped_while_decompressing(
    compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repodb, "MAX_UNCOMPRESSED", 1 << 20)
    # 4 MiB of a zero-filled member: refused at 1 MiB, without inflating the rest.
    one = tarfile.TarInfo("a-1-1/files")
    one.size = repodb.MAX_MEMBER - 512
    header = one.tobuf(tarfile.GNU_FORMAT)
    raw = header + bytes(4 << 20)
    with pytest.raises(RepoDbError, match="more than 1 MiB"):
        parse_repo_db(COMPRESSIONS[compression](raw))


def test_an_entry_dated_after_not_after_is_refused() -> None:
    data = make_tar(TWO_PACKAGES, mtimes=[1_700_000_000, 4_102_444_800])
    assert parse_repo_db(data).newest_mtime == 4_102_444_800  # no clock given: no check
    with pytest.raises(RepoDbError, match="in the future"):
        parse_repo_db(data, not_after=1_800_000_000)


def test_a_files_db_is_checked_as_a_stream() -> None:
    raw = make_tar(TWO_PACKAGES)
    summary = repodb.check_files_db(io.BytesIO(gzip.compress(raw)))
    assert (summary.members, summary.packages) == (4, 2)
    with pytest.raises(RepoDbError):
        repodb.check_files_db(io.BytesIO(b"<html>not a db</html>" * 30))


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_folder_names_are_read_in_every_tar_format(fmt: int) -> None:
    # > 100 characters: a GNU long-name header, a pax path, or the ustar prefix field.
    folder = "python-" + "x" * 90 + "-1.0-1"
    info = tarfile.TarInfo(f"{folder}/desc")
    info.mtime = 1_700_000_123
    db = parse_repo_db(tar_with((info, desc("long", "1.0-1").encode()), fmt=fmt))
    assert list(db.records) == ["long-1.0-1-x86_64.pkg.tar.zst"]
    assert db.newest_mtime == 1_700_000_123


def test_pax_size_and_mtime_override_the_header() -> None:
    info = tarfile.TarInfo("a-1-1/desc")
    info.pax_headers = {"mtime": "1700000456.25", "comment": "made by hand"}
    db = parse_repo_db(tar_with((info, desc("a", "1-1").encode())))
    assert db.newest_mtime == 1_700_000_456


def test_a_bad_header_checksum_is_a_corrupt_db() -> None:
    raw = bytearray(make_tar(TWO_PACKAGES))
    raw[600] ^= 0xFF  # inside the second header (the first desc), not its data
    with pytest.raises(RepoDbError, match="not a valid tar"):
        parse_repo_db(bytes(raw))


def test_xz_memory_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    data = lzma.compress(make_tar(TWO_PACKAGES), preset=9)  # a 64 MiB dictionary
    assert len(parse_repo_db(data).records) == 2
    monkeypatch.setattr(repodb, "XZ_MEMLIMIT", 1 << 20)
    with pytest.raises(RepoDbError, match=r"[Mm]emory"):
        parse_repo_db(data)


def test_concatenated_xz_streams_are_read_completely() -> None:
    raw = make_tar(TWO_PACKAGES)
    data = lzma.compress(raw[:2048]) + lzma.compress(raw[2048:])
    assert len(parse_repo_db(data).records) == 2
