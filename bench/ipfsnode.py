"""The child processes of bench_ipfs.py: a pacswarm IPFS server, and one-shot fetch clients.

Each runs in its own process so a measurement is not shared with the benchmark's own Python
(GIL, event loop), as between two real nodes.

    ipfsnode.py serve --file F --workdir D --ready R
        A pacswarm IPFS server over one package file: a PackageBlockstore holding it, the
        trustless gateway (``gateway_app``) on 127.0.0.1 and a P2PHost (Bitswap) on
        127.0.0.1 with that blockstore. Not a full ``pacswarm serve`` (no mirror, keyring,
        cache or DHT use): only the IPFS serving path. Writes R (JSON: root, gateway URL,
        multiaddrs) when ready; runs until SIGTERM.

    ipfsnode.py stock-serve --file F --ready R
        py-libp2p's own Bitswap (``BitswapClient``, memory blockstore) serving the same blocks:
        the server of the "stock client moves ~14 MB/s" baseline (see ipfsstock.py).

    ipfsnode.py fetch --mode http|car|bitswap|stock --out-json J [--url U] [--root R]
                      [--peer ADDR] [--workdir D] [--timeout S]
        One timed fetch; the file's bytes go to a discarding sink (stock: into py-libp2p's
        memory blockstore, as that client does). Connecting to the peer is not timed.
        Writes J: {"bytes", "seconds", "cpu"} (cpu: this process's CPU seconds while fetching).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

READ_SIZE = 1 << 20


class Discard:
    """A write-only file that forgets what it is given (the fetchers only call write)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def flush(self) -> None:
        return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


# -- serve ----------------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from pacswarm.ipfs.blockstore import PackageBlockstore
    from pacswarm.ipfs.gateway import gateway_app
    from pacswarm.ipfs.host import P2PHost

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    package = Path(args.file).resolve()
    store = PackageBlockstore(workdir / "blocks.sqlite", locate=lambda key: package)
    t0 = time.monotonic()
    root = store.add_package("bench/" + package.name, package)
    import_s = time.monotonic() - t0

    runner = web.AppRunner(gateway_app(store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    host = None
    addrs: list[str] = []
    host_error = ""
    if not args.no_p2p:
        try:
            host = P2PHost(
                workdir / "identity.key",
                listen_addrs=["/ip4/127.0.0.1/tcp/0"],
                mdns=False,
                blocks=store,
            )
            await asyncio.wait_for(host.start(), 60)
            addrs = host.listen_addrs()
        except Exception as e:  # the gateway rows can still run
            host_error = repr(e)
            host = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _write_json(
        Path(args.ready),
        {
            "root": str(root),
            "gateway": f"http://127.0.0.1:{port}",
            "addrs": addrs,
            "p2p_error": host_error,
            "import_s": import_s,
            "pid": os.getpid(),
        },
    )
    try:
        await stop.wait()
    finally:
        if host is not None:
            with contextlib.suppress(Exception):  # exiting anyway
                await asyncio.wait_for(host.stop(), 15)
        await runner.cleanup()
        store.close()


# -- fetch ----------------------------------------------------------------------------------


async def fetch_http(args: argparse.Namespace) -> tuple[int, float, float]:
    """Plain GET with aiohttp, body read in 1 MiB chunks and dropped (the nginx baseline)."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=args.timeout, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, read_bufsize=1 << 20) as session:
        async with session.head(args.url) as warm:  # connection set up outside the timing
            await warm.read()
        cpu0, t0 = time.process_time(), time.perf_counter()
        got = 0
        async with session.get(args.url) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {args.url}: HTTP {resp.status}")
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                got += len(chunk)
        return got, time.perf_counter() - t0, time.process_time() - cpu0


async def fetch_car(args: argparse.Namespace) -> tuple[int, float, float]:
    """pacswarm's trustless-gateway client: CAR stream, every block verified, file written."""
    import aiohttp

    from pacswarm.ipfs.cid import CID
    from pacswarm.ipfs.gatewayclient import fetch_car as car

    root = CID.parse(args.root)
    timeout = aiohttp.ClientTimeout(total=args.timeout, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout, read_bufsize=1 << 20) as session:
        probe = f"{args.url}/ipfs/{root}?format=raw"  # opens the keep-alive connection
        async with session.head(probe) as resp:
            await resp.read()
        sink = Discard()
        cpu0, t0 = time.process_time(), time.perf_counter()
        got = await car(session, args.url, root, sink)  # type: ignore[arg-type]
        return got, time.perf_counter() - t0, time.process_time() - cpu0


async def fetch_bitswap(args: argparse.Namespace) -> tuple[int, float, float]:
    """pacswarm's P2PHost client (our windowed Bitswap) from one peer."""
    from pacswarm.ipfs.cid import CID
    from pacswarm.ipfs.host import P2PHost

    root = CID.parse(args.root)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    host = P2PHost(workdir / "identity.key", listen_addrs=["/ip4/127.0.0.1/tcp/0"], mdns=False)
    await asyncio.wait_for(host.start(), 60)
    try:
        await asyncio.wait_for(host.connect(args.peer), 30)
        sink = Discard()
        cpu0, t0 = time.process_time(), time.perf_counter()
        got = await asyncio.wait_for(
            host.fetch_file(root, sink, peers=None),
            args.timeout,  # type: ignore[arg-type]
        )
        return got, time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await asyncio.wait_for(host.stop(), 15)


def fetch_stock(args: argparse.Namespace) -> tuple[int, float, float]:
    """py-libp2p's own client (BitswapClient + MerkleDag.fetch_file), run on trio directly."""
    from ipfsstock import fetch_stock as stock

    return stock(args.root, args.peer, args.timeout)


def fetch(args: argparse.Namespace) -> None:
    if args.mode == "stock":
        got, seconds, cpu = fetch_stock(args)
    else:
        fn = {"http": fetch_http, "car": fetch_car, "bitswap": fetch_bitswap}[args.mode]
        got, seconds, cpu = asyncio.run(fn(args))
    _write_json(Path(args.out_json), {"bytes": got, "seconds": seconds, "cpu": cpu})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--file", required=True)
    s.add_argument("--workdir", required=True)
    s.add_argument("--ready", required=True)
    s.add_argument("--no-p2p", action="store_true")
    st = sub.add_parser("stock-serve")
    st.add_argument("--file", required=True)
    st.add_argument("--ready", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--mode", choices=["http", "car", "bitswap", "stock"], required=True)
    f.add_argument("--out-json", required=True)
    f.add_argument("--url")
    f.add_argument("--root")
    f.add_argument("--peer")
    f.add_argument("--workdir", default=".")
    f.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.what == "serve":
        asyncio.run(serve(args))
    elif args.what == "stock-serve":
        from ipfsstock import serve_stock

        serve_stock(args.file, args.ready)
    else:
        fetch(args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
