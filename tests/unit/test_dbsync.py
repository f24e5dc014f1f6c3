"""dbsync's own rules, without a network: which names are dbs, the operator's reset, locks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pacswarm.config import Config
from pacswarm.dbsync import RepoDbs, canonical_name, reset_held
from pacswarm.errors import UpstreamError
from pacswarm.requestpath import parse_request_path
from pacswarm.store import Store
from pacswarm.upstream import Upstream


@pytest.mark.parametrize(
    ("filename", "held"),
    [
        ("core.db", "core.db"),
        ("core.files", "core.files"),
        ("core.db.sig", "core.db.sig"),
        ("core.files.sig", "core.files.sig"),
        ("core.db.tar.gz", "core.db"),
        ("core.files.tar.gz", "core.files"),
        ("core.db.tar.gz.sig", "core.db.sig"),
        ("core.db.tar.xz", None),
        ("core.db.old", None),
        ("core.dbfoo", None),
        ("core.files.sig.sig", None),
    ],
)
def test_only_the_names_pacman_uses_are_held(filename: str, held: str | None) -> None:
    assert canonical_name(parse_request_path("core", "os", "x86_64", filename)) == held


def test_reset_removes_the_named_repos_only(tmp_path: Path) -> None:
    for repo in ("core", "extra"):
        d = tmp_path / "dbs" / repo / "x86_64"
        d.mkdir(parents=True)
        (d / f"{repo}.db").write_bytes(b"x")
        (d / f"{repo}.files").write_bytes(b"x")
    removed = reset_held(tmp_path / "dbs", ["core"])
    assert sorted(p.name for p in removed) == ["core.db", "core.files"]
    assert not (tmp_path / "dbs" / "core").exists()
    assert (tmp_path / "dbs/extra/x86_64/extra.db").exists()
    assert len(reset_held(tmp_path / "dbs", [])) == 2
    assert reset_held(tmp_path / "nothing", []) == []


def test_locks_do_not_pile_up_and_other_names_ask_no_mirror(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.initialise()
    config = Config(data_dir=tmp_path)
    dbs = RepoDbs(store, Upstream([], config), config)

    async def ask(filename: str) -> UpstreamError:
        with pytest.raises(UpstreamError) as e:
            await dbs.refresh(parse_request_path("core", "os", "x86_64", filename))
        return e.value

    async def main() -> None:
        errors = await asyncio.gather(*(ask(f"core.db{s}") for s in ("", ".sig", ".tar.gz")))
        assert all(e.status == 502 for e in errors)  # no mirror at all: not a "not found"
        assert (await ask("core.db.bak")).status == 404

    asyncio.run(main())
    assert dbs._locks == {}
