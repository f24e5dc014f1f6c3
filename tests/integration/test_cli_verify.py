"""``pacswarm verify``: pacman-key -v's decision against a real pacman keyring."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.testrepo import TestRepo


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacswarm", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_good_package_verifies(test_repo: TestRepo, pacman_gpgdir: Path) -> None:
    pkg = test_repo.packages["hello"]
    result = _verify(str(pkg.path), "--gpgdir", str(pacman_gpgdir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout and test_repo.packager_fpr in result.stdout


def test_rogue_signature_and_tampered_file_fail(
    test_repo: TestRepo, pacman_gpgdir: Path, tmp_path: Path
) -> None:
    pkg = test_repo.packages["hello"]
    copy = tmp_path / pkg.filename
    shutil.copy(pkg.path, copy)
    rogue_sig = tmp_path / "rogue.sig"
    test_repo.sign(copy, rogue_sig, key="rogue")
    result = _verify(str(copy), "--sig", str(rogue_sig), "--gpgdir", str(pacman_gpgdir))
    assert result.returncode == 1
    assert "unknown key" in result.stdout

    copy.write_bytes(copy.read_bytes() + b"\0")
    result = _verify(str(copy), "--sig", str(pkg.sig_path), "--gpgdir", str(pacman_gpgdir))
    assert result.returncode == 1
    assert "invalid" in result.stdout


@pytest.mark.parametrize(("trust", "reason"), [("marginal", "marginal"), ("unknown", "unknown")])
def test_keyring_trust_is_pacmans(
    trust: str, reason: str, test_repo: TestRepo, tmp_path: Path
) -> None:
    gpgdir = test_repo.make_pacman_gpgdir(tmp_path / trust, trust=trust)
    pkg = test_repo.packages["hello"]
    result = _verify(str(pkg.path), "--gpgdir", str(gpgdir))
    assert result.returncode == 1, result.stdout
    assert reason in result.stdout
    # gpg started an agent for this keyring: stop it (tests leave no process behind)
    subprocess.run(["gpgconf", "--homedir", str(gpgdir), "--kill", "all"], check=False)


def test_missing_files_are_a_clear_error(tmp_path: Path) -> None:
    result = _verify(str(tmp_path / "nope.pkg.tar.zst"))
    assert result.returncode == 1
    assert "nope.pkg.tar.zst" in result.stderr
