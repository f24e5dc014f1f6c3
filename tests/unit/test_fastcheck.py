"""The second hash of a SHA-512 signature follows the download wherever its bytes are: the
temp file as it grows, then memory when the disk filled (or memory only)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from pacswarm.fastcheck import FileHasher

DATA = os.urandom(3 * 1024 * 1024 + 17)


def test_hash_follows_a_growing_file_then_the_bytes_pushed_after_the_disk_filled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pkg.part"
    kept = 2 * 1024 * 1024 + 5

    async def run() -> str:
        path.write_bytes(DATA[:1000])
        hasher = FileHasher("sha512", path)
        hasher.advance(1000)
        await asyncio.sleep(0.01)
        path.write_bytes(DATA[:kept])  # the file grew, then the disk was full
        hasher.advance(kept)
        hasher.spill_from(kept)
        for i in range(kept, len(DATA), 65536):
            hasher.push(DATA[i : i + 65536])
        hasher.finish(len(DATA))
        return (await hasher.result()).hexdigest()

    assert asyncio.run(run()) == hashlib.sha512(DATA).hexdigest()


def test_hash_of_a_download_streamed_from_its_first_byte_needs_no_file(tmp_path: Path) -> None:
    async def run() -> str:
        hasher = FileHasher("sha512", tmp_path / "never-written")
        hasher.spill_from(0)
        hasher.push(DATA[:7])
        hasher.push(DATA[7:])
        hasher.finish(len(DATA))
        return (await hasher.result()).hexdigest()

    assert asyncio.run(run()) == hashlib.sha512(DATA).hexdigest()


def test_a_file_shorter_than_announced_is_an_error_not_a_wrong_hash(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(DATA[:100])

    async def run() -> None:
        hasher = FileHasher("sha512", path)
        hasher.finish(200)
        await hasher.result()

    with pytest.raises(OSError, match="shorter"):
        asyncio.run(run())
