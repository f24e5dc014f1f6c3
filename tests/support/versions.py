"""Several versions of one package, built with the real makepkg and signed like the test repo.

Eviction keeps the newest ``keep_versions`` versions by pacman's vercmp, so its tests need a
package that really exists in several versions (``1.9-1``, ``1.10-1``, ``1:0.1-1``...), each
signed by the test packager and published, one after the other, in a mirror's repo db the way
Arch publishes upgrades (repo-add replaces the entry; the db gets a newer mtime).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.testrepo import _MAKEPKG_CONF, ARCH, BUILD_TIMEOUT, DB_MTIME, TestRepo, _repo_add

_PKGBUILD = """pkgname={name}
{epoch}pkgver={pkgver}
pkgrel={pkgrel}
pkgdesc='pacswarm eviction test package'
arch=('x86_64')
license=('MIT')
url='https://pacswarm.test/'
source=('blob.bin')
sha256sums=('SKIP')
package() {{
  install -Dm644 "$srcdir/blob.bin" "$pkgdir/usr/share/{name}/blob.bin"
}}
"""


@dataclass(frozen=True)
class Built:
    name: str
    version: str  # [epoch:]pkgver-pkgrel
    path: Path  # in the staging dir; publish() copies it into a mirror tree

    @property
    def filename(self) -> str:
        return self.path.name


def build(name: str, versions: list[str], size: int, outdir: Path) -> list[Built]:
    """makepkg each version of ``name`` (``size`` random bytes inside), as ``nobody``."""
    nobody = pwd.getpwnam("nobody")
    scratch = Path(tempfile.mkdtemp(prefix="pacswarm-versions-"))
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        (scratch / "makepkg.conf").write_text(_MAKEPKG_CONF)
        procs = []
        for i, version in enumerate(versions):
            epoch, _, rest = version.rpartition(":")
            pkgver, pkgrel = rest.rsplit("-", 1)
            work = scratch / str(i)
            for sub in ("out", "src", "build"):
                (work / sub).mkdir(parents=True)
            (work / "PKGBUILD").write_text(
                _PKGBUILD.format(
                    name=name,
                    epoch=f"epoch={epoch}\n" if epoch else "",
                    pkgver=pkgver,
                    pkgrel=pkgrel,
                )
            )
            (work / "blob.bin").write_bytes(os.urandom(size))
            procs.append((version, work))
        for path in [scratch, *scratch.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        running = [(v, w, _makepkg(w, scratch / "makepkg.conf")) for v, w in procs]
        built = []
        for version, work, proc in running:
            output, _ = proc.communicate(timeout=BUILD_TIMEOUT)
            files = list((work / "out").glob("*.pkg.tar.zst"))
            if proc.returncode != 0 or len(files) != 1:
                raise RuntimeError(f"makepkg {name} {version} failed:\n{output}")
            built.append(Built(name, version, Path(shutil.copy2(files[0], outdir))))
        return built
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _makepkg(work: Path, conf: Path) -> subprocess.Popen[str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "LC_ALL": "C",
        "PACMAN": "true",
        "PKGDEST": str(work / "out"),
        "SRCDEST": str(work / "src"),
        "BUILDDIR": str(work / "build"),
        "SOURCE_DATE_EPOCH": str(DB_MTIME),
    }
    return subprocess.Popen(
        ["runuser", "-u", "nobody", "--", "env", *[f"{k}={v}" for k, v in env.items()],
         "makepkg", "--config", str(conf), "--nodeps", "--force", "--nocolor"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def publish(test_repo: TestRepo, tree: Path, repo: str, pkg: Built, step: int) -> Path:
    """Put ``pkg`` (signed) into ``tree``'s ``repo`` and its db, as the newest version.

    ``step`` moves the db's mtime on, so the node and pacman see a newer db each time.
    """
    repo_dir = tree / repo / "os" / ARCH
    dest = Path(shutil.copy2(pkg.path, repo_dir / pkg.filename))
    test_repo.sign(dest, dest.with_name(dest.name + ".sig"))
    _repo_add(repo_dir, repo, [dest], mtime=DB_MTIME + 120 * step)
    return dest
