"""One build of the Arch package per test session, shared by the packaging tests.

Why session scope: makepkg takes about a minute here (pip resolves and installs the pinned
dependencies, fastecdsa compiles); every test after the first reuses the package and the root
pacman installed it into. The tests that use these fixtures carry a generous timeout mark.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pkgbuild.archpkg import (
    SYSTEM_PYTHON,
    BuiltPackage,
    copy_checkout,
    make_build_venv,
    makepkg,
    pacman_install,
)

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pkg_scratch() -> Iterator[Path]:
    """A directory ``nobody`` can traverse (pytest's basetemp is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="pacswarm-pkgbuild-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def built(pkg_scratch: Path) -> BuiltPackage:
    """The package makepkg builds in a copy of this checkout, as the PKGBUILD's header says."""
    assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is needed: the installed launcher runs it"
    checkout = copy_checkout(CHECKOUT, pkg_scratch / "checkout")
    venv = make_build_venv(pkg_scratch / "tools")
    return makepkg(checkout, venv, home=pkg_scratch / "tools")


@pytest.fixture(scope="session")
def installed_root(built: BuiltPackage, pkg_scratch: Path) -> Path:
    """An empty root with the package installed into it by pacman."""
    root = pkg_scratch / "root"
    proc = pacman_install(built.path, root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root
