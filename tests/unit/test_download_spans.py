"""The sendfile reader (``Download.spans``) and the batched wake-ups of readers and gpg.

The same in-memory sources and verifier as tests/unit/test_fetch_pipeline.py: what is tested
is that a reader of spans gets exactly what a reader of bytes gets (window, hold-back, cuts),
that a span is read from a file that holds its bytes, and that batching the wake-ups per
MiB never leaves a reader waiting for bytes that already arrived.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from pacswarm.fetch.download import HOLDBACK, WAKE_BYTES, DownloadFailed, FileSpan, State
from pacswarm.fetch.source import Want
from tests.unit.test_fetch_pipeline import (
    DATA,
    RP,
    SIZE,
    Memory,
    World,
    _liar,
    _record,
    _run,
)


async def _read(spans: AsyncIterator[FileSpan]) -> bytes:
    """What a sender of these spans puts on the wire (read while the fd is valid)."""
    got = bytearray()
    async for span in spans:
        got += os.pread(span.fd, span.length, span.offset)
    return bytes(got)


def test_spans_carry_the_whole_file_once_verified(tmp_path: Path) -> None:
    async def body(w: World) -> tuple[bytes, bytes]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [Memory("honest", delay=0.001)])
        whole = _read(dl.spans(0, SIZE, asyncio.get_running_loop().time() + 5.0))
        part = _read(dl.spans(1000, SIZE, 0.0))  # a resume, past the window
        return await whole, await part

    whole, part = _run(tmp_path, body)
    assert whole == DATA
    assert part == DATA[1000:]


def test_a_liar_replaced_inside_the_window_never_reaches_a_span_reader(tmp_path: Path) -> None:
    liar, honest = _liar(delay=0.001), Memory("honest")

    async def body(w: World) -> tuple[bytes, set[State]]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [liar, honest])
        got, states = bytearray(), set()
        async for span in dl.spans(0, SIZE, asyncio.get_running_loop().time() + 5.0):
            states.add(dl.state)
            got += os.pread(span.fd, span.length, span.offset)
        return bytes(got), states

    got, states = _run(tmp_path, body)
    assert got == DATA
    assert states == {State.VERIFIED}  # not one span before admission
    assert honest.asked == [0]


def test_past_the_window_spans_hold_back_the_tail_and_a_failure_cuts(tmp_path: Path) -> None:
    liar = _liar(delay=0.001)

    async def body(w: World) -> tuple[int, str]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [liar])
        sent = 0
        try:
            async for span in dl.spans(0, SIZE, window_ends=0.0):
                sent += span.length
        except DownloadFailed as e:
            return sent, str(e)
        raise AssertionError("the span reader was not cut")

    sent, reason = _run(tmp_path, body)
    assert 0 < sent <= SIZE - HOLDBACK  # bytes streamed, the tail never
    assert "verification" in reason or "sha256" in reason


def test_a_range_short_of_the_end_gets_no_span_before_verification(tmp_path: Path) -> None:
    async def body(w: World) -> list[State]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [Memory("honest", delay=0.001)])
        return [dl.state async for _ in dl.spans(0, 1000, window_ends=0.0)]

    assert set(_run(tmp_path, body)) == {State.VERIFIED}


def test_a_trickle_reaches_the_reader_without_waiting_for_a_batch(tmp_path: Path) -> None:
    """1 KiB pieces, then the source goes quiet far below WAKE_BYTES: the reader still gets
    the bytes that arrived (within the batching delay), as pacman's progress bar must."""
    assert WAKE_BYTES > 8 * 1024
    quiet = Memory("trickle", piece=1024, delay=0.001, stall_at=8 * 1024)

    async def body(w: World) -> int:
        dl = w.downloader.get_or_start(Want(RP, _record()), [quiet])
        sent = 0
        spans = dl.spans(0, SIZE, window_ends=0.0)
        try:
            while sent < 8 * 1024:
                span = await asyncio.wait_for(spans.__anext__(), 0.2)  # stall_timeout: 0.3 s
                sent += span.length
        finally:
            await spans.aclose()
        return sent

    assert _run(tmp_path, body) == 8 * 1024
