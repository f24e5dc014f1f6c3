"""The gateway client in time, and as a stream: real HTTP servers on 127.0.0.1.

A peer may send a perfectly valid CAR and still never finish it (a byte a second); the client
must cut it, by its minimum speed or its total deadline, with a clear error. ``iter_file``
streams the verified bytes of a file from an offset, for the download pipeline.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.car import encode_frame, encode_header
from pacswarm.ipfs.cid import CID, RAW
from pacswarm.ipfs.gateway import gateway_app
from pacswarm.ipfs.gatewayclient import GatewayFetchError, fetch_car, iter_file
from pacswarm.ipfs.unixfs import CHUNK_SIZE

pytestmark = pytest.mark.timeout(60)

KEY = "core/x86_64/pace-1.0-1-x86_64.pkg.tar.zst"
DATA = bytes(range(251)) * (3 * CHUNK_SIZE // 251) + b"tail of the package"
CAR_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=y"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[PackageBlockstore, CID]]:
    path = tmp_path / "cache" / KEY
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA)
    blocks = PackageBlockstore(tmp_path / "b.sqlite", lambda key: tmp_path / "cache" / key)
    try:
        yield blocks, blocks.add_package(KEY, path)
    finally:
        blocks.close()


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def trickling(car: bytes, step: int, pause: float) -> web.Application:
    """Serves ``car`` (a valid CAR) ``step`` bytes every ``pause`` seconds."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": CAR_TYPE})
        await resp.prepare(request)
        try:
            for i in range(0, len(car), step):
                await resp.write(car[i : i + step])
                await asyncio.sleep(pause)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    return app


def car_of(blocks: PackageBlockstore, root: CID) -> bytes:
    return encode_header(root) + b"".join(encode_frame(c, b) for c, b in blocks.dag_blocks(root))


def failed_fetch(app: web.Application, root: CID, **kwargs: float) -> tuple[str, float]:
    """(message, seconds) of a fetch_car that must fail."""

    async def main() -> tuple[str, float]:
        async with serve(app) as url, aiohttp.ClientSession() as s:
            started = time.monotonic()
            with pytest.raises(GatewayFetchError) as err:
                await fetch_car(s, url, root, io.BytesIO(), max_size=len(DATA), **kwargs)
            return str(err.value), time.monotonic() - started

    return asyncio.run(main())


def test_a_peer_trickling_a_byte_a_second_is_cut_with_the_defaults(
    store: tuple[PackageBlockstore, CID],
) -> None:
    """Default pace: at least 32 KiB/s over every 10 s; the trickle is cut after one window."""
    blocks, root = store
    message, seconds = failed_fetch(trickling(car_of(blocks, root), 1, 1.0), root)
    assert "slower than 32768 bytes/s over 10 s" in message
    assert str(root) in message
    assert seconds < 30  # one window (10 s), not the session's 5 min


def test_minimum_speed_is_judged_per_window(store: tuple[PackageBlockstore, CID]) -> None:
    """A peer fast at first, then trickling: cut one window after it slows down."""
    blocks, root = store
    car = car_of(blocks, root)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": CAR_TYPE})
        await resp.prepare(request)
        try:
            await resp.write(car[: len(car) // 2])
            for i in range(len(car) // 2, len(car), 100):
                await resp.write(car[i : i + 100])
                await asyncio.sleep(0.1)  # 1000 bytes/s
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    message, _ = failed_fetch(app, root, min_speed=64 * 1024, speed_window=1.0)
    assert "slower than 65536 bytes/s over 1 s" in message


def test_total_deadline_cuts_a_peer_fast_enough_per_window(
    store: tuple[PackageBlockstore, CID],
) -> None:
    """64 KiB/s passes a 1 KiB/s minimum, but the whole CAR takes ~12 s: the deadline cuts."""
    blocks, root = store
    app = trickling(car_of(blocks, root), 8 * 1024, 0.125)
    message, seconds = failed_fetch(app, root, deadline=1.5, min_speed=1024, speed_window=1.0)
    assert "not done within the deadline of 1.5 s" in message
    assert seconds < 10


def test_a_slow_but_steady_peer_finishes(store: tuple[PackageBlockstore, CID]) -> None:
    """The control: the same server, paced above the minimum, delivers the file."""
    blocks, root = store

    async def main() -> bytes:
        app = trickling(car_of(blocks, root), 256 * 1024, 0.05)
        async with serve(app) as url, aiohttp.ClientSession() as s:
            out = io.BytesIO()
            await fetch_car(s, url, root, out, max_size=len(DATA), min_speed=1024)
            return out.getvalue()

    assert asyncio.run(main()) == DATA


# -- iter_file ------------------------------------------------------------------------------


def stream(blocks: PackageBlockstore, root: CID, offset: int, size: int = len(DATA)) -> bytes:
    async def main() -> bytes:
        async with serve(gateway_app(blocks)) as url, aiohttp.ClientSession() as s:
            parts = [p async for p in iter_file(s, url, root, offset=offset, max_size=size)]
            return b"".join(parts)

    return asyncio.run(main())


@pytest.mark.parametrize(
    "offset", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 5, len(DATA) - 1, len(DATA)]
)
def test_iter_file_from_an_offset(store: tuple[PackageBlockstore, CID], offset: int) -> None:
    blocks, root = store
    assert stream(blocks, root, offset) == DATA[offset:]


def test_iter_file_consumer_time_is_not_counted(store: tuple[PackageBlockstore, CID]) -> None:
    """A consumer holding each chunk 0.3 s, under a 1 s deadline for the peer."""
    blocks, root = store

    async def main() -> bytes:
        async with serve(gateway_app(blocks)) as url, aiohttp.ClientSession() as s:
            parts = []
            async for part in iter_file(s, url, root, max_size=len(DATA), deadline=1.0):
                parts.append(part)
                await asyncio.sleep(0.3)
            return b"".join(parts)

    assert asyncio.run(main()) == DATA


def test_iter_file_refuses_what_fetch_car_refuses(store: tuple[PackageBlockstore, CID]) -> None:
    blocks, root = store

    async def main() -> None:
        async with serve(gateway_app(blocks)) as url, aiohttp.ClientSession() as s:
            with pytest.raises(GatewayFetchError, match=f"more than max_size={len(DATA) - 1}"):
                async for _ in iter_file(s, url, root, max_size=len(DATA) - 1):
                    pass

    asyncio.run(main())


def test_iter_file_can_be_left_early(store: tuple[PackageBlockstore, CID]) -> None:
    """Breaking out releases the connection; the same session fetches again at once."""
    blocks, root = store

    async def main() -> bytes:
        async with serve(gateway_app(blocks)) as url, aiohttp.ClientSession() as s:
            parts = iter_file(s, url, root, max_size=len(DATA))
            first = await anext(parts)
            await parts.aclose()
            assert DATA.startswith(first)
            return b"".join([p async for p in iter_file(s, url, root, max_size=len(DATA))])

    assert asyncio.run(main()) == DATA


def test_the_sessions_own_read_timeout_stays_a_transfer_failure(
    store: tuple[PackageBlockstore, CID],
) -> None:
    """aiohttp's sock_read timeout is also a TimeoutError: it must not pass for our pace."""
    blocks, root = store

    async def main() -> str:
        app = trickling(car_of(blocks, root), 1000, 2.0)
        timeout = aiohttp.ClientTimeout(sock_read=0.5)
        async with serve(app) as url, aiohttp.ClientSession(timeout=timeout) as s:
            with pytest.raises(GatewayFetchError) as err:
                await fetch_car(s, url, root, io.BytesIO(), max_size=len(DATA), min_speed=1)
            return str(err.value)

    assert "transfer failed" in asyncio.run(main())


@pytest.fixture
def deep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[PackageBlockstore, CID, bytes, list[bytes]]]:
    """A 3-level file (3 links a node): root -> [9 chunks, 4 chunks]; and the blocks served."""
    data = random.Random(7).randbytes(13 * CHUNK_SIZE - 100)  # 13 distinct chunks
    path = tmp_path / "cache" / KEY
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    blocks = PackageBlockstore(tmp_path / "b.sqlite", lambda key: tmp_path / "cache" / key)
    with monkeypatch.context() as m:
        m.setattr("pacswarm.ipfs.unixfs.MAX_LINKS", 3)
        root = blocks.add_package(KEY, path)
    served: list[bytes] = []
    get = blocks.get

    def counting_get(cid: CID) -> bytes | None:
        served.append(cid.digest)
        return get(cid)

    blocks.get = counting_get  # type: ignore[method-assign]
    try:
        yield blocks, root, data, served
    finally:
        blocks.close()


@pytest.mark.parametrize(
    ("offset", "leaves"),
    [(0, 13), (CHUNK_SIZE + 1, 13), (9 * CHUNK_SIZE, 4), (10 * CHUNK_SIZE + 5, 4), (-1, 4)],
)
def test_iter_file_from_an_offset_skips_the_subtrees_before_it(
    deep: tuple[PackageBlockstore, CID, bytes, list[bytes]], offset: int, leaves: int
) -> None:
    blocks, root, data, served = deep
    offset = len(data) - 1 if offset == -1 else offset
    raw_leaves = {c.digest for c, b in blocks.dag_blocks(root) if c.codec == RAW}
    assert len(raw_leaves) == 13
    served.clear()
    assert stream(blocks, root, offset, size=len(data)) == data[offset:]
    assert len([d for d in served if d in raw_leaves]) == leaves


def test_iter_file_from_the_end_yields_nothing(
    deep: tuple[PackageBlockstore, CID, bytes, list[bytes]],
) -> None:
    blocks, root, data, _ = deep
    assert stream(blocks, root, len(data), size=len(data)) == b""


def test_iter_file_from_an_offset_checks_the_root_block(
    deep: tuple[PackageBlockstore, CID, bytes, list[bytes]],
) -> None:
    """The root fetched alone must still be the root's block, else nothing is yielded."""
    _, root, data, _ = deep

    async def wrong_block(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"not the root", content_type="application/vnd.ipld.raw")

    async def main() -> str:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", wrong_block)
        async with serve(app) as url, aiohttp.ClientSession() as s:
            with pytest.raises(GatewayFetchError) as err:
                async for _ in iter_file(s, url, root, offset=10, max_size=len(data)):
                    pytest.fail("yielded bytes of a wrong root")
            return str(err.value)

    assert f"block {root} does not match its CID" in asyncio.run(main())
