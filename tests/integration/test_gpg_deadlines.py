"""The signature check is bounded: a stuck gpg is killed, a crafted signature never runs gpg.

The stuck gpg is a real process on ``PATH`` in front of the real one (a shell script that
``exec``s ``sleep``), standing in for a broken local install: it takes no input, or takes it
all and never answers. Its pid is recorded so the tests can check it was killed.
"""

from __future__ import annotations

import asyncio
import bz2
import os
from pathlib import Path

import pytest

from pacswarm.sigstream import SignatureCheck
from pacswarm.verify import Verdict, verify_signature
from tests.support.testrepo import TestRepo

#: Far above the 1 s deadlines the tests set: only a check that never ends can reach it.
NEVER = 60.0


def _front_gpg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Put a ``gpg`` script running ``body`` first on PATH; return the file its pid goes to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "gpg.pid"
    script = bindir / "gpg"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return pidfile


def _gone(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def _stream(
    gpgdir: Path, signature: bytes, package: Path, *, finish: bool, stall: float = NEVER
) -> Verdict:
    """Run a :class:`SignatureCheck` over ``package`` as download.py does; its verdict."""

    async def run() -> Verdict:
        check = SignatureCheck(gpgdir, signature, package, finish_timeout=1.0, stall_timeout=stall)
        size = package.stat().st_size
        check.advance(size)
        if finish:
            check.finish(size)
        try:
            return await asyncio.wait_for(check.verdict(), NEVER)
        finally:
            check.abort()

    return asyncio.run(run())


def test_gpg_that_stops_reading_is_killed_mid_download(
    test_repo: TestRepo, pacman_gpgdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = test_repo.packages["bigpkg"]  # 6 MiB: more than the 1 MiB pipe gpg never empties
    pidfile = _front_gpg(tmp_path, monkeypatch, "exec sleep 600")
    verdict = _stream(pacman_gpgdir, big.sig_path.read_bytes(), big.path, finish=False, stall=1)
    assert not verdict.ok
    assert verdict.local  # our gpg is broken: no mirror is to blame
    assert "did not answer" in verdict.reason
    assert _gone(pidfile)


def test_gpg_without_a_verdict_after_the_last_byte_is_killed(
    test_repo: TestRepo, pacman_gpgdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = test_repo.packages["hello"]
    pidfile = _front_gpg(tmp_path, monkeypatch, "cat > /dev/null\nexec sleep 600")
    verdict = _stream(pacman_gpgdir, pkg.sig_path.read_bytes(), pkg.path, finish=True)
    assert not verdict.ok
    assert verdict.local
    assert "did not answer within 1 s" in verdict.reason
    assert _gone(pidfile)


def test_whole_file_check_of_a_stuck_gpg_is_killed(
    test_repo: TestRepo, pacman_gpgdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = test_repo.packages["hello"]
    pidfile = _front_gpg(tmp_path, monkeypatch, "exec sleep 600")
    verdict = asyncio.run(
        verify_signature(pacman_gpgdir, pkg.path, pkg.sig_path.read_bytes(), timeout=1.0)
    )
    assert not verdict.ok and verdict.local
    assert _gone(pidfile)


def test_streaming_check_with_the_real_gpg_still_accepts(
    test_repo: TestRepo, pacman_gpgdir: Path
) -> None:
    big = test_repo.packages["bigpkg"]
    verdict = _stream(pacman_gpgdir, big.sig_path.read_bytes(), big.path, finish=True, stall=1)
    assert verdict.ok, verdict.reason


@pytest.mark.parametrize("kind", ["oversized", "compressed"])
def test_refused_signatures_never_start_gpg(
    kind: str,
    test_repo: TestRepo,
    pacman_gpgdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pkg = test_repo.packages["hello"]
    good = pkg.sig_path.read_bytes()
    if kind == "oversized":
        signature = good * 200
    else:  # one bzip2 packet that gpg would unpack into 100,000 signatures
        data = b"\x03" + bz2.compress(good * 100_000, 9)
        signature = bytes([0xC8, 0xFF]) + len(data).to_bytes(4, "big") + data
    pidfile = _front_gpg(tmp_path, monkeypatch, 'exec /usr/bin/gpg "$@"')
    streamed = _stream(pacman_gpgdir, signature, pkg.path, finish=True)
    whole = asyncio.run(verify_signature(pacman_gpgdir, pkg.path, signature))
    for verdict in (streamed, whole):
        assert not verdict.ok
        assert not verdict.local  # the sender's fault
    assert not pidfile.exists()  # gpg was never started
