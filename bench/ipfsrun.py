"""Processes of bench_ipfs.py: nginx over the package files, pacswarm IPFS servers, one-shot
fetch clients (``ipfsnode.py``), and Helia/kubo peers from tests/support. Every process is
registered so the benchmark's finally block stops it (by pid, never by name).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchprocs import Proc, Registry, cpu_seconds, free_port, wait_ready
from benchservers import _start_nginx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # tests/support/{helia,kubo}.py
    sys.path.insert(0, str(ROOT))

NODE_SCRIPT = HERE / "ipfsnode.py"

_STATIC = """    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}"""


@dataclass(frozen=True)
class Result:
    nbytes: int
    seconds: float
    client_cpu: float | None = None  # CPU seconds of the fetching process, when we know it
    server_cpu: float | None = None  # CPU seconds of the serving process(es), when we know it


class NginxStatic:
    """Plain nginx (one worker, sendfile on) serving the package files: the baseline."""

    def __init__(self, reg: Registry, prefix: Path, root: Path) -> None:
        self.port = free_port()
        self.proc = _start_nginx(
            reg, "nginx static", prefix, _STATIC.format(port=self.port, root=root)
        )
        wait_ready(self.proc, self.port, None)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def cpu(self) -> float:
        return sum(cpu_seconds(self.proc.popen.pid))  # master + worker


@dataclass
class PacswarmServer:
    """``ipfsnode.py serve``: gateway + P2PHost over a PackageBlockstore holding one file."""

    proc: Proc
    root: str
    gateway: str
    addrs: list[str]
    p2p_error: str

    @property
    def multiaddr(self) -> str:
        return self.addrs[0]

    def cpu(self) -> float:
        return sum(cpu_seconds(self.proc.popen.pid))


def python() -> str:
    return sys.executable


def start_pacswarm(
    reg: Registry, workdir: Path, package: Path, timeout: float = 90.0
) -> PacswarmServer:
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    argv = [python(), str(NODE_SCRIPT), "serve", "--file", str(package)]
    argv += ["--workdir", str(workdir), "--ready", str(ready)]
    proc = reg.start(f"pacswarm ipfs server ({package.name})", argv, workdir / "server.log")
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not proc.alive():
            raise RuntimeError(f"pacswarm server exited; log:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"pacswarm server not ready in {timeout:.0f} s:\n{proc.log_tail()}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return PacswarmServer(proc, info["root"], info["gateway"], info["addrs"], info["p2p_error"])


@dataclass
class Clients:
    """Runs ``ipfsnode.py fetch`` children, one per measurement."""

    reg: Registry
    workdir: Path
    timeout: float
    count: int = 0
    logs: list[Path] = field(default_factory=list)

    def run(self, mode: str, **opts: str) -> Result:
        self.count += 1
        wd = self.workdir / f"client-{self.count}-{mode}"
        wd.mkdir(parents=True)
        out = wd / "result.json"
        argv = [python(), str(NODE_SCRIPT), "fetch", "--mode", mode, "--out-json", str(out)]
        argv += ["--workdir", str(wd), "--timeout", str(self.timeout)]
        for key, value in opts.items():
            argv += [f"--{key}", value]
        proc = self.reg.start(f"fetch client ({mode})", argv, wd / "client.log")
        try:
            proc.popen.wait(self.timeout + 60)  # start-up, connect, fetch, shutdown
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{mode} client did not finish in {self.timeout + 60:.0f} s"
            ) from None
        finally:
            self.reg.stop(proc)
        if not out.exists():
            raise RuntimeError(
                f"{mode} client failed (exit {proc.popen.returncode}):\n{proc.log_tail(8)}"
            )
        r = json.loads(out.read_text())
        return Result(int(r["bytes"]), float(r["seconds"]), float(r["cpu"]))


class Peers:
    """Helia and kubo peers started by the benchmark, stopped by :meth:`stop_all`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: list[Any] = []
        self.count = 0

    def helia(self) -> Any:
        from tests.support.helia import HeliaPeer

        self.count += 1
        peer = HeliaPeer(log_path=self.logdir / f"helia-{self.count}.log", call_timeout=60.0)
        self.live.append(peer)
        peer.start(timeout=60)
        return peer

    def kubo(self, preload: dict[bytes, bytes] | None = None) -> Any:
        from tests.support.kubo import KuboPeer

        self.count += 1
        peer = KuboPeer(self.logdir / f"kubo-{self.count}", preload=preload)
        self.live.append(peer)
        peer.start(timeout=120)
        return peer

    def stop(self, peer: Any) -> None:
        try:
            peer.stop()
        finally:
            if peer in self.live:
                self.live.remove(peer)

    def stop_all(self) -> None:
        for peer in list(reversed(self.live)):
            try:
                self.stop(peer)
            except Exception as e:  # keep stopping the others
                print(f"warning: could not stop {type(peer).__name__}: {e!r}")


def helia_reason() -> str:
    from tests.support.helia import helia_available, unavailable_reason

    return "" if helia_available() else unavailable_reason()


def kubo_reason() -> str:
    from tests.support.kubo import kubo_available, unavailable_reason

    return "" if kubo_available() else unavailable_reason()


def write_random(path: Path, size: int) -> None:
    chunk = 1 << 22
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


@dataclass
class StockServer:
    """``ipfsnode.py stock-serve``: py-libp2p's own Bitswap holding the same blocks."""

    proc: Proc
    root: str
    addrs: list[str]

    @property
    def multiaddr(self) -> str:
        return self.addrs[0]

    def cpu(self) -> float:
        return sum(cpu_seconds(self.proc.popen.pid))


def start_stock(reg: Registry, workdir: Path, package: Path, timeout: float = 120.0) -> StockServer:
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    argv = [
        python(),
        str(NODE_SCRIPT),
        "stock-serve",
        "--file",
        str(package),
        "--ready",
        str(ready),
    ]
    proc = reg.start(f"py-libp2p stock server ({package.name})", argv, workdir / "server.log")
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not proc.alive():
            raise RuntimeError(f"stock server exited; log:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"stock server not ready in {timeout:.0f} s:\n{proc.log_tail()}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return StockServer(proc, info["root"], info["addrs"])
