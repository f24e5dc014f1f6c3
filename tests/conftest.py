"""Shared fixtures: one real signed repository per session, real mirrors and keyrings per test.

Why session scope for the repository: building it (gpg keys, makepkg, repo-add) takes a few
seconds; tests that need to damage files work on a per-test copy served by ``mirror``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gpg import kill_agent
from tests.support.mirror import MirrorServer
from tests.support.testrepo import TestRepo, build_test_repo


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRepo]:
    """The signed core/extra repository; gpg-agents of all its keyrings die at teardown."""
    repo = build_test_repo(tmp_path_factory.mktemp("testrepo"))
    try:
        yield repo
    finally:
        repo.close()


@pytest.fixture
def pacman_gpgdir(tmp_path: Path, test_repo: TestRepo) -> Iterator[Path]:
    """A pacman keyring that fully trusts the packager key (master lsigned, as on Arch).

    Whoever uses it (pacman, gpg, the proxy) may start a gpg-agent there: killed at teardown.
    """
    gpgdir = test_repo.make_pacman_gpgdir(tmp_path / "pacman-gnupg", trust="full")
    try:
        yield gpgdir
    finally:
        kill_agent(gpgdir)


def _serve_copy(test_repo: TestRepo, dest: Path) -> Iterator[MirrorServer]:
    server = MirrorServer(test_repo.copy_tree(dest)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mirror(tmp_path: Path, test_repo: TestRepo) -> Iterator[MirrorServer]:
    """A started mirror over a private copy of the repository (tests may corrupt its files)."""
    yield from _serve_copy(test_repo, tmp_path / "mirror1")


@pytest.fixture
def mirror2(tmp_path: Path, test_repo: TestRepo) -> Iterator[MirrorServer]:
    """A second, independent mirror (its own copy, port and fault settings)."""
    yield from _serve_copy(test_repo, tmp_path / "mirror2")
