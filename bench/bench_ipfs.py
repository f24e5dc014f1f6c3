"""Benchmark: IPFS transfers of one package on loopback, against nginx serving the same file.

For each size (default 64 and 300 MiB of random bytes) it measures, in the same run (rows are
"client <- server"):

* aiohttp GET <- nginx (one worker, sendfile): the baseline every row is divided by;
* pacswarm <- pacswarm over the trustless gateway (``gateway_app`` -> ``fetch_car``);
* pacswarm <- pacswarm over Bitswap (P2PHost -> P2PHost); py-libp2p's stock client
  (``MerkleDag.fetch_file``) from py-libp2p's own Bitswap server holding the same blocks
  (the "stock client" baseline of the target) and from the pacswarm server;
* Helia <- pacswarm (Bitswap, and the trustless gateway), Helia <- Helia, Helia <- kubo;
* kubo <- pacswarm, kubo <- kubo, kubo <- Helia (Bitswap; the kubo server holds pacswarm's
  own blocks, Helia's ``add`` makes the same CID).

It prints median MB/s, the ratio to nginx, and each row's target with the ratio that target
is about (never pass/fail). Only ratios from one run mean anything on a shared machine.

    .venv/bin/python bench/bench_ipfs.py [--quick] [--sizes 64,300] [--reps 3]

The pacswarm server is ``bench/ipfsnode.py serve``: a PackageBlockstore over the file, the
gateway app and a P2PHost in one child process; not a full ``pacswarm serve`` (no mirror,
keyring, cache). Every client is a fresh child process (Helia and kubo clients too: they keep
what they fetched), and the connection is made before the clock starts. Everything lives in a
temp dir; every process started is stopped on exit, on Ctrl-C, SIGTERM or the time limit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchprocs import OutOfTime, Registry, install_stop_signals
from ipfsrun import (
    Clients,
    NginxStatic,
    PacswarmServer,
    Peers,
    Result,
    StockServer,
    helia_reason,
    kubo_reason,
    start_pacswarm,
    start_stock,
    write_random,
)

MiB = 1 << 20
FETCH_TIMEOUT = 180.0
STOCK_NOTES_MBPS = 14.0  # PERF-NOTES: py-libp2p stock client, py -> py, 64 MiB

# Row names are "client <- server".
NGINX = "aiohttp GET <- nginx"
GW = "pacswarm <- pacswarm, gateway CAR"
BS = "pacswarm <- pacswarm, Bitswap"
STOCK = "py-libp2p stock <- pacswarm"
STOCK2 = "py-libp2p stock <- py-libp2p stock"
H_PS = "Helia <- pacswarm, Bitswap"
H_GW = "Helia <- pacswarm, gateway"
H_H = "Helia <- Helia, Bitswap"
H_K = "Helia <- kubo, Bitswap"
K_PS = "kubo <- pacswarm, Bitswap"
K_K = "kubo <- kubo, Bitswap"
K_H = "kubo <- Helia, Bitswap"
ORDER = [NGINX, GW, BS, STOCK, STOCK2, H_PS, H_GW, H_H, H_K, K_PS, K_K, K_H]

# row -> (target text, the row its ratio is taken against, the ratio wanted)
TARGETS: dict[str, tuple[str, str, float]] = {
    GW: (">= 0.5 x nginx", NGINX, 0.5),
    BS: (">= 7 x stock <- stock", STOCK2, 7.0),
    H_PS: (">= 1 x Helia <- Helia", H_H, 1.0),
    K_PS: (">= 1 x kubo <- kubo", K_K, 1.0),
}
# "no slower than they fetch from each other", read the other way too: also shown in the note
ALSO: dict[str, str] = {H_PS: H_K, K_PS: K_H}


@dataclass
class Settings:
    sizes: list[int]
    reps: int
    time_limit: float
    tmpdir: str | None
    keep: bool
    helia: bool
    kubo: bool
    stock: bool


@dataclass
class Series:
    results: list[Result] = field(default_factory=list)
    note: str = ""  # why it was not measured / stopped

    @property
    def mbps(self) -> list[float]:
        return [r.nbytes / r.seconds / 1e6 for r in self.results]

    def median(self) -> float | None:
        return statistics.median(self.mbps) if self.results else None

    def per_gb(self, attr: str) -> float | None:
        vals = [(getattr(r, attr), r.nbytes) for r in self.results if getattr(r, attr) is not None]
        nbytes = sum(n for _, n in vals)
        return sum(c for c, _ in vals) / (nbytes / 1e9) if nbytes else None


@dataclass
class SizeRun:
    size: int
    series: dict[str, Series] = field(default_factory=lambda: {p: Series() for p in ORDER})


@dataclass
class Bench:
    settings: Settings
    tmp: Path
    reg: Registry
    peers: Peers
    clients: Clients
    deadline: float
    runs: list[SizeRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 MiB only, 1 rep")
    p.add_argument("--sizes", help="package sizes in MiB, comma-separated (default 64,300)")
    p.add_argument("--reps", type=int, help="repetitions per row (default 3, --quick 1)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run (600, quick 300)")
    p.add_argument("--tmpdir", help="where to create the temp dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    p.add_argument("--no-helia", action="store_true", help="skip the Helia rows")
    p.add_argument("--no-kubo", action="store_true", help="skip the kubo rows")
    p.add_argument("--no-stock", action="store_true", help="skip py-libp2p's stock client")
    a = p.parse_args(argv)
    default_sizes = "64" if a.quick else "64,300"
    sizes = [int(float(s) * MiB) for s in (a.sizes or default_sizes).split(",") if s.strip()]
    return Settings(
        sizes=sorted(set(sizes)),
        reps=max(1, a.reps or (1 if a.quick else 3)),
        time_limit=a.time_limit or (300.0 if a.quick else 600.0),
        tmpdir=a.tmpdir,
        keep=a.keep,
        helia=not a.no_helia,
        kubo=not a.no_kubo,
        stock=not a.no_stock,
    )


def check_time(bench: Bench) -> None:
    if time.monotonic() > bench.deadline:
        raise OutOfTime(f"time limit of {bench.settings.time_limit:.0f} s reached")


def size_label(size: int) -> str:
    return f"{size / MiB:g} MiB"


# -- one measurement per path ---------------------------------------------------------------


@dataclass
class Ctx:
    """What the measurements of one size need."""

    bench: Bench
    size: int
    name: str  # the file's name under nginx's root
    nginx: NginxStatic
    server: PacswarmServer | None
    helia_server: object | None = None
    helia_root: str = ""
    kubo_server: object | None = None
    stock_server: StockServer | None = None
    out_dir: Path = Path()


def _server_cpu(fn: Callable[[], Result], cpu: Callable[[], float]) -> Result:
    before = cpu()
    r = fn()
    return Result(r.nbytes, r.seconds, r.client_cpu, cpu() - before)


def m_nginx(c: Ctx) -> Result:
    return _server_cpu(lambda: c.bench.clients.run("http", url=c.nginx.url(c.name)), c.nginx.cpu)


def _need_server(c: Ctx) -> PacswarmServer:
    if c.server is None:
        raise RuntimeError("no pacswarm server")
    return c.server


def _need_p2p(c: Ctx) -> PacswarmServer:
    s = _need_server(c)
    if not s.addrs:
        raise RuntimeError(f"pacswarm server has no P2PHost: {s.p2p_error}")
    return s


def m_gateway(c: Ctx) -> Result:
    s = _need_server(c)
    return _server_cpu(lambda: c.bench.clients.run("car", url=s.gateway, root=s.root), s.cpu)


def m_bitswap(c: Ctx) -> Result:
    s = _need_p2p(c)
    return _server_cpu(lambda: c.bench.clients.run("bitswap", root=s.root, peer=s.multiaddr), s.cpu)


def m_stock(c: Ctx) -> Result:
    s = _need_p2p(c)
    return _server_cpu(lambda: c.bench.clients.run("stock", root=s.root, peer=s.multiaddr), s.cpu)


def _timed(fn: Callable[[], int]) -> Result:
    t0 = time.perf_counter()
    n = fn()
    return Result(n, time.perf_counter() - t0)


def _helia_cat(c: Ctx, addr: str, root: str, cpu: Callable[[], float] | None) -> Result:
    peers = c.bench.peers
    client = peers.helia()
    try:
        client.dial(addr)
        before = cpu() if cpu else None
        r = _timed(lambda: client.cat(root, os.devnull, timeout=FETCH_TIMEOUT))
        srv = cpu() - before if cpu and before is not None else None
        return Result(r.nbytes, r.seconds, None, srv)
    finally:
        peers.stop(client)


def m_helia_ps(c: Ctx) -> Result:
    s = _need_p2p(c)
    return _helia_cat(c, s.multiaddr, s.root, s.cpu)


def m_helia_gw(c: Ctx) -> Result:
    s = _need_server(c)
    peers = c.bench.peers
    client = peers.helia()
    try:
        url = s.gateway
        return _server_cpu(
            lambda: _timed(
                lambda: client.cat_gateway(s.root, url, os.devnull, timeout=FETCH_TIMEOUT)
            ),
            s.cpu,
        )
    finally:
        peers.stop(client)


def m_helia_helia(c: Ctx) -> Result:
    if c.helia_server is None:
        raise RuntimeError("no Helia server")
    return _helia_cat(c, c.helia_server.multiaddr, c.helia_root, None)  # type: ignore[attr-defined]


def _kubo_get(c: Ctx, addr: str, root: str, cpu: Callable[[], float] | None) -> Result:
    peers = c.bench.peers
    client = peers.kubo()
    out = c.out_dir / f"kubo-out-{peers.count}"
    try:
        client.connect(addr)
        before = cpu() if cpu else None
        r = _timed(lambda: client.get(root, out, timeout=FETCH_TIMEOUT))
        srv = cpu() - before if cpu and before is not None else None
        return Result(r.nbytes, r.seconds, None, srv)
    finally:
        peers.stop(client)
        out.unlink(missing_ok=True)


def m_kubo_ps(c: Ctx) -> Result:
    s = _need_p2p(c)
    return _kubo_get(c, s.multiaddr, s.root, s.cpu)


def m_kubo_kubo(c: Ctx) -> Result:
    if c.kubo_server is None:
        raise RuntimeError("no kubo server")
    return _kubo_get(c, c.kubo_server.multiaddr, _need_server(c).root, None)  # type: ignore[attr-defined]


def m_stock_stock(c: Ctx) -> Result:
    s = c.stock_server
    if s is None:
        raise RuntimeError("no stock server")
    return _server_cpu(lambda: c.bench.clients.run("stock", root=s.root, peer=s.multiaddr), s.cpu)


def m_helia_kubo(c: Ctx) -> Result:
    if c.kubo_server is None:
        raise RuntimeError("no kubo server")
    return _helia_cat(c, c.kubo_server.multiaddr, _need_server(c).root, None)  # type: ignore[attr-defined]


def m_kubo_helia(c: Ctx) -> Result:
    if c.helia_server is None:
        raise RuntimeError("no Helia server")
    return _kubo_get(c, c.helia_server.multiaddr, c.helia_root, None)  # type: ignore[attr-defined]


MEASURE: dict[str, Callable[[Ctx], Result]] = {
    H_K: m_helia_kubo,
    K_H: m_kubo_helia,
    STOCK2: m_stock_stock,
    NGINX: m_nginx,
    GW: m_gateway,
    BS: m_bitswap,
    STOCK: m_stock,
    H_PS: m_helia_ps,
    H_GW: m_helia_gw,
    H_H: m_helia_helia,
    K_PS: m_kubo_ps,
    K_K: m_kubo_kubo,
}


# -- the run ----------------------------------------------------------------------------------


def skipped(bench: Bench, run: SizeRun, ctx: Ctx) -> None:
    """Mark rows that cannot run in this environment (before any measurement)."""
    s = bench.settings
    why_helia = "--no-helia" if not s.helia else helia_reason()
    why_kubo = "--no-kubo" if not s.kubo else kubo_reason()
    for path in (H_PS, H_GW, H_H, H_K, K_H):
        if why_helia:
            run.series[path].note = f"not measured: {why_helia}"
    for path in (K_PS, K_K, H_K, K_H):
        if why_kubo:
            run.series[path].note = run.series[path].note or f"not measured: {why_kubo}"
    if not s.stock:
        run.series[STOCK].note = run.series[STOCK2].note = "not measured: --no-stock"
    if ctx.server is None:
        for path in (GW, BS, STOCK, H_PS, H_GW, K_PS, K_K, H_K):
            run.series[path].note = run.series[path].note or "not measured: no pacswarm server"
    elif not ctx.server.addrs:
        for path in (BS, STOCK, H_PS, K_PS):
            why = f"not measured: P2PHost did not start ({ctx.server.p2p_error})"
            run.series[path].note = run.series[path].note or why


def setup_size(bench: Bench, size: int, nginx: NginxStatic, files: Path) -> Ctx:
    name = f"pkg-{size // MiB}MiB.pkg.tar.zst"
    package = files / name
    t0 = time.monotonic()
    write_random(package, size)
    server: PacswarmServer | None = None
    try:
        server = start_pacswarm(bench.reg, bench.tmp / f"server-{size // MiB}", package)
    except (OSError, RuntimeError) as e:
        bench.notes.append(f"{size_label(size)}: pacswarm server did not start: {e}")
    ctx = Ctx(bench, size, name, nginx, server, out_dir=_out_dir(bench))
    run = SizeRun(size)
    bench.runs.append(run)
    skipped(bench, run, ctx)
    if not run.series[STOCK2].note:
        try:
            ctx.stock_server = start_stock(bench.reg, bench.tmp / f"stock-{size // MiB}", package)
        except (OSError, RuntimeError) as e:
            run.series[STOCK2].note = f"not measured: stock server failed: {e}"[:300]
    if not run.series[H_H].note:
        try:
            ctx.helia_server = bench.peers.helia()
            ctx.helia_root = ctx.helia_server.add(package, timeout=120)  # type: ignore[attr-defined]
            if server is not None and ctx.helia_root != server.root:
                bench.notes.append(
                    f"{size_label(size)}: Helia's CID {ctx.helia_root} != pacswarm's {server.root}"
                )
        except Exception as e:
            for path in (H_H, K_H):
                run.series[path].note = f"not measured: Helia server failed: {e}"[:300]
    if not run.series[K_K].note and server is not None:
        try:
            from pacswarm.ipfs.unixfs import import_bytes
            from tests.support.kubo import blocks_of

            data = package.read_bytes()
            blocks = blocks_of(import_bytes(data), data)
            del data
            ctx.kubo_server = bench.peers.kubo(preload=blocks)
        except Exception as e:
            for path in (K_K, H_K):
                run.series[path].note = f"not measured: kubo server failed: {e}"[:300]
    print(f"{size_label(size)}: set up in {time.monotonic() - t0:.1f} s", flush=True)
    return ctx


def _out_dir(bench: Bench) -> Path:
    """kubo's get must write a real file: tmpfs if there is one, so disk speed stays out."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else bench.tmp
    out = Path(tempfile.mkdtemp(prefix="pacswarm-bench-ipfs-out-", dir=base))
    _OUT_DIRS.append(out)  # removed in main's finally
    return out


_OUT_DIRS: list[Path] = []


def teardown_size(bench: Bench, ctx: Ctx) -> None:
    for peer in (ctx.helia_server, ctx.kubo_server):
        if peer is not None:
            bench.peers.stop(peer)
    if ctx.server is not None:
        bench.reg.stop(ctx.server.proc)
    if ctx.stock_server is not None:
        bench.reg.stop(ctx.stock_server.proc)
    (bench.tmp / "files" / ctx.name).unlink(missing_ok=True)


def run_size(bench: Bench, size: int, nginx: NginxStatic, files: Path) -> None:
    ctx = setup_size(bench, size, nginx, files)
    run = bench.runs[-1]
    try:
        for rep in range(bench.settings.reps):
            order = ORDER if rep % 2 == 0 else list(reversed(ORDER))
            for path in order:
                series = run.series[path]
                if series.note:
                    continue
                check_time(bench)
                try:
                    result = MEASURE[path](ctx)
                except OutOfTime:
                    raise
                except Exception as e:
                    if path == NGINX:
                        raise
                    series.note = f"failed: {e}".replace("\n", " ")[:300]
                    print(f"  {size_label(size)} {path}: {series.note}", flush=True)
                    continue
                if result.nbytes != size:
                    series.note = f"failed: got {result.nbytes} of {size} bytes"
                    print(f"  {size_label(size)} {path}: {series.note}", flush=True)
                    continue
                series.results.append(result)
                print(
                    f"  {size_label(size)} rep {rep + 1} {path}: {series.mbps[-1]:.0f} MB/s",
                    flush=True,
                )
    finally:
        teardown_size(bench, ctx)


def run_all(bench: Bench) -> None:
    print(f"load average at the start: {loadavg()} ({os.cpu_count()} CPUs)", flush=True)
    files = bench.tmp / "files"
    files.mkdir()
    nginx = NginxStatic(bench.reg, bench.tmp / "nginx", files)
    for size in bench.settings.sizes:
        run_size(bench, size, nginx, files)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# -- report ------------------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    if value is None:
        return format("n/a", ">" + spec.split(".")[0])
    return format(value, spec)


def _range(series: Series) -> str:
    m = series.mbps
    return f"{min(m):.0f}-{max(m):.0f}" if len(m) > 1 else ""


def print_run(run: SizeRun, reps: int) -> None:
    base = run.series[NGINX].median()
    print()
    print(f"{size_label(run.size)} (median of up to {reps} reps; MB/s = 10^6 bytes/s)")
    print(
        f"  {'client <- server':<36} {'MB/s':>6} {'range':>9} {'x nginx':>7}  {'target':<22} "
        f"{'ratio':>6}  {'srv/cli CPU s/GB':>16}  note"
    )
    for path in ORDER:
        s = run.series[path]
        med = s.median()
        vs_nginx = med / base if med is not None and base else None
        target, ratio_txt, mark = "", "", " "
        if path in TARGETS:
            target, against, want = TARGETS[path]
            ref = run.series[against].median()
            if ref is None and against == STOCK2:
                ref, target = STOCK_NOTES_MBPS, ">= 7 x 14 MB/s (notes)"
            ratio = med / ref if med is not None and ref else None
            ratio_txt = _f(ratio, "6.2f")
            mark = "*" if ratio is not None and ratio < want else " "
        cpu = f"{_f(s.per_gb('server_cpu'), '5.2f')}/{_f(s.per_gb('client_cpu'), '5.2f')}"
        partial = (
            f"({len(s.results)} of {reps} reps)" if s.results and len(s.results) < reps else ""
        )
        also = ""
        if path in ALSO and med is not None and run.series[ALSO[path]].median():
            also = f"x{med / run.series[ALSO[path]].median():.2f} vs {ALSO[path]}"  # type: ignore[operator]
        if not s.results and not s.note:
            partial = "not reached (stopped early)"
        note = " ".join(filter(None, [s.note, partial, also]))
        print(
            f"  {path:<36} {_f(med, '6.0f')} {_range(s):>9} {_f(vs_nginx, '7.2f')}  "
            f"{target:<22} {ratio_txt:>6}{mark} {cpu:>16}  {note}"
        )


def report(bench: Bench | None, stopped: str) -> None:
    if bench is not None:
        print()
        print("IPFS transfer of one package on 127.0.0.1, each row against nginx in the same run")
        for run in bench.runs:
            print_run(run, bench.settings.reps)
        print()
        print("ratio = this row's median / the median of the row its target names; * = below")
        print("target in this run (information, not pass/fail). range = min-max MB/s over reps.")
        print("Clock: from the request to the last byte; connecting (TCP, or libp2p dial +")
        print("Noise + Yamux) happens before it. Every client is a fresh process, so Helia/kubo")
        print("start with empty blockstores. Bitswap sinks discard the bytes (stock client: keeps")
        print("them in its memory blockstore, as it does); kubo writes its file to tmpfs.")
        print("CPU s/GB: server = the serving process(es) (nginx master+worker; pacswarm's")
        print("ipfsnode.py serve), client = our fetching child; n/a where not measured (Helia,")
        print("kubo). pacswarm server = bench/ipfsnode.py serve (PackageBlockstore + gateway_app +")
        print("P2PHost in one process), not a full `pacswarm serve` (no mirror, keyring, cache).")
        print(f"load average at the end: {loadavg()} ({os.cpu_count()} CPUs)")
        for note in bench.notes:
            print(f"\nnote: {note}")
    if stopped:
        print(f"\nstopped early: {stopped}")


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    install_stop_signals()
    signal.alarm(int(s.time_limit) + 180)
    tmp = Path(tempfile.mkdtemp(prefix="pacswarm-bench-ipfs-", dir=s.tmpdir))
    reg = Registry()
    peers = Peers(tmp)
    bench = Bench(
        s, tmp, reg, peers, Clients(reg, tmp, FETCH_TIMEOUT), time.monotonic() + s.time_limit
    )
    stopped, code = "", 0
    try:
        run_all(bench)
    except (KeyboardInterrupt, OutOfTime) as e:
        stopped = str(e) or type(e).__name__
    except Exception as e:
        stopped, code = f"error: {e!r}", 1
        import traceback

        traceback.print_exc()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.alarm(0)
        peers.stop_all()
        reg.stop_all()
        for out in _OUT_DIRS:
            shutil.rmtree(out, ignore_errors=True)
        if s.keep:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(bench, stopped)
    return code


if __name__ == "__main__":
    sys.exit(main())
