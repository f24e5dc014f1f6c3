"""The node's libp2p identity: one ed25519 key pair, created once, kept in a 0600 file.

Why a file of our own rather than py-libp2p's keystore: the peer ID must survive restarts
(peers, DHT provider records and IPNS names all point at it), the file must never be readable
by other users, and two processes starting at once must not end up with two different keys.
The file holds the libp2p ``PrivateKey`` protobuf (key type + key bytes), the same framing
kubo and js-libp2p use, so the key is portable.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from pacswarm.errors import PacswarmError

log = logging.getLogger(__name__)

KEY_MODE = 0o600


class IdentityError(PacswarmError):
    """The key file exists but cannot be used (unreadable, corrupt, wrong key type)."""


def _write_new_key(path: Path) -> None:
    """Create the key file atomically: a 0600 temp file hard-linked into place.

    ``os.link`` fails if ``path`` already exists, so when two processes race, exactly one key
    wins and the loser simply loads it: never two identities for one node.
    """
    pair = create_new_key_pair()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        os.write(fd, pair.private_key.serialize())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _fix_mode(path: Path) -> None:
    """Take group/other permissions away from a key file someone loosened."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("identity key %s had mode %o; resetting to 0600", path, mode)
        os.chmod(path, KEY_MODE)


def load_or_create_identity(path: Path) -> KeyPair:
    """The node's ed25519 key pair from ``path``, creating it (mode 0600) on first call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_new_key(path)
    _fix_mode(path)
    try:
        private = deserialize_private_key(path.read_bytes())
    except Exception as e:
        raise IdentityError(f"cannot read identity key {path}: {e}") from e
    if private.get_type() != KeyType.Ed25519:
        raise IdentityError(f"identity key {path} is {private.get_type().name}, not Ed25519")
    return KeyPair(private, private.get_public_key())


def peer_id_of(identity: KeyPair | Path) -> str:
    """The base58 peer ID (``12D3KooW...``) of a key pair, or of the key stored at a path."""
    pair = identity if isinstance(identity, KeyPair) else load_or_create_identity(identity)
    return ID.from_pubkey(pair.public_key).to_base58()
