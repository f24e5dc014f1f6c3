"""A real pacswarm node in a child process, as a user runs it (``pacswarm serve``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PacswarmNode:
    """``python -m pacswarm serve`` with its own data dir, mirrorlist and keyring."""

    def __init__(
        self,
        data_dir: Path,
        mirrors: list[str],
        gpgdir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
    ) -> None:
        self.data_dir = data_dir
        self.gpgdir = gpgdir
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url_template = self.base_url + "/$repo/os/$arch"
        self.mirrorlist = data_dir.parent / f"{data_dir.name}.mirrorlist"
        self.mirrorlist.write_text("".join(f"Server = {m}\n" for m in mirrors))
        self.config = data_dir.parent / f"{data_dir.name}.toml"
        # Short stall detection keeps failover tests fast; still the product's own logic.
        # The IPFS side listens on loopback only, on ports the OS picks, and dials nobody.
        self.config.write_text(
            'log_level = "debug"\nstall_timeout = 2.0\nmirror_penalty = 60.0\n'
            'gateway_listen = "127.0.0.1:0"\np2p_listen = ["/ip4/127.0.0.1/tcp/0"]\n'
            "bootstrap = []\nmdns = false\n" + extra_config
        )
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pacswarm",
            "serve",
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--mirrorlist",
            str(self.mirrorlist),
            "--gpgdir",
            str(self.gpgdir),
        ]

    def start(self, timeout: float = 20.0) -> PacswarmNode:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pacswarm exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/", timeout=1):
                    pass
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
                continue
            if self._ipfs_info().get("addrs"):  # the IPFS side is up too
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pacswarm did not start within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def _ipfs_info(self) -> dict[str, object]:
        try:
            info = json.loads((self.data_dir / "ipfs" / "config.json").read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    @property
    def gateway_url(self) -> str:
        """The peer-facing Trustless Gateway (its port is chosen at start)."""
        return f"http://{self._ipfs_info()['gateway']}"

    @property
    def p2p_addrs(self) -> list[str]:
        """The libp2p multiaddrs the node listens on, each ending in /p2p/<peer id>."""
        addrs = self._ipfs_info()["addrs"]
        assert isinstance(addrs, list)
        return [str(a) for a in addrs]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cached_files(self) -> list[Path]:
        cache = self.data_dir / "cache"
        return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []

    def peak_rss_kb(self) -> int:
        """The node's high-water resident set size (VmHWM), in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def wait_cached(self, filename: str, timeout: float = 10.0) -> Path:
        """The cached file once committed. pacman's last byte goes out just before the
        commit's rename, so a test that checks the cache right after a download waits here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in self.cached_files():
                if path.name == filename:
                    return path
            time.sleep(0.05)
        raise AssertionError(f"{filename} was not cached within {timeout} s:\n{self.log()}")

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 30):
        """(status, headers, body) of a GET; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()
