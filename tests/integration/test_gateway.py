"""The trustless gateway over real HTTP on 127.0.0.1, and the client that fetches from it.

The client is also run against hostile servers written here: a wrong block, a truncated CAR,
an endless CAR. Each must end in a clear :class:`GatewayFetchError` with nothing written past
``max_size``.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pacswarm.ipfs.blockstore import PackageBlockstore
from pacswarm.ipfs.car import CarReader, encode_frame, encode_header
from pacswarm.ipfs.cid import CID, DAG_PB, RAW, encode_varint
from pacswarm.ipfs.dagpb import PBLink, PBNode, encode_node
from pacswarm.ipfs.gateway import gateway_app
from pacswarm.ipfs.gatewayclient import GatewayFetchError, fetch_car
from pacswarm.ipfs.unixfs import CHUNK_SIZE, encode_file_data, import_bytes

KEY = "core/x86_64/big-1.0-1-x86_64.pkg.tar.zst"
SMALL_KEY = "core/x86_64/small-1.0-1-x86_64.pkg.tar.zst"
ZERO_KEY = "extra/x86_64/zeros-1.0-1-x86_64.pkg.tar.zst"
BIG = b"".join(i.to_bytes(4, "little") * 2 for i in range(3 * 1024 * 1024 // 8)) + b"tail"
SMALL = b"a package small enough to be one raw leaf"
ZEROS = bytes(3 * CHUNK_SIZE + 100)  # repeated identical chunks: dups=y vs dups=n
RAW_ACCEPT = {"Accept": "application/vnd.ipld.raw"}
CAR_ACCEPT = {"Accept": "application/vnd.ipld.car"}


class Node:
    """A blockstore over real files, as a node has it."""

    def __init__(self, root: Path) -> None:
        self.cache = root / "cache"
        self.corrupted: list[str] = []
        self.blocks = PackageBlockstore(root / "b.sqlite", self.locate, self.corrupted.append)
        self.roots = {
            k: self.put(k, d) for k, d in ((KEY, BIG), (SMALL_KEY, SMALL), (ZERO_KEY, ZEROS))
        }

    def locate(self, key: str) -> Path:
        return self.cache / key

    def put(self, key: str, data: bytes) -> CID:
        path = self.locate(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.blocks.add_package(key, path)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.blocks.close()


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1, a free port; yields the base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def with_gateway(
    node: Node, scenario: Callable[[str, aiohttp.ClientSession], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with serve(gateway_app(node.blocks)) as url, aiohttp.ClientSession() as s:
            await scenario(url, s)

    asyncio.run(main())


def car_blocks(
    body: bytes, feed_size: int = 65536
) -> tuple[tuple[CID, ...], list[tuple[CID, bytes]]]:
    reader = CarReader()
    blocks = []
    for i in range(0, len(body), feed_size):
        blocks += reader.feed(body[i : i + feed_size])
    reader.finish()
    return reader.roots, blocks


# -- the gateway --------------------------------------------------------------------------


def test_raw_block_with_spec_headers(node: Node) -> None:
    leaf = import_bytes(BIG).leaves[1]

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{leaf.cid}?format=raw") as r:
            assert r.status == 200
            body = await r.read()
            assert body == BIG[leaf.offset : leaf.offset + leaf.length]
            assert r.headers["Content-Type"] == "application/vnd.ipld.raw"
            assert r.headers["Content-Length"] == str(leaf.length)
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "public, max-age=29030400, immutable"
            assert r.headers["ETag"] == f'"{leaf.cid}.raw"'
            assert r.headers["Content-Disposition"] == f'attachment; filename="{leaf.cid}.bin"'
            assert r.headers["X-Ipfs-Path"] == f"/ipfs/{leaf.cid}"
            assert r.headers["X-Ipfs-Roots"] == str(leaf.cid)
            assert "Accept" in r.headers["Vary"]
            assert "Content-Location" not in r.headers
        async with s.get(f"{url}/ipfs/{leaf.cid}", headers=RAW_ACCEPT) as r:
            assert r.status == 200
            assert await r.read() == BIG[leaf.offset : leaf.offset + leaf.length]
            assert r.headers["Content-Location"] == f"/ipfs/{leaf.cid}?format=raw"
        root = node.roots[KEY]
        async with s.get(f"{url}/ipfs/{root}?format=raw") as r:  # a dag-pb block, raw
            assert root.verify(await r.read())
        v0 = CID(0, DAG_PB, root.digest)
        async with s.get(f"{url}/ipfs/{v0}?format=raw") as r:
            assert r.status == 200
            assert root.verify(await r.read())

    with_gateway(node, scenario)


def test_car_of_a_multi_chunk_file_rebuilds_it(node: Node) -> None:
    root = node.roots[KEY]

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{root}?format=car", headers=CAR_ACCEPT) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == (
                "application/vnd.ipld.car; version=1; order=dfs; dups=n"
            )
            assert r.headers["ETag"] == f'"{root}.car.v1.dfs.dups-n"'
            assert r.headers["Content-Disposition"] == f'attachment; filename="{root}.car"'
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "public, max-age=29030400, immutable"
            body = await r.read()
        roots, blocks = car_blocks(body, feed_size=4099)
        assert roots == (root,)
        assert blocks[0][0] == root
        assert b"".join(b for c, b in blocks if c.codec == RAW) == BIG
        assert [c for c, _ in blocks] == [c for c, _ in node.blocks.dag_blocks(root)]

    with_gateway(node, scenario)


def test_car_of_a_one_leaf_file(node: Node) -> None:
    root = node.roots[SMALL_KEY]

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{root}", headers=CAR_ACCEPT) as r:
            assert r.status == 200
            assert r.headers["Content-Location"] == f"/ipfs/{root}?format=car&car-dups=n"
            assert car_blocks(await r.read()) == ((root,), [(root, SMALL)])

    with_gateway(node, scenario)


def test_car_duplicates_only_when_asked(node: Node) -> None:
    root = node.roots[ZERO_KEY]
    zero_chunk = CID.of(bytes(CHUNK_SIZE))

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{root}?format=car") as r:
            _, blocks = car_blocks(await r.read())
            assert [c for c, _ in blocks].count(zero_chunk) == 1
        accept = {"Accept": "application/vnd.ipld.car; version=1; order=dfs; dups=y"}
        async with s.get(f"{url}/ipfs/{root}", headers=accept) as r:
            assert r.headers["Content-Type"].endswith("dups=y")
            _, blocks = car_blocks(await r.read())
            assert [c for c, _ in blocks].count(zero_chunk) == 3
            assert b"".join(b for c, b in blocks if c.codec == RAW) == ZEROS
        async with s.get(f"{url}/ipfs/{root}?format=car&car-dups=y", headers=CAR_ACCEPT) as r:
            assert r.headers["Content-Type"].endswith("dups=y")

    with_gateway(node, scenario)


def test_dag_scope(node: Node) -> None:
    root = node.roots[KEY]

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{root}?format=car&dag-scope=block") as r:
            assert r.status == 200
            assert r.headers["ETag"] == f'"{root}.car.v1.dfs.dups-n.block"'
            roots, blocks = car_blocks(await r.read())
            assert roots == (root,)
            assert [c for c, _ in blocks] == [root]
        async with s.get(f"{url}/ipfs/{root}?format=car&dag-scope=entity") as r:
            _, blocks = car_blocks(await r.read())
            assert b"".join(b for c, b in blocks if c.codec == RAW) == BIG
        for query in ("dag-scope=nope", "entity-bytes=0:99"):
            async with s.get(f"{url}/ipfs/{root}?format=car&{query}") as r:
                assert r.status == 400

    with_gateway(node, scenario)


def test_raw_block_gone_bad_is_404_and_reported(node: Node) -> None:
    leaf = import_bytes(BIG).leaves[0]
    with open(node.locate(KEY), "r+b") as f:
        f.write(b"rot")

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{leaf.cid}?format=raw") as r:
            assert r.status == 404
        assert node.corrupted == [KEY]
        async with s.head(f"{url}/ipfs/{node.roots[KEY]}?format=car") as r:
            assert r.status == 404

    with_gateway(node, scenario)


def test_head(node: Node) -> None:
    root = node.roots[KEY]
    leaf = import_bytes(BIG).leaves[0]

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.head(f"{url}/ipfs/{leaf.cid}?format=raw") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(CHUNK_SIZE)
            assert r.headers["ETag"] == f'"{leaf.cid}.raw"'
            assert await r.read() == b""
        async with s.head(f"{url}/ipfs/{root}?format=car") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/vnd.ipld.car; version=1")
            assert await r.read() == b""
        async with s.head(f"{url}/ipfs/{CID.of(b'nope')}?format=raw") as r:
            assert r.status == 404

    with_gateway(node, scenario)


def test_errors(node: Node) -> None:
    root = node.roots[KEY]
    unknown = CID.of(b"not here")

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        cases = [
            (f"/ipfs/{unknown}?format=raw", {}, 404),
            (f"/ipfs/{unknown}?format=car", {}, 404),
            ("/ipfs/bnotacid?format=raw", {}, 400),
            ("/ipfs/Qm123?format=raw", {}, 400),
            (f"/ipfs/{root}x?format=raw", {}, 400),
            # no verifiable format asked: the file itself (issue 8; see test_gateway_paths.py)
            (f"/ipfs/{root}", {}, 200),
            (f"/ipfs/{root}", {"Accept": "*/*"}, 200),
            (f"/ipfs/{root}", {"Accept": "text/html"}, 200),
            (f"/ipfs/{root}", {"Accept": "application/vnd.ipld.dag-json"}, 406),
            (f"/ipfs/{root}?format=dag-json", {}, 406),
            (f"/ipfs/{root}?format=tar", {}, 406),
            (f"/ipfs/{root}", {"Accept": "application/vnd.ipld.car; version=2"}, 406),
            (f"/ipfs/{root}?format=car&car-order=bfs", {}, 406),
            (f"/ipfs/{root}/some/path?format=car", {}, 404),
            (f"/ipns/{root}?format=raw", {}, 404),
            ("/", {}, 404),
            ("/ipfs/", {}, 404),
            ("/api/v0/cat", {}, 404),
        ]
        for path, headers, status in cases:
            async with s.get(url + path, headers=headers) as r:
                assert (path, r.status) == (path, status)
        async with s.post(f"{url}/ipfs/{root}?format=raw") as r:
            assert r.status == 405
        async with s.get(
            f"{url}/ipfs/{root}?format=raw", headers={"If-None-Match": f'"{root}.raw"'}
        ) as r:
            assert r.status == 304
            assert await r.read() == b""

    with_gateway(node, scenario)


def _raw_http(port: int, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_path_traversal_attempts(node: Node) -> None:
    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        port = int(url.rsplit(":", 1)[1])
        for target in (
            b"/ipfs/../cache/" + KEY.encode() + b"?format=raw",
            b"/ipfs/..%2F..%2Fetc%2Fpasswd?format=raw",
            b"/ipfs/%2e%2e?format=raw",
            b"/../../etc/passwd",
            b"/ipfs/" + str(node.roots[KEY]).encode() + b"/../../b.sqlite?format=car",
            b"/cache/" + KEY.encode(),
        ):
            reply = await asyncio.to_thread(_raw_http, port, target)
            status = int(reply.split(b" ", 2)[1])
            assert status in (400, 404), (target, reply[:200])
            assert SMALL not in reply
            assert b"SQLite format" not in reply

    with_gateway(node, scenario)


def test_probe_cid(node: Node) -> None:
    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/bafkqaaa?format=raw") as r:
            assert r.status == 200
            assert await r.read() == b""
        async with s.get(f"{url}/ipfs/bafkqaaa?format=car") as r:
            assert r.status == 200
            body = await r.read()
            assert b"\x01\x55\x00\x00" in body
            assert body.endswith(b"version\x01")
        async with s.head(f"{url}/ipfs/bafkqaaa", headers=RAW_ACCEPT) as r:
            assert r.status == 200

    with_gateway(node, scenario)


def test_corruption_mid_car_cuts_the_connection(node: Node) -> None:
    root = node.roots[KEY]
    with open(node.locate(KEY), "r+b") as f:
        f.seek(2 * 1024 * 1024 + 5)
        f.write(b"\xff\xff")

    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        async with s.get(f"{url}/ipfs/{root}?format=car") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        assert node.corrupted == [KEY]
        async with s.get(f"{url}/ipfs/{root}?format=car") as r:
            assert r.status == 404

    with_gateway(node, scenario)


# -- the client against our gateway -------------------------------------------------------


def test_fetch_car_is_byte_identical(node: Node) -> None:
    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        for key, data in ((KEY, BIG), (SMALL_KEY, SMALL), (ZERO_KEY, ZEROS)):
            out = io.BytesIO()
            assert await fetch_car(s, url, node.roots[key], out, max_size=len(data)) == len(data)
            assert out.getvalue() == data

    with_gateway(node, scenario)


def test_fetch_car_from_a_dups_n_gateway_copies_repeats_back(node: Node) -> None:
    """A gateway ignoring dups=y leaves repeated chunks out; the client fills them in."""
    root = node.roots[ZERO_KEY]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "application/vnd.ipld.car; version=1; order=dfs; dups=n"}
        )
        await resp.prepare(request)
        await resp.write(encode_header(root))
        seen: set[CID] = set()
        for cid, block in node.blocks.dag_blocks(root):
            if cid not in seen:
                seen.add(cid)
                await resp.write(encode_frame(cid, block))
        return resp

    async def main() -> None:
        async with serve(_app(handler)) as url, aiohttp.ClientSession() as s:
            out = io.BytesIO()
            assert await fetch_car(s, url, root, out) == len(ZEROS)
            assert out.getvalue() == ZEROS

    asyncio.run(main())


def test_fetch_car_http_errors(node: Node) -> None:
    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        with pytest.raises(GatewayFetchError, match="HTTP 404") as err:
            await fetch_car(s, url, CID.of(b"absent"), io.BytesIO())
        assert url in str(err.value)
        assert str(CID.of(b"absent")) in str(err.value)

    with_gateway(node, scenario)


def test_fetch_car_does_not_follow_redirects(node: Node) -> None:
    """A peer must not be able to point our fetch at another host (or our own services)."""
    root = node.roots[SMALL_KEY]

    async def main() -> None:
        async with serve(gateway_app(node.blocks)) as good:

            async def redirect(request: web.Request) -> web.StreamResponse:
                raise web.HTTPFound(f"{good}{request.path_qs}")

            async with serve(_app(redirect)) as url, aiohttp.ClientSession() as s:
                with pytest.raises(GatewayFetchError, match="HTTP 302"):
                    await fetch_car(s, url, root, io.BytesIO())

    asyncio.run(main())


def test_fetch_car_max_size(node: Node) -> None:
    async def scenario(url: str, s: aiohttp.ClientSession) -> None:
        out = io.BytesIO()
        with pytest.raises(GatewayFetchError, match="max_size"):
            await fetch_car(s, url, node.roots[KEY], out, max_size=CHUNK_SIZE * 2 + 1)
        assert len(out.getvalue()) <= CHUNK_SIZE * 2 + 1

    with_gateway(node, scenario)


# -- the client against hostile peers -----------------------------------------------------

Body = Callable[[], AsyncIterator[bytes]]


def _app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_get("/ipfs/{cid}", handler)
    return app


def hostile(
    body: Body, content_type: str = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        try:
            async for chunk in body():
                await resp.write(chunk)
        except ConnectionError:
            pass
        return resp

    return _app(handler)


def fetch_from(app: web.Application, root: CID, max_size: int | None = None) -> tuple[str, int]:
    """(error message, bytes written) of a fetch that must fail."""

    async def main() -> tuple[str, int]:
        out = io.BytesIO()
        async with serve(app) as url, aiohttp.ClientSession() as s:
            with pytest.raises(GatewayFetchError) as err:
                await fetch_car(s, url, root, out, max_size=max_size)
            assert url in str(err.value) and str(root) in str(err.value)
            return str(err.value), len(out.getvalue())

    return asyncio.run(main())


def test_hostile_wrong_block(node: Node) -> None:
    root = node.roots[KEY]
    blocks = list(node.blocks.dag_blocks(root))

    async def body() -> AsyncIterator[bytes]:
        yield encode_header(root) + encode_frame(root, blocks[0][1])
        yield encode_frame(blocks[2][0], blocks[2][1])  # the second leaf where the first is due

    message, written = fetch_from(hostile(body), root)
    assert "was due" in message
    assert written == 0


def test_hostile_block_not_matching_its_cid(node: Node) -> None:
    root = node.roots[KEY]
    blocks = list(node.blocks.dag_blocks(root))

    async def body() -> AsyncIterator[bytes]:
        yield encode_header(root) + encode_frame(root, blocks[0][1])
        yield encode_frame(blocks[1][0], b"evil" + blocks[1][1][4:])

    message, written = fetch_from(hostile(body), root)
    assert "does not match" in message
    assert written == 0


def test_hostile_wrong_root(node: Node) -> None:
    other = node.roots[SMALL_KEY]

    async def body() -> AsyncIterator[bytes]:
        yield encode_header(other) + encode_frame(other, SMALL)

    message, _ = fetch_from(hostile(body), node.roots[KEY])
    assert "roots" in message


def test_hostile_truncated_car(node: Node) -> None:
    root = node.roots[KEY]
    blocks = list(node.blocks.dag_blocks(root))

    async def whole_frames() -> AsyncIterator[bytes]:
        yield encode_header(root)
        for cid, block in blocks[:3]:
            yield encode_frame(cid, block)

    message, written = fetch_from(hostile(whole_frames), root)
    assert "incomplete" in message
    assert written == 2 * CHUNK_SIZE

    async def half_frame() -> AsyncIterator[bytes]:
        yield encode_header(root) + encode_frame(*blocks[0])
        yield encode_frame(*blocks[1])[:1000]

    message, written = fetch_from(hostile(half_frame), root)
    assert "inside a frame" in message
    assert written == 0


def test_hostile_endless_car(node: Node) -> None:
    """A root with 100 links to one chunk, streamed forever: refused at the root, whatever
    it declares (too much, nothing, or too little), before a leaf is written."""
    chunk = b"\x00" * CHUNK_SIZE
    leaf = CID.of(chunk)
    cases = {
        "more than max_size=1310727": [CHUNK_SIZE] * 100,  # honest: 100 chunks
        "100 links but 0 blocksizes": [],
        f"holds {CHUNK_SIZE} bytes of the file where its parent declared 1": [1] * 100,
    }
    for expected, sizes in cases.items():
        node_block = encode_node(
            PBNode(tuple(PBLink(leaf, "", CHUNK_SIZE) for _ in range(100)), _file_data(sizes))
        )
        root = CID.of(node_block, DAG_PB)

        async def body(root: CID = root, node_block: bytes = node_block) -> AsyncIterator[bytes]:
            yield encode_header(root) + encode_frame(root, node_block)
            while True:
                yield encode_frame(leaf, chunk)

        message, written = fetch_from(hostile(body), root, max_size=5 * CHUNK_SIZE + 7)
        assert expected in message
        assert written == 0

    async def endless_after_dag() -> AsyncIterator[bytes]:
        yield encode_header(leaf)
        while True:
            yield encode_frame(leaf, chunk)

    message, written = fetch_from(hostile(endless_after_dag), leaf)
    assert "after the end of the DAG" in message
    assert written == CHUNK_SIZE


def _file_data(sizes: list[int]) -> bytes:
    return encode_file_data(sum(sizes), sizes)


def test_hostile_header_cut_after_a_cid_tag(node: Node) -> None:
    """A header that makes car._parse_header raise IndexError still ends in our error."""
    header = b"\xa2\x65roots\x80\x67version\x01\xd8\x2a"

    async def body() -> AsyncIterator[bytes]:
        yield bytes([len(header)]) + header

    message, written = fetch_from(hostile(body), node.roots[KEY])
    assert "bad CAR" in message
    assert written == 0


def test_hostile_dag_of_empty_nodes_without_end(node: Node) -> None:
    """174^20 empty nodes that would write nothing: refused at the root (no importer links
    an empty subtree), nothing written."""
    levels = [encode_node(PBNode((), _file_data([])))]
    for _ in range(20):
        child = CID.of(levels[-1], DAG_PB)
        links = tuple(PBLink(child, "", 0) for _ in range(174))
        levels.append(encode_node(PBNode(links, _file_data([0] * 174))))
    frames = [encode_frame(CID.of(b, DAG_PB), b) for b in levels]
    root = CID.of(levels[-1], DAG_PB)

    async def body() -> AsyncIterator[bytes]:
        yield encode_header(root)
        stack = [len(levels) - 1]
        while stack:  # the DFS walk, with every duplicate (dups=y)
            level = stack.pop()
            yield frames[level]
            stack.extend([level - 1] * 174 if level else [])

    message, written = fetch_from(hostile(body), root, max_size=1024 * 1024)
    assert "a link to an empty subtree (blocksize 0)" in message
    assert written == 0


def test_hostile_repeats_past_the_block_budget(node: Node) -> None:
    """Consistent sizes within max_size, but 1024 links to one 1-byte leaf: more positions
    than a 1 MiB file has (64 + 1 MiB / 16 KiB), refused at the root."""
    leaf = CID.of(b"x")
    root_block = encode_node(
        PBNode(tuple(PBLink(leaf, "", 1) for _ in range(1024)), _file_data([1] * 1024))
    )
    root = CID.of(root_block, DAG_PB)

    async def body() -> AsyncIterator[bytes]:
        yield encode_header(root) + encode_frame(root, root_block)
        while True:
            yield encode_frame(leaf, b"x")

    message, written = fetch_from(hostile(body), root, max_size=1024 * 1024)
    assert "brings the DAG to 1025 blocks, more than the 128 allowed" in message
    assert written == 0


def test_hostile_padded_nodes_hit_the_car_budget(node: Node) -> None:
    """Nodes padded with 1 MB of unknown fields (sizes all consistent): stopped by the CAR
    size budget, 2 * max_size + 1 MiB, not by the size checks."""
    cid, block = CID.of(b"x"), b"x"
    blocks = [(cid, block)]
    for _ in range(10):
        padding = b"\x7a" + encode_varint(1 << 20) + bytes(1 << 20)  # field 15, skipped
        block = encode_node(PBNode((PBLink(cid, "", 1),), _file_data([1]))) + padding
        cid = CID.of(block, DAG_PB)
        blocks.append((cid, block))

    async def body() -> AsyncIterator[bytes]:
        yield encode_header(cid)
        for c, b in reversed(blocks):
            yield encode_frame(c, b)

    message, written = fetch_from(hostile(body), cid, max_size=1024 * 1024)
    assert "CAR larger than 3145728 bytes" in message
    assert written == 0


def test_hostile_not_a_car(node: Node) -> None:
    root = node.roots[SMALL_KEY]

    async def body() -> AsyncIterator[bytes]:
        yield SMALL

    message, _ = fetch_from(hostile(body, "application/octet-stream"), root)
    assert "not a CAR" in message
    message, _ = fetch_from(hostile(body), root)
    assert "bad CAR" in message
