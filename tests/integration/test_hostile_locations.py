"""A mirror whose redirect names an unparsable Location: its fault, the next mirror serves."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support.mirror import MirrorServer


class _BadLocation(BaseHTTPRequestHandler):
    """Redirects requests to a URL yarl refuses to parse (an unclosed IPv6 bracket)."""

    only = ""  # redirect only paths ending so; 404 for the others

    def do_GET(self) -> None:
        if not self.path.endswith(self.only):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(302)
        self.send_header("Location", "http://[::1/x")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _bad_location(only: str = "") -> Iterator[str]:
    handler = type("H", (_BadLocation,), {"only": only})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/$repo/os/$arch"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def bad_location() -> Iterator[str]:
    with _bad_location() as url:
        yield url


@pytest.fixture
def bad_package_location() -> Iterator[str]:
    with _bad_location(".pkg.tar.zst") as url:
        yield url


def test_an_unparsable_redirect_is_the_mirrors_fault_and_the_next_mirror_serves(
    bad_location: str,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    node = make_node([bad_location, mirror.url_template])
    pacman = make_pacman([node.url_template])
    synced = pacman.run("-Sy", timeout=60)
    assert synced.returncode == 0, synced.stdout + node.log()
    installed = pacman.run("-S", "hello", timeout=60)
    assert installed.returncode == 0, installed.stdout + node.log()
    assert "Invalid IPv6 URL" in node.log()


def test_an_unparsable_package_redirect_does_not_hang_the_download(
    bad_package_location: str,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """The package download asks the hostile mirror first: its error must move the download
    on to the honest mirror, not kill the download task (pacman and every later request for
    the file would wait for ever)."""
    node = make_node([bad_package_location, mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy", timeout=60).returncode == 0
    installed = pacman.run("-S", "hello", timeout=60)
    assert installed.returncode == 0, installed.stdout + node.log()
    assert "Invalid IPv6 URL" in node.log()
