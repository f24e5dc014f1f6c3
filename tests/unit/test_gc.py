"""Eviction over a real store: what the policy picks leaves the disk, a dry run changes
nothing, and every removal goes through the one evict callback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pacswarm.config import Config
from pacswarm.errors import PacswarmError
from pacswarm.evict import SizeCap
from pacswarm.gc import collect, collect_offline, summary_lines
from pacswarm.requestpath import FileKind, RequestPath
from pacswarm.store import Store


def rp(filename: str) -> RequestPath:
    return RequestPath("core", "x86_64", filename, FileKind.PACKAGE)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    s.open()
    yield s
    s.close()


def commit(store: Store, filename: str, size: int, served: float) -> Path:
    content = os.urandom(size)
    fd, temp = store.new_temp(filename)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    digest = hashlib.sha256(content).hexdigest()
    path = store.commit_package(rp(filename), temp, digest, size, b"sig", "m")
    store.mark_served(rp(filename), when=served)
    return path


def config_for(store: Store, keep: int, cap: int) -> Config:
    return replace(
        Config(), data_dir=store.data_dir, keep_versions=keep, cache_max_size=SizeCap(bytes=cap)
    )


def test_collect_evicts_what_the_policy_picks_through_the_callback(store: Store) -> None:
    old = commit(store, "foo-1.0-1-x86_64.pkg.tar.zst", 100, served=50)
    new = commit(store, "foo-1.1-1-x86_64.pkg.tar.zst", 100, served=60)
    cold = commit(store, "bar-1-1-x86_64.pkg.tar.zst", 100, served=2)
    hot = commit(store, "baz-1-1-x86_64.pkg.tar.zst", 100, served=90)
    told: list[RequestPath] = []

    def evict(r: RequestPath) -> None:
        store.remove_package(r)
        told.append(r)

    result = collect(store, config_for(store, keep=1, cap=250), evict)
    assert told == [rp(old.name), rp(cold.name)]
    assert not old.exists() and not cold.exists()
    assert new.exists() and hot.exists()
    assert result.freed == 200
    lines = summary_lines(result.to_json())
    assert "freed 200 B in 2 package(s)" in lines[-1]
    assert "older version" in lines[0] and "least recently served" in lines[1]


def test_a_dry_run_changes_nothing(store: Store) -> None:
    path = commit(store, "foo-1.0-1-x86_64.pkg.tar.zst", 100, served=1)
    result = collect(store, config_for(store, keep=1, cap=10), store.remove_package, dry_run=True)
    assert [e.entry.filename for e in result.evicted] == [path.name]
    assert path.exists() and store.cached_bytes() == 100
    assert store.pending_removals() == []
    assert "would free 100 B" in summary_lines(result.to_json())[-1]


def test_offline_gc_journals_for_the_next_start(store: Store) -> None:
    path = commit(store, "foo-1.0-1-x86_64.pkg.tar.zst", 100, served=1)
    config = config_for(store, keep=1, cap=10)
    store.close()
    result = collect_offline(config, dry_run=False)
    assert result.freed == 100 and not path.exists()
    store.open()
    assert store.pending_removals() == [rp(path.name)]


def test_offline_gc_refuses_a_directory_that_is_no_node(tmp_path: Path) -> None:
    config = replace(Config(), data_dir=tmp_path / "nothing")
    with pytest.raises(PacswarmError, match="--data-dir"):
        collect_offline(config, dry_run=True)
    assert not (tmp_path / "nothing").exists()
