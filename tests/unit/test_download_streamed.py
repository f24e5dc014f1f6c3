"""Streamed downloads (the cache disk is full): the memory window, back-pressure, readers.

The pipeline of tests/unit/test_fetch_pipeline.py (in-memory sources, a verifier that
accepts one signature) with the disk made "full" by the node's own rule: the free space
must exceed the package plus :data:`~pacswarm.fetch.download.DISK_RESERVE`, here set beyond
any disk. A real full disk (tmpfs), real gpg and the real pacman are in
tests/integration/test_disk_full.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pacswarm.errors import NoSpaceError
from pacswarm.fetch import download
from pacswarm.fetch.download import HOLDBACK, DownloadFailed, State
from pacswarm.fetch.source import Want
from pacswarm.fetch.spill import Spill
from pacswarm.verify import Verdict
from tests.unit import test_fetch_pipeline as pipeline
from tests.unit.test_fetch_pipeline import DATA, RP, SIZE, Memory, World

LIMIT = 64 * 1024  # the memory window in these tests: SIZE is almost five of them


class _FedCheck(pipeline._Check):
    """A check that, like gpg's, must be fed every byte of the file, in order."""

    def __init__(self, signature: bytes, data: Path) -> None:
        super().__init__(signature)
        self.data = data
        self.file_end: int | None = None
        self.pushed = bytearray()

    def spill_from(self, offset: int) -> None:
        self.file_end = offset

    def push(self, chunk: bytes) -> None:
        self.pushed += chunk

    async def verdict(self) -> Verdict:
        assert self.file_end is not None, "a streamed check must know where the file ends"
        fed = self.data.read_bytes()[: self.file_end] if self.file_end else b""
        if hashlib.sha256(fed + self.pushed).digest() != hashlib.sha256(DATA).digest():
            return Verdict(False, "gpg was not fed the file's bytes")
        return await super().verdict()


class _FedVerifier(pipeline._Verifier):
    def start(  # type: ignore[override]
        self, signature: bytes, data: Path, running: object, plan: object
    ) -> _FedCheck:
        return _FedCheck(signature, data)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """No package fits (the reserve exceeds any disk), and a small memory window."""
    monkeypatch.setattr(download, "DISK_RESERVE", 1 << 62)
    monkeypatch.setattr(download, "Spill", lambda kept: Spill(kept, LIMIT))
    monkeypatch.setattr(pipeline, "_Verifier", _FedVerifier)


def _start(w: World, source: Memory) -> download.Download:
    return w.downloader.get_or_start(Want(RP, pipeline._record()), [source], stream_if_full=True)


def test_spill_keeps_what_a_reader_still_needs_and_reads_across_chunks() -> None:
    spill = Spill(100, limit=10)
    spill.append(b"abcd")
    spill.append(b"efgh")
    assert (spill.base, spill.end, spill.held) == (100, 108, 8)
    assert spill.read(102, 10) == b"cd"  # one chunk's worth at most
    assert spill.read(104, 2) == b"ef"
    assert not spill.trim(103)  # a reader is inside the first chunk: kept whole
    assert spill.trim(104) and spill.base == 104
    with pytest.raises(ValueError, match="not held"):
        spill.read(103, 1)
    spill.append(b"ij")
    assert (spill.held, spill.full(1000)) == (6, False)
    spill.append(b"klmn")
    assert spill.full(1000)  # the source waits here
    assert not spill.full(110)  # unless what is held is the tail readers may not send yet
    assert spill.held_bytes() == [b"efgh", b"ij", b"klmn"]


@pytest.mark.usefixtures("full_disk")
def test_a_slow_reader_holds_the_source_back_without_a_stall_and_gets_every_byte(
    tmp_path: Path,
) -> None:
    """Memory never holds more than the window; the source waits for the reader longer than
    the stall timeout (0.3 s), and that is not taken for a stall of the source."""
    source = Memory("mirror")

    async def body(w: World) -> tuple[bytes, int, str, int]:
        dl = _start(w, source)
        assert w.downloader.active(RP) is None  # nobody joins a streamed download
        got, most = bytearray(), 0
        async for chunk in dl.follow(0, SIZE, 0.0):
            got += chunk
            assert dl.spill is not None
            most = max(most, dl.spill.held)
            await asyncio.sleep(0.01)  # a slow client...
            if len(got) == LIMIT:
                await asyncio.sleep(1.5)  # ...that stops reading for 5 stall timeouts
        with pytest.raises(DownloadFailed) as not_cached:
            await asyncio.shield(dl.done)
        return bytes(got), most, str(not_cached.value), len(source.failures)

    got, most, why, failures = pipeline._run(tmp_path, body)
    assert got == DATA
    # The window, the held-back tail, and the chunks a reader is inside of; never the file.
    assert most <= LIMIT + HOLDBACK + 2 * source.piece < SIZE
    assert "not cached" in why
    assert failures == 0  # never judged a stall
    assert not list((tmp_path / "tmp").iterdir())
    assert not list((tmp_path / "cache").rglob("*.zst"))


@pytest.mark.usefixtures("full_disk")
def test_a_streamed_download_stops_when_its_last_reader_leaves(tmp_path: Path) -> None:
    closed: list[int] = []

    class Watched(Memory):
        async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
            try:
                async for chunk in super().stream(want, offset):
                    yield chunk
            finally:
                closed.append(offset)

    source = Watched("mirror", delay=0.001)

    async def body(w: World) -> tuple[State, str]:
        dl = _start(w, source)
        reader = dl.follow(0, SIZE, 0.0)
        await anext(reader)
        await reader.aclose()  # pacman went away
        with pytest.raises(DownloadFailed):
            await asyncio.shield(dl.done)
        return dl.state, dl.error

    state, error = pipeline._run(tmp_path, body)
    assert state is State.FAILED and "every reader left" in error
    assert closed == [0]  # the source's stream was closed, not left running
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.usefixtures("full_disk")
def test_a_streamed_range_short_of_the_end_is_refused_not_sent_unverified(
    tmp_path: Path,
) -> None:
    """Such a range waits for the verdict, and a streamed file's bytes are not kept for it."""

    async def body(w: World) -> bytes:
        dl = _start(w, Memory("mirror", delay=0.001))
        got = bytearray()
        with pytest.raises(DownloadFailed, match="not kept"):
            async for chunk in dl.follow(0, 1000, 0.0):
                got += chunk
        return bytes(got)

    assert pipeline._run(tmp_path, body) == b""


@pytest.mark.usefixtures("full_disk")
def test_the_tail_is_held_back_until_the_streamed_file_is_verified(tmp_path: Path) -> None:
    async def body(w: World) -> list[tuple[int, State]]:
        dl = _start(w, Memory("mirror"))
        seen, pos = [], 0
        async for chunk in dl.follow(0, SIZE, 0.0):
            pos += len(chunk)
            seen.append((pos, dl.state))
        return seen

    seen = pipeline._run(tmp_path, body)
    assert all(state is State.VERIFIED for pos, state in seen if pos > SIZE - HOLDBACK)
    assert seen[-1][0] == SIZE


def test_without_stream_if_full_a_full_disk_still_refuses(tmp_path: Path, full_disk: None) -> None:
    """Audits and seeding ask without ``stream_if_full``: nobody waits for those bytes."""

    async def body(w: World) -> str:
        with pytest.raises(NoSpaceError) as refused:
            w.downloader.get_or_start(Want(RP, pipeline._record()), [Memory("m")])
        return str(refused.value)

    assert "free some space" in pipeline._run(tmp_path, body)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 2 MiB tmpfs (we are root in the test VM) nearly filled, so the next download hits
    ``ENOSPC`` mid-transfer; the node's reserve is off so the check before it passes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root with CAP_SYS_ADMIN needed): {done.stderr}")
    monkeypatch.setattr(download, "DISK_RESERVE", 0)
    monkeypatch.setattr(download, "Spill", lambda kept: Spill(kept, LIMIT))
    monkeypatch.setattr(pipeline, "_Verifier", _FedVerifier)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill_leaving(disk: Path, room: int) -> None:
    """Fill ``disk`` with a ballast file until only ``room`` bytes are free."""
    free = shutil.disk_usage(disk).free
    (disk / "ballast").write_bytes(bytes(free - room))


def test_a_disk_filling_mid_transfer_streams_the_rest_to_its_reader(small_disk: Path) -> None:
    async def body(w: World) -> tuple[bytes, str]:
        dl = w.downloader.get_or_start(Want(RP, pipeline._record()), [Memory("m", delay=0.001)])
        _fill_leaving(small_disk, SIZE // 3)  # before the task's first step: no byte written
        got = b"".join([chunk async for chunk in dl.follow(0, SIZE, 0.0)])
        assert dl.spill is not None and 0 < dl.spill.kept < SIZE  # some bytes were kept
        with pytest.raises(DownloadFailed) as not_cached:
            await asyncio.shield(dl.done)
        return got, str(not_cached.value)

    got, why = pipeline._run(small_disk, body)
    assert got == DATA and "not cached" in why
    assert not list((small_disk / "tmp").iterdir())


def test_a_download_nobody_reads_fails_on_a_full_disk_instead_of_waiting(
    small_disk: Path,
) -> None:
    """An audit or seeding download has no reader to take streamed bytes: it fails (the
    disk is full) and frees its temp file, rather than waiting for a reader forever."""

    async def body(w: World) -> str:
        dl = w.downloader.get_or_start(Want(RP, pipeline._record()), [Memory("m")])
        _fill_leaving(small_disk, SIZE // 3)
        with pytest.raises(DownloadFailed) as failed:
            await asyncio.shield(dl.done)
        return str(failed.value)

    assert "no space left" in pipeline._run(small_disk, body)
    assert not list((small_disk / "tmp").iterdir())
