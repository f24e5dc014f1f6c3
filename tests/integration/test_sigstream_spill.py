"""Real gpg fed a streamed package: its first part from the temp file, the rest from memory
(the disk filled mid-transfer). In integration: it needs the signed test repo."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pacswarm.sigstream import SignatureCheck
from pacswarm.verify import Verdict
from tests.support.gpg import kill_agent
from tests.support.testrepo import TestRepo


@pytest.mark.parametrize("corrupt", [False, True])
def test_gpg_fed_from_the_file_then_memory_judges_every_byte(
    tmp_path: Path, test_repo: TestRepo, pacman_gpgdir: Path, corrupt: bool
) -> None:
    """Real gpg: the first part of the package from the temp file, the rest pushed from
    memory in pieces, and the end announced while gpg is still behind. One flipped byte in
    the memory part is refused, so gpg really read it."""
    pkg = test_repo.packages["bigpkg"]
    data = bytearray(pkg.path.read_bytes())
    kept = len(data) // 3
    if corrupt:
        data[2 * len(data) // 3] ^= 0xFF
    temp = tmp_path / "part"
    temp.write_bytes(data[:kept] + b"never read: past the file's end")

    async def check() -> Verdict:
        gpg_check = SignatureCheck(pacman_gpgdir, pkg.sig_path.read_bytes(), temp)
        gpg_check.advance(kept // 2)
        gpg_check.spill_from(kept)
        for pos in range(kept, len(data), 100_000):
            gpg_check.push(bytes(data[pos : pos + 100_000]))
        gpg_check.finish(len(data))
        return await gpg_check.verdict()

    try:
        verdict = asyncio.run(check())
    finally:
        kill_agent(pacman_gpgdir)
    assert verdict.ok is not corrupt, verdict.reason
    assert not verdict.local
