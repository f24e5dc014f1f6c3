"""Real, installable pacman packages for the swarm benchmark (pacman installs them).

Each is a zstd'd tar of ``.PKGINFO`` and an incompressible payload under ``usr/share/<name>``,
with a detached signature by the bench packager key (benchrepo's keys); the repo db lists them.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

from benchrepo import ARCH, Keys, Package, check_trust, make_keys, repo_dir, write_db

MiB = 1 << 20


def _pkginfo(name: str, payload: int) -> bytes:
    lines = [
        f"pkgname = {name}",
        f"pkgbase = {name}",
        "pkgver = 1.0-1",
        "pkgdesc = pacswarm swarm benchmark package",
        "url = https://pacswarm.test/",
        f"builddate = {int(time.time())}",
        "packager = pacswarm bench <packager@bench.invalid>",
        f"size = {payload}",
        f"arch = {ARCH}",
        "license = MIT",
    ]
    return ("\n".join(lines) + "\n").encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uname, info.gname = int(time.time()), mode, "root", "root"
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_package(keys: Keys, directory: Path, name: str, payload: int) -> Package:
    """``name``: a tar of .PKGINFO and ``payload`` random bytes, zstd'd and signed."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, ".PKGINFO", _pkginfo(name, payload), 0o644)
        for folder in ("usr", "usr/share", f"usr/share/{name}"):
            _add(tar, folder, None, 0o755)
        _add(tar, f"usr/share/{name}/blob.bin", os.urandom(payload), 0o644)
    path = directory / f"{name}-1.0-1-{ARCH}.pkg.tar.zst"
    zstd = subprocess.run(
        ["zstd", "-1", "-q", "-c"], input=raw.getvalue(), capture_output=True, check=True
    )
    path.write_bytes(zstd.stdout)
    argv = ["gpg", "--homedir", str(keys.packager_home), "--batch", "--local-user"]
    subprocess.run(
        [*argv, keys.packager_fpr, "--detach-sign", "-o", f"{path}.sig", str(path)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return Package(name, path.stat().st_size, hashlib.sha256(zstd.stdout).hexdigest())


def build_repo(
    tmp: Path, homes: list[Path], count: int, sizes: tuple[int, ...]
) -> tuple[Keys, list[Package]]:
    """``count`` packages of ``sizes`` MiB (cycled) in ``tmp/origin``, signed, with their db."""
    t0 = time.monotonic()
    keys = make_keys(tmp / "keys", homes)
    directory = repo_dir(tmp / "origin")
    directory.mkdir(parents=True)
    pkgs = [
        write_package(keys, directory, f"swarm{i + 1}", sizes[i % len(sizes)] * MiB)
        for i in range(count)
    ]
    write_db(tmp / "origin", pkgs)
    check_trust(keys, directory / pkgs[0].filename)
    total = sum(p.size for p in pkgs)
    print(f"repo: {len(pkgs)} packages, {total / MiB:.0f} MiB, {time.monotonic() - t0:.1f} s")
    return keys, pkgs
