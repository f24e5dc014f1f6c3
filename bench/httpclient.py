"""A cheap raw-socket HTTP/1.1 GET client for the benchmark.

By default it reads each body into one reusable buffer and discards it (``recv_into``), so its
cost is the kernel's copy out of the socket, as for pacman or curl, plus a few Python calls per
MiB. With ``splice=True`` a Content-Length body goes socket -> pipe -> /dev/null with
``os.splice`` and is never copied to user space (about a third of the CPU): that leaves more of
a small machine to the server. Each client is a thread with its own keep-alive connection (the
GIL is released while a syscall waits or copies); its CPU time is measured with
``time.thread_time`` so the report can show the client is not the bottleneck.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field

BUF_SIZE = 1 << 20
TAIL = 64 * 1024  # pacswarm holds back the last 64 KiB of a miss until it is verified
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
USER_AGENT = "pacman/6.0.2 (Linux x86_64) libalpm/13.0.2"


class HttpError(RuntimeError):
    """A response other than 200, or a connection that broke mid-body."""


@dataclass(frozen=True)
class Fetch:
    """One GET: body bytes; seconds to the first body byte, to all but the last TAIL bytes
    (0 if unknown: chunked body), and to the last byte."""

    path: str
    status: int
    nbytes: int
    ttfb: float
    total: float
    tail_at: float = 0.0

    @property
    def tail_wait(self) -> float:
        """Seconds the last TAIL bytes took (a server that holds them back shows here)."""
        return self.total - self.tail_at if self.tail_at else 0.0


@dataclass
class Head:
    status: int
    length: int | None
    chunked: bool
    close: bool
    leftover: bytes


class Conn:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int, timeout: float, splice: bool = False) -> None:
        self.port = port
        self.timeout = timeout
        self.buf = bytearray(BUF_SIZE)
        self.view = memoryview(self.buf)
        self.sock: socket.socket | None = None
        self.pipe: tuple[int, int] | None = None
        self.null = -1
        if splice:
            self.pipe = os.pipe()
            fcntl.fcntl(self.pipe[1], F_SETPIPE_SZ, BUF_SIZE)
            self.null = os.open(os.devnull, os.O_WRONLY)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def release(self) -> None:
        """Close the socket and, in splice mode, the pipe and /dev/null."""
        self.close()
        if self.pipe is not None:
            for fd in (*self.pipe, self.null):
                os.close(fd)
            self.pipe = None

    def _connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
        return self.sock

    def get(self, path: str) -> Fetch:
        """GET ``path``, read the whole body, discard it."""
        sock = self._connect()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        sock.sendall(request)
        head = self._read_head(sock)
        first = time.perf_counter() if head.leftover or head.length == 0 else 0.0
        tail_at = 0.0
        if head.chunked:
            nbytes, first = self._read_chunked(sock, head.leftover, first)
        else:
            nbytes, first, tail_at = self._read_plain(sock, head, first)
        end = time.perf_counter()
        if head.close or (head.length is None and not head.chunked):
            self.close()
        tail = tail_at - start if tail_at else 0.0
        return Fetch(path, head.status, nbytes, (first or end) - start, end - start, tail)

    def _read_head(self, sock: socket.socket) -> Head:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise HttpError("connection closed before the response headers")
            data += chunk
        raw, _, leftover = data.partition(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        length = headers.get("content-length")
        return Head(
            status=status,
            length=int(length) if length is not None else None,
            chunked="chunked" in headers.get("transfer-encoding", ""),
            close=headers.get("connection") == "close" or lines[0].startswith("HTTP/1.0"),
            leftover=leftover,
        )

    def _read_plain(
        self, sock: socket.socket, head: Head, first: float
    ) -> tuple[int, float, float]:
        """Content-Length body, or (no length) everything up to EOF."""
        got = len(head.leftover)
        want = head.length
        view = self.view
        tail_mark = want - TAIL if want is not None and want > TAIL else None
        tail_at = 0.0
        while want is None or got < want:
            if tail_mark is not None and not tail_at and got >= tail_mark:
                tail_at = time.perf_counter()
            room = BUF_SIZE if want is None else min(BUF_SIZE, want - got)
            n = self._splice(sock, room) if self.pipe else sock.recv_into(view, room)
            if n == 0:
                if want is None:
                    break
                self.close()
                raise HttpError(f"body truncated at {got} of {want} bytes")
            if not first:
                first = time.perf_counter()
            got += n
        return got, first, tail_at

    def _splice(self, sock: socket.socket, room: int) -> int:
        """Move up to ``room`` bytes socket -> pipe -> /dev/null; the socket is non-blocking."""
        assert self.pipe is not None
        while True:
            try:
                n = os.splice(sock.fileno(), self.pipe[1], room)
                break
            except BlockingIOError:
                if not select.select([sock], [], [], self.timeout)[0]:
                    raise TimeoutError(f"no data for {self.timeout:.0f} s") from None
        left = n
        while left:
            left -= os.splice(self.pipe[0], self.null, left)
        return n

    def _read_chunked(self, sock: socket.socket, data: bytes, first: float) -> tuple[int, float]:
        """Transfer-Encoding: chunked; chunk payloads are skipped through the buffer."""
        total = 0
        while True:
            while b"\r\n" not in data:
                data += self._recv_some(sock)
                first = first or time.perf_counter()
            line, _, data = data.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not data.startswith(b"\r\n") and b"\r\n\r\n" not in data:
                    data += self._recv_some(sock)
                return total, first
            total += size
            need = size + 2  # payload and its CRLF
            if len(data) >= need:
                data = data[need:]
                continue
            need -= len(data)
            data = b""
            while need > 0:
                n = sock.recv_into(self.view, min(need, BUF_SIZE))
                if n == 0:
                    raise HttpError("chunked body truncated")
                first = first or time.perf_counter()
                need -= n

    def _recv_some(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            self.close()
            raise HttpError("connection closed inside a chunked body")
        return chunk


@dataclass
class ClientRun:
    """What a group of concurrent clients did: every fetch, wall time, client CPU seconds."""

    fetches: list[Fetch] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.fetches)


@dataclass
class _Worker:
    plan: list[str]
    fetches: list[Fetch] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    cpu: float = 0.0
    error: BaseException | None = None


def _work(
    port: int, timeout: float, splice: bool, worker: _Worker, barrier: threading.Barrier
) -> None:
    conn = Conn(port, timeout, splice)
    try:
        conn._connect()
        barrier.wait(timeout)
        cpu0 = time.thread_time()
        worker.start = time.perf_counter()
        for path in worker.plan:
            fetch = conn.get(path)
            if fetch.status != 200:
                raise HttpError(f"GET {path}: HTTP {fetch.status}")
            worker.fetches.append(fetch)
        worker.end = time.perf_counter()
        worker.cpu = time.thread_time() - cpu0
    except BaseException as e:  # reported by run_clients in the main thread
        worker.error = e
        barrier.abort()
    finally:
        conn.release()


def run_clients(
    port: int, plans: list[list[str]], timeout: float, splice: bool = False
) -> ClientRun:
    """Run one client thread per plan (a list of paths), all starting together."""
    workers = [_Worker(plan) for plan in plans]
    barrier = threading.Barrier(len(workers))
    threads = [
        threading.Thread(target=_work, args=(port, timeout, splice, w, barrier), daemon=True)
        for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        if w.error is not None and not isinstance(w.error, threading.BrokenBarrierError):
            raise HttpError(f"client failed: {w.error!r}") from w.error
    run = ClientRun()
    for w in workers:
        run.fetches.extend(w.fetches)
        run.cpu += w.cpu
    run.wall = max(w.end for w in workers) - min(w.start for w in workers)
    return run


def get_once(port: int, path: str, timeout: float = 10.0) -> Fetch:
    """A single GET on a fresh connection (readiness probes, cache warming)."""
    conn = Conn(port, timeout)
    try:
        return conn.get(path)
    finally:
        conn.release()
