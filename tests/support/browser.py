"""A real browser for pages the node serves: Debian's chromium, headless, offline.

Why a browser and not an HTML parser: "the listing renders in a browser" is about what a
user's browser does with our markup (its parser's error recovery, the CSP header, escaped
names), which only a browser shows. Flags: no sandbox (tests run as root), nothing fetched
from the internet (the machine has none; chromium otherwise retries its update and sync
hosts), a fresh profile per run. Every run is bounded by a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1024,768",
)


def chromium() -> str | None:
    """The chromium binary, if installed (``make test`` installs it on Debian and Arch)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, workdir: Path, timeout: float = 60) -> tuple[str, Path]:
    """The DOM chromium built from ``url``, and a PNG screenshot of the page."""
    binary = chromium()
    if binary is None:
        raise RuntimeError(
            "chromium is not installed: run `make deps` (or apt-get install chromium)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    base = [binary, *FLAGS, f"--user-data-dir={workdir / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=False
    )
    shot = workdir / "page.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", url], capture_output=True, timeout=timeout, check=False
    )
    return dom.stdout, shot
