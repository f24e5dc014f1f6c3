"""Self-test of the fixtures with no pacswarm in between: real pacman against the test mirror.

Why: every proxy test trusts these fixtures.  If the keyring did not enforce trust, or the
mirror's faults did not happen on the wire, proxy tests would pass for the wrong reason.  The
pacman tests also pin the pacman 6.0.2 behaviour the proxy relies on (``.part`` + Range resume).
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mirror import MirrorServer
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import DB_MTIME, TestRepo

MIB = 1024 * 1024


@pytest.fixture
def pacman(tmp_path: Path, mirror: MirrorServer, pacman_gpgdir: Path) -> Iterator[PacmanEnv]:
    env = PacmanEnv(tmp_path / "pacman", [mirror.url_template], pacman_gpgdir)
    try:
        yield env
    finally:
        env.close()


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def _packaged_file(pkg: Path, member: str) -> bytes:
    return subprocess.run(
        ["bsdtar", "-xOf", str(pkg), member], capture_output=True, check=True, timeout=30
    ).stdout


def _conn(server: MirrorServer, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)


def _get(
    server: MirrorServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = _conn(server)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# -- real pacman against the mirror ---------------------------------------------------------


def test_pacman_installs_from_mirror(
    pacman: PacmanEnv, mirror: MirrorServer, test_repo: TestRepo
) -> None:
    assert pacman.parallel_downloads == 5
    _ok(pacman.run("-Sy"))
    _ok(pacman.run("-S", "extratool"))
    hello = test_repo.packages["hello"]
    installed = pacman.installed_file("/usr/bin/hello-pacswarm")
    assert installed.read_bytes() == _packaged_file(hello.path, "usr/bin/hello-pacswarm")
    assert pacman.installed_file("usr/share/libgreet/greeting").is_file()
    assert pacman.installed_file("usr/bin/extratool-pacswarm").is_file()
    for name in ("hello", "libgreet", "extratool"):
        assert mirror.hits(test_repo.packages[name].filename) == 1
        assert mirror.hits(test_repo.packages[name].filename + ".sig") == 1

    mirror.clear_log()
    _ok(pacman.run("-Sy"))
    for repo in ("core", "extra"):
        (_, _, headers) = mirror.requests_for(f"/{repo}.db")[0]
        assert headers["If-Modified-Since"] == email.utils.formatdate(DB_MTIME, usegmt=True)
        assert mirror.statuses(f"/{repo}.db") == [304]


@pytest.mark.parametrize(
    ("import_rogue", "message"),
    [(False, "required key missing from keyring"), (True, "is unknown trust")],
)
def test_rogue_signature_rejected(
    tmp_path: Path, mirror: MirrorServer, test_repo: TestRepo, import_rogue: bool, message: str
) -> None:
    test_repo.resign(mirror.root, "hello", key="rogue")
    gpgdir = test_repo.make_pacman_gpgdir(tmp_path / "g", import_rogue=import_rogue)
    with PacmanEnv(tmp_path / "p", [mirror.url_template], gpgdir) as env:
        _ok(env.run("-Sy"))
        proc = env.run("-S", "hello")
        assert proc.returncode != 0
        assert message in proc.stdout, proc.stdout
        assert not env.installed_file("usr/bin/hello-pacswarm").exists()


def test_forged_sig_file_alone_is_not_what_pacman_checks(
    pacman: PacmanEnv, mirror: MirrorServer, test_repo: TestRepo
) -> None:
    """pacman 6.0.2 verifies the db's %PGPSIG%; a rogue ``.sig`` file next to it is ignored."""
    test_repo.resign(mirror.root, "libgreet", key="rogue", update_db=False)
    _ok(pacman.run("-Sy"))
    _ok(pacman.run("-S", "libgreet"))
    assert mirror.hits(test_repo.packages["libgreet"].filename + ".sig") == 1


@pytest.mark.parametrize("trust", ["marginal", "unknown"])
def test_untrusted_keyring_rejects(
    tmp_path: Path, mirror: MirrorServer, test_repo: TestRepo, trust: str
) -> None:
    gpgdir = test_repo.make_pacman_gpgdir(tmp_path / "g", trust=trust)
    with PacmanEnv(tmp_path / "p", [mirror.url_template], gpgdir) as env:
        _ok(env.run("-Sy"))
        proc = env.run("-S", "libgreet")
        assert proc.returncode != 0
        assert f"is {trust} trust" in proc.stdout, proc.stdout


def test_truncated_package_resumes_on_next_server(
    tmp_path: Path, mirror: MirrorServer, mirror2: MirrorServer, test_repo: TestRepo
) -> None:
    big = test_repo.packages["bigpkg"]
    gpgdir = test_repo.make_pacman_gpgdir(tmp_path / "g")
    with PacmanEnv(tmp_path / "p", [mirror.url_template, mirror2.url_template], gpgdir) as env:
        _ok(env.run("-Sy"))
        mirror.set_fault("truncate", big.filename, after_bytes=MIB)
        out = _ok(env.run("-S", "bigpkg"))
        assert "transfer closed with" in out
        ranges = [h.get("Range") for _, _, h in mirror2.requests_for(big.filename)]
        assert ranges == [f"bytes={MIB}-"]
        assert mirror2.hits(big.filename + ".sig") == 1  # .sig from the server that finished
        assert (env.cachedir / big.filename).stat().st_size == big.size


@pytest.mark.parametrize("cut", [MIB, 4095])
def test_truncated_package_resumes_on_next_run(
    pacman: PacmanEnv, mirror: MirrorServer, test_repo: TestRepo, cut: int
) -> None:
    """A cut leaves ``.part`` and the next run sends Range, except under 4096 bytes: pacman's
    stdio buffer was never flushed, it sees an empty file and deletes it."""
    big = test_repo.packages["bigpkg"]
    _ok(pacman.run("-Sy"))
    mirror.set_fault("truncate", big.filename, after_bytes=cut)
    assert pacman.run("-S", "bigpkg").returncode != 0
    parts = [(p.name, p.stat().st_size) for p in pacman.part_files()]
    assert parts == ([(big.filename + ".part", cut)] if cut >= 4096 else [])
    mirror.clear_faults()
    mirror.clear_log()
    _ok(pacman.run("-S", "bigpkg"))
    ranges = [h.get("Range") for _, _, h in mirror.requests_for(big.filename)]
    assert ranges == ([f"bytes={cut}-"] if cut >= 4096 else [None])
    assert mirror.statuses(big.filename) == ([206] if cut >= 4096 else [200])


# -- the mirror on the wire ------------------------------------------------------------------


def test_mirror_serves_files_with_headers(mirror: MirrorServer, test_repo: TestRepo) -> None:
    db = test_repo.repo_dir("core") / "core.db"
    conn = _conn(mirror)
    try:  # two requests on one keep-alive connection
        for method in ("GET", "HEAD"):
            conn.request(method, "/core/os/x86_64/core.db")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert resp.getheader("Content-Length") == str(db.stat().st_size)
            assert resp.getheader("Last-Modified") == email.utils.formatdate(DB_MTIME, usegmt=True)
            assert body == (db.read_bytes() if method == "GET" else b"")
    finally:
        conn.close()
    assert _get(mirror, "/core/os/x86_64/nothing.db")[0] == 404
    assert _get(mirror, "/core/os/../../../../etc/passwd")[0] == 404
    assert _get(mirror, "/core/os/x86_64/%2e%2e/%2e%2e/%2e%2e/../etc/hostname")[0] == 404
    assert _get(mirror, "/core/os/x86_64")[0] == 404
    assert mirror.hits("core.db") == 1  # HEAD is not a hit
    assert mirror.requests[0][0] == "GET"


def test_mirror_conditional_and_range(mirror: MirrorServer, test_repo: TestRepo) -> None:
    url = "/core/os/x86_64/" + test_repo.packages["bigpkg"].filename
    data = test_repo.packages["bigpkg"].path.read_bytes()
    size = len(data)
    later = email.utils.formatdate(DB_MTIME + 10, usegmt=True)
    earlier = email.utils.formatdate(DB_MTIME - 10, usegmt=True)
    assert _get(mirror, "/core/os/x86_64/core.db", {"If-Modified-Since": later})[0] == 304
    assert _get(mirror, "/core/os/x86_64/core.db", {"If-Modified-Since": earlier})[0] == 200
    status, headers, body = _get(mirror, url, {"Range": "bytes=1000-"})
    assert (status, body) == (206, data[1000:])
    assert headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
    status, headers, body = _get(mirror, url, {"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Length"]) == (206, data[10:20], "10")
    status, headers, _ = _get(mirror, url, {"Range": f"bytes={size}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{size}")


def test_mirror_error_faults_are_switchable(mirror: MirrorServer) -> None:
    path = "/core/os/x86_64/core.db"
    mirror.set_fault("500", "core.db")
    assert _get(mirror, path)[0] == 500
    assert _get(mirror, "/extra/os/x86_64/extra.db")[0] == 200  # pattern is per basename
    mirror.set_fault("404", "*.db")
    assert _get(mirror, path)[0] == 404  # latest matching fault wins
    mirror.set_fault("refuse")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _get(mirror, path)
    mirror.clear_faults()
    assert _get(mirror, path)[0] == 200
    assert mirror.hits("core.db") == 4


def test_mirror_truncate(mirror: MirrorServer, test_repo: TestRepo) -> None:
    big = test_repo.packages["bigpkg"]
    mirror.set_fault("truncate", "bigpkg-*", after_bytes=4096)
    conn = _conn(mirror)
    try:
        conn.request("GET", "/core/os/x86_64/" + big.filename)
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") == str(big.size)
        with pytest.raises(http.client.IncompleteRead) as exc:
            resp.read()
        assert len(exc.value.partial) == 4096
    finally:
        conn.close()


def test_mirror_stall_then_stop_is_prompt(mirror: MirrorServer, test_repo: TestRepo) -> None:
    big = test_repo.packages["bigpkg"]
    mirror.set_fault("stall", big.filename, after_bytes=1000)
    conn = _conn(mirror, timeout=1.0)
    conn.request("GET", "/core/os/x86_64/" + big.filename)
    resp = conn.getresponse()
    assert resp.read(1000) == big.path.read_bytes()[:1000]
    with pytest.raises(TimeoutError):
        resp.read(1)
    # A second client stalls too; stop() must not wait for either of them.
    other = socket.create_connection(("127.0.0.1", mirror.port), timeout=5)
    other.sendall(f"GET /core/os/x86_64/{big.filename} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    time.sleep(0.2)
    started = time.monotonic()
    mirror.stop()
    assert time.monotonic() - started < 2.0
    conn.close()
    other.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", mirror.port), timeout=2).close()
    mirror.start()  # same port again: a mirror that comes back
    assert _get(mirror, "/core/os/x86_64/core.db")[0] == 200


def test_mirror_endless(mirror: MirrorServer, test_repo: TestRepo) -> None:
    big = test_repo.packages["bigpkg"]
    mirror.set_fault("endless", big.filename)
    conn = _conn(mirror)
    try:
        conn.request("GET", "/core/os/x86_64/" + big.filename)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") is None
        got = resp.read(big.size + 2 * MIB)
        assert len(got) == big.size + 2 * MIB
        assert got[: big.size] == big.path.read_bytes()
    finally:
        conn.close()


def test_mirror_slow(mirror: MirrorServer, test_repo: TestRepo) -> None:
    big = test_repo.packages["bigpkg"]
    mirror.set_fault("slow", big.filename, after_bytes=2048)
    sock = socket.create_connection(("127.0.0.1", mirror.port), timeout=5)
    received = bytearray()

    def reader() -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    try:
        sock.sendall(f"GET /core/os/x86_64/{big.filename} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        thread = threading.Thread(target=reader)
        thread.start()
        thread.join(5.0)
    finally:
        sock.close()
    body = bytes(received).split(b"\r\n\r\n", 1)[1]
    # 2048 fast bytes, then about 1 KiB/s for about 2 s.
    assert 2048 + 512 <= len(body) <= 2048 + 4096
    assert body == big.path.read_bytes()[: len(body)]
