"""A real, signed pacman repository built with makepkg, gpg and repo-add.

Why real tools instead of hand-written tarballs: the proxy must accept exactly what Arch mirrors
serve and reject exactly what pacman rejects, so the fixtures use the same makepkg, repo-add and
gpg trust model (a master key certifying a packager key; pacman's keyring lsigns the master).

The repository is built once per pytest session (see tests/conftest.py); tests that corrupt
files work on ``TestRepo.copy_tree`` copies.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tests.support import gpg

ARCH = "x86_64"
BUILD_TIMEOUT = 120.0
BIGPKG_BYTES = 6 * 1024 * 1024
#: A package the size of a typical larger Arch package (the issue's "20 MiB" case).
LARGEPKG_BYTES = 20 * 1024 * 1024
# Fixed, whole-second mtime for the repo dbs so Last-Modified / If-Modified-Since are predictable.
DB_MTIME = int(time.time()) - 3600

_TRUST_MODES = ("full", "marginal", "unknown")
_gpgdir_lock = threading.Lock()

_MAKEPKG_CONF = """\
CARCH="x86_64"
CHOST="x86_64-pc-linux-gnu"
BUILDENV=(!distcc !color !ccache !check !sign)
OPTIONS=(!strip !docs !libtool !staticlibs emptydirs !zipman !purge !debug !lto)
INTEGRITY_CHECK=(sha256)
COMPRESSZST=(zstd -c -z -q -T0 -)
PKGEXT='.pkg.tar.zst'
SRCEXT='.src.tar.gz'
PACKAGER="pacswarm test packager <packager@pacswarm.test>"
"""

_COMMON = """\
pkgver=1.0
pkgrel=1
license=('MIT')
url='https://pacswarm.test/'
"""

# name -> (repo, PKGBUILD body after the common header)
_PKGBUILDS: dict[str, tuple[str, str]] = {
    "libgreet": (
        "core",
        """pkgdesc='pacswarm test library'
arch=('any')
package() {
  install -d "$pkgdir/usr/share/libgreet"
  printf 'Hello from libgreet\\n' > "$pkgdir/usr/share/libgreet/greeting"
}
""",
    ),
    "hello": (
        "core",
        """pkgdesc='pacswarm test program'
arch=('x86_64')
depends=('libgreet')
package() {
  install -d "$pkgdir/usr/bin"
  printf '#!/bin/sh\\necho "hello from pacswarm"\\ncat /usr/share/libgreet/greeting\\n' \\
    > "$pkgdir/usr/bin/hello-pacswarm"
  chmod 755 "$pkgdir/usr/bin/hello-pacswarm"
}
""",
    ),
    "bigpkg": (
        "core",
        """pkgdesc='pacswarm test package with incompressible payload'
arch=('x86_64')
source=('blob.bin')
sha256sums=('SKIP')
package() {
  install -Dm644 "$srcdir/blob.bin" "$pkgdir/usr/share/bigpkg/blob.bin"
}
""",
    ),
    "largepkg": (
        "extra",
        """pkgdesc='pacswarm test package of 20 MiB'
arch=('x86_64')
source=('blob.bin')
sha256sums=('SKIP')
package() {
  install -Dm644 "$srcdir/blob.bin" "$pkgdir/usr/share/largepkg/blob.bin"
}
""",
    ),
    "extratool": (
        "extra",
        """pkgdesc='pacswarm test tool from extra'
arch=('x86_64')
depends=('hello')
package() {
  install -d "$pkgdir/usr/bin"
  printf '#!/bin/sh\\nexec hello-pacswarm "$@"\\n' > "$pkgdir/usr/bin/extratool-pacswarm"
  chmod 755 "$pkgdir/usr/bin/extratool-pacswarm"
}
""",
    ),
}


@dataclass(frozen=True)
class Package:
    """One built package as it sits in the mirror tree."""

    repo: str
    name: str
    version: str
    filename: str
    path: Path
    sig_path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Signer:
    """An extra packager key made for one test (see :meth:`TestRepo.new_signer`).

    ``sign_time`` is the (faked) clock its signatures are made at: ten days ago for an
    expired key, so the signature itself predates the expiry, as on a real old package.
    """

    homedir: Path
    fpr: str
    key_file: Path
    sign_time: int | None = None

    def sign(self, file: Path, sig_out: Path) -> None:
        """A detached binary signature of ``file`` by this key."""
        try:
            gpg.detach_sign(self.homedir, self.fpr, file, sig_out, faked_time=self.sign_time)
        finally:
            gpg.kill_agent(self.homedir)


@dataclass(frozen=True)
class TestRepo:
    """The mirror tree plus the keys needed to trust (or distrust) it."""

    __test__: ClassVar[bool] = False  # not a pytest test class despite the name

    root: Path
    arch: str
    packages: dict[str, Package]
    keys_file: Path
    master_fpr: str
    packager_fpr: str
    gnupghome: Path
    rogue_fpr: str
    rogue_key_file: Path = field(default=Path(), compare=False)

    def repo_dir(self, repo: str) -> Path:
        """``root/<repo>/os/<arch>``: where the db and packages of ``repo`` live."""
        return self.root / repo / "os" / self.arch

    def make_pacman_gpgdir(
        self, dest: Path, *, trust: str = "full", import_rogue: bool = False
    ) -> Path:
        """A pacman keyring at ``dest`` with the test keys at the requested trust level.

        ``import_rogue`` also adds the rogue public key (uncertified), so a rogue signature
        fails as "unknown trust" instead of "required key missing from keyring".
        Why cached: ``pacman-key --init`` generates an RSA 4096 key (about a second), so each
        variant is built once per session and copied; a copy is an independent keyring.
        """
        if trust not in _TRUST_MODES:
            raise ValueError(f"trust must be one of {_TRUST_MODES}, not {trust!r}")
        variant = f"{trust}-rogue" if import_rogue else trust
        template = self.root.parent / "pacman-gpgdirs" / variant
        with _gpgdir_lock:
            if not template.exists():
                staging = template.with_name(f"{variant}.tmp")
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    self._init_pacman_gpgdir(staging, trust, import_rogue)
                finally:
                    gpg.kill_agent(staging)
                staging.rename(template)
        return gpg.copy_homedir(template, dest)

    def _init_pacman_gpgdir(self, dest: Path, trust: str, import_rogue: bool) -> None:
        """Run the real pacman-key, as an Arch install does, then set ``trust``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        _pacman_key(dest, "--init")
        _pacman_key(dest, "--add", str(self.keys_file))
        if import_rogue:
            _pacman_key(dest, "--add", str(self.rogue_key_file))
        if trust == "full":
            # lsign makes the master valid; full ownertrust lets its certification of the
            # packager key count on its own (Arch needs three marginal masters instead).
            _pacman_key(dest, "--lsign-key", self.master_fpr)
            _import_ownertrust(dest, f"{self.master_fpr}:5:\n")
        elif trust == "marginal":
            # Arch's own setup with a single master: marginal ownertrust, one signature.
            _pacman_key(dest, "--lsign-key", self.master_fpr)
            _import_ownertrust(dest, f"{self.master_fpr}:4:\n")
        # "unknown": keys present but nothing vouches for them.
        _pacman_key(dest, "--updatedb")

    def new_signer(
        self, dest: Path, name: str, *, certified: bool = True, expired: bool = False
    ) -> Signer:
        """A new packager key in a private copy of the build keyring, at ``dest``.

        ``certified``: the test master certifies it, so a keyring made by
        :meth:`make_pacman_gpgdir` trusts it fully once :func:`trust_key` imports it (a second
        Arch packager). ``expired``: made ten days ago with a one-day expiry; master certifies
        it then too, so it was valid when it signed and is only expired now.
        """
        home = gpg.copy_homedir(self.gnupghome, dest)
        past = int(time.time()) - 10 * 86400 if expired else None
        try:
            uid = f"pacswarm {name} <{name}@pacswarm.test>"
            fpr = gpg.generate_key(home, uid, expire="1d" if expired else "never", faked_time=past)
            if certified:
                gpg.certify(home, self.master_fpr, fpr, faked_time=past)
            key_file = gpg.export_public(home, [fpr], dest.with_name(f"{dest.name}.gpg"))
        finally:
            gpg.kill_agent(home)
        return Signer(homedir=home, fpr=fpr, key_file=key_file, sign_time=past)

    def sign(self, file: Path, sig_out: Path, *, key: str = "packager") -> None:
        """Write a detached binary signature of ``file`` by the packager or the rogue key."""
        fprs = {"packager": self.packager_fpr, "rogue": self.rogue_fpr}
        if key not in fprs:
            raise ValueError(f"key must be 'packager' or 'rogue', not {key!r}")
        try:
            gpg.detach_sign(self.gnupghome, fprs[key], file, sig_out)
        finally:
            gpg.kill_agent(self.gnupghome)

    def resign(self, tree: Path, name: str, *, key: str = "rogue", update_db: bool = True) -> Path:
        """Re-sign package ``name`` inside the mirror copy ``tree``; return the new ``.sig``.

        Why ``update_db``: pacman 6.0.2 verifies the ``%PGPSIG%`` embedded in the repo db when
        present, so a forged ``.sig`` file alone is not what pacman checks.  With ``update_db``
        the db is regenerated with repo-add (and its mtime moved a minute later, so it reads
        as a newer db); without it only the ``.sig`` file changes.
        """
        pkg = self.packages[name]
        repo_dir = tree / pkg.repo / "os" / self.arch
        path = repo_dir / pkg.filename
        sig = path.with_name(path.name + ".sig")
        self.sign(path, sig, key=key)
        if update_db:
            _repo_add(repo_dir, pkg.repo, [path], mtime=DB_MTIME + 60)
        return sig

    def copy_tree(self, dest: Path) -> Path:
        """An independent copy of the mirror tree (mtimes kept), safe to corrupt."""
        shutil.copytree(self.root, dest, symlinks=False)
        return dest

    def close(self) -> None:
        """Kill every gpg-agent this repo's homedirs may have started."""
        gpg.kill_agent(self.gnupghome)
        cache = self.root.parent / "pacman-gpgdirs"
        if cache.exists():
            for home in cache.iterdir():
                gpg.kill_agent(home)


def trust_key(gpgdir: Path, key_file: Path) -> None:
    """Import ``key_file`` into a pacman keyring as ``pacman-key --add`` does, then recompute
    validity (a key the master certified becomes fully valid; others stay unknown trust)."""
    try:
        _pacman_key(gpgdir, "--add", str(key_file))
        _pacman_key(gpgdir, "--updatedb")
    finally:
        gpg.kill_agent(gpgdir)


def _pacman_key(gpgdir: Path, *args: str) -> None:
    proc = subprocess.run(
        ["pacman-key", "--gpgdir", str(gpgdir), *args],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=gpg.gpg_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pacman-key {' '.join(args)} failed: {proc.stdout}{proc.stderr}")


def _import_ownertrust(gpgdir: Path, trust_lines: str) -> None:
    gpg.run_gpg(gpgdir, "--import-ownertrust", stdin=trust_lines.encode())


def _write_pkgbuild(pkgdir: Path, name: str, body: str) -> None:
    pkgdir.mkdir(parents=True)
    (pkgdir / "PKGBUILD").write_text(f"pkgname={name}\n{_COMMON}{body}")
    if name == "bigpkg":
        (pkgdir / "blob.bin").write_bytes(os.urandom(BIGPKG_BYTES))
    if name == "largepkg":
        (pkgdir / "blob.bin").write_bytes(os.urandom(LARGEPKG_BYTES))


def _build_packages(outdir: Path) -> dict[str, Path]:
    """Build every package with makepkg as ``nobody``, in parallel; return name -> package file.

    Why a /tmp scratch dir: makepkg refuses root, and pytest's basetemp (0700, root) is not
    traversable by ``nobody``.
    """
    nobody = pwd.getpwnam("nobody")
    scratch = Path(tempfile.mkdtemp(prefix="pacswarm-build-"))
    try:
        conf = scratch / "makepkg.conf"
        conf.write_text(_MAKEPKG_CONF)
        procs: dict[str, subprocess.Popen[str]] = {}
        for name, (_repo, body) in _PKGBUILDS.items():
            pkgdir = scratch / name
            _write_pkgbuild(pkgdir, name, body)
            for sub in ("out", "src", "build"):
                (pkgdir / sub).mkdir()
        for path in [scratch, *scratch.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        for name in _PKGBUILDS:
            pkgdir = scratch / name
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(pkgdir),
                "LC_ALL": "C",
                "PACMAN": "true",
                "PKGDEST": str(pkgdir / "out"),
                "SRCDEST": str(pkgdir / "src"),
                "BUILDDIR": str(pkgdir / "build"),
                "SOURCE_DATE_EPOCH": str(DB_MTIME),
            }
            procs[name] = subprocess.Popen(
                ["runuser", "-u", "nobody", "--", "env", *[f"{k}={v}" for k, v in env.items()],
                 "makepkg", "--config", str(conf), "--nodeps", "--force", "--nocolor"],
                cwd=pkgdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        built: dict[str, Path] = {}
        for name, proc in procs.items():
            try:
                output, _ = proc.communicate(timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
            files = list((scratch / name / "out").glob("*.pkg.tar.zst"))
            if proc.returncode != 0 or len(files) != 1:
                raise RuntimeError(f"makepkg {name} failed ({proc.returncode}):\n{output}")
            built[name] = Path(shutil.copy2(files[0], outdir / files[0].name))
        return built
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _repo_add(repo_dir: Path, repo: str, pkgs: list[Path], *, mtime: int = DB_MTIME) -> None:
    proc = subprocess.run(
        ["repo-add", "--quiet", str(repo_dir / f"{repo}.db.tar.gz"), *map(str, pkgs)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=gpg.gpg_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"repo-add {repo} failed: {proc.stdout}{proc.stderr}")
    # repo-add makes <repo>.db / <repo>.files symlinks; plain files keep the tree trivially
    # servable and let a test corrupt one name without touching the other.
    for kind in ("db", "files"):
        link = repo_dir / f"{repo}.{kind}"
        target = repo_dir / f"{repo}.{kind}.tar.gz"
        if link.is_symlink():
            link.unlink()
        shutil.copyfile(target, link)
        for path in (link, target):
            os.utime(path, (mtime, mtime))
    for old in repo_dir.glob("*.old"):
        old.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_test_repo(workdir: Path) -> TestRepo:
    """Build keys, packages, signatures and repo dbs under ``workdir``; see the module docstring."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = gpg.make_homedir(workdir / "gnupg")
    root = workdir / "mirror"
    try:
        master = gpg.generate_key(home, "pacswarm test master <master@pacswarm.test>")
        packager = gpg.generate_key(home, "pacswarm test packager <packager@pacswarm.test>")
        rogue = gpg.generate_key(home, "pacswarm rogue <rogue@pacswarm.test>")
        gpg.certify(home, master, packager)
        keys_file = gpg.export_public(home, [master, packager], workdir / "keys.gpg")
        rogue_file = gpg.export_public(home, [rogue], workdir / "rogue.gpg")

        staging = workdir / "built"
        staging.mkdir(exist_ok=True)
        built = _build_packages(staging)

        packages: dict[str, Package] = {}
        by_repo: dict[str, list[Path]] = {}
        for name, src in built.items():
            repo = _PKGBUILDS[name][0]
            repo_dir = root / repo / "os" / ARCH
            repo_dir.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.move(src, repo_dir / src.name))
            sig = path.with_name(path.name + ".sig")
            gpg.detach_sign(home, packager, path, sig)
            by_repo.setdefault(repo, []).append(path)
            packages[name] = Package(
                repo=repo,
                name=name,
                version="1.0-1",
                filename=path.name,
                path=path,
                sig_path=sig,
                sha256=_sha256(path),
                size=path.stat().st_size,
            )
        shutil.rmtree(staging)
        for repo, paths in by_repo.items():
            _repo_add(root / repo / "os" / ARCH, repo, paths)
    finally:
        gpg.kill_agent(home)
    return TestRepo(
        root=root,
        arch=ARCH,
        packages=packages,
        keys_file=keys_file,
        master_fpr=master,
        packager_fpr=packager,
        gnupghome=home,
        rogue_fpr=rogue,
        rogue_key_file=rogue_file,
    )
