"""SpanSender on a real aiohttp server: sendfile on plain TCP, the copy fallback on TLS.

A real server on 127.0.0.1 and a real client; the TLS certificate is a throwaway one made with
the openssl command. What is checked is what a client receives: the exact bytes of the spans,
in order, after the headers, whichever way they were sent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pacswarm.fetch.download import FileSpan
from pacswarm.sendspan import SpanSender

DATA = os.urandom(3 * 1024 * 1024 + 12345)
#: Spans as a download hands them out: uneven, one of bytes held only in memory.
CUTS = [(0, 100_000), (100_000, 1_500_000), (1_500_000, len(DATA) - 10)]
TAIL = DATA[len(DATA) - 10 :]


def _serve_and_get(tmp_path: Path, tls: ssl.SSLContext | None) -> tuple[bytes, list[bool]]:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA)
    natives: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(DATA)
        await resp.prepare(request)
        sender = SpanSender(request, resp)
        fd = os.open(blob, os.O_RDONLY)
        try:
            for start, end in CUTS:
                await sender.send(FileSpan(fd, start, end - start))
            await sender.send(TAIL)
        finally:
            os.close(fd)
        natives.append(sender.native)
        await resp.write_eof()
        return resp

    async def main() -> bytes:
        app = web.Application()
        app.router.add_get("/blob", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "https" if tls else "http"
        try:
            async with aiohttp.ClientSession() as client:
                url = f"{scheme}://127.0.0.1:{port}/blob"
                async with client.get(url, ssl=False) as got:
                    return await got.read()
        finally:
            await runner.cleanup()

    return asyncio.run(asyncio.wait_for(main(), 30)), natives


def test_spans_go_out_with_sendfile_on_plain_tcp(tmp_path: Path) -> None:
    body, natives = _serve_and_get(tmp_path, None)
    assert body == DATA
    assert natives == [True]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_on_tls_the_spans_are_copied_and_arrive_whole(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*argv, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    body, natives = _serve_and_get(tmp_path, tls)
    assert body == DATA
    assert natives == [False]  # sendfile cannot write through TLS: the copy path sent it
