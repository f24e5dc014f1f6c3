"""A real HTTP/1.1 mirror on 127.0.0.1 with switchable fault injection.

Why a hand-rolled ``http.server`` instead of a ready-made static server: the tests need exact
control over what a misbehaving upstream does on the wire (cut a body after N bytes, stall with
the connection open, never stop sending, answer slowly), plus keep-alive, Range and
If-Modified-Since, which is how pacman talks to real mirrors.  Every blocking loop watches a
stop event, so ``stop()`` returns promptly even while a fault is stalling a client.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import os
import posixpath
import random
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAULT_MODES = (
    "none",
    "500",
    "404",
    "refuse",
    "stall",
    "truncate",
    "endless",
    "slow",
    "trickle",
    "ignore-ims",
    "throttle",
    "no-range",
)
ENDLESS_CAP = 256 * 1024 * 1024
SLOW_RATE = 1024  # bytes per second for the "slow" fault
THROTTLE_RATE = 4 * 1024 * 1024  # bytes per second for "throttle": a modest real link
#: "trickle": the body in pieces of 1-4 KiB with a short pause after each, as a congested
#: link delivers it (a reader must not take the first piece for the whole body).
TRICKLE_PIECES = (1024, 4096)
TRICKLE_PAUSE = 0.0002
_CHUNK = 64 * 1024
_GARBAGE = os.urandom(_CHUNK)


@dataclass(frozen=True)
class _Fault:
    mode: str
    pattern: str
    after_bytes: int
    rate: int = THROTTLE_RATE  # bytes per second, for "throttle"


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that does not join handler threads on close (stop() does, bounded)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], mirror: MirrorServer) -> None:
        self.mirror = mirror
        super().__init__(addr, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up mid-body are normal here; only print real bugs."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: pacman reuses connections
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.mirror._register(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.mirror._register(self.connection, add=False)

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging; ``MirrorServer.requests`` is the log."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Record the status too, so tests can tell a 304 from a 200."""
        path = unquote(urlsplit(self.path).path)
        self.server.mirror._record_response(self.command, path, code)
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # -- request handling ------------------------------------------------------------------

    def _serve(self, *, head: bool) -> None:
        mirror = self.server.mirror
        path = unquote(urlsplit(self.path).path)
        mirror._record(self.command, path, dict(self.headers.items()))
        fault = None if head else mirror._fault_for(posixpath.basename(path))
        if fault is not None and fault.mode == "refuse":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.mode in ("500", "404"):
            self._send_status(int(fault.mode))
            return
        file = mirror._resolve(path)
        if file is None:
            self._send_status(404)
            return
        size = file.stat().st_size
        mtime = int(file.stat().st_mtime)
        ignore_ims = fault is not None and fault.mode == "ignore-ims"  # a 200 despite a fresh IMS
        if not head and not ignore_ims and self._not_modified(mtime):
            self.send_response(304)
            self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
            self.end_headers()
            return
        if fault is not None and fault.mode == "endless":
            self._send_endless(file, mtime)
            return
        # "no-range": a server without Range support answers 200 with the whole file.
        no_range = fault is not None and fault.mode == "no-range"
        span = (0, size, False) if no_range else self._parse_range(size)
        if span is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, partial = span
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not head:
            self._send_body(file, start, end, fault)

    def _send_status(self, code: int) -> None:
        body = f"{code} pacswarm test mirror\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_modified(self, mtime: int) -> bool:
        ims = self.headers.get("If-Modified-Since")
        if not ims:
            return False
        try:
            since = email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
        return mtime <= since

    def _parse_range(self, size: int) -> tuple[int, int, bool] | None:
        """(start, end-exclusive, is_partial) for the Range header, or None for a 416."""
        header = self.headers.get("Range")
        if not header or not header.startswith("bytes="):
            return 0, size, False
        spec = header[len("bytes=") :].split(",")[0].strip()
        first, _, last = spec.partition("-")
        try:
            if first == "":  # suffix range: the last N bytes
                count = int(last)
                return (max(size - count, 0), size, True) if count > 0 else None
            start = int(first)
            end = min(int(last) + 1, size) if last else size
        except ValueError:
            return 0, size, False  # unparsable: ignore Range, as RFC 9110 allows
        if start >= size or end <= start:
            return None
        return start, end, True

    def _send_body(self, file: Path, start: int, end: int, fault: _Fault | None) -> None:
        mode = fault.mode if fault else "none"
        cut = min(end, start + (fault.after_bytes if fault else 0))
        limit = cut if mode in ("stall", "truncate") else end
        fast_until = cut if mode == "slow" else end  # "slow": after_bytes at full speed first
        stop = self.server.mirror._stop
        with file.open("rb") as fh:
            fh.seek(start)
            pos = start
            while pos < limit and not stop.is_set():
                if mode == "trickle":
                    chunk = fh.read(min(random.randint(*TRICKLE_PIECES), limit - pos))
                    self.wfile.write(chunk)
                    time.sleep(TRICKLE_PAUSE)
                elif pos >= fast_until:  # "slow": 1/4 of the rate every 1/4 second
                    chunk = fh.read(min(SLOW_RATE // 4, limit - pos))
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if stop.wait(0.25):
                        break
                else:
                    chunk = fh.read(min(_CHUNK, limit - pos, fast_until - pos))
                    self.wfile.write(chunk)
                    if mode == "throttle" and fault and stop.wait(len(chunk) / fault.rate):
                        break
                if not chunk:
                    break
                pos += len(chunk)
        self.wfile.flush()
        if mode == "stall":
            self._wait_for_hangup()
        if mode in ("stall", "truncate") or stop.is_set():
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_endless(self, file: Path, mtime: int) -> None:
        """The file, then garbage until the client leaves or the cap: no length, so no framing."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        stop = self.server.mirror._stop
        sent = 0
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                self.wfile.write(chunk)
                sent += len(chunk)
        while sent < ENDLESS_CAP and not stop.is_set():
            self.wfile.write(_GARBAGE)
            sent += len(_GARBAGE)
        self.wfile.flush()

    def _wait_for_hangup(self) -> None:
        """Keep the connection open, sending nothing, until the client closes it or stop()."""
        stop = self.server.mirror._stop
        sock = self.connection
        while not stop.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and not sock.recv(4096, socket.MSG_PEEK):
                    return
                if readable:
                    time.sleep(0.1)  # data (a pipelined request) but no hangup: keep stalling
            except (OSError, ValueError):
                return


class MirrorServer:
    """Serve ``root`` over HTTP on 127.0.0.1, or ``host`` (see module docstring)."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root.resolve()
        #: The address it listens on: loopback, or a test LAN's bridge address (netns tests).
        self.host = host
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.responses: list[tuple[str, str, int]] = []  # (method, path, status) sent
        self.base_url = ""
        self.url_template = ""
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._conns: dict[socket.socket, threading.Thread] = {}

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> MirrorServer:
        """Listen on 127.0.0.1 (a new port the first time, the same port after a stop())."""
        if self._server is not None:
            return self
        self._stop.clear()
        self._server = _Server((self.host, self._port), self)
        self._port = self._server.server_address[1]
        self.base_url = f"http://{self.host}:{self._port}"
        self.url_template = self.base_url + "/$repo/os/$arch"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mirror-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; afterwards the port refuses."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = dict(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5.0
        for thread in conns.values():
            thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_fault(
        self, mode: str, pattern: str = "*", after_bytes: int = 0, rate: int = THROTTLE_RATE
    ) -> None:
        """Apply ``mode`` to GETs whose basename matches ``pattern``; replaces that pattern's
        previous fault; the most recently set matching fault wins. ``rate``: for "throttle"."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {FAULT_MODES}")
        with self._lock:
            self._faults = [f for f in self._faults if f.pattern != pattern]
            if mode != "none":
                self._faults.append(_Fault(mode, pattern, after_bytes, rate))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = []

    def clear_log(self) -> None:
        """Forget recorded requests and responses (e.g. after a setup ``pacman -Sy``)."""
        with self._lock:
            self.requests.clear()
            self.responses.clear()

    def statuses(self, path_suffix: str) -> list[int]:
        """Status codes sent for GETs whose path ends with ``path_suffix``, in order."""
        with self._lock:
            return [c for m, p, c in self.responses if m == "GET" and p.endswith(path_suffix)]

    def db_bytes_sent(self) -> int:
        """Bytes of repo db files (``.db``, ``.files`` and their ``.sig``) sent whole (200)."""
        with self._lock:
            sent = [p for m, p, c in self.responses if m == "GET" and c == 200]
        dbs = (".db", ".files", ".db.sig", ".files.sig")
        return sum(
            path.stat().st_size
            for p in sent
            if p.endswith(dbs) and (path := self._resolve(p)) is not None
        )

    def hits(self, path_suffix: str) -> int:
        """Number of GET requests whose path ends with ``path_suffix``."""
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == "GET" and p.endswith(path_suffix))

    def requests_for(self, path_suffix: str) -> list[tuple[str, str, dict[str, str]]]:
        """The recorded requests (any method) whose path ends with ``path_suffix``."""
        with self._lock:
            return [r for r in self.requests if r[1].endswith(path_suffix)]

    # -- used by the handler ---------------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def _record_response(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.responses.append((method, path, status))

    def _register(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns[sock] = threading.current_thread()
            else:
                self._conns.pop(sock, None)

    def _fault_for(self, basename: str) -> _Fault | None:
        with self._lock:
            for fault in reversed(self._faults):
                if fnmatch.fnmatch(basename, fault.pattern):
                    return fault
        return None

    def _resolve(self, url_path: str) -> Path | None:
        """Map a URL path to a regular file under root; None for anything else (incl. ``..``)."""
        parts = [p for p in url_path.split("/") if p not in ("", ".")]
        if any(p == ".." or "\x00" in p for p in parts):
            return None
        candidate = self.root.joinpath(*parts).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate
