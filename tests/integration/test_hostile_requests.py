"""Requests no pacman sends: a 4xx or a closed connection, never a crash or a foreign file."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.conftest import NodeFactory
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo


def _raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are (no client-side path normalisation); return the reply.

    The node must answer and close (or reset) within ``timeout``: a node that hangs fails
    the test instead of passing with an empty reply.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            got = b"".join(chunks)[:200]
            raise AssertionError(f"no complete reply within {timeout} s (got {got!r})") from None
        return b"".join(chunks)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


@pytest.mark.parametrize(
    "target",
    [
        "/core/os/x86_64/../../../../etc/passwd",
        "/core/os/x86_64/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/core/os/x86_64/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/%2e%2e/os/x86_64/passwd",
        "/core/os/%2e%2e/passwd",
        "/core/os/x86_64/.hidden",
        "/core/os/x86_64/a%00b.pkg.tar.zst",
        "/core/os/x86_64/" + "a" * 5000 + ".pkg.tar.zst",
        "//etc/passwd",
        "/core/os/x86_64/%252e%252e%252fetc%252fpasswd",
    ],
)
def test_traversal_never_reaches_a_file_outside(
    target: str, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    reply = _raw(
        node.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert 400 <= _status(reply) < 500, reply[:200]
    assert b"root:" not in reply
    assert not [r for r in mirror.requests if "passwd" in r[1]]  # not even asked upstream
    assert node.get("/")[0] == 200  # still alive


def test_unknown_repo_is_404(mirror: MirrorServer, make_node: NodeFactory) -> None:
    node = make_node([mirror.url_template])
    assert node.get("/nosuchrepo/os/x86_64/nosuchrepo.db")[0] == 404
    assert node.get("/core/os/x86_64/nosuch-1.0-1-x86_64.pkg.tar.zst")[0] == 404
    assert node.get("/core/os/x86_64/nosuch-1.0-1-x86_64.pkg.tar.zst.sig")[0] == 404
    assert node.get("/not/a/pacman/path/at/all")[0] == 404


@pytest.mark.parametrize(
    ("range_header", "expected"),
    [
        ("bytes=99999999999999999999-", 416),
        ("bytes=18446744073709551616-18446744073709551617", 416),
        ("bytes=-0", 416),
        ("bytes=5-1", 0),  # invalid: ignored (whole file) or refused, both allowed by RFC 9110
        ("bytes=0-1,5-9", 0),  # multi-range: not supported, likewise
        ("chars=0-10", 200),
        ("bytes=" + "9" * 5000, 400),  # over the header size limit... or ignored
    ],
)
def test_absurd_range_headers(
    range_header: str,
    expected: int,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
) -> None:
    node = make_node([mirror.url_template])
    hello = test_repo.packages["hello"]
    path = f"/core/os/x86_64/{hello.filename}"
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    for attempt in ("uncached", "cached"):
        status, _, body = node.get(path, {"Range": range_header})
        if expected == 400:
            assert status in (200, 400, 416, 431), attempt
        elif expected == 0:
            assert status in (200, 416), attempt
        else:
            assert status == expected, (attempt, status)
        if status == 200:
            assert body == hello.path.read_bytes()
        node.get(path)  # make sure it is cached for the second round
        node.wait_cached(hello.filename)
    assert "Error handling request" not in node.log()  # answered, not crashed after sending


def test_huge_headers_are_refused(mirror: MirrorServer, make_node: NodeFactory) -> None:
    node = make_node([mirror.url_template])
    big = b"X-Junk: " + b"a" * 100_000 + b"\r\n"
    reply = _raw(node.port, b"GET /core/os/x86_64/core.db HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert reply == b"" or 400 <= _status(reply) < 500
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    reply = _raw(node.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert reply == b"" or 400 <= _status(reply) < 500
    assert node.get("/")[0] == 200


def test_garbage_and_slow_clients_do_not_block_others(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    garbage = _raw(node.port, b"\x16\x03\x01\x02\x00garbage not http\r\n\r\n")
    assert garbage == b"" or 400 <= _status(garbage) < 500
    # A slowloris client that never finishes its headers, and one that never reads its body.
    slow = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(20)]
    for s in slow:
        s.sendall(b"GET /core/os/x86_64/core.db HTTP/1.1\r\nHost: x\r\n")
    bigpkg = test_repo.packages["bigpkg"]
    assert node.get("/core/os/x86_64/core.db")[0] == 200
    stuck = socket.create_connection(("127.0.0.1", node.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(f"GET /core/os/x86_64/{bigpkg.filename} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(0.5)
    started = time.monotonic()
    status, _, body = node.get(f"/core/os/x86_64/{bigpkg.filename}")
    assert status == 200 and body == bigpkg.path.read_bytes()
    assert time.monotonic() - started < 20
    for s in [*slow, stuck]:
        s.close()
    assert node.get("/")[0] == 200


def test_methods_other_than_get_and_head(mirror: MirrorServer, make_node: NodeFactory) -> None:
    node = make_node([mirror.url_template])
    for method in ("POST", "PUT", "DELETE"):
        reply = _raw(
            node.port,
            f"{method} /core/os/x86_64/core.db HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
        )
        assert _status(reply) == 405, method


def test_a_client_that_hangs_up_mid_download_is_logged_as_such_not_as_a_crash(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    """pacman interrupted (Ctrl-C) while a download streams: one plain log line, no
    "Error handling request" traceback, and the download still caches the file."""
    pkg = test_repo.packages["largepkg"]
    mirror.set_fault("throttle", pkg.filename)  # outlives the window: bytes flow, then a hang-up
    node = make_node([mirror.url_template], extra_config="verify_window = 0.5\n")
    assert node.get("/extra/os/x86_64/extra.db")[0] == 200
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(f"GET /extra/os/x86_64/{pkg.filename} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 1 << 20:  # past the window, into the body
            got += len(s.recv(65536))
    cached = node.data_dir / "cache/extra/x86_64" / pkg.filename
    deadline = time.monotonic() + 60
    while not cached.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cached.read_bytes() == pkg.path.read_bytes()
    assert "Error handling request" not in node.log(), node.log()
    assert "client went away" in node.log()
