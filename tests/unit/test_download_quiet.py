"""``Downloader.quiet``: what can wait (the IPFS import of a package just cached) waits there
until pacman's downloads are over, so that on a small machine it never takes CPU from them.

The same in-memory sources as tests/unit/test_fetch_pipeline.py; the clock is the loop's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pacswarm.fetch.source import Want
from tests.unit.test_fetch_pipeline import DATA, RP, SIZE, Memory, World, _record, _run


def test_quiet_returns_at_once_when_no_download_ran(tmp_path: Path) -> None:
    async def body(w: World) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await w.downloader.quiet(quiet_for=0.5, at_most=5.0)
        return loop.time() - start

    assert _run(tmp_path, body) < 0.2


def test_quiet_waits_for_a_running_download_and_then_for_quiet_for(tmp_path: Path) -> None:
    # 300 KiB in 16 KiB pieces every 20 ms: the download runs for about 0.4 s.
    slow = Memory("slow", delay=0.02)

    async def body(w: World) -> tuple[float, float, bytes]:
        loop = asyncio.get_running_loop()
        dl = w.downloader.get_or_start(Want(RP, _record()), [slow])
        start = loop.time()
        await w.downloader.quiet(quiet_for=0.3, at_most=5.0)
        waited = loop.time() - start
        ended = await dl.done
        return waited, loop.time() - start, ended.read_bytes()

    waited, _, cached = _run(tmp_path, body)
    assert cached == DATA  # the download itself is not held up
    assert waited >= 0.3 + 0.3  # its ~0.4 s (at least most of it), then 0.3 s of quiet
    assert waited < 3.0


def test_quiet_gives_up_after_at_most_while_downloads_keep_running(tmp_path: Path) -> None:
    stalled = Memory("stalled", stall_at=SIZE // 2)  # runs until the 0.3 s stall timeout

    async def body(w: World) -> float:
        loop = asyncio.get_running_loop()
        w.downloader.get_or_start(Want(RP, _record()), [stalled])
        start = loop.time()
        await w.downloader.quiet(quiet_for=1.0, at_most=0.2)
        return loop.time() - start

    waited = _run(tmp_path, body)
    assert 0.15 <= waited < 0.6  # at_most, not the download's end plus a second of quiet
