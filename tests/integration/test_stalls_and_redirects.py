"""Mirrors that stall on small files, and mirrors that redirect where they should not."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.dbedit import strip_pgpsig_everywhere
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo


def test_a_stalled_signature_fetch_moves_to_the_next_mirror(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """No %PGPSIG% in the db: the .sig comes from a mirror; mirror 1 sends headers, then
    nothing. The read timeout moves pacswarm on, inside pacman's patience."""
    strip_pgpsig_everywhere(mirror.root, mirror2.root)
    mirror.set_fault("stall", "*.pkg.tar.zst.sig")
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "libgreet", timeout=60)
    assert result.returncode == 0, result.stdout + node.log()
    assert f"mirror {mirror.url_template} failed" in node.log()
    sig = test_repo.packages["libgreet"].filename + ".sig"
    assert mirror2.hits(sig) >= 1


def test_a_pass_through_that_stalls_is_cut_not_held_forever(
    mirror: MirrorServer, make_node: NodeFactory
) -> None:
    (mirror.root / "core/os/x86_64/lastupdate").write_text("1790000000\n")
    mirror.set_fault("stall", "lastupdate")
    node = make_node([mirror.url_template])
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(b"GET /core/os/x86_64/lastupdate HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    elapsed = time.monotonic() - started
    # Headers went out, the body never came: the node cut the connection at its read
    # timeout (stall_timeout = 2 s in tests) instead of leaving the client hanging.
    assert reply.startswith(b"HTTP/1.1 200") and not reply.endswith(b"1790000000\n")
    assert elapsed < 15, elapsed
    assert "pass-through of /core/os/x86_64/lastupdate cut" in node.log()
    assert node.get("/")[0] == 200


class _Redirector(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def redirector(mirror: MirrorServer) -> Iterator[str]:
    """A 'mirror' on 127.0.0.1 that redirects every request to the real mirror as localhost."""
    handler = type("H", (_Redirector,), {"target": f"http://localhost:{mirror.port}"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/$repo/os/$arch"
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirect_to_another_host_is_refused_and_the_next_mirror_serves(
    test_repo: TestRepo,
    redirector: str,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    node = make_node([redirector, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    assert pacman.run("-S", "hello").returncode == 0
    assert "redirect to another host (localhost) refused" in node.log()
    assert mirror.hits("core.db") == 0  # never followed
    assert mirror2.hits("core.db") >= 1


class _TricklingSignatures(BaseHTTPRequestHandler):
    """A mirror that serves files from ``root`` but its ``.sig`` files one byte at a time,
    each byte just inside the read timeout: never a stall, never a complete signature."""

    root = Path()

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if ".." in self.path or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not self.path.endswith(".sig"):
            self.wfile.write(data)
            return
        with contextlib.suppress(OSError):  # pacswarm hangs up: that is the point
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(0.5)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_signature_that_trickles_in_moves_to_the_next_mirror(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """No %PGPSIG% in the db; the first mirror sends its .sig a byte every half second
    (under the 2 s read timeout, so no stall). The verified package must not wait for it
    past pacman's patience: the next mirror's .sig is taken."""
    strip_pgpsig_everywhere(mirror.root, mirror2.root)
    handler = type("H", (_TricklingSignatures,), {"root": mirror.root})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        trickler = f"http://127.0.0.1:{server.server_address[1]}/$repo/os/$arch"
        node = make_node([trickler, mirror2.url_template])
        pacman = make_pacman([node.url_template])
        assert pacman.run("-Sy").returncode == 0
        result = pacman.run("-S", "libgreet", timeout=90)
        assert result.returncode == 0, result.stdout + node.log()
    finally:
        server.shutdown()
        server.server_close()


class _Looper(BaseHTTPRequestHandler):
    """Redirects every request to itself: a misconfigured mirror's redirect loop."""

    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_redirect_loop_is_given_up_and_the_next_mirror_serves(
    test_repo: TestRepo, mirror2: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    hits: list[str] = []
    handler = type("H", (_Looper,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        looper = f"http://127.0.0.1:{server.server_address[1]}/$repo/os/$arch"
        node = make_node([looper, mirror2.url_template])
        pacman = make_pacman([node.url_template])
        assert pacman.run("-Sy").returncode == 0
        assert pacman.run("-S", "hello").returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    assert "more than 3 redirects" in node.log()
    # Each file asked of the looping mirror costs at most the first request and 3 redirects.
    per_file = {path: hits.count(path) for path in hits}
    assert per_file and max(per_file.values()) <= 4, per_file


def test_an_endless_signature_is_cut_at_the_cap_and_the_next_mirror_serves(
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """No %PGPSIG%: mirror 1's .sig has no Content-Length and never ends (256 MiB of
    garbage). pacswarm stops reading at pacman's 16 KiB cap instead of holding it all."""
    strip_pgpsig_everywhere(mirror.root, mirror2.root)
    mirror.set_fault("endless", "*.pkg.tar.zst.sig")
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    result = pacman.run("-S", "libgreet", timeout=60)
    assert result.returncode == 0, result.stdout + node.log()
    assert "larger than the 16384 bytes allowed" in node.log(), node.log()
    peak_kb = node.peak_rss_kb()
    assert peak_kb < 200 * 1024, f"node peaked at {peak_kb} KiB"  # idles at ~100 MB
