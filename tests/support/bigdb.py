"""Generated repo dbs of Arch's size, and hostile ones (bombs, dates from the future).

Why generated: the signed test repo has four packages, so its dbs are a few KB, while Arch's
extra.db lists ~15,000 packages (several MB compressed) and extra.files several times that.
Size is what broke db sync (a body read in one call, a whole db decompressed in memory), so
the tests need dbs of the real size with realistic fields (a ~400-character base64 %PGPSIG%,
dependency lists, file lists). The generated entries are added to the test repo's real ones,
so pacman still installs the real packages from the big db.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import os
import random
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

ENTRIES = 15_000
_WORDS_TEXT = (
    "lib python perl qt gtk rust go node font theme plugin tools utils daemon server client "
    "core extra data docs devel git cli gui audio video image net sync crypt xml json yaml"
)
_WORDS = tuple(_WORDS_TEXT.split(" "))
_LICENSES = ("GPL-2.0-or-later", "MIT", "Apache-2.0", "LGPL-2.1-or-later", "BSD-3-Clause")
_DIRS = (
    "usr/bin",
    "usr/lib",
    "usr/share/doc",
    "usr/share/man/man1",
    "usr/share/licenses",
    "usr/include",
)


@dataclass(frozen=True)
class BigDbs:
    """A generated ``<repo>.db`` and ``<repo>.files`` (gzip tars, as repo-add writes them)."""

    repo: str
    db: Path
    files: Path
    entries: int


def _name(rng: random.Random, i: int) -> str:
    return f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}{i}"


def fake_desc(rng: random.Random, i: int, builddate: int) -> tuple[str, str]:
    """(folder, desc text) of one realistic generated package."""
    name = _name(rng, i)
    version = f"{rng.randint(0, 30)}.{rng.randint(0, 99)}.{rng.randint(0, 9)}-{rng.randint(1, 5)}"
    filename = f"{name}-{version}-x86_64.pkg.tar.zst"
    sig = base64.b64encode(rng.randbytes(288)).decode()  # 384 characters, like a real one
    depends = "\n".join(f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}" for _ in range(6))
    fields = [
        ("FILENAME", filename),
        ("NAME", name),
        ("BASE", name),
        ("VERSION", version),
        ("DESC", f"The {' '.join(rng.choices(_WORDS, k=8))} package"),
        ("GROUPS", rng.choice(_WORDS)),
        ("CSIZE", str(rng.randint(10_000, 80_000_000))),
        ("ISIZE", str(rng.randint(30_000, 300_000_000))),
        ("SHA256SUM", hashlib.sha256(filename.encode()).hexdigest()),
        ("PGPSIG", sig),
        ("URL", f"https://{name}.example.org/"),
        ("LICENSE", rng.choice(_LICENSES)),
        ("ARCH", "x86_64"),
        ("BUILDDATE", str(builddate - rng.randint(0, 10**7))),
        ("PACKAGER", "Some Packager <packager@archlinux.example>"),
        ("DEPENDS", depends),
        ("MAKEDEPENDS", f"{rng.choice(_WORDS)}\ncmake\nninja"),
        ("OPTDEPENDS", f"{rng.choice(_WORDS)}: for {rng.choice(_WORDS)} support"),
    ]
    return f"{name}-{version}", "".join(f"%{k}%\n{v}\n\n" for k, v in fields)


def fake_files(rng: random.Random, name: str) -> str:
    paths = ["usr/"]
    for d in rng.sample(_DIRS, 3):
        paths.append(f"{d}/")
        paths.extend(f"{d}/{name}-{rng.choice(_WORDS)}{j}" for j in range(rng.randint(3, 16)))
    return "%FILES%\n" + "\n".join(paths) + "\n"


def _add(tar: tarfile.TarFile, name: str, mtime: int, data: bytes | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def make_big_dbs(real_repo_dir: Path, repo: str, out_dir: Path, entries: int = ENTRIES) -> BigDbs:
    """``entries`` generated packages plus the real ones of ``real_repo_dir``'s dbs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(15000)
    real_db = real_repo_dir / f"{repo}.db.tar.gz"
    mtime = int(real_db.stat().st_mtime)
    db_path, files_path = out_dir / f"{repo}.db", out_dir / f"{repo}.files"
    with (
        gzip.open(db_path, "wb", compresslevel=6) as db_gz,
        gzip.open(files_path, "wb", compresslevel=6) as files_gz,
        tarfile.open(fileobj=db_gz, mode="w|", format=tarfile.GNU_FORMAT) as db,
        tarfile.open(fileobj=files_gz, mode="w|", format=tarfile.GNU_FORMAT) as files,
    ):
        for i in range(entries):
            folder, text = fake_desc(rng, i, mtime)
            for tar in (db, files):
                _add(tar, folder, mtime)
                _add(tar, f"{folder}/desc", mtime, text.encode())
            _add(files, f"{folder}/files", mtime, fake_files(rng, folder).encode())
        for src_name, tar in ((f"{repo}.db.tar.gz", db), (f"{repo}.files.tar.gz", files)):
            with tarfile.open(real_repo_dir / src_name, "r:gz") as src:
                for member in src:
                    data = src.extractfile(member) if member.isfile() else None
                    tar.addfile(member, data)
    for path in (db_path, files_path):
        os.utime(path, (mtime, mtime))
    return BigDbs(repo, db_path, files_path, entries)


def install(big: BigDbs, repo_dir: Path) -> None:
    """Put the big dbs into a mirror tree under every name repo-add gives them (mtimes kept)."""
    for kind, src in (("db", big.db), ("files", big.files)):
        for name in (f"{big.repo}.{kind}", f"{big.repo}.{kind}.tar.gz"):
            shutil.copy2(src, repo_dir / name)


# -- hostile dbs ---------------------------------------------------------------------------------


def _header(name: str, size: int, mtime: int, typeflag: bytes, extra: bytes = b"") -> bytes:
    """A raw 512-byte tar header (GNU magic), for headers tarfile will not write for us."""
    block = bytearray(512)
    block[0 : len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = f"{mtime:011o}\0".encode()
    block[156:157] = typeflag
    block[257:265] = b"ustar  \0"
    block[386 : 386 + len(extra)] = extra
    block[148:156] = b"        "
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def sparse_bomb(mtime: int, claimed: int = 2 << 30) -> bytes:
    """A ~100-byte gzip db: one GNU sparse ``desc`` whose holes add up to ``claimed`` bytes."""
    # Sparse map: one data chunk of 1 byte at offset claimed-1; realsize (offset 483) claimed.
    sparse = f"{claimed - 1:011o}\0".encode() + f"{1:011o}\0".encode()
    extra = sparse + bytes(483 - 386 - len(sparse)) + f"{claimed:011o}\0".encode()
    header = _header("bomb-1-1/desc", 512, mtime, b"S", extra)
    return gzip.compress(header + b"%" * 512 + bytes(1024))


def bzip2_bomb(mtime: int, members: int = 64, member_size: int = 60 * 1024) -> bytes:
    """A few KB of bzip2 that decompress to GiBs: streams of a tar of zero-filled files.

    Every stream holds whole tar members, and bzip2 (like bsdtar) reads concatenated streams,
    so repeating one stream makes an ever bigger, still valid-looking db.
    """
    one = b"".join(
        _header(f"bomb-1-1/f{i}", member_size, mtime, b"0") + bytes(member_size)
        for i in range(members)
    )
    stream = bz2.compress(one, 9)
    repeats = (3 << 30) // len(one)  # 3 GiB once decompressed
    return stream * repeats


def many_members_bomb(mtime: int, members: int = 200_000) -> bytes:
    """A ~2 MiB gzip db of ``members`` empty folders: a CPU bomb for the member loop."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as gz:
        for i in range(members):
            gz.write(_header(f"p{i}-1-1/", 0, mtime, b"5"))
        gz.write(bytes(1024))
    return out.getvalue()


def redate(db: Path, mtime: int) -> bytes:
    """The gzip db at ``db`` with every member's mtime set to ``mtime`` (e.g. year 2100)."""
    out = io.BytesIO()
    with tarfile.open(db, "r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src:
            member.mtime = mtime
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()
