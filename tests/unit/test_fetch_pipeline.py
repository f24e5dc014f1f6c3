"""The fetch pipeline with in-memory sources: an honest one, a liar, a staller, a truncator.

Milliseconds, no HTTP, no gpg: the verifier here accepts exactly one signature (``GOOD``),
so what is tested is the pipeline's own logic — the order of sources, continuing at the
offset, the verify window, the hold-back, admission and the one commit event. Real gpg,
real mirrors and the real pacman are in tests/integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from pacswarm.config import Config
from pacswarm.errors import NoSpaceError
from pacswarm.events import Committed, NodeEvents
from pacswarm.fetch.admit import Admission
from pacswarm.fetch.download import HOLDBACK, Downloader, DownloadFailed, State
from pacswarm.fetch.plan import SourcePlan
from pacswarm.fetch.source import CacheSource, Source, SourceFault, Want
from pacswarm.repodb import PackageRecord
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store
from pacswarm.upstream import Upstream
from pacswarm.verify import Verdict

T = TypeVar("T")
GOOD = b"good signature"
UNCHECKABLE = b"a signature our gpg cannot check"
SIZE = 300 * 1024
DATA = os.urandom(SIZE)
RP = RequestPath("core", "x86_64", "foo-1.0-1-x86_64.pkg.tar.zst", FileKind.PACKAGE)


def _record(signature: bytes = GOOD) -> PackageRecord:
    return PackageRecord(
        filename=RP.filename,
        name="foo",
        version="1.0-1",
        csize=SIZE,
        sha256=hashlib.sha256(DATA).hexdigest(),
        pgpsig=signature,
    )


class _Check:
    def __init__(self, signature: bytes) -> None:
        self.signature = signature
        self.aborted = False

    def advance(self, available: int) -> None:
        pass

    def finish(self, size: int) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    async def verdict(self) -> Verdict:
        return _verdict(self.signature)


def _verdict(signature: bytes) -> Verdict:
    if signature == GOOD:
        return Verdict(True, "trusted")
    if signature == UNCHECKABLE:  # our own gpg is broken, whatever the signature
        return Verdict(False, "gpg is not installed; install gnupg", local=True)
    return Verdict(False, "signature is of unknown trust")


class _Verifier:
    """Decides by the signature's bytes (``good``/anything else): the pipeline's logic is
    tested here, gpg's decision in the integration tests."""

    async def prepare(self, signature: bytes) -> None:
        return None

    def start(self, signature: bytes, data: Path, running: object, plan: object) -> _Check:
        return _Check(signature)

    async def verify(self, data: Path, signature: bytes) -> Verdict:
        return _verdict(signature)

    def confirm(self, verdict: Verdict) -> None:
        pass


@dataclass
class Memory:
    """A source that serves ``data`` (maybe a lie), optionally stopping or stalling at a byte."""

    name: str
    data: bytes = DATA
    stop_at: int | None = None  # close the stream here (a truncation)
    stall_at: int | None = None  # stop sending here, connection open (a stall)
    piece: int = 16 * 1024
    delay: float = 0.0
    asked: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    bad_content: int = 0  # failures with bad_content=True (a strike, for a peer)
    successes: int = 0
    first_byte_within: float | None = None
    peer_id: str | None = None

    def can_deliver(self, want: Want, offset: int) -> bool:
        return True

    async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
        self.asked.append(offset)
        pos = offset
        while pos < len(self.data):
            if self.stop_at is not None and pos >= self.stop_at:
                return
            if self.stall_at is not None and pos >= self.stall_at:
                await asyncio.sleep(3600)
            end = min(pos + self.piece, len(self.data))
            if self.stop_at is not None:
                end = min(end, max(self.stop_at, pos + 1))
            if self.delay:
                await asyncio.sleep(self.delay)
            yield self.data[pos:end]
            pos = end

    def failed(self, reason: str, *, bad_content: bool = False) -> None:
        self.failures.append(reason)
        self.bad_content += bad_content

    def succeeded(self) -> None:
        self.successes += 1


def _liar(name: str = "liar", **kw: object) -> Memory:
    bad = bytearray(DATA)
    bad[SIZE // 2] ^= 0xFF
    return Memory(name, bytes(bad), **kw)  # type: ignore[arg-type]


@dataclass
class World:
    store: Store
    downloader: Downloader
    committed: list[Committed]
    evicted: list[RequestPath]


def _run(tmp_path: Path, body: Callable[[World], Awaitable[T]]) -> T:
    async def main() -> T:
        config = Config(data_dir=tmp_path, stall_timeout=0.3, min_speed=1024)
        store = Store(tmp_path)
        store.open()
        upstream = Upstream([], config)  # no mirrors: only the sources a test names
        events = NodeEvents()
        committed: list[Committed] = []
        evicted: list[RequestPath] = []
        events.committed.subscribe(committed.append)
        plan = SourcePlan(
            lambda: CacheSource(store.cache_path, evicted.append), upstream, lambda n, t: False
        )
        admission = Admission(store, upstream, _Verifier(), events)
        downloader = Downloader(store, plan, admission, config)
        try:
            return await asyncio.wait_for(body(World(store, downloader, committed, evicted)), 10)
        finally:
            await downloader.close()
            store.close()

    return asyncio.run(main())


async def _read(dl_follow: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in dl_follow])


def test_an_honest_source_is_committed_once(tmp_path: Path) -> None:
    honest = Memory("honest")

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [honest])

    world: list[World] = []
    path = _run(tmp_path, lambda w: (world.append(w), body(w))[1])
    assert path.read_bytes() == DATA
    assert [c.rp for c in world[0].committed] == [RP]
    assert world[0].committed[0].sources == ("honest",)
    assert honest.successes == 1 and not honest.failures
    assert not list((tmp_path / "tmp").iterdir())


def test_a_liar_is_replaced_inside_the_window_and_the_reader_sees_only_good_bytes(
    tmp_path: Path,
) -> None:
    liar, honest = _liar(delay=0.001), Memory("honest")  # the reader runs while bytes arrive

    async def body(w: World) -> tuple[bytes, list[State]]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [liar, honest])
        states: list[State] = []
        window_ends = asyncio.get_running_loop().time() + 5.0
        got = bytearray()
        async for chunk in dl.follow(0, SIZE, window_ends):
            states.append(dl.state)
            got += chunk
        return bytes(got), states

    got, states = _run(tmp_path, body)
    assert got == DATA
    assert set(states) == {State.VERIFIED}  # not one byte before admission
    assert liar.failures and "bad" in liar.failures[0]
    assert honest.asked == [0]  # the liar's bytes were thrown away: start again


def test_a_truncating_source_is_continued_at_its_offset(tmp_path: Path) -> None:
    cut, honest = Memory("cut", stop_at=100_000), Memory("honest")

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [cut, honest])

    assert _run(tmp_path, body).read_bytes() == DATA
    assert honest.asked == [100_000]
    assert cut.failures and "closed at byte 100000" in cut.failures[0]


def test_a_stalling_source_is_left_for_the_next_at_its_offset(tmp_path: Path) -> None:
    staller, honest = Memory("staller", stall_at=64 * 1024), Memory("honest")

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [staller, honest])

    assert _run(tmp_path, body).read_bytes() == DATA
    assert honest.asked == [64 * 1024]
    assert staller.failures and "stalled" in staller.failures[0]


def test_a_truncating_liar_and_an_honest_source_end_with_the_honest_file(tmp_path: Path) -> None:
    """The first file is made of both sources' bytes; the retry starts with the honest one."""
    liar = _liar(stop_at=SIZE // 2 + 1024)
    honest = Memory("honest")

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [liar, honest])

    assert _run(tmp_path, body).read_bytes() == DATA
    # Nobody can tell which of the two lied: neither is told "bad content" (a strike).
    assert liar.bad_content == 0 and honest.bad_content == 0


def test_a_source_silent_past_its_first_byte_deadline_is_replaced_at_the_same_offset(
    tmp_path: Path,
) -> None:
    """A peer that sends nothing is left after its ``first_byte_within``, long before the
    stall watchdog (0.3 s here) would judge it; the next source continues at the offset."""
    cut = Memory("cut", stop_at=100_000)
    silent = Memory("silent", stall_at=0, first_byte_within=0.05)
    honest = Memory("honest", first_byte_within=1.0)

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [cut, silent, honest])

    assert _run(tmp_path, body).read_bytes() == DATA
    assert silent.asked == [100_000] and honest.asked == [100_000]
    assert silent.failures == ["sent no byte within 0.05 s (from offset 100000 of 307200)"]
    assert not honest.failures  # its first byte came in time: the deadline is only for that


def test_only_the_source_that_sent_a_bad_file_is_told_it_was_bad_content(tmp_path: Path) -> None:
    refuses, liar, honest = Memory("refuses", stop_at=0), _liar(), Memory("honest")

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [refuses, liar, honest])

    assert _run(tmp_path, body).read_bytes() == DATA
    assert liar.bad_content == 1
    assert refuses.failures and refuses.bad_content == 0  # it failed, but sent no bad file
    assert honest.bad_content == 0 and not honest.failures


def test_every_attempt_asks_the_plan_for_peers_and_leaves_out_the_one_that_lied(
    tmp_path: Path,
) -> None:
    liar, honest = _liar("peer liar"), Memory("peer honest")
    asked: list[Want] = []

    def peers(want: Want) -> list[Source]:
        asked.append(want)
        return [liar, honest]

    async def body(w: World) -> Path:
        w.downloader.plan.peers = peers
        return await w.downloader.fetch(Want(RP, _record()))

    assert _run(tmp_path, body).read_bytes() == DATA
    assert [a.rp for a in asked] == [RP, RP]  # the first attempt, and the one after the lie
    assert liar.asked == [0] and honest.asked == [0]


def test_without_window_the_hold_back_keeps_the_tail_and_a_failure_cuts(tmp_path: Path) -> None:
    liar = _liar(delay=0.001)

    async def body(w: World) -> tuple[int, str, bool]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [liar])
        got = 0
        try:
            async for chunk in dl.follow(0, SIZE, window_ends=0.0):
                got += len(chunk)
        except DownloadFailed as e:
            return got, str(e), w.downloader.cuts.known(Want(RP, _record()).key)
        raise AssertionError("the reader was not cut")

    got, reason, recorded = _run(tmp_path, body)
    assert 0 < got <= SIZE - HOLDBACK  # bytes streamed, the tail never
    assert "verification" in reason or "sha256" in reason
    assert recorded  # what the cut transfer sent is kept to judge pacman's resume
    assert not (tmp_path / "cache" / "core").exists() or not list(
        (tmp_path / "cache/core/x86_64").iterdir()
    )


def test_every_source_lying_fails_and_caches_nothing(tmp_path: Path) -> None:
    liars = [_liar("liar1"), _liar("liar2")]

    async def body(w: World) -> str:
        with pytest.raises(DownloadFailed) as failed:
            await w.downloader.fetch(Want(RP, _record()), liars)
        return str(failed.value)

    reason = _run(tmp_path, body)
    assert "liar1" in reason and "liar2" in reason
    assert all(liar.failures for liar in liars)
    assert not list((tmp_path / "tmp").iterdir())
    assert not Path(tmp_path / "cache/core/x86_64" / RP.filename).exists()


def test_a_signature_the_keyring_does_not_trust_is_final(tmp_path: Path) -> None:
    """The bytes are the db's; no other source can change the signature: no refetch."""
    first, second = Memory("first"), Memory("second")

    async def body(w: World) -> str:
        with pytest.raises(DownloadFailed) as failed:
            await w.downloader.fetch(Want(RP, _record(b"rogue")), [first, second])
        return str(failed.value)

    assert "unknown trust" in _run(tmp_path, body)
    assert second.asked == []


def test_a_reader_joining_after_the_commit_reads_the_cached_file(tmp_path: Path) -> None:
    honest = Memory("honest")

    async def body(w: World) -> bytes:
        dl = w.downloader.get_or_start(Want(RP, _record()), [honest])
        await asyncio.shield(dl.done)  # committed: the temp file is renamed away
        return await _read(dl.follow(0, SIZE, 0.0))

    assert _run(tmp_path, body) == DATA


def test_the_cache_source_serves_and_bit_rot_is_dropped(tmp_path: Path) -> None:
    """A rotten cached copy fails admission: it is evicted and the next source serves."""
    honest = Memory("honest")

    async def body(w: World) -> tuple[bytes, list[RequestPath]]:
        rotten = w.store.cache_path(RP)
        rotten.parent.mkdir(parents=True)
        rotten.write_bytes(_liar().data)
        path = await w.downloader.fetch(Want(RP, _record()), [honest])
        return path.read_bytes(), w.evicted

    data, evicted = _run(tmp_path, body)
    assert data == DATA
    assert evicted == [RP]


def test_source_faults_name_the_source(tmp_path: Path) -> None:
    class Refuses(Memory):
        async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
            raise SourceFault("HTTP 503")
            yield b""  # pragma: no cover - makes this an async generator

    refuses, honest = Refuses("refuses"), Memory("honest")

    async def body(w: World) -> Path:
        return await w.downloader.fetch(Want(RP, _record()), [refuses, honest])

    assert _run(tmp_path, body).read_bytes() == DATA
    assert refuses.failures == ["HTTP 503"]


def test_a_source_that_breaks_unexpectedly_is_a_fault_not_a_dead_download(
    tmp_path: Path,
) -> None:
    """A source raising something no one foresaw (a parser's ValueError) is left for the
    next source; the download neither dies silently (readers and later requests would wait
    for ever) nor fails while an honest source is left."""

    class Breaks(Memory):
        async def stream(self, want: Want, offset: int) -> AsyncIterator[bytes]:
            yield DATA[:1000]
            raise ValueError("Invalid IPv6 URL")

    breaks, honest = Breaks("breaks"), Memory("honest")

    async def body(w: World) -> tuple[bytes, bool]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [breaks, honest])
        got = await _read(dl.follow(0, SIZE, asyncio.get_running_loop().time() + 5.0))
        return got, (await asyncio.shield(dl.done)).read_bytes() == DATA

    got, cached = _run(tmp_path, body)
    assert got == DATA and cached
    assert honest.asked == [1000]
    assert breaks.failures and "ValueError: Invalid IPv6 URL" in breaks.failures[0]


def test_a_bug_in_the_download_fails_it_instead_of_hanging_its_readers(tmp_path: Path) -> None:
    """Whatever goes wrong inside the download task, readers are cut and the next request
    starts afresh: nothing waits for a task that is gone."""

    class Unnamed(Memory):
        def failed(self, reason: str, *, bad_content: bool = False) -> None:
            raise RuntimeError("a bug in a source's bookkeeping")

    liar = _liar("liar")
    broken = Unnamed("broken", liar.data)

    async def body(w: World) -> tuple[str, bool]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [broken])
        with pytest.raises(DownloadFailed) as cut:
            await _read(dl.follow(0, SIZE, asyncio.get_running_loop().time() + 5.0))
        return str(cut.value), w.downloader.active(RP) is None

    reason, gone = _run(tmp_path, body)
    assert "RuntimeError" in reason and gone
    assert not list((tmp_path / "tmp").iterdir())


def test_a_cut_is_recorded_with_the_bytes_its_reader_really_sent(tmp_path: Path) -> None:
    """A reader sends bad bytes of attempt 1, then is stuck writing to a slow client while
    attempt 2 (another liar, whose lie lies past what the reader sent) fails too. The record
    of the cut must be attempt 1's bytes: judged by attempt 2's file, pacman's resume of its
    bad ``.part`` would be accepted and its install would fail on the checksum."""
    early = bytearray(DATA)
    early[1000] ^= 0xFF
    late = bytearray(DATA)
    late[SIZE - 100] ^= 0xFF
    first = Memory("first", bytes(early), delay=0.001)
    second, honest = Memory("second", bytes(late)), Memory("honest")

    async def body(w: World) -> bool | None:
        want = Want(RP, _record())
        dl = w.downloader.get_or_start(want, [first, second, honest])
        reader = dl.follow(0, SIZE, window_ends=0.0)
        sent = 0
        while sent < 200 * 1024:  # past the window: unverified bytes go out
            sent += len(await anext(reader))
        # ...and the client stops reading: the reader stays where it is.
        cached = await asyncio.shield(dl.done)
        await reader.aclose()
        return w.downloader.cuts.judge(want.key, sent, cached)

    assert _run(tmp_path, body) is False


def test_the_disk_check_counts_the_downloads_already_running(tmp_path: Path) -> None:
    """Two downloads that each fit the free space but not together: the second is refused
    at once (507) instead of both failing midway on a full disk."""
    free = shutil.disk_usage(tmp_path).free
    size = free // 2 + (1 << 30)  # one fits (free > 2.2 GiB), two do not

    def want(name: str) -> Want:
        rp = RequestPath("core", "x86_64", name, FileKind.PACKAGE)
        return Want(rp, dataclasses.replace(_record(), filename=name, csize=size))

    async def body(w: World) -> str:
        w.downloader.get_or_start(want("big-1-1-any.pkg.tar.zst"), [Memory("m", stall_at=0)])
        with pytest.raises(NoSpaceError) as refused:
            w.downloader.get_or_start(want("other-1-1-any.pkg.tar.zst"), [Memory("m")])
        return str(refused.value)

    if free < 3 << 30:
        pytest.skip("needs 3 GiB free to tell one download from two")
    assert "free some space" in _run(tmp_path, body)


def test_a_verified_file_the_database_cannot_record_fails_cleanly(tmp_path: Path) -> None:
    """The SQLite db is locked by another process (a long ``pacswarm`` command) past the
    busy timeout: the download fails with a clear reason and leaves nothing behind, and the
    next request starts afresh, instead of a dead task holding the file "in flight"."""
    honest = Memory("honest")

    async def body(w: World) -> tuple[str, bool, Path]:
        other = sqlite3.connect(tmp_path / "pacswarm.sqlite", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(DownloadFailed) as failed:
                await w.downloader.fetch(Want(RP, _record()), [honest])
        finally:
            other.execute("ROLLBACK")
            other.close()
        gone = w.downloader.active(RP) is None
        return str(failed.value), gone, await w.downloader.fetch(Want(RP, _record()), [honest])

    reason, gone, path = _run(tmp_path, body)
    assert "could not cache" in reason and "locked" in reason and gone
    assert path.read_bytes() == DATA
    assert not list((tmp_path / "tmp").iterdir())


def test_a_cut_reader_sends_nothing_after_its_record_is_taken(tmp_path: Path) -> None:
    """Past the window, a reader behind a fast source is still sending when the attempt fails
    (the bad byte is in the held-back tail). What it sent must be exactly what was recorded:
    a longer ``.part`` matches no record and pacman is told to start over (416) although its
    bytes were a good prefix."""
    big = os.urandom(8 << 20)
    bad = bytearray(big)
    bad[len(big) - 100] ^= 0xFF
    liar = Memory("liar", bytes(bad), piece=1 << 20, delay=0.002)
    honest = Memory("honest", big)
    record = dataclasses.replace(_record(), csize=len(big), sha256=hashlib.sha256(big).hexdigest())

    async def body(w: World) -> bool | None:
        want = Want(RP, record)
        dl = w.downloader.get_or_start(want, [liar, honest])
        sent = 0
        with contextlib.suppress(DownloadFailed):
            async for chunk in dl.follow(0, len(big), window_ends=0.0):
                sent += len(chunk)
                await asyncio.sleep(0)  # a client: the write yields to the loop
        cached = await asyncio.shield(dl.done)
        return w.downloader.cuts.judge(want.key, sent, cached)

    assert _run(tmp_path, body) is True


def test_a_file_no_source_can_match_fails_instead_of_retrying_for_ever(tmp_path: Path) -> None:
    """A db entry of 0 bytes with another file's sha256: no source sends a byte, so none can
    be refused for the bad file; the attempts are still bounded and pacman gets an error."""
    honest = Memory("honest")
    empty = PackageRecord(
        filename=RP.filename,
        name="foo",
        version="1.0-1",
        csize=0,
        sha256=_record().sha256,
        pgpsig=GOOD,
    )

    async def body(w: World) -> str:
        with pytest.raises(DownloadFailed) as failed:
            await w.downloader.fetch(Want(RP, empty), [honest])
        return str(failed.value)

    assert "sha256" in _run(tmp_path, body)
    assert not list((tmp_path / "tmp").iterdir())


def test_past_the_window_the_held_back_tail_follows_the_admission(tmp_path: Path) -> None:
    """A reader past its window has everything but the tail; admission releases the tail."""
    honest = Memory("honest", delay=0.001)

    async def body(w: World) -> bytes:
        dl = w.downloader.get_or_start(Want(RP, _record()), [honest])
        return await _read(dl.follow(0, SIZE, window_ends=0.0))

    assert _run(tmp_path, body) == DATA


def test_a_signature_our_gpg_cannot_check_blames_gpg_not_the_signature(tmp_path: Path) -> None:
    """A broken local gpg refuses the file but says so: the user fixes gpg, not the repo."""
    honest = Memory("honest")

    async def body(w: World) -> str:
        with pytest.raises(DownloadFailed) as failed:
            await w.downloader.fetch(Want(RP, _record(UNCHECKABLE)), [honest])
        return str(failed.value)

    reason = _run(tmp_path, body)
    assert "could not check the signature" in reason and "install gnupg" in reason
    assert "%PGPSIG%" not in reason


def test_a_range_short_of_the_end_waits_for_verification_even_past_the_window(
    tmp_path: Path,
) -> None:
    """The hold-back protects only the tail: bytes 0-999 of a liar's file must never make a
    complete response, window or not."""
    liar = _liar(delay=0.001)

    async def body(w: World) -> tuple[int, bool]:
        dl = w.downloader.get_or_start(Want(RP, _record()), [liar])
        got = 0
        try:
            async for chunk in dl.follow(0, 1000, window_ends=0.0):
                got += len(chunk)
        except DownloadFailed:
            return got, True
        return got, False

    got, cut = _run(tmp_path, body)
    assert (got, cut) == (0, True)
