"""pacswarm's signature decision against the real pacman's, on the same files and keyring.

Each case builds a ``.sig`` (detached signatures concatenated, as a second packager's
signature would be added), asks the real pacman 6.0.2 (``pacman -U`` of the package with the
``.sig`` beside it, ``LocalFileSigLevel = Required``, in an isolated root) and
``pacswarm verify``, and requires the same verdict from both.
"""

from __future__ import annotations

import bz2
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import gpg
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import Package, TestRepo, trust_key

#: Unknown keys make pacman ask a keyserver; this one refuses at once, on 127.0.0.1.
_NO_KEYSERVER = "keyserver hkp://127.0.0.1:9\n"


def _offline_keyring(test_repo: TestRepo, dest: Path, *, import_rogue: bool = False) -> Path:
    """A fully trusting pacman keyring whose key lookups never leave the machine."""
    gpgdir = test_repo.make_pacman_gpgdir(dest, import_rogue=import_rogue)
    with (gpgdir / "gpg.conf").open("a") as conf:
        conf.write(_NO_KEYSERVER)
    (gpgdir / "dirmngr.conf").write_text(_NO_KEYSERVER)
    return gpgdir


def pacman_accepts(base: Path, gpgdir: Path, package: Path) -> tuple[bool, str]:
    """The real pacman's verdict: ``pacman -U package`` with its ``.sig`` required."""
    with PacmanEnv(base, [], gpgdir, repos=()) as env:
        conf = env.config.read_text()
        env.config.write_text(
            conf.replace("LocalFileSigLevel = Optional", "LocalFileSigLevel = Required")
        )
        result = env.run("-U", str(package), timeout=60)
        return result.returncode == 0, result.stdout


def pacswarm_verify(
    package: Path, sig: Path, gpgdir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "pacswarm", "verify", str(package), "--sig", str(sig),
             "--gpgdir", str(gpgdir)],
            capture_output=True, text=True, timeout=120, check=False, env=env,
        )  # fmt: skip
    finally:
        gpg.kill_agent(gpgdir)


def _package_with_sig(tmp_path: Path, pkg: Package, parts: list[bytes]) -> tuple[Path, Path]:
    d = tmp_path / "files"
    d.mkdir()
    package = Path(shutil.copy(pkg.path, d / pkg.filename))
    sig = d / (pkg.filename + ".sig")
    sig.write_bytes(b"".join(parts))
    return package, sig


# (case, signers in file order, rogue key imported into the keyring, pacman's verdict)
CASES = [
    ("packager+second", ["packager", "second"], False, True),
    ("packager+packager", ["packager", "packager"], False, True),
    ("packager+rogue-not-in-keyring", ["packager", "rogue"], False, False),
    ("rogue-not-in-keyring+packager", ["rogue", "packager"], False, False),
    # the reported hole: the rogue key is in the keyring, unsigned, so "unknown trust"
    ("packager+rogue-unknown-trust", ["packager", "rogue"], True, False),
    ("rogue-unknown-trust+packager", ["rogue", "packager"], True, False),
    ("expired", ["expired"], False, False),
    ("packager+expired", ["packager", "expired"], False, False),
]


@pytest.mark.parametrize(
    ("signers", "import_rogue", "accepted"),
    [pytest.param(s, r, a, id=c) for c, s, r, a in CASES],
)
def test_several_signatures_get_pacmans_verdict(
    test_repo: TestRepo, tmp_path: Path, signers: list[str], import_rogue: bool, accepted: bool
) -> None:
    pkg = test_repo.packages["libgreet"]
    gpgdir = _offline_keyring(test_repo, tmp_path / "keyring", import_rogue=import_rogue)
    parts: list[bytes] = []
    for who in signers:
        out = tmp_path / f"{who}-{len(parts)}.sig"
        if who in ("packager", "rogue"):
            test_repo.sign(pkg.path, out, key=who)
        else:
            signer = test_repo.new_signer(tmp_path / who, who, expired=who == "expired")
            trust_key(gpgdir, signer.key_file)
            signer.sign(pkg.path, out)
        parts.append(out.read_bytes())
    package, sig = _package_with_sig(tmp_path, pkg, parts)

    pacman_ok, pacman_out = pacman_accepts(tmp_path / "pacman", gpgdir, package)
    assert pacman_ok is accepted, pacman_out  # the reference is what it was when written
    result = pacswarm_verify(package, sig, gpgdir)
    assert (result.returncode == 0) is pacman_ok, result.stdout + result.stderr + pacman_out
    if "expired" in signers:
        assert "expired key" in result.stdout
    if "rogue" in signers:
        assert test_repo.rogue_fpr[-16:] in result.stdout or "unknown trust" in result.stdout


def _bz2_bomb(signature: bytes, copies: int) -> bytes:
    """One compressed packet (bzip2) holding ``copies`` signatures: a few KB on the wire."""
    data = b"\x03" + bz2.compress(signature * copies, 9)
    return bytes([0xC8, 0xFF]) + len(data).to_bytes(4, "big") + data


def test_compressed_signature_bomb_never_reaches_gpg(test_repo: TestRepo, tmp_path: Path) -> None:
    pkg = test_repo.packages["libgreet"]
    gpgdir = _offline_keyring(test_repo, tmp_path / "keyring")
    rogue = tmp_path / "rogue.sig"
    test_repo.sign(pkg.path, rogue, key="rogue")
    bomb = _bz2_bomb(rogue.read_bytes(), 100_000)
    package, sig = _package_with_sig(tmp_path, pkg, [bomb])
    assert len(bomb) < 16 * 1024
    result = pacswarm_verify(package, sig, gpgdir)
    assert result.returncode == 1
    assert "compressed data packet" in result.stdout, result.stdout


def test_oversized_signature_is_refused_with_the_cap_in_the_reason(
    test_repo: TestRepo, tmp_path: Path, pacman_gpgdir: Path
) -> None:
    pkg = test_repo.packages["libgreet"]
    package, sig = _package_with_sig(tmp_path, pkg, [pkg.sig_path.read_bytes()] * 200)
    result = pacswarm_verify(package, sig, pacman_gpgdir)
    assert result.returncode == 1
    assert "more than the 16384" in result.stdout, result.stdout
