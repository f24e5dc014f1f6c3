"""Repo db sync against Arch-size dbs, trickling and stalling mirrors, bombs and future dates.

Each test drives the real pacman through a real node; the mirrors are real HTTP servers whose
trees hold generated dbs (tests/support/bigdb.py) next to the signed test repo.
"""

from __future__ import annotations

import email.utils
import gzip
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory, PacmanFactory
from tests.support import bigdb
from tests.support.mirror import MirrorServer
from tests.support.node import PacswarmNode
from tests.support.testrepo import DB_MTIME, TestRepo

YEAR_2100 = 4_102_444_800
#: "Stays small": the node idles at ~100 MB; a bomb used to take it to 3-4 GB.
RSS_BOUND_KB = 300 * 1024
#: "Stays responsive": GET / takes milliseconds; a bomb parsed on the event loop blocked it 7-10 s.
LATENCY_BOUND = 2.0


@pytest.fixture(scope="module")
def big_extra(test_repo: TestRepo, tmp_path_factory: pytest.TempPathFactory) -> bigdb.BigDbs:
    """extra.db / extra.files with 15,000 generated entries plus the real extra packages."""
    out = tmp_path_factory.mktemp("bigdb")
    return bigdb.make_big_dbs(test_repo.repo_dir("extra"), "extra", out)


def repo_dir(mirror: MirrorServer, repo: str) -> Path:
    return mirror.root / repo / "os" / "x86_64"


class LatencyProbe:
    """GET / on the node every 50 ms from a thread; remembers the slowest answer."""

    def __init__(self, node: PacswarmNode) -> None:
        self.url = node.base_url + "/"
        self.worst = 0.0
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:  # at least one probe, however quickly the run ends
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as resp:
                    resp.read()
            except OSError:
                pass  # counted as slow as it was
            self.worst = max(self.worst, time.monotonic() - started)
            self.count += 1
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(35)


# -- size and trickling ------------------------------------------------------------------------


def test_pacman_syncs_arch_size_dbs_over_a_trickling_mirror(
    big_extra: bigdb.BigDbs,
    test_repo: TestRepo,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    bigdb.install(big_extra, repo_dir(mirror, "extra"))
    mirror.set_fault("trickle", "extra.*")  # 1-4 KiB pieces, as a congested link delivers
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])

    sync = pacman.run("-Sy")
    assert sync.returncode == 0, sync.stdout + node.log()
    assert (pacman.dbpath / "sync/extra.db").read_bytes() == big_extra.db.read_bytes()
    files = pacman.run("-Fy")
    assert files.returncode == 0, files.stdout + node.log()
    assert (pacman.dbpath / "sync/extra.files").read_bytes() == big_extra.files.read_bytes()
    install = pacman.run("-S", "extratool")
    assert install.returncode == 0, install.stdout + node.log()
    assert pacman.installed_file("/usr/bin/extratool-pacswarm").exists()
    real = sum(1 for p in test_repo.packages.values() if p.repo == "extra")
    assert f"({big_extra.entries + real} packages" in node.log()


# -- bombs ---------------------------------------------------------------------------------------

BOMBS = {
    "sparse-2GiB": bigdb.sparse_bomb,
    "bzip2-3GiB": bigdb.bzip2_bomb,
    "gzip-200000-members": bigdb.many_members_bomb,
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_db_bomb_fails_over_while_the_node_stays_small_and_responsive(
    bomb: str,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    data = BOMBS[bomb](DB_MTIME)
    for repo in ("core", "extra"):
        for name in (f"{repo}.db", f"{repo}.files"):
            (repo_dir(mirror, repo) / name).write_bytes(data)
    # Two nodes: after the first bomb a mirror is skipped for a while, so -Sy (.db) and
    # -Fy (.files) each get a node that has not seen a bomb yet.
    for kind, run in (("db", "-Sy"), ("files", "-Fy")):
        node = make_node([mirror.url_template, mirror2.url_template], name=f"node-{kind}")
        pacman = make_pacman([node.url_template], name=f"pacman-{kind}")
        with LatencyProbe(node) as probe:
            result = pacman.run(run)
        assert result.returncode == 0, result.stdout + node.log()
        for repo in ("core", "extra"):
            good = repo_dir(mirror2, repo) / f"{repo}.{kind}"
            assert (pacman.dbpath / f"sync/{repo}.{kind}").read_bytes() == good.read_bytes()
        log = node.log()
        assert f"mirror {mirror.url_template} failed" in log, log
        rss = node.peak_rss_kb()
        print(f"{bomb} .{kind}: peak RSS {rss / 1024:.0f} MiB, slowest GET / "
              f"{probe.worst * 1000:.0f} ms of {probe.count}")  # fmt: skip
        assert rss < RSS_BOUND_KB, f"peak RSS {rss} KiB"
        assert probe.count > 0
        assert probe.worst < LATENCY_BOUND, f"GET / took {probe.worst:.1f} s during the bomb"


# -- stalls and rollbacks of .files / .sig -------------------------------------------------------


def test_a_mirror_stalling_on_the_db_fails_over_within_pacmans_patience(
    mirror: MirrorServer, mirror2: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    mirror.set_fault("stall", "core.db", after_bytes=100)  # headers, 100 bytes, then nothing
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    sync = pacman.run("-Sy", timeout=60)
    assert sync.returncode == 0, sync.stdout + node.log()
    good = (repo_dir(mirror2, "core") / "core.db").read_bytes()
    assert (pacman.dbpath / "sync/core.db").read_bytes() == good
    assert f"mirror {mirror.url_template} failed" in node.log()


@pytest.mark.parametrize("name", ["core.files", "core.db.sig"])
def test_an_older_files_db_or_db_signature_never_replaces_the_held_one(
    name: str, mirror: MirrorServer, mirror2: MirrorServer, make_node: NodeFactory
) -> None:
    newer, older = repo_dir(mirror, "core") / name, repo_dir(mirror2, "core") / name
    if name.endswith(".sig"):
        newer.write_bytes(b"signature of the newer db")
        older.write_bytes(b"signature of the older db")
    else:  # the same tar, compressed differently: the bytes tell which copy we got
        newer.write_bytes(gzip.compress(gzip.decompress(older.read_bytes()), compresslevel=1))
    os.utime(newer, (DB_MTIME + 100, DB_MTIME + 100))
    os.utime(older, (DB_MTIME, DB_MTIME))
    mirror2.set_fault("ignore-ims", name)  # answers 200 with its older copy, despite our IMS
    node = make_node([mirror.url_template, mirror2.url_template])
    status, _, body = node.get(f"/core/os/x86_64/{name}")
    assert (status, body) == (200, newer.read_bytes())

    mirror.stop()
    status, headers, body = node.get(f"/core/os/x86_64/{name}")
    assert (status, body) == (200, newer.read_bytes()), node.log()
    assert "offline" in headers.get("Warning", "")
    assert "rollback refused" in node.log()
    assert mirror2.statuses(f"/{name}")[-1] == 200  # it was asked, and sent its older copy


# -- dates from the future -----------------------------------------------------------------------


def _never_sent_a_future_ims(*mirrors: MirrorServer) -> None:
    now = time.time()
    for m in mirrors:
        for _, path, headers in m.requests_for(".db"):
            ims = headers.get("If-Modified-Since")
            if ims:
                when = email.utils.parsedate_to_datetime(ims).timestamp()
                assert when <= now, f"If-Modified-Since {ims} sent to {m.base_url}{path}"


@pytest.mark.parametrize("variant", ["entries-dated-2100", "last-modified-2100"])
def test_a_future_dated_db_is_refused_and_a_genuine_update_reaches_pacman(
    variant: str,
    test_repo: TestRepo,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    core1 = repo_dir(mirror, "core")
    if variant == "entries-dated-2100":
        (core1 / "core.db").write_bytes(bigdb.redate(core1 / "core.db.tar.gz", YEAR_2100))
        os.utime(core1 / "core.db", (DB_MTIME, DB_MTIME))
    else:
        os.utime(core1 / "core.db", (YEAR_2100, YEAR_2100))
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    assert "in the future" in node.log()

    # A genuine update on mirror 2 only (repo-add ran again there).
    test_repo.resign(mirror2.root, "hello", key="packager", update_db=True)
    update = (repo_dir(mirror2, "core") / "core.db").read_bytes()
    sync = pacman.run("-Sy")
    assert sync.returncode == 0, sync.stdout
    assert (pacman.dbpath / "sync/core.db").read_bytes() == update, node.log()
    _never_sent_a_future_ims(mirror, mirror2)


def test_a_future_db_held_from_before_does_not_freeze_the_repo(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    node.stop()
    # What an older pacswarm would have kept from a hostile mirror: entries and mtime in 2100.
    held = node.data_dir / "dbs/core/x86_64/core.db"
    held.write_bytes(bigdb.redate(repo_dir(mirror, "core") / "core.db.tar.gz", YEAR_2100))
    os.utime(held, (YEAR_2100, YEAR_2100))
    node.start()

    test_repo.resign(mirror.root, "hello", key="packager", update_db=True)
    update = (repo_dir(mirror, "core") / "core.db").read_bytes()
    sync = pacman.run("-Syy")
    assert sync.returncode == 0, sync.stdout
    assert (pacman.dbpath / "sync/core.db").read_bytes() == update, node.log()
    _never_sent_a_future_ims(mirror)


def test_reset_db_lets_the_operator_drop_the_rollback_floor(
    test_repo: TestRepo,
    tmp_path: Path,
    mirror: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    stale = test_repo.copy_tree(tmp_path / "stale")  # the db as it was before the update
    test_repo.resign(mirror.root, "hello", key="packager", update_db=True)
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    # The operator decides the older db is the right one (e.g. the newer came from a bad
    # mirror): put it back on the mirror. The node refuses it as a rollback...
    for name in ("core.db", "core.db.tar.gz"):
        shutil.copy2(stale / "core/os/x86_64" / name, repo_dir(mirror, "core") / name)
        os.utime(repo_dir(mirror, "core") / name)
    assert pacman.run("-Syy").returncode == 0
    assert "rollback refused" in node.log()
    node.stop()

    reset = subprocess.run(
        [sys.executable, "-m", "pacswarm", "reset-db", "--data-dir", str(node.data_dir), "core"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert reset.returncode == 0, reset.stderr
    assert "core/x86_64/core.db" in reset.stdout
    assert (node.data_dir / "dbs/extra/x86_64/extra.db").exists()  # only core was named
    node.start()
    assert pacman.run("-Syy").returncode == 0
    stale_db = (stale / "core/os/x86_64/core.db").read_bytes()
    assert (pacman.dbpath / "sync/core.db").read_bytes() == stale_db


# -- names ---------------------------------------------------------------------------------------


def test_only_the_db_names_pacman_uses_are_fetched_and_kept(
    mirror: MirrorServer, make_node: NodeFactory
) -> None:
    node = make_node([mirror.url_template])
    core = repo_dir(mirror, "core")
    (core / "core.db.old").write_bytes(b"anything")
    for name in ("core.db.old", "core.dbx", "core.db.tar.xz", "core.files.tar.gz.bak"):
        assert node.get(f"/core/os/x86_64/{name}")[0] == 404
        assert mirror.hits(name) == 0
    status, _, body = node.get("/core/os/x86_64/core.db.tar.gz")
    assert (status, body) == (200, (core / "core.db").read_bytes())
    held = sorted(p.name for p in (node.data_dir / "dbs/core/x86_64").iterdir())
    assert held == ["core.db"]


def test_a_db_refresh_slower_than_pacmans_patience_serves_the_held_copy(
    big_extra: bigdb.BigDbs, mirror: MirrorServer, make_node: NodeFactory
) -> None:
    """A 10 MB extra.files at 1 MiB/s takes ~10 s, pacman's limit: the copy held is served
    after 6 s, the refresh goes on, and the next request gets the new file."""
    extra = repo_dir(mirror, "extra")
    bigdb.install(big_extra, extra)
    node = make_node([mirror.url_template])
    assert node.get("/extra/os/x86_64/extra.files")[0] == 200  # now held
    held = (extra / "extra.files").stat().st_mtime
    os.utime(extra / "extra.files", (held + 60, held + 60))  # the mirror has a newer one
    mirror.set_fault("throttle", "extra.files", rate=1 << 20)
    started = time.monotonic()
    status, headers, body = node.get("/extra/os/x86_64/extra.files", timeout=30)
    waited = time.monotonic() - started
    assert status == 200 and body == big_extra.files.read_bytes()
    assert "refresh running" in headers.get("Warning", ""), headers
    assert waited < 9.5, waited  # inside pacman's 10 s: it would have given up
    deadline = time.monotonic() + 30
    while "updated /extra/os/x86_64/extra.files" not in node.log():
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.2)


def test_a_mirror_trickling_the_db_below_min_speed_fails_over(
    big_extra: bigdb.BigDbs,
    mirror: MirrorServer,
    mirror2: MirrorServer,
    make_node: NodeFactory,
    make_pacman: PacmanFactory,
) -> None:
    """1 KiB/s never trips a read timeout, but is far below min_speed: the db watchdog leaves
    that mirror for the next one instead of taking an hour over a big extra.db."""
    for m in (mirror, mirror2):
        bigdb.install(big_extra, repo_dir(m, "extra"))
    mirror.set_fault("slow", "extra.db")
    node = make_node([mirror.url_template, mirror2.url_template])
    pacman = make_pacman([node.url_template])
    sync = pacman.run("-Sy", timeout=60)
    assert sync.returncode == 0, sync.stdout + node.log()
    assert (pacman.dbpath / "sync/extra.db").read_bytes() == big_extra.db.read_bytes()
    assert "extra.db stalled" in node.log(), node.log()


def test_a_future_date_on_pacmans_own_db_does_not_freeze_its_syncs(
    test_repo: TestRepo, mirror: MirrorServer, make_node: NodeFactory, make_pacman: PacmanFactory
) -> None:
    """pacman sends its db's mtime as If-Modified-Since; a mtime in 2100 (set from a lying
    mirror's Last-Modified before pacswarm refused such dates) must not make every -Sy a 304."""
    node = make_node([mirror.url_template])
    pacman = make_pacman([node.url_template])
    assert pacman.run("-Sy").returncode == 0
    os.utime(pacman.dbpath / "sync/core.db", (YEAR_2100, YEAR_2100))

    test_repo.resign(mirror.root, "hello", key="packager", update_db=True)
    update = (repo_dir(mirror, "core") / "core.db").read_bytes()
    sync = pacman.run("-Sy")  # not -Syy: pacman sends If-Modified-Since 2100
    assert sync.returncode == 0, sync.stdout
    assert (pacman.dbpath / "sync/core.db").read_bytes() == update, node.log()
