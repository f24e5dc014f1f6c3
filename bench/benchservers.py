"""The three servers of the benchmark, each behind the same small interface."""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

from benchprocs import NGINX, Proc, Registry, cpu_seconds, free_port, wait_ready
from benchrepo import db_path

_NGINX_MAIN = """{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    access_log off;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
{body}
}}
"""

_ORIGIN = """    server {{
        listen 127.0.0.1:{port};
        root {root};{limit}
    }}"""

# The Arch Wiki's "nginx as a pacman cache" recipe (proxy_store style), pointed at our origin.
_PROXY_STORE = """    upstream mirrors {{
        server 127.0.0.1:{origin_port};
    }}
    server {{
        listen 127.0.0.1:{port};
        root {store};
        location ~ \\.(db|sig|files)$ {{
            proxy_pass http://mirrors$request_uri;
        }}
        location ~ \\.tar\\.(xz|zst)$ {{
            try_files $uri @pkg_mirror;
        }}
        location @pkg_mirror {{
            proxy_store on;
            proxy_redirect off;
            proxy_store_access user:rw group:rw all:r;
            proxy_temp_path {prefix}/store_temp;
            proxy_next_upstream error timeout http_404;
            proxy_pass http://mirrors$request_uri;
        }}
    }}"""


def count_files(root: Path, size: int) -> int:
    """Layout-agnostic cache probe: non-temporary files of exactly ``size`` bytes under root."""
    count = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") or "tmp" in name or name.endswith(".part"):
                continue
            try:
                count += os.stat(os.path.join(dirpath, name)).st_size == size
            except OSError:
                continue
    return count


def _start_nginx(reg: Registry, name: str, prefix: Path, body: str) -> Proc:
    prefix.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_MAIN.format(user=user, prefix=prefix, body=body))
    argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return reg.start(name, argv, prefix / "stdout.log")


class Origin:
    """A plain nginx static server: the "mirror" both proxies fetch from.

    ``limit_rate`` (bytes/s per request, 0 = unlimited) makes it a slow mirror, for the
    benchmarks where the link speed decides (bench_window.py). nginx paces by delaying after
    each write by its size / rate, and lets a whole second's worth out at the start; with
    its default 2 MiB ``sendfile_max_chunk`` that is 1 s bursts and 1 s silences at 2 MB/s,
    so writes are capped at 50 ms worth: a steady rate from the first byte (a few % under
    ``limit_rate``: each write's own time comes on top of its delay).
    """

    name = "origin"

    def __init__(self, reg: Registry, prefix: Path, root: Path, limit_rate: int = 0) -> None:
        self.port = free_port()
        limit = ""
        if limit_rate:
            chunk = max(16384, limit_rate // 20)
            limit = f"\n        limit_rate {limit_rate};\n        sendfile_max_chunk {chunk};"
        body = _ORIGIN.format(port=self.port, root=root, limit=limit)
        self.proc = _start_nginx(reg, "nginx origin", prefix, body)
        wait_ready(self.proc, self.port, db_path())

    def cpu(self) -> tuple[float, float]:
        return (sum(cpu_seconds(self.proc.popen.pid)), 0.0)  # master + worker


class NginxCache:
    """nginx configured as the Arch Wiki's pacman proxy cache."""

    name = "nginx"
    miss_only = False

    def __init__(self, reg: Registry, prefix: Path, origin_port: int) -> None:
        self.store = prefix / "store"
        self.store.mkdir(parents=True)
        self.temp = prefix / "store_temp"  # proxy_temp_path of @pkg_mirror
        self.temp.mkdir()
        self.port = free_port()
        body = _PROXY_STORE.format(
            port=self.port, origin_port=origin_port, store=self.store, prefix=prefix
        )
        self.proc = _start_nginx(reg, "nginx proxy_store", prefix, body)
        wait_ready(self.proc, self.port, db_path())

    def clear_cache(self) -> None:
        """Empty the store once nginx has renamed its last download into it.

        nginx sends the last byte to the client before it moves the temp file into the store,
        so a store cleared too early could get that file back and turn a miss into a hit.
        """
        deadline = time.monotonic() + 10
        while any(self.temp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        shutil.rmtree(self.store)
        self.store.mkdir()

    def cached(self, size: int) -> int:
        return count_files(self.store, size)

    def cpu(self) -> tuple[float, float]:
        return (sum(cpu_seconds(self.proc.popen.pid)), 0.0)  # master + worker


#: One sample of the node's signature-check counter (the lead's metric), e.g.
#: ``pacswarm_signature_checks_total{outcome="accepted",path="in-process"} 3.0``.
_CHECKS = re.compile(r"^pacswarm_signature_checks_total\{([^}]*)\}\s+([0-9.eE+-]+)\s*$", re.M)
_PATH_LABEL = re.compile(r'path="([^"]*)"')


def signature_checks(metrics_text: str) -> dict[str, float] | None:
    """Checks per ``path`` label ("in-process", "gpg") in a /metrics page; None: no metric."""
    found: dict[str, float] | None = None
    for labels, value in _CHECKS.findall(metrics_text):
        path = _PATH_LABEL.search(labels)
        found = found if found is not None else {}
        key = path.group(1) if path else "?"
        found[key] = found.get(key, 0.0) + float(value)
    if found is None and "pacswarm_signature_checks_total" in metrics_text:
        found = {}  # declared, nothing counted yet
    return found


#: How often :meth:`Pacswarm.settle` looks at the node's CPU time; it must span the 0.5 s an
#: import waits for downloads to end.
SETTLE_TICK = 0.7


class Pacswarm:
    """pacswarm serve; an empty cache means a restart on a fresh --data-dir.

    ``extra_config`` is TOML appended to its config file (e.g. ``verify_window = 0``).
    ``miss_only``: measured in the miss rows only (the fast-path-off node: hits verify nothing).
    """

    def __init__(
        self,
        reg: Registry,
        root: Path,
        binary: str,
        mirrorlist: Path,
        gpgdir: Path,
        extra_config: str = "",
        name: str = "pacswarm",
        miss_only: bool = False,
    ):
        self.name, self.miss_only = name, miss_only
        #: signature checks counted by earlier processes (each miss repetition restarts it)
        self.checks_before: dict[str, float] = {}
        self.checks_seen = False
        self.reg, self.root, self.binary = reg, root, binary
        self.mirrorlist, self.gpgdir = mirrorlist, gpgdir
        self.extra_config = extra_config
        self.generation = 0
        self.port = 0
        self.data_dir = root / "data-0"
        self.proc: Proc | None = None
        self._start()

    def _start(self) -> None:
        self.generation += 1
        self.data_dir = self.root / f"data-{self.generation}"
        self.data_dir.mkdir(parents=True)
        self.port = free_port()
        argv = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--data-dir", str(self.data_dir), "--mirrorlist", str(self.mirrorlist)]
        argv += ["--gpgdir", str(self.gpgdir)]
        # Its IPFS side on loopback only, ports picked by the OS, no bootstrap, no mDNS: a
        # benchmark talks to 127.0.0.1 and nothing else.
        config = self.root / "pacswarm.toml"
        config.write_text(
            'gateway_listen = "127.0.0.1:0"\np2p_listen = ["/ip4/127.0.0.1/tcp/0"]\n'
            "bootstrap = []\nmdns = false\n" + self.extra_config
        )
        argv += ["--config", str(config)]
        self.proc = self.reg.start(self.name, argv, self.root / "pacswarm.log")
        wait_ready(self.proc, self.port, db_path())  # like pacman -Sy: the db comes first

    def clear_cache(self) -> None:
        if self.proc is not None:
            for path, count in (self._scrape() or {}).items():
                self.checks_before[path] = self.checks_before.get(path, 0.0) + count
            self.reg.stop(self.proc)
            self.proc = None
        shutil.rmtree(self.data_dir)
        self._start()

    def cached(self, size: int) -> int:
        return count_files(self.data_dir / "cache", size)  # cache/<repo>/<arch>/<file>

    def _scrape(self) -> dict[str, float] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                found = signature_checks(resp.read().decode(errors="replace"))
        except OSError:
            return None
        self.checks_seen = self.checks_seen or found is not None
        return found

    def signature_checks(self) -> dict[str, float] | None:
        """Checks per path ("in-process", "gpg") since the first start; None: not counted."""
        live = self._scrape()
        if live is None and not self.checks_seen:
            return None
        total = dict(self.checks_before)
        for path, count in (live or {}).items():
            total[path] = total.get(path, 0.0) + count
        return total

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until the node is idle: what a miss leaves behind (the IPFS import, which
        waits for the downloads to end, the announcement) is part of its cost."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        last = sum(self.cpu())
        while time.monotonic() < deadline:
            time.sleep(SETTLE_TICK)
            now = sum(self.cpu())
            if now - last < SETTLE_TICK * 0.02:  # under 2% of a core: idle
                return
            last = now

    def cpu(self) -> tuple[float, float]:
        """(the pacswarm process, its helpers: gpg runs as a child per verification)."""
        return cpu_seconds(self.proc.popen.pid) if self.proc is not None else (0.0, 0.0)

    def log_tail(self) -> str:
        return self.proc.log_tail() if self.proc is not None else ""
