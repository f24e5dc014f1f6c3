"""Benchmark: five pacswarm nodes each installing the same 20 packages, against five pacman
clients on the mirror directly, in the same run (issue 7's "Benchmark").

Printed, as ratios next to their targets (never pass/fail):

* upstream bytes / unique package bytes: what the mirror sent for the packages, over the sum
  of their sizes. Five direct clients: 5.0. The cluster: target <= 1.05.
* the cluster's wall time against five pacman clients downloading from the mirror directly
  (staggered: node 1's install plus the other four's, not the wait for announcements between).
* peer transfer throughput: a fresh node GETs every package while only peers have them
  (through its pacman-facing port), against the same GETs from nginx serving the files.

Then where the time went: pacman's phases (download, its own signature checks, install) from
its line-stamped output, for the direct clients and the nodes' clients alike; per node, when
its log says it had each package (fetched, verified, committed) and from whom; CPU seconds of
pacman (+ its gpg), of the nodes and of the nodes' gpg; the load average. The nodes run with
the default config but for mDNS (off) and loopback addresses and --bootstrap (flags).

The mirror is a static nginx with an access log (bytes sent per request); the packages are
real pacman packages (``.PKGINFO`` + incompressible payload, zstd, detached signatures) so
the real pacman installs them. The cluster runs staggered by default (node 1 installs, then
nodes 2-5 at once, as a household's machines update one after another); ``--together`` starts
all five at once.

    .venv/bin/python bench/bench_swarm.py [--quick] [--together] [--reps 3]

Everything lives in a temp dir; every process started (nginx, pacswarm nodes, gpg-agents) is
stopped on exit, also on Ctrl-C, SIGTERM or when the time limit is reached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchprocs import OutOfTime, Registry, install_stop_signals, wait_ready
from benchrepo import REPO, Keys, Package, db_path, kill_agents
from benchservers import _start_nginx, free_port
from httpclient import get_once
from swarmrepo import build_repo
from swarmtime import (
    Run,
    describe_node,
    in_parallel,
    load_average,
    nodes_cpu,
    phase_table,
    profile_summary,
    run_pacman,
    start_profilers,
    stop_profilers,
    waited_cpu,
    warnings,
)

if TYPE_CHECKING:
    from tests.support.cluster import Cluster, SwarmNode
    from tests.support.pacman import PacmanEnv

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.support: the same real-pacman and node helpers as tests
    sys.path.insert(0, str(ROOT))

MiB = 1 << 20
NODES = 5
PACMAN_TIMEOUT = 600.0
#: Package sizes in MiB, cycled over the 20 packages (a mix like a real update).
SIZES = (1, 2, 4, 8, 16)
QUICK_SIZES = (1, 1, 2, 4)
#: The test harness logs at debug level; a benchmark measures the node, not its logging.
QUIET = ("--log-level", "info")
#: A node's whole config file here: the defaults a user gets, except mDNS (off: nodes find
#: each other by --bootstrap, so a bench never joins or disturbs other swarms on the host).
#: Loopback addresses come as flags (--listen, --p2p-listen, --gateway-listen from
#: tests/support/cluster.py). The test harness's own file also shortens stall_timeout (2 s)
#: and mirror_penalty (60 s) for its failover tests and logs at debug level: not here.
NODE_CONFIG = "mdns = false\n"

_ORIGIN_LOGGED = """    log_format bytes '$request_uri $status $body_bytes_sent';
    server {{
        listen 127.0.0.1:{port};
        root {root};
        access_log {log} bytes;
    }}"""


@dataclass
class Settings:
    count: int
    sizes: tuple[int, ...]
    reps: int
    together: bool
    time_limit: float
    tmpdir: str | None
    keep: bool
    direct_only: bool
    #: py-spy to sample the nodes with during the cluster installs (``--profile``), or "".
    pyspy: str = ""


@dataclass
class Results:
    unique: int = 0
    direct_bytes: int = 0
    direct_wall: float = 0.0
    cluster_bytes: int = 0
    cluster_wall: float = 0.0
    peer_mbps: list[float] = field(default_factory=list)
    nginx_mbps: list[float] = field(default_factory=list)
    peer_upstream: int = 0
    notes: list[str] = field(default_factory=list)
    #: Every pacman command, by group ("direct", "node1", "nodes2-5", ...).
    runs: dict[str, list[Run]] = field(default_factory=dict)
    announce_wait: float = 0.0
    timeline: list[str] = field(default_factory=list)
    load: list[str] = field(default_factory=list)
    #: CPU seconds by what spent them, per run ("direct", "cluster"): the machine has 2 cores.
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller packages, 1 throughput rep")
    p.add_argument("--packages", type=int, default=20, help="packages each node installs (20)")
    p.add_argument("--together", action="store_true", help="all five nodes install at once")
    p.add_argument("--reps", type=int, help="peer throughput repetitions (3, quick 1)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run (900, quick 400)")
    p.add_argument("--tmpdir", help="where to create the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("--direct-only", action="store_true", help="only the direct baseline")
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the nodes with py-spy (PATH or $PYSPY) during the cluster installs",
    )
    a = p.parse_args(argv)
    return Settings(
        count=max(1, a.packages),
        sizes=QUICK_SIZES if a.quick else SIZES,
        reps=a.reps or (1 if a.quick else 3),
        together=a.together,
        time_limit=a.time_limit or (400.0 if a.quick else 900.0),
        tmpdir=a.tmpdir,
        keep=a.keep,
        direct_only=a.direct_only,
        pyspy=_pyspy() if a.profile else "",
    )


def _pyspy() -> str:
    found = os.environ.get("PYSPY") or shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: pip install py-spy, or set PYSPY=/path")
    return found


# -- the mirror and what it sent -----------------------------------------------------------------


class LoggedOrigin:
    """Static nginx with a per-request byte log: the bench's upstream meter."""

    def __init__(self, reg: Registry, prefix: Path, root: Path) -> None:
        self.port = free_port()
        self.log = prefix / "access.log"
        body = _ORIGIN_LOGGED.format(port=self.port, root=root, log=self.log)
        self.proc = _start_nginx(reg, "nginx origin", prefix, body)
        wait_ready(self.proc, self.port, db_path())
        self.url_template = f"http://127.0.0.1:{self.port}/$repo/os/$arch"

    def mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def package_bytes(self, since: int) -> int:
        """Body bytes of package files sent since the ``mark()`` ``since`` (log order)."""
        time.sleep(0.2)  # nginx writes the line when the response is done
        with self.log.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        total = 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0].endswith(".pkg.tar.zst"):
                total += int(parts[2])
        return total


# -- runs ------------------------------------------------------------------------------------------


def pacman_env(base: Path, server: str, keys: Keys, homes: list[Path]) -> PacmanEnv:
    from tests.support.gpg import copy_homedir
    from tests.support.pacman import PacmanEnv

    gpgdir = copy_homedir(keys.gpgdir, base.with_name(base.name + "-gnupg"))
    homes.append(gpgdir)
    return PacmanEnv(base, [server], gpgdir, repos=(REPO,))


def install(env: PacmanEnv, names: list[str], who: str, group: str, res: Results) -> None:
    """``pacman -Sy`` then ``-S names``, each run recorded under ``group`` (for its phases)."""
    for args in (("-Sy",), ("-S", *names)):
        run = run_pacman(env, who, *args, timeout=PACMAN_TIMEOUT)
        res.runs.setdefault(f"{group} {args[0]}", []).append(run)  # list.append: thread-safe
        if run.returncode != 0:
            raise RuntimeError(f"pacman {args[0]} failed:\n{run.stdout[-3000:]}")


def run_direct(
    tmp: Path,
    origin: LoggedOrigin,
    keys: Keys,
    pkgs: list[Package],
    homes: list[Path],
    res: Results,
) -> None:
    names = [p.name for p in pkgs]
    envs = [pacman_env(tmp / f"direct{i}", origin.url_template, keys, homes) for i in range(NODES)]
    mark = origin.mark()
    jobs = [
        lambda i=i, e=e: install(e, names, f"direct{i}", "direct", res) for i, e in enumerate(envs)
    ]
    before = waited_cpu()
    res.direct_wall = in_parallel(jobs)
    res.cpu["direct"] = {"pacman + its gpg": waited_cpu() - before}
    res.direct_bytes = origin.package_bytes(mark)
    print(f"direct: {NODES} pacman clients in {res.direct_wall:.1f} s", flush=True)


def start_cluster(tmp: Path, origin: LoggedOrigin, keys: Keys, homes: list[Path]) -> Cluster:
    from tests.support.cluster import Cluster
    from tests.support.gpg import copy_homedir

    def keyring(dest: Path) -> Path:
        homes.append(dest)
        return copy_homedir(keys.gpgdir, dest)

    cluster = Cluster(tmp / "cluster", [origin.url_template], keyring)
    cluster.base.mkdir()
    return cluster


def add_node(cluster: Cluster, name: str, bootstrap: list[SwarmNode] | None = None) -> SwarmNode:
    """A started node with :data:`NODE_CONFIG` whose pacman uses the bench repo only."""
    node = cluster.add(name, bootstrap=bootstrap, args=QUIET, start=False)
    node.config.write_text(NODE_CONFIG)
    node.pacman.repos = (REPO,)
    node.pacman.write_config()
    return node.start()


def run_cluster(
    s: Settings, cluster: Cluster, origin: LoggedOrigin, pkgs: list[Package], res: Results
) -> None:
    names = [p.name for p in pkgs]
    nodes = [add_node(cluster, f"node{i + 1}") for i in range(NODES)]
    mark = origin.mark()
    outdir = cluster.base.parent / "profile"
    pids = {n.name: n.proc.pid for n in nodes if n.proc is not None}
    spies = start_profilers(s.pyspy, pids, outdir) if s.pyspy else []
    before = waited_cpu(), nodes_cpu(nodes)
    try:
        if s.together:
            jobs = [lambda n=n: install(n.pacman, names, n.name, "nodes1-5", res) for n in nodes]
            res.cluster_wall = in_parallel(jobs)
        else:
            _staggered(nodes, names, [p.sha256 for p in pkgs], res)
        own, helpers = nodes_cpu(nodes)  # before py-spy ends: its CPU is not pacman's
        res.cpu["cluster"] = {
            "pacman + its gpg": waited_cpu() - before[0],
            "pacswarm nodes": own - before[1][0],
            "nodes' gpg": helpers - before[1][1],
        }
    finally:
        stop_profilers(spies)
    if spies:
        res.profile = profile_summary([outdir / f"{name}.txt" for name in pids])
    res.cluster_bytes = origin.package_bytes(mark)
    print(f"cluster: {NODES} pacswarm nodes in {res.cluster_wall:.1f} s", flush=True)
    res.timeline = timeline(nodes, res)


def _staggered(nodes: list[SwarmNode], names: list[str], sums: list[str], res: Results) -> None:
    """Node 1's install, then the others' at once; the wait for node 1's announcements in
    between is not counted (the other machines update "later"), only reported."""
    from tests.support.cluster import wait_known

    res.cluster_wall = in_parallel([lambda: install(nodes[0].pacman, names, "node1", "node1", res)])
    t0 = time.perf_counter()
    for node in nodes[1:]:
        node.sync()
        wait_known(node, sums, holder=nodes[0].peer_id)
    res.announce_wait = time.perf_counter() - t0
    jobs = [lambda n=n: install(n.pacman, names, n.name, "nodes2-5", res) for n in nodes[1:]]
    res.cluster_wall += in_parallel(jobs)


def timeline(nodes: list[SwarmNode], res: Results) -> list[str]:
    """Per node: where its packages came from, when (from its log), and its warnings."""
    installs = {r.who: r for k, rs in res.runs.items() if k.endswith(" -S") for r in rs}
    lines = []
    for node in nodes:
        run = installs.get(node.name)
        if run is None:
            continue
        log = node.log()
        lines.append(describe_node(node.name, log, run))
        lines.extend(f"    {w[:220]}" for w in warnings(log, run.start)[:6])
        kad = log.count("Error sending ADD_PROVIDER")  # py-libp2p's own, unstamped lines
        if kad:
            lines.append(f"    py-libp2p: {kad} x 'Error sending ADD_PROVIDER' (DHT provide)")
    return lines


def run_throughput(
    s: Settings, cluster: Cluster, origin: LoggedOrigin, pkgs: list[Package], res: Results
) -> None:
    """A fresh node per repetition GETs every package; only peers have them (upstream shows)."""
    from tests.support.cluster import wait_known

    paths = [p.path for p in pkgs]
    total = sum(p.size for p in pkgs)
    for rep in range(s.reps):
        fresh = add_node(cluster, f"fresh{rep}", bootstrap=[cluster["node1"]])
        t0 = time.perf_counter()
        wait_known(fresh, [p.sha256 for p in pkgs])  # pacman -Sy through it first, as a user
        learn = time.perf_counter() - t0
        mark = origin.mark()
        res.peer_mbps.append(_get_all(fresh.port, paths, total))
        res.peer_upstream += origin.package_bytes(mark)
        res.nginx_mbps.append(_get_all(origin.port, paths, total))
        fresh.close()
        print(f"  rep {rep + 1}: peers {res.peer_mbps[-1]:.0f} MB/s, "
              f"nginx {res.nginx_mbps[-1]:.0f} MB/s (-Sy + holders known: {learn:.1f} s)",
              flush=True)  # fmt: skip


def _get_all(port: int, paths: list[str], total: int) -> float:
    t0 = time.perf_counter()
    for path in paths:
        fetch = get_once(port, path, timeout=120)
        if fetch.status != 200:
            raise RuntimeError(f"GET {path} on port {port}: HTTP {fetch.status}")
    return total / (time.perf_counter() - t0) / 1e6


# -- report -------------------------------------------------------------------------------------


def report(res: Results, stopped: str) -> None:
    def ratio(nbytes: int) -> str:
        return f"{nbytes / res.unique:.2f}" if res.unique else "-"

    print("\nupstream bytes / unique package bytes")
    print(f"  {NODES} pacman clients on the mirror:  {ratio(res.direct_bytes):>6}   (expected 5.0)")
    if res.cluster_bytes or res.cluster_wall:
        print(
            f"  {NODES} pacswarm nodes:                {ratio(res.cluster_bytes):>6}   "
            "(target <= 1.05)"
        )
    if res.cluster_wall and res.direct_wall:
        print(f"\ncluster wall time / direct wall time: {res.cluster_wall / res.direct_wall:.2f} "
              f"({res.cluster_wall:.1f} s vs {res.direct_wall:.1f} s)")  # fmt: skip
    if res.peer_mbps:
        peer, ngx = _median(res.peer_mbps), _median(res.nginx_mbps)
        print(f"\npeer transfer (fresh node, peers only): {peer:.0f} MB/s; nginx static: "
              f"{ngx:.0f} MB/s; ratio {peer / ngx:.2f}; upstream during it: "
              f"{res.peer_upstream} B")  # fmt: skip
    _report_time(res)
    for note in res.notes:
        print(f"\nnote: {note}")
    if stopped:
        print(f"\nstopped early: {stopped}")


def _report_time(res: Results) -> None:
    """pacman's phases per group, the wait for announcements, each node's timeline."""
    if not res.runs:
        return
    print("\nwhere the time goes: pacman phases (line-stamped output)")
    for key in sorted(res.runs, key=lambda k: (k.split()[0], k.endswith("-S"))):
        if key.endswith(" -S"):
            print(phase_table(key, res.runs[key]))
        else:
            runs = res.runs[key]
            secs = sorted(r.end - r.start for r in runs)
            print(f"  {key} (n={len(runs)}): median {secs[len(secs) // 2]:.2f} s")
    if res.announce_wait:
        print(f"  nodes 2-5: -Sy + waiting to know node1 holds all: {res.announce_wait:.2f} s "
              "(not in the cluster wall time)")  # fmt: skip
    if res.timeline:
        print("\neach node's log (cached = fetched + verified + committed by the node):")
        for line in res.timeline:
            print(line)
    for run, spent in res.cpu.items():
        cells = ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
        print(f"\nCPU seconds during the {run} installs: {cells}; total {sum(spent.values()):.1f}")
    if res.profile:
        print("\nwhere the nodes' CPU went (py-spy, during the cluster installs):")
        print("\n".join(res.profile))
    if res.load:
        print("\nload average (1/5/15 min): " + "; ".join(res.load))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def run_all(
    s: Settings, tmp: Path, reg: Registry, homes: list[Path], res: Results, box: list[Cluster]
) -> None:
    deadline = time.monotonic() + s.time_limit
    res.load.append(f"start {load_average()}")
    keys, pkgs = build_repo(tmp, homes, s.count, s.sizes)
    res.unique = sum(p.size for p in pkgs)
    origin = LoggedOrigin(reg, tmp / "nginx-origin", tmp / "origin")
    run_direct(tmp, origin, keys, pkgs, homes, res)
    res.load.append(f"after direct {load_average()}")
    if s.direct_only:
        return
    try:
        import pacswarm.swarm.service  # noqa: F401
    except ImportError:
        res.notes.append("pacswarm.swarm.service is missing: no swarm to measure")
        return
    cluster = start_cluster(tmp, origin, keys, homes)
    box.append(cluster)
    run_cluster(s, cluster, origin, pkgs, res)
    res.load.append(f"after cluster {load_average()}")
    if time.monotonic() > deadline:
        raise OutOfTime(f"time limit of {s.time_limit:.0f} s reached")
    run_throughput(s, cluster, origin, pkgs, res)
    res.load.append(f"end {load_average()}")


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    install_stop_signals()
    signal.alarm(int(s.time_limit) + 120)
    tmp = Path(tempfile.mkdtemp(prefix="pacswarm-bench-swarm-", dir=s.tmpdir))
    reg, homes, res = Registry(), list[Path](), Results()
    box: list[Cluster] = []
    stopped, code = "", 0
    try:
        run_all(s, tmp, reg, homes, res, box)
    except (KeyboardInterrupt, OutOfTime) as e:
        stopped = str(e) or type(e).__name__
    except Exception as e:
        stopped, code = f"error: {e!r}", 1
        import traceback

        traceback.print_exc()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.alarm(0)
        for cluster in box:
            try:
                cluster.stop()
            except Exception as e:
                print(f"warning: {e}")
        reg.stop_all()
        kill_agents(homes)
        if s.keep:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(res, stopped)
    return code


if __name__ == "__main__":
    sys.exit(main())
