"""Editing a repo db in a mirror tree, to model what real mirrors serve."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path


def strip_pgpsig(repo_dir: Path, repo: str) -> None:
    """Remove ``%PGPSIG%`` from every entry, as pacman 6.1+ repo-add (and Arch) may do.

    The ``.sig`` file next to each package then is the only signature source. Member mtimes
    and the db file's mtime are kept, so the db does not look newer or older.
    """
    _edit_descs(repo_dir, repo, lambda blocks: [b for b in blocks if not b.startswith("%PGPSIG%")])


def strip_pgpsig_everywhere(*roots: Path, repos: tuple[str, ...] = ("core", "extra")) -> None:
    """:func:`strip_pgpsig` on every repo of every mirror tree given."""
    for root in roots:
        for repo in repos:
            strip_pgpsig(root / repo / "os" / "x86_64", repo)


def replace_pgpsig(repo_dir: Path, repo: str, filename: str, signature: bytes | str) -> None:
    """Put ``signature`` in the ``%PGPSIG%`` of the entry for package ``filename`` only.

    Models a db whose embedded signature is wrong (another package's, a rogue key's) while
    the ``.sig`` file beside the package stays good: pacman checks the db's signature first.
    Bytes are base64-encoded as repo-add does; a ``str`` is written as is (not base64, say).
    """
    text = signature if isinstance(signature, str) else base64.b64encode(signature).decode()

    def edit(blocks: list[str]) -> list[str]:
        if f"%FILENAME%\n{filename}" not in blocks:
            return blocks
        kept = [b for b in blocks if not b.startswith("%PGPSIG%")]
        return [*kept, f"%PGPSIG%\n{text}"]

    _edit_descs(repo_dir, repo, edit)


def _edit_descs(repo_dir: Path, repo: str, edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite every ``desc`` of the db through ``edit`` (its ``%FIELD%`` blocks), mtimes kept."""
    src = repo_dir / f"{repo}.db.tar.gz"
    stat = src.stat()
    out = io.BytesIO()
    with tarfile.open(src, "r:gz") as old, tarfile.open(fileobj=out, mode="w:gz") as new:
        for member in old:
            data = old.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.name.endswith("/desc"):
                blocks = [b.strip("\n") for b in data.decode().split("\n\n") if b.strip()]
                data = ("\n\n".join(edit(blocks)) + "\n\n").encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    for name in (f"{repo}.db.tar.gz", f"{repo}.db"):
        path = repo_dir / name
        if path.is_symlink():
            continue
        path.write_bytes(out.getvalue())
        os.utime(path, (stat.st_atime, stat.st_mtime))


def set_csize(repo_dir: Path, repo: str, filename: str, csize: int) -> None:
    """Make the db claim ``csize`` bytes for package ``filename`` (a lying or broken db)."""

    def edit(blocks: list[str]) -> list[str]:
        if f"%FILENAME%\n{filename}" not in blocks:
            return blocks
        return [f"%CSIZE%\n{csize}" if b.startswith("%CSIZE%") else b for b in blocks]

    _edit_descs(repo_dir, repo, edit)
