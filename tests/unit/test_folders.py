"""The published tree root/<repo>/os/<arch>/<files> (src/pacswarm/ipns/folders.py).

kubo and Helia compare the roots in tests/interop/test_folders_interop.py; these tests check
what makes a build trustworthy without them: its root depends only on the entries (a restart
replaying events in another order gives the same root), increments equal a fresh build, and
``blocks``/``fresh`` are exactly the directories' blocks and the new ones.
"""

from __future__ import annotations

import random

import pytest

from pacswarm.ipfs.cid import CID, DAG_PB, RAW
from pacswarm.ipfs.dagpb import decode_node
from pacswarm.ipfs.unixfsdir import DirectoryError, Entry, build_directory
from pacswarm.ipns.folders import FolderBuild, FolderTree
from tests.unit.test_unixfsdir import arch_like_names


def entry(name: str, size: int = 1000) -> Entry:
    return Entry(CID.of(name.encode(), RAW), size)


def by_hand(folders: dict[tuple[str, str], dict[str, Entry]]) -> CID:
    """The same tree composed level by level with the one-shot build_directory."""
    repos: dict[str, dict[str, Entry]] = {}
    for (repo, arch), files in folders.items():
        d = build_directory(files)
        repos.setdefault(repo, {})[arch] = Entry(d.root, d.size)
    top = {}
    for repo, arches in repos.items():
        os_dir = build_directory(arches)
        repo_dir = build_directory({"os": Entry(os_dir.root, os_dir.size)})
        top[repo] = Entry(repo_dir.root, repo_dir.size)
    return build_directory(top).root


def directory_blocks(build: FolderBuild) -> set[CID]:
    """Walk the directories from the root through the blocks the build returned."""
    known = {b.cid: b.data for b in build.blocks}
    seen: set[CID] = set()
    todo = [build.root]
    while todo:
        cid = todo.pop()
        if cid.codec != DAG_PB or cid in seen or cid not in known:
            continue
        seen.add(cid)
        todo.extend(link.cid for link in decode_node(known[cid]).links)
    return seen


def test_small_tree_is_the_nested_directories() -> None:
    tree = FolderTree()
    core = {"core.db": entry("db", 5000), "a-1-1-any.pkg.tar.zst": entry("a")}
    for name, e in core.items():
        tree.set("core", "x86_64", name, e)
    tree.set("extra", "x86_64", "b-1-1-any.pkg.tar.zst", entry("b"))
    tree.set("extra", "aarch64", "b-1-1-any.pkg.tar.zst", entry("b"))
    build = tree.build()
    assert build.root == by_hand(
        {
            ("core", "x86_64"): core,
            ("extra", "x86_64"): {"b-1-1-any.pkg.tar.zst": entry("b")},
            ("extra", "aarch64"): {"b-1-1-any.pkg.tar.zst": entry("b")},
        }
    )
    assert build.blocks[0].cid == build.root
    assert {b.cid for b in build.blocks} == directory_blocks(build)
    assert (
        len(build.blocks) == 1 + 2 * 2 + 2
    )  # root, core/ + os/ twice, three arch dirs, one shared
    root = decode_node(build.blocks[0].data)
    assert [link.name for link in root.links] == ["core", "extra"]
    assert build.size == len(build.blocks[0].data) + sum(link.tsize for link in root.links)


def test_the_root_depends_only_on_the_entries_not_their_history() -> None:
    names = arch_like_names(3000)
    rng = random.Random(4)
    incremental = FolderTree()
    incremental.set("core", "x86_64", "core.db", entry("old db"))
    incremental.build()
    for i, name in enumerate(names):
        incremental.set("extra", "x86_64", name, entry(name, i))
        if i % 500 == 0:
            incremental.build()
    for name in rng.sample(names, 700):
        assert incremental.remove("extra", "x86_64", name)
    incremental.set("gone", "x86_64", "x.pkg.tar.zst", entry("x"))
    incremental.build()
    assert incremental.drop("gone", "x86_64")
    incremental.set("core", "x86_64", "core.db", entry("new db"))
    kept = sorted(incremental.names("extra", "x86_64"))
    assert len(kept) == 2300

    replayed = FolderTree()  # a restart: the same state, reached in another order
    for name in reversed(kept):
        replayed.set("extra", "x86_64", name, incremental.get("extra", "x86_64", name) or entry(""))
    replayed.set("core", "x86_64", "core.db", entry("new db"))
    assert incremental.build().root == replayed.build().root
    assert incremental.folders() == [("core", "x86_64"), ("extra", "x86_64")]


def test_one_change_in_a_sharded_folder_makes_few_fresh_blocks() -> None:
    tree = FolderTree()
    for name in arch_like_names(15_000):
        tree.set("extra", "x86_64", name, entry(name))
    first = tree.build()
    assert first.fresh == first.blocks
    assert len(first.blocks) > 200  # extra/os/x86_64 is a HAMT of hundreds of shards
    assert tree.build().fresh == ()  # nothing changed, nothing new
    tree.set("extra", "x86_64", "new-1.0-1-any.pkg.tar.zst", entry("new"))
    second = tree.build()
    fresh = {b.cid for b in second.fresh}
    assert {b.cid for b in second.blocks} - {b.cid for b in first.blocks} == fresh
    assert second.root in fresh
    assert 4 < len(fresh) <= 4 + 8  # root, extra/, os/, and the shards on the new name's path
    assert {b.cid for b in second.blocks} == directory_blocks(second)


def test_an_emptied_folder_stays_and_a_dropped_one_goes() -> None:
    tree = FolderTree()
    tree.set("core", "x86_64", "a", entry("a"))
    tree.set("extra", "x86_64", "b", entry("b"))
    tree.build()  # each change below must reach a tree built before it
    assert tree.remove("core", "x86_64", "a")
    assert not tree.remove("core", "x86_64", "a")
    assert not tree.remove("nope", "x86_64", "a")
    emptied = tree.build()
    assert emptied.root == by_hand({("core", "x86_64"): {}, ("extra", "x86_64"): {"b": entry("b")}})
    assert tree.drop("core", "x86_64")
    assert not tree.drop("core", "x86_64")
    assert tree.build().root == by_hand({("extra", "x86_64"): {"b": entry("b")}})
    assert tree.names("core", "x86_64") == set()
    tree.drop("extra", "x86_64")
    assert tree.build().root == build_directory({}).root


@pytest.mark.parametrize(
    ("repo", "arch", "name"),
    [("", "x86_64", "a"), ("co/re", "x86_64", "a"), ("core", "..", "a"), ("core", "x86_64", "a/b")],
)
def test_bad_names_are_refused_and_change_nothing(repo: str, arch: str, name: str) -> None:
    tree = FolderTree()
    before = tree.build().root
    with pytest.raises(DirectoryError):
        tree.set(repo, arch, name, entry("x"))
    assert tree.folders() == []
    assert tree.build().root == before


def test_cidv0_tree_for_kubos_default_add() -> None:
    tree = FolderTree(version=0)
    tree.set("core", "x86_64", "a", entry("a"))
    build = tree.build()
    assert build.root.version == 0
    assert all(b.cid.version == 0 for b in build.blocks)
