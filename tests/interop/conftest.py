"""Interop tests reuse the integration fixtures (signed repo, mirrors, pacswarm nodes)."""

from tests.integration.conftest import make_node, make_pacman

__all__ = ["make_node", "make_pacman"]
