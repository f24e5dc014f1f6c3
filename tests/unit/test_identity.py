"""The node's libp2p identity: created once, private (0600), the same peer ID across restarts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pacswarm.ipfs.identity import IdentityError, load_or_create_identity, peer_id_of


def test_created_on_first_call_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.key"
    pair = load_or_create_identity(path)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert peer_id_of(pair).startswith("12D3KooW")  # ed25519 keys give identity-hash IDs


def test_same_peer_id_across_loads(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first = peer_id_of(load_or_create_identity(path))
    assert peer_id_of(load_or_create_identity(path)) == first
    assert peer_id_of(path) == first


def test_different_files_give_different_ids(tmp_path: Path) -> None:
    assert peer_id_of(tmp_path / "a.key") != peer_id_of(tmp_path / "b.key")


def test_loose_mode_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first = peer_id_of(path)
    os.chmod(path, 0o644)
    assert peer_id_of(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError):
        load_or_create_identity(path)


def test_key_signs_and_verifies(tmp_path: Path) -> None:
    pair = load_or_create_identity(tmp_path / "identity.key")
    signature = pair.private_key.sign(b"pacswarm")
    assert pair.public_key.verify(b"pacswarm", signature)
