"""The published tree of a node's repo folders, byte-identical to kubo's. Pure.

Issue 8 publishes one UnixFS tree under the node's IPNS name::

    root/
      core/os/x86_64/   core.db  core.files  core.db.sig  linux-6.9-1-x86_64.pkg.tar.zst ...
      extra/os/x86_64/  extra.db ... (15,000 packages: a HAMT shard, see ipfs/unixfsdir.py)

so that ``Server = http://<node>/ipns/<name>/$repo/os/$arch`` works for pacman. The files are
linked, never copied: an :class:`~pacswarm.ipfs.unixfsdir.Entry` is a CID and its cumulative
size (the Tsize a kubo directory gives the link), and the caller stores the files' blocks.

Each ``<repo>/os/<arch>`` directory keeps one :class:`DirectoryBuilder` across builds, so a
change re-encodes only the shards on that entry's path; the three small levels above it
(``<arch>`` in ``os/``, ``os`` in ``<repo>/``, ``<repo>`` in the root) are re-encoded at every
build, a few hundred bytes each. The root depends only on the entries, not on the order in
which they came (the HAMT is canonical, basic directories are sorted), which is what makes a
restart that replays the same events give the same root.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacswarm.ipfs.cid import CID
from pacswarm.ipfs.unixfsdir import (
    Block,
    Directory,
    DirectoryBuilder,
    Entry,
    build_directory,
    check_name,
)


@dataclass(frozen=True)
class FolderBuild:
    """One build of the whole tree.

    ``blocks``: every block of the tree's directories, root first (not the files' blocks);
    ``fresh``: those that were not in the previous build (what a store or announce needs);
    ``size``: the root's cumulative size (directories plus every linked file's Tsize).
    """

    root: CID
    blocks: tuple[Block, ...]
    fresh: tuple[Block, ...]
    size: int = 0


class FolderTree:
    """``root/<repo>/os/<arch>/<name>``, updated entry by entry and built incrementally.

    ``version`` is the CID version of the directory nodes: 1 as ``ipfs add --cid-version=1``
    makes (the published tree), 0 only to compare with kubo 0.22's default ``ipfs add -r``.
    """

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self._dirs: dict[tuple[str, str], DirectoryBuilder] = {}
        # The last build of each folder, until a change: building a 15,000-entry HAMT walks
        # all its shards even when nothing in it changed, so a change in core skips extra.
        self._built: dict[tuple[str, str], Directory] = {}
        self._previous: frozenset[CID] = frozenset()

    def set(self, repo: str, arch: str, name: str, entry: Entry) -> None:
        """Link ``name`` in ``repo/os/arch`` to ``entry`` (creating the folder if new)."""
        key = (repo, arch)
        builder = self._dirs.get(key)
        if builder is None:
            check_name(repo)
            check_name(arch)
            builder = DirectoryBuilder(version=self.version)
        builder.set(name, entry)  # checks the name before the folder is kept
        self._dirs[key] = builder
        self._built.pop(key, None)

    def remove(self, repo: str, arch: str, name: str) -> bool:
        """Unlink ``name``; False if it was not linked. An emptied folder stays (empty)."""
        builder = self._dirs.get((repo, arch))
        if builder is None or not builder.remove(name):
            return False
        self._built.pop((repo, arch), None)
        return True

    def drop(self, repo: str, arch: str) -> bool:
        """Forget the whole ``repo/os/arch`` folder (a repo no longer indexed)."""
        self._built.pop((repo, arch), None)
        return self._dirs.pop((repo, arch), None) is not None

    def names(self, repo: str, arch: str) -> set[str]:
        builder = self._dirs.get((repo, arch))
        return set() if builder is None else set(builder.entries)

    def get(self, repo: str, arch: str, name: str) -> Entry | None:
        builder = self._dirs.get((repo, arch))
        return None if builder is None else builder.entries.get(name)

    def folders(self) -> list[tuple[str, str]]:
        """The ``(repo, arch)`` folders in the tree, sorted."""
        return sorted(self._dirs)

    def __len__(self) -> int:
        """Entries in all folders."""
        return sum(len(b) for b in self._dirs.values())

    def build(self) -> FolderBuild:
        """The tree as it stands: only what changed since the last build is re-encoded."""
        blocks: dict[CID, Block] = {}
        repos: dict[str, dict[str, Entry]] = {}
        arch_dirs: list[Directory] = []
        for (repo, arch), builder in sorted(self._dirs.items()):
            built = self._built.get((repo, arch))
            if built is None:
                built = self._built[repo, arch] = builder.build()
            arch_dirs.append(built)
            repos.setdefault(repo, {})[arch] = Entry(built.root, built.size)
        top: dict[str, Entry] = {}
        small: list[Directory] = []
        for repo, arches in repos.items():
            os_dir = build_directory(arches, self.version)
            repo_dir = build_directory({"os": Entry(os_dir.root, os_dir.size)}, self.version)
            small += [repo_dir, os_dir]
            top[repo] = Entry(repo_dir.root, repo_dir.size)
        root = build_directory(top, self.version)
        for directory in [root, *small, *arch_dirs]:
            for block in directory.blocks:
                blocks.setdefault(block.cid, block)
        fresh = tuple(b for cid, b in blocks.items() if cid not in self._previous)
        self._previous = frozenset(blocks)
        return FolderBuild(root.root, tuple(blocks.values()), fresh, root.size)
