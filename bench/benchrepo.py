"""A throwaway signed pacman repository for the benchmark origin.

Keys: a master key and a packager key it certifies (ed25519, no passphrase), and a pacman
keyring (``pacman-key --init``/``--add``/``--lsign-key``) in which the packager's signatures have
full validity, as pacman requires. Packages: random bytes (incompressible), each with a detached
``.sig``. The repo db is a gzip'd tar of ``<name>-<version>/desc`` files written with tarfile.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = "bench"
ARCH = "x86_64"
MiB = 1 << 20

_KEY_PARAMS = """%no-protection
Key-Type: eddsa
Key-Curve: ed25519
Key-Usage: sign,cert
Name-Real: pacswarm bench {role}
Name-Email: {role}@bench.invalid
Expire-Date: 0
%commit
"""


@dataclass(frozen=True)
class Keys:
    master_home: Path
    packager_home: Path
    gpgdir: Path  # the pacman keyring the proxy verifies against
    master_fpr: str
    packager_fpr: str

    @property
    def homes(self) -> list[Path]:
        return [self.master_home, self.packager_home, self.gpgdir]


@dataclass(frozen=True)
class Package:
    name: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}-1.0-1-{ARCH}.pkg.tar.zst"

    @property
    def path(self) -> str:
        """The URL path, the same on the origin and on both proxies."""
        return f"/{REPO}/os/{ARCH}/{self.filename}"


def repo_dir(origin: Path) -> Path:
    return origin / REPO / "os" / ARCH


def db_path() -> str:
    return f"/{REPO}/os/{ARCH}/{REPO}.db"


def _run(argv: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv[:4])}... failed ({proc.returncode}): {err}")
    return proc.stdout


def _gen_key(home: Path, role: str) -> str:
    home.mkdir(mode=0o700, parents=True)
    _run(
        ["gpg", "--homedir", str(home), "--batch", "--gen-key"],
        _KEY_PARAMS.format(role=role).encode(),
    )
    out = _run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"]).decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def make_keys(root: Path, started: list[Path]) -> Keys:
    """Create both keys and the pacman keyring; every homedir is appended to ``started``."""
    master_home, packager_home, gpgdir = (
        root / "gpg-master",
        root / "gpg-packager",
        root / "keyring",
    )
    started.extend([master_home, packager_home, gpgdir])
    master = _gen_key(master_home, "master")
    packager = _gen_key(packager_home, "packager")
    gpg_m = ["gpg", "--homedir", str(master_home), "--batch"]
    _run([*gpg_m, "--import"], _run(["gpg", "--homedir", str(packager_home), "--export", packager]))
    _run([*gpg_m, "--yes", "--default-key", master, "--quick-sign-key", packager])
    keys_file = root / "keys.gpg"
    gpgdir.mkdir(mode=0o755)
    keys_file.write_bytes(_run([*gpg_m, "--export", master, packager]))
    _run(["pacman-key", "--gpgdir", str(gpgdir), "--init"])
    _run(["pacman-key", "--gpgdir", str(gpgdir), "--add", str(keys_file)])
    _run(["pacman-key", "--gpgdir", str(gpgdir), "--lsign-key", master])
    # lsign makes the master key valid; its certification of the packager only counts once the
    # master also has full *owner* trust (5 = full in gpg's ownertrust format; 4 is marginal).
    # Without this, gpg reports TRUST_UNDEFINED and pacman (and pacswarm) reject the package.
    _run(
        ["gpg", "--homedir", str(gpgdir), "--batch", "--import-ownertrust"],
        f"{master}:5:\n".encode(),
    )
    return Keys(master_home, packager_home, gpgdir, master, packager)


def check_trust(keys: Keys, file: Path) -> None:
    """Fail early unless the packager's signature on ``file`` has full validity."""
    sig = file.with_name(file.name + ".sig")
    argv = ["gpg", "--homedir", str(keys.gpgdir), "--batch", "--status-fd", "1"]
    out = _run([*argv, "--verify", str(sig), str(file)]).decode()
    if "TRUST_FULLY" not in out and "TRUST_ULTIMATE" not in out:
        raise RuntimeError(f"bench keyring does not fully trust the packager key:\n{out}")


def _write_package(keys: Keys, directory: Path, name: str, size: int) -> Package:
    path = directory / f"{name}-1.0-1-{ARCH}.pkg.tar.zst"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            digest.update(block)
            f.write(block)
            left -= len(block)
    argv = ["gpg", "--homedir", str(keys.packager_home), "--batch", "--local-user"]
    _run([*argv, keys.packager_fpr, "--detach-sign", "-o", f"{path}.sig", str(path)])
    return Package(name, size, digest.hexdigest())


def make_packages(keys: Keys, origin: Path, counts: dict[int, int]) -> dict[int, list[Package]]:
    """``counts[size]`` packages of ``size`` bytes each, named bench1, bench2, ..."""
    directory = repo_dir(origin)
    directory.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[int, str]] = []
    for size, count in sorted(counts.items()):
        jobs.extend((size, f"bench{len(jobs) + 1}") for _ in range(count))
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda job: _write_package(keys, directory, job[1], job[0]), jobs))
    result: dict[int, list[Package]] = {size: [] for size in counts}
    for pkg in done:
        result[pkg.size].append(pkg)
    return result


def _desc(pkg: Package) -> bytes:
    fields = [
        ("FILENAME", pkg.filename),
        ("NAME", pkg.name),
        ("VERSION", "1.0-1"),
        ("CSIZE", str(pkg.size)),
        ("SHA256SUM", pkg.sha256),
        ("ARCH", ARCH),
    ]
    return "".join(f"%{key}%\n{value}\n\n" for key, value in fields).encode()


def write_db(origin: Path, packages: list[Package]) -> Path:
    """``bench.db`` (gzip'd tar of ``<name>-1.0-1/desc``) and ``bench.db.tar.gz`` beside it."""
    db = repo_dir(origin) / f"{REPO}.db"
    now = int(time.time())
    with tarfile.open(db, "w:gz") as tar:
        for pkg in packages:
            folder = tarfile.TarInfo(f"{pkg.name}-1.0-1")
            folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(folder)
            body = _desc(pkg)
            desc = tarfile.TarInfo(f"{pkg.name}-1.0-1/desc")
            desc.size, desc.mode, desc.mtime = len(body), 0o644, now
            tar.addfile(desc, io.BytesIO(body))
    link = db.with_name(f"{REPO}.db.tar.gz")
    link.symlink_to(db.name)
    return db


def kill_agents(homes: list[Path]) -> None:
    """Stop the gpg-agent (and dirmngr) of every homedir we created."""
    for home in homes:
        if home.exists():
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"],
                capture_output=True,
                timeout=20,
                check=False,
            )
