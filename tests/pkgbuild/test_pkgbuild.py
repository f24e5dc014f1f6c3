"""The Arch package builds from a checkout with makepkg (check() included), installs with
pacman, and the installed ``pacswarm`` runs: ``--version``; ``verify`` as an unprivileged
user against a root-owned keyring; and ``serve`` as the service user the package creates, in
the state directory it creates, handing out a verified package.

One build per module (about a minute on 2 cores: pip resolves and installs the pinned
dependencies, fastecdsa compiles), shared by the tests; see tests/pkgbuild/archpkg.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.pkgbuild.archpkg import SYSTEM_PYTHON, BuiltPackage, copy_checkout, run_makepkg
from tests.support.gpg import kill_agent
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import TestRepo

CHECKOUT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 60.0

pytestmark = [
    # The first test pays for the build (about a minute here); the bound is generous.
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="makepkg as nobody and pacman -U need root"),
]


def _pkgver() -> str:
    text = (CHECKOUT / "packaging/PKGBUILD").read_text()
    ver = re.search(r"^pkgver=(\S+)$", text, re.M)
    rel = re.search(r"^pkgrel=(\S+)$", text, re.M)
    assert ver and rel
    return f"{ver.group(1)}-{rel.group(1)}"


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, **kwargs
    )  # type: ignore[call-overload]


def test_makepkg_builds_the_checkout_and_runs_the_unit_tests(built: BuiltPackage) -> None:
    print(f"makepkg took {built.seconds:.0f} s")  # shown with -s; timings are not asserted
    assert built.path.name.startswith(f"pacswarm-{_pkgver()}-")
    check = built.log.split("==> Starting check()...", 1)
    assert len(check) == 2, "check() did not run:\n" + built.log
    summary = re.search(r"^=* ?(\d+ \w+.*) in [\d.]+s", check[1], re.M)
    # Skips allowed: the tmpfs tests need root, and check() runs as nobody.
    assert summary and re.fullmatch(r"\d+ passed(, \d+ skipped)?", summary.group(1)), check[1]
    # makepkg's own packaging lint: bytecode compiled in $srcdir would carry its paths.
    assert "reference to $srcdir" not in built.log and "reference to $pkgdir" not in built.log


def test_too_old_build_tools_get_a_clear_error(pkg_scratch: Path) -> None:
    """The system python alone (Debian 12: setuptools 66, which rejects pyproject.toml's SPDX
    license) stops the build with what to do, not with a setuptools traceback."""
    checkout = copy_checkout(CHECKOUT, pkg_scratch / "old-tools-checkout")
    tools = pkg_scratch / "old-tools"
    tools.mkdir()
    (tools / "python").symlink_to(SYSTEM_PYTHON)
    proc = run_makepkg(checkout, tools, home=tools)
    assert proc.returncode != 0
    assert "A failure occurred in build()" in proc.stdout
    assert "setuptools >= 77" in proc.stdout, proc.stdout


def test_pacman_installs_the_package_files(installed_root: Path) -> None:
    db = installed_root / "var/lib/pacman"
    proc = _run(["pacman", "--root", str(installed_root), "--dbpath", str(db), "-Q"])
    assert proc.stdout.split() == ["pacswarm", _pkgver()], proc.stdout + proc.stderr
    for path in (
        "usr/bin/pacswarm",
        "usr/lib/systemd/system/pacswarm.service",
        "usr/lib/sysusers.d/pacswarm.conf",
        "usr/lib/tmpfiles.d/pacswarm.conf",
    ):
        assert (installed_root / path).is_file(), path
    example = (CHECKOUT / "packaging/pacswarm.toml").read_text()
    assert (installed_root / "etc/pacswarm/pacswarm.toml").read_text() == example


def test_installed_pacswarm_runs_from_its_own_site_directory(installed_root: Path) -> None:
    site = installed_root / "usr/lib/pacswarm/site"
    before = sorted(site.rglob("*"))
    # PYTHONPATH pointing at the checkout must not matter: the launcher runs python -I.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(CHECKOUT / "src")}
    proc = _run([str(installed_root / "usr/bin/pacswarm"), "--version"], env=env, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = _pkgver().rsplit("-", 1)[0]
    assert proc.stdout.strip() == f"pacswarm {version}"
    # Running as root wrote no bytecode the package does not own.
    assert sorted(site.rglob("*")) == before


def _readonly_keyring(gpgdir: Path, dest: Path) -> Path:
    """A copy of ``gpgdir`` laid out as pacman-key makes /etc/pacman.d/gnupg: root-owned, the
    directory 0755, pubring and trustdb 0644, secret parts 0700/0600 (gpg's own modes). An
    unprivileged user can read the keys and the trust values but write nothing."""
    shutil.copytree(gpgdir, dest, ignore=shutil.ignore_patterns("S.*", "*.lock"))
    dest.chmod(0o755)
    for name in ("pubring.gpg", "trustdb.gpg"):
        (dest / name).chmod(0o644)
    return dest


def test_installed_pacswarm_verifies_as_an_unprivileged_user(
    installed_root: Path, pkg_scratch: Path, test_repo: TestRepo, pacman_gpgdir: Path
) -> None:
    keyring = _readonly_keyring(pacman_gpgdir, pkg_scratch / "keyring")
    pkg = test_repo.packages["hello"]
    files = pkg_scratch / "verify"
    files.mkdir()
    good = Path(shutil.copy(pkg.path, files / pkg.filename))
    sig = Path(shutil.copy(pkg.sig_path, files / pkg.sig_path.name))
    bad = files / f"corrupt-{pkg.filename}"
    bad.write_bytes(good.read_bytes()[:-1] + bytes([good.read_bytes()[-1] ^ 1]))
    files.chmod(0o755)
    launcher = installed_root / "usr/bin/pacswarm"
    pacswarm = ["runuser", "-u", "nobody", "--", str(launcher), "verify"]
    try:
        trusted = _run([*pacswarm, str(good), "--sig", str(sig), "--gpgdir", str(keyring)])
        corrupt = _run([*pacswarm, str(bad), "--sig", str(sig), "--gpgdir", str(keyring)])
    finally:
        kill_agent(keyring)
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "OK" in trusted.stdout and test_repo.packager_fpr in trusted.stdout
    assert corrupt.returncode == 1, corrupt.stdout + corrupt.stderr
    assert "invalid" in corrupt.stdout


class _ServiceNode(PacswarmNode):
    """The installed launcher as the service runs it: as the user the package's sysusers file
    creates, on the data directory its tmpfiles file makes, with ExecStart='s --data-dir (the
    ports and peers are the test node's: loopback only)."""

    def __init__(self, launcher: Path, uid: int, gid: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launcher, self.uid, self.gid = launcher, uid, gid

    def command(self) -> list[str]:
        as_user = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        return [*as_user, str(self.launcher), *super().command()[3:]]


def _service_user(root: Path) -> tuple[int, int]:
    """systemd-sysusers and systemd-tmpfiles on ``root``, with the package's files; the uid
    and gid of the pacswarm user they made."""
    for tool in ("systemd-sysusers", "systemd-tmpfiles --create"):
        proc = _run([*tool.split(), f"--root={root}"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = next(line for line in (root / "etc/passwd").read_text().splitlines()
                 if line.startswith("pacswarm:"))  # fmt: skip
    _name, _pw, uid, gid, _gecos, home, _shell = entry.split(":")
    assert home == "/var/lib/pacswarm"
    return int(uid), int(gid)


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_installed_service_user_serves_a_verified_package(
    installed_root: Path,
    pkg_scratch: Path,
    test_repo: TestRepo,
    pacman_gpgdir: Path,
    mirror: MirrorServer,
) -> None:
    uid, gid = _service_user(installed_root)
    data_dir = installed_root / "var/lib/pacswarm"
    st = data_dir.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750)
    keyring = _readonly_keyring(pacman_gpgdir, pkg_scratch / "service-keyring")
    launcher = installed_root / "usr/bin/pacswarm"
    node = _ServiceNode(launcher, uid, gid, data_dir, [mirror.url_template], keyring)
    try:
        node.start(timeout=60)
        pkg = test_repo.packages["hello"]
        status, _headers, body = node.get(f"/core/os/{test_repo.arch}/{pkg.filename}")
        assert status == 200, node.log()
        assert body == pkg.path.read_bytes()
    finally:
        code = node.stop()
        kill_agent(keyring)
    assert code == 0, node.log()
    assert (data_dir / "ipfs/identity.key").stat().st_uid == uid
