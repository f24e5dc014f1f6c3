"""An isolated, real pacman: its own config, root, db, cache, keyring, log and hook dirs.

Why the real binary: pacman's download behaviour (parallel downloads, keep-alive, ``.part``
resume with Range, If-Modified-Since on dbs, signature trust checks) is what the proxy must
satisfy, and no mock reproduces it faithfully.  Every run is bounded by a timeout and leaves no
gpg-agent behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import gpg

PACMAN = "pacman"


class PacmanEnv:
    """A pacman installation rooted at ``base`` that downloads from ``servers`` in order."""

    def __init__(
        self,
        base: Path,
        servers: list[str],
        gpgdir: Path,
        *,
        parallel_downloads: int = 5,
        repos: tuple[str, ...] = ("core", "extra"),
    ) -> None:
        self.base = base
        self.servers = list(servers)
        self.gpgdir = gpgdir
        self.parallel_downloads = parallel_downloads
        self.repos = repos
        self.config = base / "pacman.conf"
        self.root = base / "root"
        self.dbpath = base / "db"
        self.cachedir = base / "cache"
        self.hookdir = base / "hooks"
        self.logfile = base / "pacman.log"
        for path in (self.root, self.dbpath, self.cachedir, self.hookdir):
            path.mkdir(parents=True, exist_ok=True)
        self.logfile.touch()
        self.write_config()

    def write_config(self) -> None:
        """(Re)write pacman.conf from the current attributes (tests may edit ``servers``)."""
        lines = [
            "[options]",
            "Architecture = x86_64",
            f"ParallelDownloads = {self.parallel_downloads}",
            "SigLevel = Required DatabaseOptional",
            "LocalFileSigLevel = Optional",
            "",
        ]
        for repo in self.repos:
            lines.append(f"[{repo}]")
            lines.extend(f"Server = {server}" for server in self.servers)
            lines.append("")
        self.config.write_text("\n".join(lines))

    def command(self, *args: str) -> list[str]:
        """The full pacman argv for ``args`` (useful to start pacman with Popen)."""
        return [
            PACMAN,
            "--config", str(self.config),
            "--root", str(self.root),
            "--dbpath", str(self.dbpath),
            "--cachedir", str(self.cachedir),
            "--gpgdir", str(self.gpgdir),
            "--logfile", str(self.logfile),
            "--hookdir", str(self.hookdir),
            "--noconfirm",
            "--noprogressbar",
            *args,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run pacman; stdout and stderr merged into ``stdout``; never raises on exit status.

        A timeout kills pacman and returns rc -9 with the output so far (tests then fail with
        a readable message instead of a hung session).
        """
        self.unlock()
        argv = self.command(*args)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=gpg.gpg_env(),
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += f"\n[pacswarm tests: pacman killed after {timeout}s timeout]\n"
            rc = -9
            self.unlock()  # a killed pacman leaves db.lck behind
        finally:
            gpg.kill_agent(self.gpgdir)
        return subprocess.CompletedProcess(argv, rc, out, None)

    def unlock(self) -> None:
        """Remove a stale ``db.lck`` (never call while a pacman of this env runs)."""
        lock = self.dbpath / "db.lck"
        if lock.exists():
            os.unlink(lock)

    def installed_file(self, rel: str) -> Path:
        """The path of an installed file, given relative to ``/`` (leading slash optional)."""
        return self.root / rel.lstrip("/")

    def part_files(self) -> list[Path]:
        """Partially downloaded files pacman left in its cache (``*.part``)."""
        return sorted(self.cachedir.glob("*.part"))

    def close(self) -> None:
        """Kill any gpg daemon pacman started for the keyring; safe to call twice."""
        gpg.kill_agent(self.gpgdir)
        self.unlock()

    def __enter__(self) -> PacmanEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
