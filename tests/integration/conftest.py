"""Fixtures that put a real pacswarm node between the real pacman and the real mirrors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.pacman import PacmanEnv
from tests.support.testrepo import TestRepo

NodeFactory = Callable[..., PacswarmNode]
PacmanFactory = Callable[..., PacmanEnv]


@pytest.fixture
def make_node(tmp_path: Path, pacman_gpgdir: Path) -> Iterator[NodeFactory]:
    """Start pacswarm nodes over given mirrors; every node is stopped at teardown."""
    nodes: list[PacswarmNode] = []

    def make(
        mirrors: list[str],
        *,
        name: str = "node",
        gpgdir: Path | None = None,
        extra_config: str = "",
    ) -> PacswarmNode:
        node = PacswarmNode(
            tmp_path / name, mirrors, gpgdir or pacman_gpgdir, extra_config=extra_config
        )
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def make_pacman(tmp_path: Path, pacman_gpgdir: Path) -> Iterator[PacmanFactory]:
    """Isolated pacman installs (own root, db, cache, keyring copy); gpg-agents killed after."""
    envs: list[PacmanEnv] = []

    def make(servers: list[str], *, name: str = "pacman", **kwargs: object) -> PacmanEnv:
        env = PacmanEnv(tmp_path / name, servers, pacman_gpgdir, **kwargs)  # type: ignore[arg-type]
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def cluster(tmp_path: Path, mirror: MirrorServer, test_repo: TestRepo) -> Iterator[Cluster]:
    """Nodes over ``mirror``, each with a trusted keyring copy; all stopped at teardown."""
    made = Cluster(tmp_path / "cluster", [mirror.url_template], test_repo.make_pacman_gpgdir)
    made.base.mkdir()
    try:
        yield made
    finally:
        made.stop()
