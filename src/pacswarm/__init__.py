"""pacswarm: a pacman caching proxy that verifies every package and shares them over IPFS.

The public surface is small on purpose: the CLI (``pacswarm``), the configuration and the
error tree. Everything else is an implementation module with one concern each (see
``docs/architecture.md``).
"""

from pacswarm.config import Config
from pacswarm.errors import (
    ConfigError,
    IntegrityError,
    MirrorlistError,
    PacswarmError,
    RepoDbError,
    UpstreamError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "IntegrityError",
    "MirrorlistError",
    "PacswarmError",
    "RepoDbError",
    "UpstreamError",
    "VerificationError",
    "__version__",
]
