"""Build packaging/PKGBUILD with the real makepkg, and install the result into a side root.

Why this shape:

* makepkg refuses to run as root, so the build runs as ``nobody`` on a copy of the checkout
  that ``nobody`` owns, in a scratch directory under /tmp (pytest's basetemp is 0700 root).
  The copy is laid out like a checkout and makepkg runs in its ``packaging/`` folder, as the
  PKGBUILD's header says: makepkg's own src/ and pkg/ then live inside packaging/.
* The build tools come from a venv on the system python (/usr/bin/python3, the interpreter
  the installed launcher runs): the default python3 here may be a pyenv one under /root,
  which ``nobody`` cannot run, and Debian 12's setuptools 66 rejects pyproject.toml's SPDX
  license string. On Arch the venv is not needed, but it does no harm.
* ``PACMAN=true`` and ``--nodeps``: Debian has no pacman database of makedepends, and the
  build tools come from the venv, not from packages.
* The package is installed with the real pacman into an empty root with its own database:
  ``--nodeps --nodeps`` (python, gnupg, ... are the host's, not the side root's) and
  ``--noscriptlet`` (the empty root has no /bin/sh to run pacswarm.install in).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The interpreter the installed launcher runs (its shebang), and so the build's.
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: Build tools current enough for pyproject.toml (setuptools >= 77 reads SPDX licenses).
BUILD_TOOLS = ("pip", "setuptools>=77", "build", "wheel", "pytest==9.0.3", "pytest-timeout==2.4.0")
#: Bounds, an order of magnitude above the ~1 min a build takes here (2 cores).
VENV_TIMEOUT = 300.0
MAKEPKG_TIMEOUT = 840.0
PACMAN_TIMEOUT = 120.0

#: Not part of a checkout's sources (as .gitignore says): caches, venvs, build products.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache",
    "*.egg-info", "kubo.log", "*.pkg.tar.*",
)  # fmt: skip
#: The same, in one folder only: the checkout's top and makepkg's work dirs in packaging/.
_NOT_SOURCES_IN = {".": {"build", "data", "dist"}, "packaging": {"src", "pkg"}}


def _ignore(top: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        here = os.path.relpath(directory, top)
        return set(_NOT_SOURCES(directory, names)) | (_NOT_SOURCES_IN.get(here, set()) & set(names))

    return ignore


_PACMAN_CONF = """\
[options]
Architecture = auto
SigLevel = Never
LocalFileSigLevel = Never
"""


@dataclass(frozen=True)
class BuiltPackage:
    """A package file makepkg made, with its log and how long the build took."""

    path: Path
    log: str
    seconds: float


def _as_nobody_env(home: Path, path_prefix: Path | None = None) -> list[str]:
    """``env`` arguments for a clean environment of ``nobody``, keeping the pip and proxy
    settings the machine may need to reach the package registry."""
    path = "/usr/local/bin:/usr/bin:/bin"
    if path_prefix is not None:
        path = f"{path_prefix}:{path}"
    env = {"PATH": path, "HOME": str(home), "LC_ALL": "C", "PACMAN": "true"}
    for key, value in os.environ.items():
        if key.startswith("PIP_") or key.lower() in {"http_proxy", "https_proxy", "no_proxy"}:
            env[key] = value
    return ["env", "-i", *[f"{k}={v}" for k, v in env.items()]]


def _run_as_nobody(
    argv: list[str], *, cwd: Path, env: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *env, *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def copy_checkout(checkout: Path, dest: Path) -> Path:
    """Copy the sources of ``checkout`` (not its venvs or caches) to ``dest``, owned by
    ``nobody`` so that makepkg can write its src/ and pkg/ inside ``dest/packaging``."""
    shutil.copytree(checkout, dest, ignore=_ignore(checkout), symlinks=True)
    _chown_nobody(dest)
    return dest


def _chown_nobody(top: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    for path in [top, *top.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)


def make_build_venv(dest: Path) -> Path:
    """A venv of the system python, owned by ``nobody``, holding the build tools."""
    dest.mkdir()
    _chown_nobody(dest)
    env = _as_nobody_env(dest)
    for argv in (
        [str(SYSTEM_PYTHON), "-m", "venv", str(dest / "venv")],
        [str(dest / "venv/bin/python"), "-m", "pip", "install", "-q", "-U", *BUILD_TOOLS],
    ):
        proc = _run_as_nobody(argv, cwd=dest, env=env, timeout=VENV_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}")
    return dest / "venv"


def run_makepkg(checkout: Path, tools: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``makepkg --check`` as ``nobody`` in ``checkout/packaging``, with the system's
    makepkg.conf and the directory ``tools`` (holding ``python``) first in PATH."""
    return _run_as_nobody(
        ["makepkg", "--nodeps", "--check", "--nocolor"],
        cwd=checkout / "packaging",
        env=_as_nobody_env(home, tools),
        timeout=MAKEPKG_TIMEOUT,
    )


def makepkg(checkout: Path, venv: Path, home: Path) -> BuiltPackage:
    """Build with the build tools of ``venv``; the one package makepkg made."""
    started = time.monotonic()
    proc = run_makepkg(checkout, venv / "bin", home)
    seconds = time.monotonic() - started
    files = sorted((checkout / "packaging").glob("pacswarm-*.pkg.tar.*"))
    if proc.returncode != 0 or len(files) != 1:
        raise RuntimeError(f"makepkg failed ({proc.returncode}), made {files}:\n{proc.stdout}")
    return BuiltPackage(files[0], proc.stdout, seconds)


def pacman_install(package: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """``pacman -U`` of ``package`` into the empty root ``root``, with its own database,
    config, cache, log and hook directory (nothing of the host's pacman is touched)."""
    state = root.with_name(root.name + "-pacman")
    (root / "var/lib/pacman").mkdir(parents=True)
    state.mkdir()
    conf = state / "pacman.conf"
    conf.write_text(_PACMAN_CONF)
    argv = [
        "pacman", "-U", "--noconfirm", "--noprogressbar", "--nodeps", "--nodeps", "--noscriptlet",
        "--root", str(root), "--dbpath", str(root / "var/lib/pacman"), "--config", str(conf),
        "--cachedir", str(state / "cache"), "--logfile", str(state / "pacman.log"),
        "--hookdir", str(state / "hooks"), "--gpgdir", str(state / "gnupg"),
        str(package),
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=PACMAN_TIMEOUT)
